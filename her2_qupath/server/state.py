"""What request handlers share: :class:`ServerState`, kept in ``app.extensions["her2_qupath"]``.

The app factory (:mod:`.app`) builds it; the blueprints (:mod:`.api`,
:mod:`.pages`) read it through :func:`server_state` in the request's app
context, so they never import the factory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from ..config import ServerConfig
from .jobs import JobManager
from .scorers import Scorer

__all__ = ["EXTENSION", "ServerState", "server_state"]

#: the key of the state in ``Flask.extensions``
EXTENSION = "her2_qupath"


@dataclass
class ServerState:
    """Everything a request handler needs, kept in ``app.extensions["her2_qupath"]``."""

    config: ServerConfig
    data_dir: Path
    token: str | None
    manager: JobManager
    scorer: Scorer
    sync_slots: threading.BoundedSemaphore
    #: where the token came from: "option" (--token), "created" (generated at this start),
    #: "file" (generated at an earlier start, kept in <data-dir>/token), None (no token)
    token_source: str | None = None

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    def close(self, *, timeout_s: float | None = None) -> None:
        """Stop the workers (running jobs are marked interrupted) and release the data directory."""
        self.manager.shutdown(timeout_s=timeout_s)


def server_state() -> ServerState:
    """The state of the app handling the current request."""
    state: ServerState = current_app.extensions[EXTENSION]
    return state
