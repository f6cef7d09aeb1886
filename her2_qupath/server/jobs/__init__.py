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

The modules: :mod:`.store` (the job model and the database), :mod:`.files`
(the data directory on disk), :mod:`.health` (problems and error ids),
:mod:`.runner` (the worker loop, one job, its outcome, retention) and
:mod:`.manager` (:class:`JobManager`: life cycle, supervision, requests).
This package re-exports the names the rest of the server uses.
"""

from __future__ import annotations

from .files import default_data_dir
from .health import error_id
from .manager import JobManager
from .store import (
    TERMINAL_STATES,
    DatabaseDamaged,
    JobStore,
    QueueFull,
    StoredRequestsFull,
    iso_time,
)

__all__ = [
    "TERMINAL_STATES",
    "JobStore",
    "JobManager",
    "QueueFull",
    "StoredRequestsFull",
    "DatabaseDamaged",
    "iso_time",
    "default_data_dir",
    "error_id",
]
