"""Guards of a write into a QuPath project: is it open, one writer at a time, a backup first.

QuPath keeps no lock file, so :func:`looks_open` judges from recent saves and
:func:`ensure_project_closed` refuses to write into a project that looks open;
:class:`project_write_lock` keeps two runs of this product from writing at
once, and :func:`backup_project` copies ``project.qpproj`` and every touched
``data/<entryID>/`` before anything is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from .._io import atomic_output_dir
from ..config import ProjectConfig
from ..errors import ProjectLocked

__all__ = ["looks_open", "ensure_project_closed", "project_write_lock", "backup_project"]

log = logging.getLogger(__name__)

_DEFAULT_CONFIG = ProjectConfig()


def looks_open(
    project_dir: Path, *, config: ProjectConfig = _DEFAULT_CONFIG, now: float | None = None
) -> list[str]:
    """Reasons to believe the project is open in QuPath or being written (empty: looks closed).

    QuPath keeps no lock file. It rewrites ``project.qpproj`` (moving the old
    one to ``project.qpproj.backup``) and ``data/<entryID>/data.qpdata`` when it
    saves, so a save within ``config.recent_write_seconds`` is the signal. A
    lock this product holds while writing is reported too.
    """
    now = time.time() if now is None else now
    reasons: list[str] = []
    lock = project_dir / config.lock_filename
    if lock.exists():
        reasons.append(f"another her2-qupath run is writing it ({lock} exists)")
    files = [project_dir / "project.qpproj", project_dir / "project.qpproj.backup"]
    data = project_dir / "data"
    if data.is_dir():
        files += list(data.glob("*/data.qpdata"))
    newest = max(((f.stat().st_mtime, f) for f in files if f.is_file()), default=None)
    if newest is not None:
        age = now - newest[0]
        if age < config.recent_write_seconds:
            rel = newest[1].relative_to(project_dir)
            reasons.append(f"{rel} was saved {max(age, 0):.0f} s ago (QuPath may have it open)")
    return reasons


def ensure_project_closed(
    project_dir: Path, *, force: bool = False, config: ProjectConfig = _DEFAULT_CONFIG
) -> None:
    """Raise :class:`ProjectLocked` when the project looks open, unless ``force``."""
    reasons = looks_open(project_dir, config=config)
    if reasons and not force:
        raise ProjectLocked(
            f"project {project_dir} looks open: {'; '.join(reasons)}",
            hint=(
                "close the project in QuPath (or quit QuPath), wait "
                f"{config.recent_write_seconds:.0f} s and run again, or pass --force if it is surely closed"
            ),
        )
    if reasons:
        log.warning("writing despite: %s (--force)", "; ".join(reasons))


class project_write_lock:  # noqa: N801 - used like a function in a with statement
    """Hold ``PROJECT/.her2-qupath.lock`` while writing, so two runs never write at once."""

    def __init__(self, project_dir: Path, *, config: ProjectConfig = _DEFAULT_CONFIG) -> None:
        self.path = project_dir / config.lock_filename

    def __enter__(self) -> Path:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as err:
            raise ProjectLocked(
                f"another her2-qupath run is writing {self.path.parent}",
                hint=f"wait for it to finish, or delete {self.path} if no run is active",
            ) from err
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def backup_project(
    project_dir: Path,
    entry_ids: Iterable[str],
    *,
    config: ProjectConfig = _DEFAULT_CONFIG,
    stamp: str | None = None,
) -> Path:
    """Copy ``project.qpproj`` and each ``data/<entryID>/`` to ``PROJECT/her2_qupath/backups/<stamp>/``.

    The copy is made in a temporary folder and moved into place in one step;
    to restore, copy the files back over the project with QuPath closed.
    """
    stamp = stamp or time.strftime("%Y%m%dT%H%M%S")
    dest = project_dir / config.output_dirname / config.backup_dirname / stamp
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{stamp}-{n}")
        n += 1
    with atomic_output_dir(dest, overwrite=False) as tmp:
        for name in ("project.qpproj", "project.qpproj.backup"):
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, tmp / name)
        for eid in entry_ids:
            src = project_dir / "data" / str(eid)
            if src.is_dir():
                shutil.copytree(src, tmp / "data" / str(eid))
    log.info("backed up project files to %s", dest)
    return dest
