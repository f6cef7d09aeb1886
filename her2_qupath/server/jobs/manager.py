"""The job manager: the data directory, the store, the worker threads and their supervisor.

:class:`JobManager` owns one data directory (a lock file keeps a second server
off it), its jobs database and its results. At start, jobs a previous run left
``running`` are re-queued (at most ``max_crash_retries`` times, then failed) or
failed with a reason (``ServerConfig.requeue_interrupted``); finished results
expire after ``result_ttl_hours``. A supervisor thread restarts worker threads
that ended, and :meth:`JobManager.problems` says what keeps the server from
working normally (``health``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...config import ServerConfig
from ...errors import UserInputError
from ...executors import DaskBackend, LocalBackend, worker_count
from ..scorers import Scorer
from .files import private_dir
from .health import ProblemLog
from .runner import JobRunner, Running
from .store import DB_NAME, JobStore, iso_time

__all__ = ["JobManager", "PROBE_INTERVAL_S"]

log = logging.getLogger(__package__)  # the jobs package's one logger, as before its split

#: the data directory is probed for writes at most this often
PROBE_INTERVAL_S = 5.0


class JobManager(JobRunner):
    """Runs queued jobs on worker threads; owns the store, the results and the backend."""

    def __init__(
        self,
        config: ServerConfig,
        data_dir: str | os.PathLike[str],
        scorer: Scorer,
        backend: LocalBackend | DaskBackend,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir).absolute()
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_dir(self.results_dir)
        self.scorer = scorer
        self.backend = backend
        self.workers = worker_count(config)
        self._lock_fd: int | None = None
        self._acquire_dir_lock()
        try:
            self.store = JobStore(self.data_dir / DB_NAME, repair=config.repair_db)
        except BaseException:
            self._release_dir_lock()
            raise
        self._running: dict[str, Running] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None
        self._workers_lock = threading.Lock()
        self._last_purge = 0.0
        self._health = ProblemLog()
        self._unrecorded: dict[str, tuple[str, str]] = {}
        self._last_probe = 0.0
        self.started = False

    # ---- life cycle -----------------------------------------------------------------------

    def _acquire_dir_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise UserInputError(
                f"another her2-qupath server is using the data directory {self.data_dir}",
                hint="stop it, or give this one its own --data-dir",
            ) from err
        self._lock_fd = fd

    def _release_dir_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def recover(self) -> tuple[int, int]:
        """Handle jobs a previous run left ``running``: re-queue or fail them. Returns the counts.

        A job found running here was running when the server stopped without
        cleaning up (a crash, ``kill -9``, a power cut): it counts a crash. After
        ``max_crash_retries`` re-queues it is failed, so a job that crashes the
        server does not crash it again at every start.
        """
        requeued = failed = 0
        retries = max(0, self.config.max_crash_retries)
        for job in self.store.interrupted():
            crashes = int(job.get("crashes") or 0) + 1
            if job["cancel_requested"]:
                self.store.finish(
                    job["id"], "cancelled", error="cancelled (the server stopped meanwhile)"
                )
            elif not self.config.requeue_interrupted:
                self.store.finish(
                    job["id"],
                    "failed",
                    error="interrupted by a server restart (requeue_interrupted is off); submit it again",
                )
                failed += 1
            elif crashes > retries:
                self.store.finish(
                    job["id"],
                    "failed",
                    error=f"crashed the server {crashes} times (the server stopped while this job ran, "
                    f"each time); not retried again (ServerConfig.max_crash_retries = {retries}). "
                    "Check the server log; submit it again if the cause lay elsewhere",
                )
                failed += 1
            else:
                self.store.requeue(
                    job["id"],
                    f"interrupted by a server restart; re-queued (retry {crashes} of {retries})",
                    crashed=True,
                )
                requeued += 1
        for tmp in self.results_dir.glob(".*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
        self.store.drop_orphan_payloads()
        if requeued or failed:
            log.warning(
                "after restart: %d interrupted job(s) re-queued, %d failed", requeued, failed
            )
        return requeued, failed

    def start(self) -> None:
        """Recover interrupted jobs, purge expired results, start the worker threads."""
        if self.started:
            return
        if self.backend.kind == "dask":
            self.backend.executor()  # connect now: an unreachable cluster stops the start, not each job
        self.recover()
        self.purge()
        self._stop.clear()
        for n in range(self.workers):
            self._threads.append(self._start_worker(n))
        self._supervisor = threading.Thread(
            target=self._supervise, name="her2-job-supervisor", daemon=True
        )
        self._supervisor.start()
        self.started = True

    def _start_worker(self, n: int) -> threading.Thread:
        t = threading.Thread(target=self._worker_main, name=f"her2-job-{n}", daemon=True)
        t.start()
        return t

    def shutdown(self, *, timeout_s: float | None = None, mark_interrupted: bool = True) -> None:
        """Stop the workers. Running jobs are cancelled and marked interrupted (re-queued or failed).

        ``mark_interrupted=False`` leaves their rows as a crash would (for tests of recovery).
        """
        timeout_s = self.config.shutdown_grace_s if timeout_s is None else timeout_s
        self._stop.set()
        with self._running_lock:
            for run in self._running.values():
                run.reason = "shutdown" if mark_interrupted else "crash"
                run.cancel.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout_s
        threads = list(self._threads)
        if self._supervisor is not None:
            threads.append(self._supervisor)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "jobs still running at shutdown (%s); they will be recovered at the next start",
                alive,
            )
        self._threads.clear()
        self._supervisor = None
        self.backend.close()
        if not alive:
            with contextlib.suppress(sqlite3.Error):
                self.store.close()
        self._release_dir_lock()
        self.started = False

    # ---- problems and health ------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What keeps the server from working normally now (empty: healthy)."""
        self._check_workers()
        self._probe_data_dir()
        return self._health.current()

    def workers_alive(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def _check_workers(self) -> None:
        """Restart worker threads that have ended (each end is reported for a minute)."""
        if not self.started or self._stop.is_set():
            return
        with self._workers_lock:  # the supervisor and health requests both call this
            self._restart_dead_workers()

    def _restart_dead_workers(self) -> None:
        for n, t in enumerate(self._threads):
            if not t.is_alive() and not self._stop.is_set():
                self._health.report(
                    f"worker-{n}",
                    f"job worker {t.name} stopped unexpectedly at "
                    f"{iso_time(time.time())} and was restarted; see the server log",
                    sticky=False,
                )
                log.error("job worker %s had stopped; restarting it", t.name)
                self._threads[n] = self._start_worker(n)

    def _supervise(self) -> None:
        """Every ``worker_retry_s``: restart the worker threads that have ended."""
        while not self._stop.wait(max(0.05, self.config.worker_retry_s)):
            try:
                self._check_workers()
            except RuntimeError:  # a thread that cannot start (no threads left): try again later
                log.exception("job supervisor: checking the workers failed")

    def _probe_data_dir(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_probe < PROBE_INTERVAL_S:
            return
        self._last_probe = now
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, probe = _mkstemp(self.results_dir)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            self._health.report(
                "data_dir",
                f"the data directory {self.data_dir} is not writable: {err.strerror or err}; "
                "jobs cannot store results until this is fixed (free space, permissions)",
            )
        else:
            self._health.solved("data_dir")
            self._health.solved("storage")  # a write went through: the disk has room again

    # ---- requests -----------------------------------------------------------------------------

    def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        job = self.store.add(
            body,
            max_queue=self.config.max_queue,
            retry_after_s=self.config.retry_after_s,
            max_stored_bytes=self.config.max_stored_request_bytes,
        )
        with self._wake:
            self._wake.notify()
        return job

    def cancel(self, job_id: str) -> str | None:
        state = self.store.request_cancel(job_id)
        if state == "running":
            with self._running_lock:
                run = self._running.get(job_id)
                if run is not None:
                    run.reason = "cancel"
                    run.cancel.set()
        return state

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.get(job_id)
        if job is None:
            return None
        pending = self._unrecorded.get(job_id)
        if pending is not None:  # the database could not take the outcome yet
            job["state"], job["error"] = pending
            return job
        if job["state"] == "running":
            with self._running_lock:
                run = self._running.get(job_id)
                if run is not None and run.total:
                    job["tiles_done"], job["tiles_total"] = run.done, run.total
                    job["progress"] = min(1.0, run.done / run.total)
        return job

    def queue_length(self) -> int:
        return self.store.counts().get("queued", 0)

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)


def _mkstemp(folder: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".tmp")
