"""Durable jobs: a SQLite queue in the data directory and the threads that run it.

The database (``jobs.sqlite3``, WAL mode, ``synchronous=FULL``, mode 0600) is
the queue: a job is a row, workers claim the oldest queued row in one
``UPDATE ... RETURNING`` statement, and a result directory appears under
``results/<id>`` in one rename (``_io.atomic_output_dir``) before the row
says ``done``. So a crash at any point leaves either a finished job with all
its files or a job still marked ``running``; at the next start those are
re-queued (at most ``max_crash_retries`` times, then failed) or failed with a
reason (``ServerConfig.requeue_interrupted``). Finished results expire after
``result_ttl_hours`` and the oldest go first when they exceed
``max_results_bytes``. One server per data directory (a lock file guards it).

A job's request (its ROIs can be megabytes) is kept in a table of its own,
``payloads``, read only by the worker that runs the job and deleted as soon
as the job is finished, failed or cancelled; the job list and the status page
never read it. The requests held at once are bounded by
``max_stored_request_bytes``.

The workers are supervised: an error outside a job (claiming, purging, a
database write) is logged with an id, shown by ``health`` and retried; an
error that escapes a job fails that job with a reason; a worker thread that
ends anyway is restarted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import stat
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
    "DatabaseDamaged",
    "iso_time",
    "default_data_dir",
    "error_id",
]

log = logging.getLogger(__name__)

TERMINAL_STATES = ("done", "failed", "cancelled")
DB_NAME = "jobs.sqlite3"

#: the columns of a job row that routes read (never the request payload)
_COLUMNS = (
    "seq, id, state, created, started, finished, progress, tiles_done, tiles_total, error, "
    "attempts, crashes, cancel_requested, result_bytes, result_expired, request_bytes, brief"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress REAL NOT NULL DEFAULT 0,
    tiles_done INTEGER NOT NULL DEFAULT 0,
    tiles_total INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    result_expired INTEGER NOT NULL DEFAULT 0,
    request_bytes INTEGER NOT NULL DEFAULT 0,
    brief TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS payloads (
    job_id TEXT PRIMARY KEY,
    request TEXT NOT NULL
);
"""

#: what job views show of a summary (the full summary is the result file summary.json)
BRIEF_KEYS = ("her2_score", "class_percentages", "h_score", "n_tiles")


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


def error_id() -> str:
    """A short id that ties an error shown to a client to its details in the server log."""
    return uuid.uuid4().hex[:12]


class QueueFull(ApiError):
    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(
            429,
            "queue_full",
            f"the job queue is full ({max_queue} jobs waiting); retry later",
            headers={"Retry-After": str(retry_after_s)},
        )


class StoredRequestsFull(ApiError):
    def __init__(self, held: int, size: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            429,
            "stored_requests_full",
            f"the server already holds {held / 2**20:.1f} MiB of requests of unfinished jobs and this "
            f"one adds {size / 2**20:.1f} MiB (limit {limit / 2**20:.0f} MiB, "
            "ServerConfig.max_stored_request_bytes); retry when jobs have finished, or simplify the ROIs",
            headers={"Retry-After": str(retry_after_s)},
        )


class DatabaseDamaged(UserInputError):
    """The jobs database cannot be opened or fails its check."""


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing; tighten it (with a warning) if others may read it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); set to 0600", path, mode)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    """Tighten a folder others may enter to 0700 (with a warning): results are the server's alone."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was open to others (mode %o); set to 0700", path, mode)
        os.chmod(path, 0o700)


class JobStore:
    """The jobs table. Thread-safe: one connection, one lock, autocommit statements.

    The file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the
    same mode). A file that is not a SQLite database, or fails SQLite's quick
    check, raises :class:`DatabaseDamaged` naming the recovery; ``repair=True``
    moves such a file aside (``jobs.sqlite3.damaged-<time>``) and starts empty.
    """

    def __init__(self, path: str | os.PathLike[str], *, repair: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.moved_aside: Path | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as err:
            if not repair:
                raise DatabaseDamaged(
                    f"the jobs database {self.path} is damaged or not a SQLite database ({err})",
                    hint="start the server with --repair-db to move it aside and begin with an empty "
                    "job list (results of old jobs are then removed), or restore it from a backup",
                ) from err
            self.moved_aside = self._move_aside(err)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        _private_file(self.path)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                _private_file(side)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._migrate(db)
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, err: Exception) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, target.with_name(target.name + suffix))
        log.warning(
            "the jobs database %s was damaged (%s); moved to %s, starting with no jobs",
            self.path,
            err,
            target,
        )
        return target

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a database of an earlier version (request and summary in the jobs rows) up to date."""
        columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
        if not columns or "request" not in columns:
            return
        log.warning("moving job requests out of the jobs table (a database of an earlier version)")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS payloads (job_id TEXT PRIMARY KEY, request TEXT NOT NULL)"
            )
            for name in ("crashes", "request_bytes"):
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
            if "brief" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN brief TEXT")
            db.execute(
                "INSERT OR REPLACE INTO payloads (job_id, request) "
                "SELECT id, request FROM jobs WHERE state IN ('queued', 'running')"
            )
            db.execute("UPDATE jobs SET request_bytes = length(CAST(request AS BLOB))")
            if "summary" in columns:
                for job_id, summary in db.execute(
                    "SELECT id, summary FROM jobs WHERE summary IS NOT NULL"
                ).fetchall():
                    db.execute(
                        "UPDATE jobs SET brief = ? WHERE id = ?",
                        (json.dumps(_brief(json.loads(summary))), job_id),
                    )
                db.execute("ALTER TABLE jobs DROP COLUMN summary")
            db.execute("ALTER TABLE jobs DROP COLUMN request")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        db.execute("VACUUM")

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
        self,
        request: Mapping[str, Any],
        *,
        max_queue: int,
        retry_after_s: int,
        max_stored_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Insert a queued job, or raise :class:`QueueFull` / :class:`StoredRequestsFull`."""
        job_id = uuid.uuid4().hex
        payload = json.dumps(request)  # ASCII: any string, lone surrogates included, is stored
        size = len(payload)
        with self._tx() as db:
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
            if queued >= max_queue:
                raise QueueFull(max_queue, retry_after_s)
            if max_stored_bytes is not None:
                (held,) = db.execute(
                    "SELECT COALESCE(SUM(request_bytes), 0) FROM jobs "
                    "WHERE state IN ('queued', 'running')"
                ).fetchone()
                if held + size > max_stored_bytes:
                    raise StoredRequestsFull(held, size, max_stored_bytes, retry_after_s)
            db.execute(
                "INSERT INTO jobs (id, state, created, request_bytes) VALUES (?, 'queued', ?, ?)",
                (job_id, time.time(), size),
            )
            db.execute("INSERT INTO payloads (job_id, request) VALUES (?, ?)", (job_id, payload))
        job = self.get(job_id)
        assert job is not None
        return job

    def request(self, job_id: str) -> dict[str, Any] | None:
        """The stored request of an unfinished job (``None`` once the job has finished)."""
        with self._lock:
            row = self._db.execute(
                "SELECT request FROM payloads WHERE job_id = ?", (job_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return dict(row) if row else None

    def list(self, *, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        sql = (
            f"SELECT {_COLUMNS} FROM jobs"
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

    def stored_request_bytes(self) -> int:
        """Bytes of the requests held for unfinished jobs."""
        with self._lock:
            (held,) = self._db.execute(
                "SELECT COALESCE(SUM(request_bytes), 0) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
        return int(held)

    def claim(self) -> dict[str, Any] | None:
        """Mark the oldest queued job running and return it (``None`` if none waits)."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, "
                "progress = 0, tiles_done = 0, error = NULL "
                "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) "
                f"AND state = 'queued' RETURNING {_COLUMNS}",
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
        """Record the end of a job (and drop its stored request) in one transaction."""
        from .._io import json_default

        progress_sql = ", progress = 1" if state == "done" else ""
        brief = json.dumps(_brief(summary), default=json_default) if summary is not None else None
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, error = ?, brief = ?, result_bytes = ?{progress_sql} "
                "WHERE id = ?",
                (state, time.time(), error, brief, result_bytes, job_id),
            )
            db.execute("DELETE FROM payloads WHERE job_id = ?", (job_id,))

    def requeue(self, job_id: str, reason: str, *, crashed: bool = False) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'queued', started = NULL, progress = 0, tiles_done = 0, error = ?, "
                "crashes = crashes + ? WHERE id = ? AND state = 'running'",
                (reason, int(crashed), job_id),
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
                db.execute("DELETE FROM payloads WHERE job_id = ?", (job_id,))
                return "cancelled"
            if row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return str(row["state"])

    def interrupted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(r)
                for r in self._db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running'"
                ).fetchall()
            ]

    def expired(self, cutoff: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished < ?",
                (cutoff,),
            ).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM payloads WHERE job_id = ?", (job_id,))

    def drop_orphan_payloads(self) -> int:
        """Delete stored requests whose job has finished or is gone; how many."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM payloads WHERE job_id NOT IN "
                "(SELECT id FROM jobs WHERE state IN ('queued', 'running'))"
            )
        return int(cur.rowcount or 0)

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


def _brief(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(summary, Mapping):
        return {}
    return {k: summary.get(k) for k in BRIEF_KEYS if k in summary}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _make_private(folder: Path) -> None:
    """Result files 0600 and their folders 0700, before the folder is renamed into place."""
    for path in folder.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(folder, 0o700)


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err).lower()


@dataclass
class _Running:
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancel"  # "cancel" or "shutdown"
    done: int = 0
    total: int | None = None
    last_write: float = 0.0


@dataclass
class _Problem:
    message: str
    since: float
    sticky: bool = True  # False: shown for PROBLEM_SHOW_S after `since`, then forgotten


#: how long a problem that has been dealt with (a restarted worker) stays in the health report
PROBLEM_SHOW_S = 60.0
#: the data directory is probed for writes at most this often
PROBE_INTERVAL_S = 5.0


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
        self.data_dir = Path(data_dir).absolute()
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_dir(self.results_dir)
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
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None
        self._workers_lock = threading.Lock()
        self._last_purge = 0.0
        self._problems: dict[str, _Problem] = {}
        self._problems_lock = threading.Lock()
        #: job id -> (state, error): outcomes the database could not take yet (retried)
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

    def _problem(self, key: str, message: str, *, sticky: bool = True) -> None:
        with self._problems_lock:
            old = self._problems.get(key)
            if old is None or old.message != message:
                self._problems[key] = _Problem(message, time.time(), sticky)

    def _solved(self, key: str) -> None:
        with self._problems_lock:
            self._problems.pop(key, None)

    def problems(self) -> list[str]:
        """What keeps the server from working normally now (empty: healthy)."""
        self._check_workers()
        self._probe_data_dir()
        now = time.time()
        with self._problems_lock:
            for key, p in list(self._problems.items()):
                if not p.sticky and now - p.since > PROBLEM_SHOW_S:
                    del self._problems[key]
            return [p.message for _, p in sorted(self._problems.items())]

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
                self._problem(
                    f"worker-{n}",
                    f"job worker {t.name} stopped unexpectedly at "
                    f"{iso_time(time.time())} and was restarted; see the server log",
                    sticky=False,
                )
                log.error("job worker %s had stopped; restarting it", t.name)
                self._threads[n] = self._start_worker(n)

    def _supervise(self) -> None:
        while not self._stop.wait(max(0.05, self.config.worker_retry_s)):
            try:
                self._check_workers()
            except Exception:  # noqa: BLE001 - the supervisor itself must not stop
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
            self._problem(
                "data_dir",
                f"the data directory {self.data_dir} is not writable: {err.strerror or err}; "
                "jobs cannot store results until this is fixed (free space, permissions)",
            )
        else:
            self._solved("data_dir")
            self._solved("storage")  # a write went through: the disk has room again

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

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / job_id

    # ---- workers ------------------------------------------------------------------------------

    def _worker_main(self) -> None:
        """A worker thread: the loop, and a record of why it ended if it ends unexpectedly."""
        try:
            self._worker()
        except BaseException as err:
            eid = error_id()
            log.critical(
                "job worker %s stopped (error id %s)",
                threading.current_thread().name,
                eid,
                exc_info=True,
            )
            self._problem(
                "worker-stopped",
                f"a job worker stopped on {type(err).__name__} (error id {eid}); restarted",
                sticky=False,
            )
            # the thread ends here (logged above); the supervisor starts a new one

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - supervised: log, report, retry
                eid = error_id()
                log.exception("job worker: error outside a job (error id %s)", eid)
                self._problem(
                    "worker",
                    f"the job workers cannot work: {_describe(err)} (error id {eid}); retrying every "
                    f"{self.config.worker_retry_s:g} s",
                )
                self._stop.wait(max(0.05, self.config.worker_retry_s))
            else:
                self._solved("worker")

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
        except Exception as err:  # noqa: BLE001 - whatever escapes the job fails the job
            self._escaped(job_id, err)
        except BaseException as err:
            self._escaped(job_id, err)
            raise
        finally:
            with self._running_lock:
                self._running.pop(job_id, None)

    def _execute(self, job_id: str, body: dict[str, Any], run: _Running) -> None:
        log.info("job %s started", job_id)
        final = self.result_path(job_id)
        try:
            spec = build_spec(body, self.config)
            with atomic_output_dir(final) as tmp:
                summary = self.run_spec(
                    spec, tmp, progress=self._progress_callback(job_id, run), cancel=run.cancel
                )
                if run.cancel.is_set():
                    raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
                _make_private(tmp)
            result_bytes = _dir_bytes(final)
        except Exception as err:
            if run.cancel.is_set():
                self._stopped(job_id, run)
            elif isinstance(err, (Her2Error, ApiError)):
                log.info("job %s failed: %s", job_id, err)
                self._fail(job_id, str(err))
            else:
                self._fail(job_id, self._unexpected(job_id, err))
            return
        try:
            self.store.finish(job_id, "done", summary=summary, result_bytes=result_bytes)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)  # not done: no result files either
            raise
        self._solved("storage")
        log.info("job %s done", job_id)
        self.enforce_disk_limit()

    def _unexpected(self, job_id: str, err: BaseException) -> str:
        """Log an unexpected failure with an id; the message a client sees (no exception text)."""
        eid = error_id()
        log.error("job %s failed (error id %s)", job_id, eid, exc_info=err)
        if _is_disk_full(err):
            self._problem("storage", f"the server's disk is full (data directory {self.data_dir})")
            return (
                f"the server's disk is full (error id {eid}); the server's operator must free space "
                "in its data directory (or lower --max-results-gb); then submit the job again"
            )
        if self._is_storage_error(err):
            self._problem(
                "storage",
                f"writing to the data directory {self.data_dir} failed: {_describe(err)} (error id {eid})",
            )
            return (
                f"the server could not write the job's result (error id {eid}); the details are in "
                "the server log; submit the job again once the operator has fixed the data directory"
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

    def _escaped(self, job_id: str, err: BaseException) -> None:
        """An error that got past the job's own handling (e.g. a database write): fail the job."""
        message = self._unexpected(job_id, err)
        with self._running_lock:
            run = self._running.get(job_id)
        if run is not None and run.cancel.is_set() and run.reason == "crash":
            return
        self._fail(job_id, message)

    def _fail(self, job_id: str, message: str) -> None:
        """Mark a job failed; if the database refuses, keep the outcome and retry on later turns."""
        shutil.rmtree(self.result_path(job_id), ignore_errors=True)
        try:
            self.store.finish(job_id, "failed", error=message)
        except Exception as err:  # noqa: BLE001 - kept and retried by _record_pending
            self._unrecorded[job_id] = ("failed", message)
            self._problem(
                "database",
                f"the jobs database cannot be written: {_describe(err)}; "
                f"{len(self._unrecorded)} job outcome(s) wait to be recorded",
            )
            log.error("job %s: could not record its failure (%s); will retry", job_id, err)

    def _record_pending(self) -> None:
        for job_id, (state, message) in list(self._unrecorded.items()):
            self.store.finish(job_id, state, error=message)  # raises: reported by the worker loop
            self._unrecorded.pop(job_id, None)
        self._solved("database")

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


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".tmp")


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    text = str(err)
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
