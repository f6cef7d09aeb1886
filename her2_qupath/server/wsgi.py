"""Running the app: waitress (a production WSGI server, pure Python) in front of Flask."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from flask import Flask

from ..config import ServerConfig

__all__ = ["serve", "BackgroundServer", "waitress_limits"]


log = logging.getLogger(__name__)


def _close_channels(server: Any) -> None:
    """Close client connections, the listening socket and the trigger: the loop then ends."""
    for channel in list(server._map.values()):
        if channel is not server and channel is not getattr(server, "trigger", None):
            channel.close()
    server.close()


def waitress_limits(config: ServerConfig) -> dict[str, int]:
    """The WSGI server's limits from ``ServerConfig``.

    ``max_request_body_size``: a body longer than the API's own limit is refused
    (413) from its ``Content-Length`` before any of it is read or spooled to a
    temporary file (waitress refuses sizes at or above its value, hence the +1).
    ``connection_limit``: more connections wait in the listen backlog.
    ``channel_timeout``: a connection idle this long, half-sent requests
    included, is closed; ``cleanup_interval`` makes that happen on time.
    """
    timeout = max(1, int(config.wsgi_channel_timeout_s))
    return {
        "max_request_body_size": int(config.max_request_bytes) + 1,
        "connection_limit": max(1, int(config.wsgi_connection_limit)),
        "channel_timeout": timeout,
        "cleanup_interval": max(1, min(30, timeout // 2)),
    }


def _create(app: Any, host: str, port: int, threads: int) -> Any:
    import waitress

    state = getattr(app, "extensions", {}).get("her2_qupath")  # a bare WSGI app: the defaults
    config = state.config if state is not None else ServerConfig()
    # clear_untrusted_proxy_headers: no proxy is trusted, forwarded headers are dropped
    return waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="her2-qupath",
        clear_untrusted_proxy_headers=True,
        **waitress_limits(config),
    )


def _return_large_blocks_to_the_system(threshold: int = 1 << 20) -> None:
    """Have glibc map blocks of 1 MiB and more on their own, so freeing them returns the memory.

    Without this, glibc raises its threshold after the first large block is
    freed and keeps request-sized blocks (ROIs of megabytes, parsed and
    copied) in each thread's heap: after 40 requests of 15 MiB the server held
    about 600 MiB instead of about 180 MiB. Other C libraries: nothing is done.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # glibc's malloc.h
    if not mallopt(m_mmap_threshold, threshold):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; large blocks stay in the heap")


def serve(
    app: Flask,
    *,
    host: str,
    port: int,
    threads: int,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop: running jobs are marked interrupted.

    Interrupted jobs are re-queued (or failed, ``requeue_interrupted``) and the
    data directory is released; nothing finished is touched.
    """
    _return_large_blocks_to_the_system()
    server = _create(app, host, port, threads)
    stopping: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only a flag and a byte down the server's wake-up pipe (no lock taken): the
        # loop finishes the event it is handling and then sees the flag.
        stopping.append(signal.Signals(signum).name)
        server.pull_trigger()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            on_ready(host, int(server.effective_port))
        while not stopping:
            server.asyncore.loop(
                timeout=server.adj.asyncore_loop_timeout,
                map=server._map,
                use_poll=server.adj.asyncore_use_poll,
                count=1,
            )
        log.warning("%s: stopping the server; running jobs are marked interrupted", stopping[0])
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        server.task_dispatcher.shutdown()  # let requests in flight finish (up to 5 s)
        _close_channels(server)
        app.extensions["her2_qupath"].close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BackgroundServer:
    """The app on a loopback port in a background thread (tests, benchmarks).

    ``with BackgroundServer(app) as srv: requests.get(srv.url + "/api/v1/health")``.
    Leaving the block stops the WSGI server (not the app's job workers).
    """

    def __init__(
        self, app: Flask, *, host: str = "127.0.0.1", port: int = 0, threads: int = 8
    ) -> None:
        self.app = app
        self._server = _create(app, host, port, threads)
        self.host = host
        self.port = int(self._server.effective_port)
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.run, name="her2-wsgi", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._server.task_dispatcher.shutdown()
        # Sockets are closed on the loop's own thread (a trigger thunk), never under its select().
        self._server.trigger.pull_trigger(lambda: _close_channels(self._server))
        self._thread.join(10)
