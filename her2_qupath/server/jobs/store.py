"""The job model and its persistence: the jobs table of a SQLite database in the data directory.

The database (``jobs.sqlite3``, WAL mode, ``synchronous=FULL``, mode 0600) is
the queue: a job is a row, and workers claim the oldest queued row in one
``UPDATE ... RETURNING`` statement, so no job is run twice or lost.

A job's request (its ROIs can be megabytes) is kept in a table of its own,
``payloads``, read only by the worker that runs the job and deleted as soon
as the job is finished, failed or cancelled; the job list and the status page
never read it. The requests held at once are bounded by
``max_stored_request_bytes``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..._io import json_default
from ...errors import UserInputError
from ..http import ApiError

__all__ = [
    "TERMINAL_STATES",
    "DB_NAME",
    "BRIEF_KEYS",
    "JobStore",
    "QueueFull",
    "StoredRequestsFull",
    "DatabaseDamaged",
    "iso_time",
]

log = logging.getLogger(__package__)  # the jobs package's one logger, as before its split

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
