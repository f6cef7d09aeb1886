"""What keeps the job server from working normally: problems shown by ``health``, error ids.

A problem is a message under a key: reported when it happens, dropped when it
is solved, or (not sticky) shown for :data:`PROBLEM_SHOW_S` and then forgotten.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

__all__ = ["PROBLEM_SHOW_S", "ProblemLog", "error_id", "describe"]

#: how long a problem that has been dealt with (a restarted worker) stays in the health report
PROBLEM_SHOW_S = 60.0


def error_id() -> str:
    """A short id that ties an error shown to a client to its details in the server log."""
    return uuid.uuid4().hex[:12]


def describe(err: BaseException) -> str:
    """An error in one short line: its type and its text (an OSError's strerror, not its path)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    text = str(err)
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


@dataclass
class _Problem:
    message: str
    since: float
    sticky: bool = True  # False: shown for PROBLEM_SHOW_S after `since`, then forgotten


class ProblemLog:
    """The problems of now, by key. Thread-safe."""

    def __init__(self) -> None:
        self._problems: dict[str, _Problem] = {}
        self._lock = threading.Lock()

    def report(self, key: str, message: str, *, sticky: bool = True) -> None:
        """Record a problem (a new message under a key starts its time again)."""
        with self._lock:
            old = self._problems.get(key)
            if old is None or old.message != message:
                self._problems[key] = _Problem(message, time.time(), sticky)

    def solved(self, key: str) -> None:
        with self._lock:
            self._problems.pop(key, None)

    def current(self) -> list[str]:
        """The messages, by key, without the non-sticky ones older than :data:`PROBLEM_SHOW_S`."""
        now = time.time()
        with self._lock:
            for key, p in list(self._problems.items()):
                if not p.sticky and now - p.since > PROBLEM_SHOW_S:
                    del self._problems[key]
            return [p.message for _, p in sorted(self._problems.items())]
