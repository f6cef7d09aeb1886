"""Resolution levels of a slide and the cache of decoded tiles.

A :class:`_TiffLevel` reads and decodes only the TIFF tiles (or strips) that
intersect a request and keeps them in the slide's :class:`_TileCache` (an LRU
bounded in bytes, :class:`~her2_qupath.config.SlideConfig` ``tile_cache_mb``);
an :class:`_ArrayLevel` holds an image decoded whole (PNG/JPEG).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import Her2Error, SlideFormatError
from .failures import DECODE_ERRORS, codec_failure, out_of_memory
from .pixels import _RGB, _PixelFormat, _tiff_pixel_format, to_rgb8, ycbcr_to_rgb

__all__: list[str] = []  # internals of her2_qupath.slide; nothing public

# --------------------------------------------------------------------------- tile cache


class _TileCache:
    """A thread-safe LRU of decoded RGB tiles, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max(0, int(max_bytes))
        self._items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[int, int], value: np.ndarray) -> None:
        if value.nbytes > self._max:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self._max and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class _Source(Protocol):
    """What a TIFF level reads through: the open :class:`~her2_qupath.slide.Slide`."""

    path: Path
    _cache: _TileCache

    def _read_bytes(self, offset: int, count: int, describe: Any) -> bytes | None: ...


# --------------------------------------------------------------------------- levels


class _Level:
    """One resolution level; ``read(x, y, w, h)`` returns an in-bounds box as RGB uint8."""

    width: int
    height: int

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        """Pixels of the in-bounds box, written into ``out`` ((h, w, 3) uint8) if given."""
        raise NotImplementedError

    @property
    def tile_size(self) -> tuple[int, int] | None:
        return None


class _ArrayLevel(_Level):
    """A level held in memory (PNG/JPEG, or a level made by downsampling)."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self.rgb[y: y + h, x: x + w].copy()
        out[...] = self.rgb[y: y + h, x: x + w]
        return out


class _TiffLevel(_Level):
    """A TIFF page read segment by segment (tiles, or strips for stripped pages)."""

    def __init__(self, slide: _Source, index: int, page: Any, frames: list[Any]) -> None:
        """``frames``: the page(s) holding the data; three single-sample pages are the
        R, G and B channels of an image stored one channel per page (OME ``CYX``)."""
        self._slide = slide
        self.index = index
        self.page = page  # the TiffPage holding tags and the decoder
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        if int(getattr(page, "imagedepth", 1) or 1) > 1:
            raise SlideFormatError(f"{slide.path.name}: volumetric (3D) TIFF pages are not supported")
        self.tiled = bool(page.is_tiled)
        if self.tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w = self.width
            rows = int(page.rowsperstrip or self.height)
            self.seg_h = max(1, min(rows, self.height))
        self.n_across = -(-self.width // self.seg_w)
        self.n_down = -(-self.height // self.seg_h)
        per_plane = self.n_across * self.n_down
        self.fmt = _tiff_pixel_format(page, slide.path)
        # sources: (offsets, byte counts, index of the first segment) per sample plane
        self.sources: list[tuple[np.ndarray, np.ndarray, int]] = []
        if len(frames) == 3 and int(page.samplesperpixel) == 1:
            for frame in frames:
                self.sources.append((np.asarray(frame.dataoffsets, np.int64),
                                     np.asarray(frame.databytecounts, np.int64), 0))
            self.fmt = _PixelFormat(_RGB, 3, None, False, self.fmt.max_value, None)
        else:
            offsets = np.asarray(frames[0].dataoffsets, np.int64)
            counts = np.asarray(frames[0].databytecounts, np.int64)
            planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
            for plane in range(planes):
                self.sources.append((offsets, counts, plane * per_plane))
        for offsets, counts, base in self.sources:
            if offsets.size < base + per_plane or counts.size < base + per_plane:
                raise SlideFormatError(
                    f"{slide.path.name}: level {index} lists {offsets.size} data segments, "
                    f"expected {base + per_plane}; the file is damaged")
        self.jpegtables = getattr(page, "jpegtables", None)
        self.ycbcr_j2k = int(page.compression) == 33003
        self._decode = page.decode  # may raise for unsupported compressions at first use

    def extents(self) -> np.ndarray:
        """End byte of every data segment (to detect truncated files)."""
        return np.concatenate([o + c for o, c, _ in self.sources]) if self.sources else np.zeros(0)

    @property
    def tile_size(self) -> tuple[int, int] | None:
        return (self.seg_w, self.seg_h) if self.tiled else None

    def _describe(self, row: int, col: int) -> str:
        kind = "tile" if self.tiled else "strip"
        where = f"row {row}, column {col}" if self.tiled else f"{row}"
        return f"{kind} {where} of level {self.index} in {self._slide.path}"

    def segment(self, row: int, col: int) -> np.ndarray:
        """The decoded segment at (row, col) as RGB uint8, cropped to the image."""
        key = (self.index, row * self.n_across + col)
        cache = self._slide._cache
        hit = cache.get(key)
        if hit is not None:
            return hit
        h = min(self.seg_h, self.height - row * self.seg_h)
        w = min(self.seg_w, self.width - col * self.seg_w)
        planes = []
        for offsets, counts, base in self.sources:
            index = base + row * self.n_across + col
            data = self._slide._read_bytes(int(offsets[index]), int(counts[index]),
                                           lambda: self._describe(row, col))
            if data is None:  # a sparse (empty) tile: glass
                rgb = np.full((h, w, 3), 255, np.uint8)
                cache.put(key, rgb)
                return rgb
            try:
                seg, _, shape = self._decode(data, index, jpegtables=self.jpegtables)
            except Her2Error:
                raise
            except DECODE_ERRORS as err:  # a damaged tile, unless no decoder reads its encoding
                raise codec_failure(err, self._describe(row, col)) or SlideFormatError(
                    f"cannot decode {self._describe(row, col)}: {err}",
                    hint="the file is damaged or truncated; re-export or re-copy the slide",
                ) from err
            except MemoryError as err:
                raise out_of_memory(f"decoding {self._describe(row, col)}") from err
            if seg is None:
                rgb = np.full((h, w, 3), 255, np.uint8)
                cache.put(key, rgb)
                return rgb
            seg = np.asarray(seg).reshape(shape)[0]  # (length, width, samples)
            planes.append(seg[:h, :w])
        samples = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
        if samples.shape[0] < h or samples.shape[1] < w:
            raise SlideFormatError(f"{self._describe(row, col)} decodes to {samples.shape[:2]}, "
                                   f"expected at least {(h, w)}; the file is damaged")
        if self.ycbcr_j2k and samples.ndim == 3 and samples.shape[2] >= 3:
            # Aperio 33003: the JPEG 2000 code stream holds YCbCr without a colour transform
            samples = ycbcr_to_rgb(samples[:, :, :3])
        rgb = to_rgb8(samples, self.fmt)
        cache.put(key, rgb)
        return rgb

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        c0, c1 = x // self.seg_w, (x + w - 1) // self.seg_w
        r0, r1 = y // self.seg_h, (y + h - 1) // self.seg_h
        for row in range(r0, r1 + 1):
            ty = row * self.seg_h
            for col in range(c0, c1 + 1):
                tx = col * self.seg_w
                seg = self.segment(row, col)
                ix0, iy0 = max(x, tx), max(y, ty)
                ix1 = min(x + w, tx + seg.shape[1])
                iy1 = min(y + h, ty + seg.shape[0])
                out[iy0 - y: iy1 - y, ix0 - x: ix1 - x] = seg[iy0 - ty: iy1 - ty, ix0 - tx: ix1 - tx]
        return out

