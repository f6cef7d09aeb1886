"""Truncation checks of a TIFF's structure, made when a slide is opened.

A copy cut short leaves image directories, SubIFDs or tile tables that point
past the end of the file; these checks turn that into one clear
:class:`~her2_qupath.errors.SlideFormatError` when opening rather than a
damaged tile later (or pyramid levels silently missing).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideFormatError
from .levels import _Level, _TiffLevel

__all__ = ["check_extents", "check_ifd_chain"]


def check_ifd_chain(path: Path, size: int) -> None:
    """Walk the IFD chain: a pointer past the end of the file means truncation.

    Done before tifffile parses the file: tifffile stops listing pages at
    a bad pointer and only logs it, which would silently hide pyramid
    levels or associated images.
    """
    pointers: list[int] = []
    with open(path, "rb") as fh:
        head = fh.read(16)
        bo = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(bo + "H", head[2:4])[0] == 43
        off_fmt, cnt_fmt, entry = (bo + "Q", bo + "Q", 20) if big else (bo + "I", bo + "H", 12)
        off_size, cnt_size = struct.calcsize(off_fmt), struct.calcsize(cnt_fmt)
        start = 8 if big else 4
        if len(head) < start + off_size:
            raise SlideFormatError(f"{path} is truncated: the TIFF header is incomplete",
                                   hint="re-copy or re-export the slide")
        offset = struct.unpack(off_fmt, head[start: start + off_size])[0]
        seen: set[int] = set()
        while offset and offset not in seen and len(seen) < 100_000:
            seen.add(offset)
            if offset + cnt_size > size:
                pointers.append(offset)
                break
            fh.seek(offset)
            count = struct.unpack(cnt_fmt, fh.read(cnt_size))[0]
            nxt = offset + cnt_size + count * entry
            if nxt + off_size > size:
                pointers.append(nxt)
                break
            fh.seek(nxt)
            offset = struct.unpack(off_fmt, fh.read(off_size))[0]
    if pointers:
        raise SlideFormatError(
            f"{path} is truncated or damaged: an image directory at byte {pointers[0]} "
            f"lies beyond the end of the file ({size} bytes)",
            hint="re-copy or re-export the slide")


def check_extents(path: Path, size: int, first_page: Any, levels: list[_Level]) -> None:
    """Refuse files whose SubIFDs or tile tables point past the end (truncated copies)."""
    subifds = getattr(first_page, "subifds", None) or ()
    if any(int(o) >= size for o in subifds):
        raise SlideFormatError(f"{path} is truncated: pyramid levels lie beyond the end "
                               f"of the file ({size} bytes)",
                               hint="re-copy or re-export the slide")
    for level in levels:
        assert isinstance(level, _TiffLevel)
        ends = level.extents()
        bad = int(np.count_nonzero(ends > size))
        if bad:
            raise SlideFormatError(
                f"{path} is truncated: {bad} of {ends.size} data segments of level "
                f"{level.index} lie beyond the end of the file ({size} bytes)",
                hint="re-copy or re-export the slide")

