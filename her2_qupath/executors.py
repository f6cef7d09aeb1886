"""Where tile work runs: a local pool, or an existing Dask distributed cluster.

Server jobs themselves run on the server's worker threads; what a backend
supplies is the :class:`concurrent.futures.Executor` a scorer sends its tile
work to (:func:`make_backend`). ``batch`` and ``validate`` take the executor of
a Dask cluster for one run (:func:`dask_executor`). Scaling out means pointing
``--dask-scheduler`` at a cluster (``dask scheduler`` + ``dask worker`` on the
machines, or any Dask deployment), not a scheduler of our own. Dask is
imported only when a scheduler is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol

from .config import ServerConfig
from .errors import UserInputError

__all__ = ["Backend", "LocalBackend", "DaskBackend", "make_backend", "worker_count", "dask_executor"]

log = logging.getLogger(__name__)


def worker_count(config: ServerConfig) -> int:
    """Jobs run at once: ``config.workers``, or the CPU count when that is 0."""
    return config.workers if config.workers > 0 else (os.cpu_count() or 1)


class Backend(Protocol):
    kind: str

    def executor(self) -> Executor | None: ...

    def close(self) -> None: ...


class LocalBackend:
    """A thread pool the size of the CPU count, shared by all running jobs."""

    kind = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> Executor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="her2-tiles")
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


class DaskBackend:
    """Tile work on an existing Dask distributed cluster (``tcp://HOST:PORT``)."""

    kind = "dask"

    def __init__(self, address: str, *, timeout_s: float = 10.0) -> None:
        if not address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise UserInputError(
                f"Dask scheduler address {address!r} has no protocol",
                hint="give it as tcp://HOST:PORT (as `dask scheduler` prints it)",
            )
        self.address = address
        self.timeout_s = timeout_s
        self._client: Any = None
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    def executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                from distributed import Client

                try:
                    self._client = Client(
                        self.address, timeout=self.timeout_s, set_as_default=False
                    )
                except OSError as err:
                    raise UserInputError(
                        f"cannot reach the Dask scheduler at {self.address}: {err}",
                        hint="start it with `dask scheduler` or fix --dask-scheduler",
                    ) from err
                log.info("tile work goes to the Dask cluster at %s", self.address)
                self._executor = self._client.get_executor(pure=False)
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._executor = None


def make_backend(config: ServerConfig) -> LocalBackend | DaskBackend:
    """Dask when ``config.dask_scheduler`` is set, else the local pool."""
    if config.dask_scheduler:
        return DaskBackend(config.dask_scheduler, timeout_s=config.dask_timeout_s)
    return LocalBackend()


@contextlib.contextmanager
def dask_executor(address: str | None) -> Iterator[Executor | None]:
    """The executor of the Dask cluster at ``address`` for the ``with`` block (None: no Dask)."""
    if not address:
        yield None
        return
    backend = DaskBackend(address)
    try:
        yield backend.executor()
    finally:
        backend.close()
