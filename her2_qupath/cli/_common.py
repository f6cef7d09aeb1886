"""Helpers shared by the CLI commands: progress bars and common options."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click

from .._types import ProgressCallback

__all__ = ["progress", "mpp_option", "ProgressCallback"]


@contextlib.contextmanager
def progress(desc: str, *, unit: str = "tile") -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr, driven by the library's ``(done, total)`` callbacks."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def mpp_option(
    help_text: str = "Pixel size in µm/px, for images that carry none (PNG, JPEG, some TIFFs).",
) -> Callable:
    return click.option(
        "--mpp", type=click.FloatRange(min=0, min_open=True), default=None, help=help_text
    )
