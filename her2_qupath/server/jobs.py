"""Durable jobs: a SQLite queue in the data directory and the threads that run it.

The database (``jobs.sqlite3``, WAL mode, ``synchronous=FULL``) is the queue:
a job is a row, workers claim the oldest queued row in one ``UPDATE ...
RETURNING`` statement, and a result directory appears under
``results/<id>`` in one rename (``_io.atomic_output_dir``) before the row
says ``done``. So a crash at any point leaves either a finished job with all
its files or a job still marked ``running``; at the next start those are
re-queued (or failed with a reason, ``ServerConfig.requeue_interrupted``).
Finished results expire after ``result_ttl_hours`` and the oldest go first
when they exceed ``max_results_bytes``. One server per data directory (a
lock file guards it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._io import atomic_output_dir
from .._types import ProgressCallback
from ..config import ServerConfig
from ..errors import Her2Error, JobCancelled, UserInputError
from .executors import DaskBackend, LocalBackend, worker_count
from .http import ApiError
from .scorers import JobSpec, Scorer, build_spec

__all__ = [
    "TERMINAL_STATES",
    "JobStore",
    "JobManager",
    "QueueFull",
    "iso_time",
    "default_data_dir",
]

log = logging.getLogger(__name__)

TERMINAL_STATES = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress REAL NOT NULL DEFAULT 0,
    tiles_done INTEGER NOT NULL DEFAULT 0,
    tiles_total INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    result_expired INTEGER NOT NULL DEFAULT 0,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
"""


def default_data_dir() -> Path:
    """The user's data directory: platformdirs when installed, else the XDG rules."""
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "share"
        )
        return Path(base) / "her2-qupath"
    return Path(platformdirs.user_data_dir("her2-qupath", appauthor=False))


def iso_time(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC (``2026-01-01T12:00:00.000Z``)."""
    if t is None:
        return None
    return (
        datetime.fromtimestamp(t, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class QueueFull(ApiError):
    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(
            429,
            "queue_full",
            f"the job queue is full ({max_queue} jobs waiting); retry later",
            headers={"Retry-After": str(retry_after_s)},
        )


class JobStore:
    """The jobs table. Thread-safe: one connection, one lock, autocommit statements."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(
        self, request: Mapping[str, Any], *, max_queue: int, retry_after_s: int
    ) -> dict[str, Any]:
        """Insert a queued job, or raise :class:`QueueFull` when ``max_queue`` are waiting."""
        job_id = uuid.uuid4().hex
        with self._tx() as db:
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
            if queued >= max_queue:
                raise QueueFull(max_queue, retry_after_s)
            db.execute(
                "INSERT INTO jobs (id, state, request, created) VALUES (?, 'queued', ?, ?)",
                (job_id, json.dumps(request), time.time()),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def list(self, *, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        sql = (
            "SELECT * FROM jobs"
            + (" WHERE state = ?" if state else "")
            + " ORDER BY seq DESC LIMIT ?"
        )
        args: tuple[Any, ...] = (state, limit) if state else (limit,)
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def claim(self) -> dict[str, Any] | None:
        """Mark the oldest queued job running and return it (``None`` if none waits)."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, "
                "progress = 0, tiles_done = 0, error = NULL "
                "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) "
                "AND state = 'queued' RETURNING *",
                (time.time(),),
            ).fetchone()
        return dict(row) if row else None

    def set_progress(self, job_id: str, done: int, total: int | None) -> None:
        frac = min(1.0, done / total) if total else 0.0
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET tiles_done = ?, tiles_total = ?, progress = ? WHERE id = ? AND state = 'running'",
                (done, total, frac, job_id),
            )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        summary: Mapping[str, Any] | None = None,
        result_bytes: int = 0,
    ) -> None:
        from .._io import json_default

        progress_sql = ", progress = 1" if state == "done" else ""
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, error = ?, summary = ?, result_bytes = ?{progress_sql} "
                "WHERE id = ?",
                (
                    state,
                    time.time(),
                    error,
                    json.dumps(summary, default=json_default) if summary is not None else None,
                    result_bytes,
                    job_id,
                ),
            )

    def requeue(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'queued', started = NULL, progress = 0, tiles_done = 0, error = ? "
                "WHERE id = ? AND state = 'running'",
                (reason, job_id),
            )

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job outright, flag a running one; the state after (``None``: no such job)."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, error = 'cancelled before it started', "
                    "cancel_requested = 1 WHERE id = ?",
                    (time.time(), job_id),
                )
                return "cancelled"
            if row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return str(row["state"])

    def interrupted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(r)
                for r in self._db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
            ]

    def expired(self, cutoff: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished < ?",
                (cutoff,),
            ).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def results_oldest_first(self) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, result_bytes FROM jobs WHERE state = 'done' AND result_expired = 0 "
                "ORDER BY finished, seq"
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def mark_result_expired(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET result_expired = 1, result_bytes = 0 WHERE id = ?", (job_id,)
            )

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs").fetchall()}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class _Running:
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancel"  # "cancel" or "shutdown"
    done: int = 0
    total: int | None = None
    last_write: float = 0.0


class JobManager:
    """Runs queued jobs on worker threads; owns the store, the results and the backend."""

    def __init__(
        self,
        config: ServerConfig,
        data_dir: str | os.PathLike[str],
        scorer: Scorer,
        backend: LocalBackend | DaskBackend,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.scorer = scorer
        self.backend = backend
        self.workers = worker_count(config)
        self._lock_fd: int | None = None
        self._acquire_dir_lock()
        self.store = JobStore(self.data_dir / "jobs.sqlite3")
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0
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
        """Handle jobs a previous run left ``running``: re-queue or fail them. Returns the counts."""
        requeued = failed = 0
        for job in self.store.interrupted():
            if self.config.requeue_interrupted and not job["cancel_requested"]:
                self.store.requeue(job["id"], "interrupted by a server restart; re-queued")
                requeued += 1
            elif job["cancel_requested"]:
                self.store.finish(
                    job["id"], "cancelled", error="cancelled (the server stopped meanwhile)"
                )
            else:
                self.store.finish(
                    job["id"],
                    "failed",
                    error="interrupted by a server restart (requeue_interrupted is off); submit it again",
                )
                failed += 1
        for tmp in self.results_dir.glob(".*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
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
        for n in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"her2-job-{n}", daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True

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
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "jobs still running at shutdown (%s); they will be recovered at the next start",
                alive,
            )
        self._threads.clear()
        self.backend.close()
        if not alive:
            self.store.close()
        self._release_dir_lock()
        self.started = False

    # ---- requests -----------------------------------------------------------------------------

    def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        job = self.store.add(
            body, max_queue=self.config.max_queue, retry_after_s=self.config.retry_after_s
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
        if job is not None and job["state"] == "running":
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

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / job_id

    # ---- workers ------------------------------------------------------------------------------

    def _worker(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._last_purge > self.config.purge_interval_s:
                self.purge()
            job = self.store.claim()
            if job is None:
                with self._wake:  # shutdown sets _stop, then notifies under this lock
                    if not self._stop.is_set():
                        self._wake.wait(timeout=1.0)
                continue
            self._run(job)

    def _progress_callback(self, job_id: str, run: _Running) -> ProgressCallback:
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
        job_id = job["id"]
        run = _Running()
        with self._running_lock:
            self._running[job_id] = run
        current = self.store.get(job_id)  # a cancel may have come between claim and registration
        if job["cancel_requested"] or (current is not None and current["cancel_requested"]):
            run.cancel.set()
        try:
            self._execute(job_id, json.loads(job["request"]), run)
        finally:
            with self._running_lock:
                self._running.pop(job_id, None)

    def _execute(self, job_id: str, body: dict[str, Any], run: _Running) -> None:
        log.info("job %s started", job_id)
        try:
            spec = build_spec(body, self.config)
            final = self.result_path(job_id)
            with atomic_output_dir(final) as tmp:
                summary = self.run_spec(
                    spec, tmp, progress=self._progress_callback(job_id, run), cancel=run.cancel
                )
                if run.cancel.is_set():
                    raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
            self.store.finish(job_id, "done", summary=summary, result_bytes=_dir_bytes(final))
            log.info("job %s done", job_id)
            self.enforce_disk_limit()
        except Exception as err:
            if run.cancel.is_set():
                self._stopped(job_id, run)
            elif isinstance(err, (Her2Error, ApiError)):
                log.info("job %s failed: %s", job_id, err)
                self.store.finish(job_id, "failed", error=str(err))
            else:
                log.exception("job %s failed with an unexpected error", job_id)
                self.store.finish(
                    job_id, "failed", error=f"internal error: {type(err).__name__}: {err}"
                )

    def _stopped(self, job_id: str, run: _Running) -> None:
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
