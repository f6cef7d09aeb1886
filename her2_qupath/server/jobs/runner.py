"""The job workers: the loop each worker thread runs, one job from claim to outcome, retention.

:class:`JobRunner` is the part of :class:`~.manager.JobManager` that runs on
the worker threads; ``JobManager.__init__`` sets up the attributes it declares.

A result directory appears under ``results/<id>`` in one rename
(``_io.atomic_output_dir``) before the row says ``done``, so a crash at any
point leaves either a finished job with all its files or a job still marked
``running`` (recovered at the next start, see ``JobManager.recover``).

Errors. An error of a worker turn outside a job (claiming, purging, recording
an outcome: the database or the data directory refusing) is logged with an
id, shown by ``health`` and retried every ``worker_retry_s``. Inside a job there
is one deliberate catch-all (:meth:`JobRunner._run`): whatever the scorer
raises ends the job with a recorded outcome. KeyboardInterrupt, SystemExit and
MemoryError are raised again once the job is recorded; they end the worker
thread, which ``_worker_main`` reports and the supervisor restarts.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._io import atomic_output_dir
from ..._types import ProgressCallback
from ...config import ServerConfig
from ...errors import Her2Error, JobCancelled, UserInputError
from ...executors import DaskBackend, LocalBackend
from ..http import ApiError
from ..scorers import JobSpec, Scorer, build_spec
from .files import STORAGE_ERRORS, dir_bytes, is_disk_full, make_private
from .health import ProblemLog, describe, error_id
from .store import JobStore

__all__ = ["JobRunner", "Running", "fatal"]

log = logging.getLogger(__package__)  # the jobs package's one logger, as before its split


@dataclass
class Running:
    """A job a worker runs now: how to stop it, why, and its progress (kept in memory)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancel"  # "cancel", "shutdown" or "crash" (a shutdown that leaves the row)
    done: int = 0
    total: int | None = None
    last_write: float = 0.0
    #: True while the request is checked and scored: an error then is the job's own
    scoring: bool = False


def fatal(err: BaseException) -> bool:
    """An error a worker thread must not outlive: not an :class:`Exception`, or MemoryError."""
    return not isinstance(err, Exception) or isinstance(err, MemoryError)


class JobRunner:
    """Runs queued jobs on worker threads (the loop, one job, its outcome) and purges old results."""

    config: ServerConfig
    data_dir: Path
    results_dir: Path
    store: JobStore
    scorer: Scorer
    backend: LocalBackend | DaskBackend
    _health: ProblemLog
    _running: dict[str, Running]
    _running_lock: threading.Lock
    _wake: threading.Condition
    _stop: threading.Event
    _last_purge: float
    #: job id -> (state, error): outcomes the database could not take yet (retried)
    _unrecorded: dict[str, tuple[str, str]]

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / job_id

    # ---- the worker loop ----------------------------------------------------------------------

    def _worker_main(self) -> None:
        """A worker thread: the loop, and a record of why it ended if it ends unexpectedly."""
        try:
            self._worker()
        except BaseException as err:  # the thread's last words: logged, reported, then it ends
            eid = error_id()
            log.critical(
                "job worker %s stopped (error id %s)",
                threading.current_thread().name,
                eid,
                exc_info=True,
            )
            self._health.report(
                "worker-stopped",
                f"a job worker stopped on {type(err).__name__} (error id {eid}); restarted",
                sticky=False,
            )
            # the thread ends here (logged above); the supervisor starts a new one

    def _worker(self) -> None:
        """Turns until shutdown. A turn failing outside a job (database, data directory) is retried.

        Anything else that escapes a turn (a bug outside a job, or what :meth:`_run`
        raises again) ends the thread: :meth:`_worker_main` reports it and the
        supervisor starts a new one.
        """
        while not self._stop.is_set():
            try:
                self._step()
            except STORAGE_ERRORS as err:  # supervised: log, report, retry
                eid = error_id()
                log.exception("job worker: error outside a job (error id %s)", eid)
                self._health.report(
                    "worker",
                    f"the job workers cannot work: {describe(err)} (error id {eid}); retrying every "
                    f"{self.config.worker_retry_s:g} s",
                )
                self._stop.wait(max(0.05, self.config.worker_retry_s))
            else:
                self._health.solved("worker")

    def _step(self) -> None:
        """One turn of a worker: purge when due, record pending outcomes, run one job or wait."""
        if time.monotonic() - self._last_purge > self.config.purge_interval_s:
            self._last_purge = time.monotonic()  # first: a failing purge waits for the next turn
            self.purge()
        self._record_pending()
        job = self.store.claim()
        if job is None:
            with self._wake:  # shutdown sets _stop, then notifies under this lock
                if not self._stop.is_set():
                    self._wake.wait(timeout=1.0)
            return
        self._run(job)

    # ---- one job ------------------------------------------------------------------------------

    def _progress_callback(self, job_id: str, run: Running) -> ProgressCallback:
        limit = self.config.max_tiles_per_job

        def progress(done: int, total: int) -> None:
            if total > limit:
                raise UserInputError(
                    f"the job has {total} tiles, more than this server scores in one job ({limit})",
                    hint="draw smaller ROIs or raise ServerConfig.max_tiles_per_job",
                )
            run.done, run.total = done, total
            now = time.monotonic()
            if now - run.last_write >= self.config.progress_write_interval_s or done >= total:
                run.last_write = now
                self.store.set_progress(job_id, done, total)
            if run.cancel.is_set():
                raise JobCancelled("the scoring run was cancelled", hint="nothing was written")

        return progress

    def run_spec(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Run the scorer on the backend's executor (used by jobs and by synchronous /score)."""
        return self.scorer(
            spec, outdir, progress=progress, cancel=cancel, executor=self.backend.executor()
        )

    def _run(self, job: dict[str, Any]) -> None:
        """Run one claimed job to its outcome: done, failed, cancelled or re-queued.

        The server's one catch-all is here, on purpose. A scorer is plug-in code
        (any callable, see :mod:`her2_qupath.server.scorers`) and may fail in any
        way, a bug or an exhausted memory included; whatever it raises ends the
        job with a recorded outcome (:meth:`_ended`), so that no job stays
        ``running`` while its worker goes on. What :func:`fatal` names
        (KeyboardInterrupt, SystemExit, MemoryError) is raised again after that:
        it ends the worker thread, which is reported and restarted.
        """
        job_id = job["id"]
        run = Running()
        with self._running_lock:
            self._running[job_id] = run
        try:
            current = self.store.get(
                job_id
            )  # a cancel may have come between claim and registration
            if job["cancel_requested"] or (current is not None and current["cancel_requested"]):
                run.cancel.set()
            body = self.store.request(job_id)
            if body is None:
                self._fail(job_id, "the job's stored request is missing; submit it again")
                return
            self._execute(job_id, body, run)
        except BaseException as err:  # noqa: BLE001 - deliberate, see the docstring
            self._ended(job_id, err, run)
            if fatal(err):
                raise
        finally:
            with self._running_lock:
                self._running.pop(job_id, None)

    def _execute(self, job_id: str, body: dict[str, Any], run: Running) -> None:
        """Check the request, score it into ``results/<id>``, record the job done."""
        log.info("job %s started", job_id)
        final = self.result_path(job_id)
        run.scoring = True
        spec = build_spec(body, self.config)
        with atomic_output_dir(final) as tmp:
            summary = self.run_spec(
                spec, tmp, progress=self._progress_callback(job_id, run), cancel=run.cancel
            )
            if run.cancel.is_set():
                raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
            make_private(tmp)
        result_bytes = dir_bytes(final)
        run.scoring = False  # scored: an error from here on is the server's, not the job's
        try:
            self.store.finish(job_id, "done", summary=summary, result_bytes=result_bytes)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)  # not done: no result files either
            raise
        self._health.solved("storage")
        log.info("job %s done", job_id)
        self.enforce_disk_limit()

    def _ended(self, job_id: str, err: BaseException, run: Running) -> None:
        """Record the outcome of a job that raised ``err`` (see :meth:`_run`).

        An :class:`Exception` raised while the job is checked and scored
        (``run.scoring``): when a cancellation or a shutdown is stopping the job,
        the job stopped (:meth:`_stopped`); a product error (:class:`Her2Error`,
        :class:`ApiError`) fails it with its own message; anything else (a bug in
        the scorer, MemoryError, a storage error) fails it with a message and an
        error id (:meth:`_unexpected`). Any other error (reading the request,
        recording the result, or one that is not an Exception) fails the job
        with a message and an error id too, unless a simulated crash is stopping
        it: then its row stays as a killed process would leave it.
        """
        if run.scoring and isinstance(err, Exception):
            if not run.cancel.is_set():
                if isinstance(err, (Her2Error, ApiError)):
                    log.info("job %s failed: %s", job_id, err)
                    self._fail(job_id, str(err))
                else:
                    self._fail(job_id, self._unexpected(job_id, err))
                return
            try:
                self._stopped(job_id, run)
                return
            except STORAGE_ERRORS as unrecorded:  # the database refused: fail it (kept, retried)
                err = unrecorded
        message = self._unexpected(job_id, err)
        if run.cancel.is_set() and run.reason == "crash":
            return
        self._fail(job_id, message)

    def _unexpected(self, job_id: str, err: BaseException) -> str:
        """Log an unexpected failure with an id; the message a client sees (no exception text)."""
        eid = error_id()
        log.error("job %s failed (error id %s)", job_id, eid, exc_info=err)
        if is_disk_full(err):
            self._health.report(
                "storage", f"the server's disk is full (data directory {self.data_dir})"
            )
            return (
                f"the server's disk is full (error id {eid}); the server's operator must free space "
                "in its data directory (or lower --max-results-gb); then submit the job again"
            )
        if self._is_storage_error(err):
            self._health.report(
                "storage",
                f"writing to the data directory {self.data_dir} failed: {describe(err)} (error id {eid})",
            )
            return (
                f"the server could not write the job's result (error id {eid}); the details are in "
                "the server log; submit the job again once the operator has fixed the data directory"
            )
        if isinstance(err, MemoryError):
            return (
                f"the server ran out of memory while scoring (error id {eid}); draw smaller ROIs, or "
                "submit the job again when fewer jobs run; if it fails again, report the error id"
            )
        return (
            f"internal error while scoring (error id {eid}); the details are in the server log. "
            "Submit the job again; if it fails again, report the error id"
        )

    def _is_storage_error(self, err: BaseException) -> bool:
        """A database error, or a file-system error on a file in the data directory."""
        if isinstance(err, sqlite3.Error):
            return True
        if not isinstance(err, OSError) or isinstance(err, Her2Error):
            return False
        name = err.filename
        return isinstance(name, (str, os.PathLike)) and (
            Path(name).absolute() == self.data_dir or self.data_dir in Path(name).absolute().parents
        )

    def _fail(self, job_id: str, message: str) -> None:
        """Mark a job failed; if the database refuses, keep the outcome and retry on later turns."""
        shutil.rmtree(self.result_path(job_id), ignore_errors=True)
        try:
            self.store.finish(job_id, "failed", error=message)
        except STORAGE_ERRORS as err:  # kept and retried by _record_pending
            self._unrecorded[job_id] = ("failed", message)
            self._health.report(
                "database",
                f"the jobs database cannot be written: {describe(err)}; "
                f"{len(self._unrecorded)} job outcome(s) wait to be recorded",
            )
            log.error("job %s: could not record its failure (%s); will retry", job_id, err)

    def _record_pending(self) -> None:
        for job_id, (state, message) in list(self._unrecorded.items()):
            self.store.finish(job_id, state, error=message)  # raises: reported by the worker loop
            self._unrecorded.pop(job_id, None)
        self._health.solved("database")

    def _stopped(self, job_id: str, run: Running) -> None:
        """A job stopped on request: cancelled, or (shutdown) re-queued or failed."""
        if run.reason == "cancel":
            log.info("job %s cancelled", job_id)
            self.store.finish(job_id, "cancelled", error="cancelled while running")
        elif run.reason == "shutdown":
            if self.config.requeue_interrupted:
                self.store.requeue(job_id, "interrupted by a server shutdown; re-queued")
            else:
                self.store.finish(
                    job_id,
                    "failed",
                    error="interrupted by a server shutdown (requeue_interrupted is off)",
                )
        # "crash": leave the row as it is, as a killed process would

    # ---- retention ----------------------------------------------------------------------------

    def purge(self) -> None:
        """Delete results older than ``result_ttl_hours`` (and their rows), bound the disk use."""
        self._last_purge = time.monotonic()
        cutoff = time.time() - self.config.result_ttl_hours * 3600.0
        for job_id in self.store.expired(cutoff):
            shutil.rmtree(self.result_path(job_id), ignore_errors=True)
            self.store.delete(job_id)
        self.store.drop_orphan_payloads()
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # recreated if removed
        known = self.store.ids()
        for path in self.results_dir.iterdir():
            if not path.name.startswith(".") and path.name not in known:
                shutil.rmtree(path, ignore_errors=True)
        self.enforce_disk_limit()

    def enforce_disk_limit(self) -> None:
        """Drop the oldest results until their total size is within ``max_results_bytes``."""
        results = self.store.results_oldest_first()
        total = sum(b for _, b in results)
        for job_id, size in results:
            if total <= self.config.max_results_bytes:
                break
            self.store.mark_result_expired(job_id)  # first, so nobody is offered files about to go
            shutil.rmtree(self.result_path(job_id), ignore_errors=True)
            total -= size
            log.info(
                "result of job %s removed to keep results within %d bytes",
                job_id,
                self.config.max_results_bytes,
            )
