"""Streamed QuPath GeoJSON: detections written tile by tile, never held whole.

A cell-level run of a whole slide finds millions of cells. Their features are
made as text by the tile workers (:meth:`her2_qupath.cell_table.CellTable.feature_text`),
kept in a :class:`CellSpill` (an anonymous temporary file) as the tiles finish,
and copied from there into ``detections.geojson`` by :class:`GeoJSONStreamWriter`,
which writes the FeatureCollection a piece at a time (optionally gzipped) and
renames it into place when complete. Memory holds one tile's text at a time.

:class:`Detections` is what :attr:`her2_qupath.pipeline.ScoreResult.detections`
holds at the cell level: the tile objects, and for each tile its cells in the
spill. It reads like the list of objects it used to be (iteration yields a
tile's object and then its cells' objects, parsed on demand); the writer copies
the cells' text without parsing it.

Validity: the writer checks every object it is given with
:func:`~her2_qupath.qupath.validate.validate_features` (tiles, annotations: a few
per tile); the cells' text is valid by construction (see
:mod:`her2_qupath.cell_table`) and is not parsed again.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, overload

from .._io import process_umask
from .geojson import QuPathObject, from_feature, to_feature
from .validate import validate_features

__all__ = ["CellSpill", "Detections", "GeoJSONStreamWriter", "write_detections"]

logger = logging.getLogger(__name__)

_HEAD = '{"type": "FeatureCollection", "features": ['
_TAIL = "]}\n"


class CellSpill:
    """Feature text kept on disk (an anonymous temporary file) until it is written."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory, prefix="her2-cells-")
        self._end = 0
        self._lock = threading.Lock()
        self.n_bytes = 0

    def add(self, text: str) -> tuple[int, int]:
        """Store ``text`` (comma-separated features); return its key ``(offset, length)``."""
        data = text.encode("utf-8")
        with self._lock:
            self._file.seek(self._end)
            self._file.write(data)
            key = (self._end, len(data))
            self._end += len(data)
            self.n_bytes = self._end
        return key

    def read(self, key: tuple[int, int]) -> bytes:
        offset, length = key
        with self._lock:
            self._file.seek(offset)
            return self._file.read(length)

    def close(self) -> None:
        self._file.close()


class Detections(Sequence[QuPathObject]):
    """Tile objects, each followed by its cells (held as text in a :class:`CellSpill`).

    ``cells[k]`` is the spill key and cell count of tile object ``k``'s cells, or
    None when none are written for it.
    """

    def __init__(self, tiles: Sequence[QuPathObject], spill: CellSpill | None,
                 cells: Sequence[tuple[tuple[int, int], int] | None]) -> None:
        if len(cells) != len(tiles):
            raise ValueError("one cell entry per tile object")
        self.tiles = list(tiles)
        self.spill = spill
        self.cells = list(cells)
        self.n_cells = sum(c[1] for c in self.cells if c is not None)

    def __len__(self) -> int:
        return len(self.tiles) + self.n_cells

    def cell_text(self, k: int) -> str:
        """The features of tile ``k``'s cells, comma-separated ("" without cells)."""
        return self.cell_bytes(k).decode("utf-8")

    def cell_bytes(self, k: int) -> bytes:
        """:meth:`cell_text` as it is stored, UTF-8 (b"" without cells)."""
        entry = self.cells[k]
        if entry is None or self.spill is None or entry[1] == 0:
            return b""
        return self.spill.read(entry[0])

    def _cell_objects(self, k: int) -> list[QuPathObject]:
        text = self.cell_text(k)
        return [from_feature(f) for f in json.loads(f"[{text}]")] if text else []

    def __iter__(self) -> Iterator[QuPathObject]:
        for k, tile in enumerate(self.tiles):
            yield tile
            yield from self._cell_objects(k)

    @overload
    def __getitem__(self, index: int) -> QuPathObject: ...

    @overload
    def __getitem__(self, index: slice) -> list[QuPathObject]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("detection index out of range")
        for k, tile in enumerate(self.tiles):
            if i == 0:
                return tile
            count = 0 if self.cells[k] is None else self.cells[k][1]  # type: ignore[index]
            if i <= count:
                return self._cell_objects(k)[i - 1]
            i -= 1 + count
        raise IndexError("detection index out of range")  # pragma: no cover


class GeoJSONStreamWriter:
    """Write a QuPath FeatureCollection piece by piece; ``.gz`` paths (or ``gzip=True``) gzipped.

    The file appears at ``path`` (atomically renamed) only when :meth:`close`
    succeeds; on an error the partial file is removed. Objects are checked with
    :func:`validate_features` as they are added; text given to :meth:`add_text`
    must be features this product made valid by construction.
    """

    def __init__(self, path: str | os.PathLike[str], *, gzip_level: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if gzip_level is None and self.path.suffix.lower() == ".gz":
            gzip_level = 6
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        os.fchmod(fd, 0o666 & ~process_umask())
        self._raw: IO[bytes] = os.fdopen(fd, "wb")
        self._out: IO[bytes] = self._raw
        if gzip_level:
            self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=gzip_level,  # type: ignore[assignment]
                                      mtime=0, filename="")
        self._first = True
        self.count = 0
        self._out.write(_HEAD.encode())

    def _piece(self, data: bytes) -> None:
        if not data:
            return
        if not self._first:
            self._out.write(b", ")
        self._out.write(data)
        self._first = False

    def add(self, objects: Iterable[QuPathObject]) -> None:
        feats = [to_feature(o) for o in objects]
        if not feats:
            return
        validate_features(feats)
        self._piece(json.dumps(feats, allow_nan=False, ensure_ascii=False)[1:-1].encode("utf-8"))
        self.count += len(feats)

    def add_text(self, text: str | bytes, count: int) -> None:
        """Add ``count`` features given as comma-separated text (or its UTF-8 bytes, written
        as they are)."""
        self._piece(text if isinstance(text, bytes) else text.encode("utf-8"))
        self.count += count

    def close(self) -> Path:
        try:
            self._out.write(_TAIL.encode())
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        logger.info("wrote %d objects to %s", self.count, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes: the disk may be full or gone
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> GeoJSONStreamWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_detections(path: str | os.PathLike[str], detections: Iterable[QuPathObject], *,
                     gzip_level: int | None = None) -> Path:
    """Write detections streamed: a :class:`Detections` tile by tile, any other objects in order."""
    with GeoJSONStreamWriter(path, gzip_level=gzip_level) as w:
        if isinstance(detections, Detections):
            for k, tile in enumerate(detections.tiles):
                w.add([tile])
                entry = detections.cells[k]
                if entry is not None:
                    w.add_text(detections.cell_bytes(k), entry[1])  # no decoding, re-encoding
        else:
            batch: list[QuPathObject] = []
            for obj in detections:
                batch.append(obj)
                if len(batch) >= 256:
                    w.add(batch)
                    batch = []
            w.add(batch)
    return Path(path)
