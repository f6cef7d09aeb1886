"""The :class:`Slide` and :func:`open_slide`: opening a file and reading its levels.

See :mod:`her2_qupath.slide` for the formats, the pixel size and the errors.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from PIL import Image

from ..config import SlideConfig
from ..errors import Her2Error, MPPMissing, SlideFormatError, SlideNotFound, UserInputError
from .failures import DECODE_ERRORS, IMAGE_ERRORS, TIFF_ERRORS, codec_failure, out_of_memory
from .levels import _ArrayLevel, _Level, _TiffLevel, _TileCache
from .metadata import (
    _compression_name,
    _float_or_none,
    _mpp_from_resolution,
    _parse_aperio,
    _parse_ome,
    _plausible,
)
from .pixels import _pillow_to_rgb, _tiff_pixel_format, to_rgb8
from .structure import check_extents, check_ifd_chain

__all__ = ["Slide", "AssociatedImages", "open_slide"]

log = logging.getLogger(__package__)  # "her2_qupath.slide", as before the split

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------- associated images


class AssociatedImages(Mapping[str, np.ndarray]):
    """Names (``thumbnail``, ``label``, ``macro``, ...) to RGB arrays, decoded on first access."""

    def __init__(self, slide: Slide, entries: dict[str, Any]) -> None:
        self._slide = slide
        self._entries = entries  # name -> tifffile series/page, or an array
        self._decoded: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(name)
        if name not in self._decoded:
            self._decoded[name] = self._slide._read_associated(self._entries[name])
        return self._decoded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def size(self, name: str) -> tuple[int, int]:
        """(width, height) of an associated image without decoding it."""
        entry = self._entries[name]
        shape = entry.shape if not hasattr(entry, "keyframe") else entry.keyframe.shape
        return int(shape[1]), int(shape[0])



# --------------------------------------------------------------------------- the slide


class Slide:
    """An open slide image. Use :func:`open_slide`; close it (or use ``with``) when done."""

    def __init__(self, path: Path, *, mpp: float | None = None,
                 config: SlideConfig | None = None) -> None:
        self.path = path
        self.config = config or SlideConfig()
        self._lock = threading.RLock()
        self._cache = _TileCache(int(self.config.tile_cache_mb * 1024 * 1024))
        self._tif: Any = None
        self._fh: Any = None
        self._file_size = path.stat().st_size
        self._levels: list[_Level] = []
        self._assoc_entries: dict[str, Any] = {}
        self._file_mpp: float | None = None
        self._mpp_source: str | None = None
        self._override_mpp = mpp
        self.format = "unknown"
        self.magnification: float | None = None
        self.compression: str | None = None
        self.properties: dict[str, str] = {}
        self.closed = False
        self.associated_images = AssociatedImages(self, self._assoc_entries)

    # ----- opening

    def _open(self) -> None:
        with open(self.path, "rb") as fh:
            head = fh.read(16)
        if not head:
            raise SlideFormatError(f"{self.path} is empty (0 bytes)",
                                   hint="re-copy or re-export the slide")
        if head.startswith(_TIFF_MAGIC):
            self._open_tiff()
        elif head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
            self._open_pillow()
        else:
            raise SlideFormatError(
                f"{self.path} is not a supported slide image (unrecognised file signature "
                f"{head[:8]!r})",
                hint="supported: Aperio SVS, OME-TIFF, pyramidal or plain TIFF, NDPI, PNG, JPEG")

    def _open_tiff(self) -> None:
        check_ifd_chain(self.path, self._file_size)
        try:
            self._tif = tifffile.TiffFile(self.path)
            self._fh = self._tif.filehandle
            series = self._tif.series
        except TIFF_ERRORS as err:  # tifffile raises many types for bad files
            self.close()
            raise SlideFormatError(f"{self.path} is not a readable TIFF: {err}",
                                   hint="the file is damaged, truncated or not a TIFF") from err
        except MemoryError as err:
            self.close()
            raise out_of_memory(f"reading the TIFF structure of {self.path}") from err
        if not series:
            raise SlideFormatError(f"{self.path} contains no images")
        try:
            self._setup_tiff()
        except Her2Error:
            raise
        except TIFF_ERRORS as err:  # a damaged structure surfaces in many ways
            raise SlideFormatError(f"{self.path} has a damaged TIFF structure: {err}",
                                   hint="re-copy or re-export the slide") from err
        except MemoryError as err:
            raise out_of_memory(f"reading the TIFF structure of {self.path}") from err

    def _setup_tiff(self) -> None:
        tif = self._tif
        series = tif.series
        first = tif.pages.first
        if tif.is_svs:
            self.format = "svs"
            self._setup_svs()
        elif tif.is_ome:
            self.format = "ome-tiff"
            self._setup_series(series)
            mpp, mag = _parse_ome(tif.ome_metadata or "")
            if _plausible(mpp, self.config) is not None:
                self._file_mpp, self._mpp_source = mpp, "OME-XML PhysicalSizeX/Y"
            self.magnification = mag
            for extra in series[1:]:
                name = (extra.name or "").strip().lower()
                if name and name not in self._assoc_entries:
                    self._assoc_entries[name] = extra
        else:
            kind = (series[0].kind or "").lower()
            self._setup_series(series)
            known = {"ndpi", "scn", "philips", "bif", "qpi", "nih"}
            self.format = kind if kind in known else (
                "pyramidal-tiff" if len(self._levels) > 1 else "tiff")
            if kind == "ndpi":
                self.magnification = _float_or_none(first.tags.valueof(65421))
        if self._file_mpp is None:
            mpp = _mpp_from_resolution(first, self.config)
            if mpp is not None:
                self._file_mpp, self._mpp_source = mpp, "TIFF resolution tags"
        self.compression = _compression_name(first)
        check_extents(self.path, self._file_size, self._tif.pages.first, self._levels)

    def _setup_svs(self) -> None:
        pages = self._tif.pages
        first = pages.first
        self.properties = _parse_aperio(first.description or "")
        mpp = _float_or_none(self.properties.get("MPP"))
        if mpp is not None:
            self._file_mpp, self._mpp_source = mpp, "Aperio ImageDescription"
        self.magnification = _float_or_none(self.properties.get("AppMag"))
        self._levels.append(_TiffLevel(self, 0, first, [first]))
        for i in range(1, len(pages)):
            page = pages[i]
            desc = (page.description or "").lower()
            if page.is_tiled and not page.is_reduced and int(page.subfiletype) == 0:
                if page.imagewidth < self._levels[-1].width:
                    self._levels.append(_TiffLevel(self, len(self._levels), page, [page]))
                continue
            if "label" in desc or (int(page.subfiletype) == 1 and "macro" not in desc):
                name = "label"
            elif "macro" in desc or int(page.subfiletype) == 9:
                name = "macro"
            elif i == 1 or "thumbnail" in desc:
                name = "thumbnail"
            else:
                name = f"image{i}"
            self._assoc_entries.setdefault(name, page)

    def _setup_series(self, series: list[Any]) -> None:
        main = series[0]
        for lvl in main.levels:
            page = lvl.keyframe
            frames = [p for p in lvl.pages if p is not None]
            if not frames:
                raise SlideFormatError(f"{self.path.name}: a pyramid level has no image data")
            sizes = dict(zip(lvl.axes, lvl.shape, strict=True))
            rgb_planes = len(frames) == 3 and sizes.get("C") == 3 and int(page.samplesperpixel) == 1
            if not rgb_planes:
                if len(frames) > 1 and not self._levels:
                    log.warning("%s: %d planes per level (axes %s); reading the first",
                                self.path.name, len(frames), lvl.axes)
                frames = frames[:1]
            self._levels.append(_TiffLevel(self, len(self._levels), page, frames))

    def _open_pillow(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self.path) as img:
                    self.format = (img.format or "image").lower()
                    w, h = img.size
                    if w * h > self.config.whole_image_max_pixels:
                        raise SlideFormatError(
                            f"{self.path.name} is {w}×{h} px, too large to decode whole",
                            hint="convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)")
                    dpi = img.info.get("dpi")
                    rgb = _pillow_to_rgb(img, self.path)
        except Her2Error:
            raise
        except Image.DecompressionBombError as err:
            raise SlideFormatError(
                f"{self.path.name} is too large to decode whole: {err}",
                hint="convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)",
            ) from err
        except IMAGE_ERRORS as err:  # Pillow raises many types for bad files
            raise codec_failure(err, str(self.path)) or SlideFormatError(
                f"cannot read {self.path} as an image: {err}",
                hint="the file is damaged or truncated") from err
        except MemoryError as err:
            raise out_of_memory(f"decoding {self.path}") from err
        self._levels.append(_ArrayLevel(rgb))
        if dpi:
            try:
                mx, my = (25400.0 / float(d) for d in dpi)
                mpp = _plausible((mx + my) / 2, self.config)
            except (TypeError, ValueError, ZeroDivisionError):
                mpp = None
            if mpp is not None:
                self._file_mpp, self._mpp_source = mpp, f"{self.format.upper()} density"
        self.compression = self.format

    # ----- raw access

    def _read_bytes(self, offset: int, count: int, describe: Any) -> bytes | None:
        if count <= 0 or offset <= 0:
            return None
        if offset + count > self._file_size:
            raise SlideFormatError(f"{describe()} lies beyond the end of the file",
                                   hint="the file is truncated; re-copy the slide")
        with self._lock:
            if self.closed:
                raise SlideFormatError(f"{self.path} is closed", hint="open the slide again")
            self._fh.seek(offset)
            data = self._fh.read(count)
        if len(data) != count:
            raise SlideFormatError(f"short read of {describe()}",
                                   hint="the file is truncated or changed while open")
        return bytes(data)

    def _read_associated(self, entry: Any) -> np.ndarray:
        if isinstance(entry, np.ndarray):
            return entry
        page = entry.keyframe if hasattr(entry, "keyframe") else entry
        fmt = _tiff_pixel_format(page, self.path)
        try:
            with self._lock:
                data = entry.asarray()
        except DECODE_ERRORS as err:  # a damaged image, unless no decoder reads its encoding
            what = f"an associated image of {self.path}"
            raise codec_failure(err, what) or SlideFormatError(
                f"cannot decode {what}: {err}", hint="the file is damaged") from err
        except MemoryError as err:
            raise out_of_memory(f"decoding an associated image of {self.path}") from err
        data = np.asarray(data)
        while data.ndim > 3 or (data.ndim == 3 and data.shape[-1] > 4 and data.shape[0] <= 4):
            data = data[0]
        return to_rgb8(data, fmt)

    # ----- geometry

    @property
    def level_count(self) -> int:
        return len(self._levels)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((lv.width, lv.height) for lv in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self.dimensions
        return tuple((w0 / lv.width + h0 / lv.height) / 2 for lv in self._levels)

    @property
    def tile_size(self) -> tuple[int, int] | None:
        """(width, height) of level 0's tiles; None for stripped or in-memory images."""
        return self._levels[0].tile_size

    # ----- pixel size

    @property
    def mpp_or_none(self) -> float | None:
        """µm/px of level 0: the override if given, else the file's, else None."""
        return self._override_mpp if self._override_mpp is not None else self._file_mpp

    @property
    def mpp(self) -> float:
        """µm/px of level 0; raises :class:`MPPMissing` when unknown."""
        value = self.mpp_or_none
        if value is None:
            raise MPPMissing(
                f"{self.path.name} carries no pixel size (µm per pixel)",
                hint="pass it with --mpp, e.g. --mpp 0.25 for a 40x scan or 0.5 for 20x")
        return value

    @property
    def mpp_source(self) -> str | None:
        if self._override_mpp is not None:
            return "given with --mpp"
        return self._mpp_source

    # ----- level choice

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (0 if none)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-3):
                best = i
        return best

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level at or finer than ``mpp`` µm/px."""
        return self.best_level_for_downsample(mpp / self.mpp)

    # ----- reading

    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` at ``level``; ``location`` in level-0 pixels; white outside."""
        if not 0 <= level < len(self._levels):
            raise IndexError(f"level {level} out of range (0..{len(self._levels) - 1})")
        w, h = (int(v) for v in size)
        if w < 0 or h < 0:
            raise ValueError(f"region size must be non-negative, got {size}")
        lv = self._levels[level]
        ds = self.level_downsamples[level]
        x = int(math.floor(location[0] / ds + 1e-9))
        y = int(math.floor(location[1] / ds + 1e-9))
        return self._read_level_box(lv, x, y, w, h)

    def _read_level_box(self, lv: _Level, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self.closed:
            raise SlideFormatError(f"{self.path} is closed", hint="open the slide again")
        ix0, iy0 = max(x, 0), max(y, 0)
        ix1, iy1 = min(x + w, lv.width), min(y + h, lv.height)
        if ix0 == x and iy0 == y and ix1 == x + w and iy1 == y + h and w and h:
            return lv.read(x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)
        if ix1 > ix0 and iy1 > iy0:
            lv.read(ix0, iy0, ix1 - ix0, iy1 - iy0, out=out[iy0 - y: iy1 - y, ix0 - x: ix1 - x])
            out[: iy0 - y] = 255
            out[iy1 - y:] = 255
            out[iy0 - y: iy1 - y, : ix0 - x] = 255
            out[iy0 - y: iy1 - y, ix1 - x:] = 255
        else:
            out.fill(255)
        return out

    def _read_resampled(self, level: int, box: tuple[float, float, float, float],
                        size: tuple[int, int]) -> np.ndarray:
        """Resample ``box`` (x, y, w, h in ``level`` pixels) to ``size``, in bounded chunks."""
        out_w, out_h = size
        bx, by, bw, bh = box
        lv = self._levels[level]
        sx, sy = bw / out_w, bh / out_h
        if abs(sx - 1) < 1e-3 and abs(sy - 1) < 1e-3:  # same grid (level rounding)
            return self._read_level_box(lv, int(round(bx)), int(round(by)), out_w, out_h)
        budget = 2048  # source pixels per chunk side: bounds memory (~12 MiB) for any scale
        cw = max(1, min(out_w, int(budget / max(sx, 1e-9))))
        ch = max(1, min(out_h, int(budget / max(sy, 1e-9))))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for oy in range(0, out_h, ch):
            oh = min(ch, out_h - oy)
            for ox in range(0, out_w, cw):
                ow = min(cw, out_w - ox)
                x0, y0 = bx + ox * sx, by + oy * sy
                x1, y1 = bx + (ox + ow) * sx, by + (oy + oh) * sy
                rx0, ry0 = int(math.floor(x0 + 1e-6)), int(math.floor(y0 + 1e-6))
                rx1, ry1 = max(rx0 + 1, int(math.ceil(x1 - 1e-6))), max(ry0 + 1, int(math.ceil(y1 - 1e-6)))
                src = self._read_level_box(lv, rx0, ry0, rx1 - rx0, ry1 - ry0)
                shrinking = (rx1 - rx0) >= ow and (ry1 - ry0) >= oh
                interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
                out[oy: oy + oh, ox: ox + ow] = cv2.resize(src, (ow, oh), interpolation=interp)
        return out

    def read_region_mpp(self, location: tuple[int, int], size: tuple[int, int],
                        mpp: float) -> np.ndarray:
        """A region of ``size`` pixels at ``mpp`` µm/px whose top-left is ``location`` (level 0).

        Read from the coarsest level at or finer than ``mpp`` and resampled
        (area averaging when shrinking) to exactly ``size``.
        """
        if mpp <= 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        target_ds = mpp / self.mpp
        level = self.best_level_for_downsample(target_ds)
        ds = self.level_downsamples[level]
        w, h = (int(v) for v in size)
        box = (location[0] / ds, location[1] / ds, w * target_ds / ds, h * target_ds / ds)
        if w == 0 or h == 0:
            return np.full((h, w, 3), 255, np.uint8)
        return self._read_resampled(level, box, (w, h))

    def thumbnail(self, *, max_size: int | None = None, mpp: float | None = None) -> np.ndarray:
        """The whole slide, longest side ``max_size`` px and/or at ``mpp`` µm/px (the smaller).

        With neither, ``max_size`` defaults to ``SlideConfig.thumbnail_max_size``.
        Read from the coarsest sufficient level, in bounded chunks.
        """
        w0, h0 = self.dimensions
        ds = 1.0
        if mpp is not None:
            ds = max(ds, mpp / self.mpp)
        if max_size is not None or mpp is None:
            limit = max_size if max_size is not None else self.config.thumbnail_max_size
            if limit <= 0:
                raise ValueError(f"max_size must be positive, got {limit}")
            ds = max(ds, max(w0, h0) / limit)
        out_w, out_h = max(1, int(round(w0 / ds))), max(1, int(round(h0 / ds)))
        level = self.best_level_for_downsample(ds)
        lw, lh = self.level_dimensions[level]
        return self._read_resampled(level, (0.0, 0.0, float(lw), float(lh)), (out_w, out_h))

    # ----- description

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable description (what ``her2-qupath info`` prints)."""
        mpp = self.mpp_or_none
        return {
            "path": str(self.path),
            "format": self.format,
            "file_size": self._file_size,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {"level": i, "width": w, "height": h, "downsample": round(ds, 4),
                 "mpp": None if mpp is None else round(mpp * ds, 6)}
                for i, ((w, h), ds) in enumerate(zip(self.level_dimensions, self.level_downsamples, strict=True))
            ],
            "mpp": mpp,
            "mpp_source": self.mpp_source,
            "magnification": self.magnification,
            "tile_size": None if self.tile_size is None else list(self.tile_size),
            "compression": self.compression,
            "associated_images": {
                name: list(self.associated_images.size(name)) for name in self.associated_images
            },
        }

    # ----- lifetime

    def close(self) -> None:
        with self._lock:
            if self._tif is not None:
                self._tif.close()
                self._tif = None
            self.closed = True
        self._cache.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as "open this path again" (process pools, Dask workers)."""
        return (_reopen, (str(self.path), self._override_mpp, self.config))

    def __repr__(self) -> str:
        w, h = self.dimensions if self._levels else (0, 0)
        return f"<Slide {self.path.name} {self.format} {w}x{h} levels={self.level_count}>"



def _reopen(path: str, mpp: float | None, config: SlideConfig) -> Slide:
    return open_slide(path, mpp=mpp, config=config)


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None,
               config: SlideConfig | None = None) -> Slide:
    """Open a slide image; ``mpp`` (µm/px) overrides whatever the file says.

    Raises :class:`SlideNotFound` for a missing path or a directory and
    :class:`SlideFormatError` for anything that is not a readable image.
    """
    p = Path(path)
    if not p.exists():
        raise SlideNotFound(f"slide {p} does not exist", hint="check the path")
    if p.is_dir():
        raise SlideNotFound(f"slide {p} is a directory, not an image file",
                            hint="give the path of the slide file itself (.svs, .tif, ...)")
    if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise UserInputError(f"invalid pixel size mpp={mpp!r}", hint="give a positive number of µm/px")
    slide = Slide(p, mpp=None if mpp is None else float(mpp), config=config)
    try:
        slide._open()
    except Her2Error:
        slide.close()
        raise
    except OSError as err:
        slide.close()
        raise SlideFormatError(f"cannot read {p}: {err}", hint="check permissions") from err
    if not slide._levels:
        slide.close()
        raise SlideFormatError(f"{p} contains no readable image")
    log.debug("opened %r (mpp %s from %s)", slide, slide.mpp_or_none, slide.mpp_source)
    return slide

