"""The data directory on disk: where it is by default, private modes, sizes, a full disk.

Results are the server's alone: result files are 0600 in 0700 folders, and a
folder others may enter is tightened (with a warning).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

__all__ = [
    "STORAGE_ERRORS",
    "default_data_dir",
    "private_dir",
    "make_private",
    "dir_bytes",
    "is_disk_full",
]

log = logging.getLogger(__package__)  # the jobs package's one logger, as before its split

#: what the jobs database and the data directory raise when they refuse a read or a write
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


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


def private_dir(path: Path) -> None:
    """Tighten a folder others may enter to 0700 (with a warning): results are the server's alone."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was open to others (mode %o); set to 0700", path, mode)
        os.chmod(path, 0o700)


def make_private(folder: Path) -> None:
    """Result files 0600 and their folders 0700, before the folder is renamed into place."""
    for path in folder.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(folder, 0o700)


def dir_bytes(path: Path) -> int:
    """The size of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def is_disk_full(err: BaseException) -> bool:
    """A write refused for want of space (or quota), by the file system or by SQLite."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err).lower()
