"""Small I/O helpers used at the edges: atomic writes and file hashes.

Nothing the product writes is ever half-written: files go to a temporary
name in the same directory and are renamed into place; output directories
are filled in a temporary sibling and moved in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_output_dir",
    "exit_on_signals",
    "sha256_file",
    "json_default",
    "process_umask",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    ``private`` keeps the file 0600 from its creation (never readable by others,
    not even briefly); otherwise it gets the mode a plain ``open()`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exit_on_signals():  # SIGHUP/SIGTERM mid-write: the temporary file is removed
        return _write_replace(path, data, private)


def _write_replace(path: Path, data: bytes, private: bool) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if not private:  # mkstemp creates 0600
            os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


#: Serialises the set-and-restore of the umask where it cannot be read otherwise.
_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux:
    ``/proc/self/status``), so threads writing files at once never see the umask 0 that
    the portable read (``os.umask(0)`` then restore) leaves set for a moment; elsewhere that
    read, under a lock."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """JSON encoder fallback: numpy scalars/arrays, paths, dataclasses, sets."""
    import dataclasses

    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _nan_to_str(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _nan_to_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_str(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically; non-finite floats become the strings QuPath expects."""
    text = json.dumps(
        _nan_to_str(json.loads(json.dumps(obj, default=json_default))),
        indent=indent,
        allow_nan=False,
    )
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    If the block raises, nothing at ``path`` changes. An existing ``path`` is
    replaced only when ``overwrite`` is true (files not written by the block are
    then gone: point the output at a directory of its own). SIGHUP or SIGTERM
    (the terminal closed, ``kill``) during the block removes the temporary
    directory before the process ends (:func:`exit_on_signals`).
    """
    from .errors import OutputExists

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExists(f"output {path} exists and is not a directory", hint="choose another -o")
    if path.exists() and not overwrite:
        raise OutputExists(f"output directory {path} exists", hint="remove it or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with exit_on_signals():
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~process_umask())  # mkdtemp creates 0700
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class SignalExit(SystemExit):
    """SIGHUP / SIGTERM turned into an exit that runs ``finally`` blocks and cleanups."""


@contextlib.contextmanager
def exit_on_signals(signals: tuple[str, ...] = ("SIGHUP", "SIGTERM")) -> Iterator[None]:
    """While the block runs, a signal of ``signals`` whose handler is the default (end the
    process at once) raises :class:`SignalExit` (exit code 128 + signal) instead, so cleanups
    run. Only in the main thread; handlers set by the application (the server's) are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        raise SignalExit(128 + signum)

    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
