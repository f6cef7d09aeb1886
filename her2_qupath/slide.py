"""Reading whole-slide images through one interface.

:func:`open_slide` opens Aperio SVS, OME-TIFF, generic pyramidal TIFF (reduced
pages or SubIFDs), plain TIFF (tiled or stripped), other TIFF-based formats
that ``tifffile`` understands (NDPI, SCN, ...), PNG and JPEG, and returns a
:class:`Slide`.

Reading is tile-based: :meth:`Slide.read_region` reads and decodes only the
TIFF tiles (or strips) that intersect the request, keeps recently decoded
tiles in a small LRU cache (:class:`~her2_qupath.config.SlideConfig`), and
never decodes a whole level the request does not need. File access is
serialised by a lock; decoding runs outside it, so one ``Slide`` can be read
from several threads.

Every pixel comes back as RGB ``uint8``:

* RGB(A): alpha is composited on white;
* grayscale 8/16/32-bit and float: replicated to three channels; integers are
  scaled linearly from ``[0, MaxSampleValue]`` (the tag if present, else the
  range of ``BitsPerSample``: 16-bit ``v`` becomes ``round(v * 255 / 65535)``);
  floats are taken as ``[0, 1]`` and clipped; ``MinIsWhite`` is inverted;
* palette images go through their colour map;
* JPEG tiles in YCbCr are converted to RGB by the decoder, Aperio JPEG 2000
  YCbCr tiles (compression 33003) by :func:`ycbcr_to_rgb` (full-range BT.601);
* CMYK, CIE L*a*b* and other photometric interpretations raise
  :class:`~her2_qupath.errors.SlideFormatError`.

Pixel size (MPP, µm/px) comes from, in order: the ``mpp=`` argument (the CLI's
``--mpp``), the Aperio ``ImageDescription`` (``MPP = 0.499``), OME-XML
``PhysicalSizeX/Y`` (with units), TIFF ``XResolution``/``ResolutionUnit`` and
PNG/JPEG density. Resolution tags without a unit or outside a plausible range
(72 dpi is 353 µm/px) are ignored.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import SlideConfig
from .errors import Her2Error, MPPMissing, SlideFormatError, SlideNotFound, UserInputError

__all__ = [
    "Slide",
    "AssociatedImages",
    "open_slide",
    "to_rgb8",
    "ycbcr_to_rgb",
]

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# micrometres per unit for OME-XML length units
_OME_UNITS_UM: dict[str, float] = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6, "in": 25400.0,
}
# micrometres per TIFF ResolutionUnit (2 inch, 3 cm; 4/5 are tifffile's mm/µm extensions)
_RESUNIT_UM: dict[int, float] = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}

# TIFF photometric interpretations
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_PHOTOMETRIC_NAMES = {4: "transparency mask", 5: "CMYK (separated)", 8: "CIE L*a*b*",
                      9: "ICC L*a*b*", 10: "ITU L*a*b*", 32844: "LogL", 32845: "LogLuv",
                      32803: "colour filter array (raw)", 34892: "linear raw"}
_JPEG_COMPRESSIONS = {6, 7, 33003, 33004, 33005, 34712, 34892, 50001, 50002}


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class _PixelFormat:
    """How to turn decoded samples into RGB uint8."""

    photometric: int
    color_samples: int  # 1 (gray/palette) or 3 (RGB)
    alpha_index: int | None  # sample index of the alpha channel, if any
    alpha_associated: bool  # premultiplied alpha
    max_value: float | None  # integer scale (None: the type's range)
    colormap: np.ndarray | None  # (3, 2**bits) for palette images


def _scale_to_uint8(a: np.ndarray, max_value: float | None) -> np.ndarray:
    """Scale integer/float/bool samples linearly to uint8 (see module docstring)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind in "ui":
        top = float(max_value) if max_value else float(np.iinfo(a.dtype).max)
        scaled = a.astype(np.float32) * np.float32(255.0 / top)
    elif a.dtype.kind == "f":
        scaled = a.astype(np.float32) * np.float32(255.0)
    else:
        raise SlideFormatError(f"pixel type {a.dtype} is not supported",
                               hint="convert the image to 8-bit RGB")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb8(a: np.ndarray, fmt: _PixelFormat | None = None) -> np.ndarray:
    """Convert decoded samples ``(h, w[, s])`` to RGB uint8 ``(h, w, 3)``.

    Without ``fmt``, 1 sample is gray, 2 gray+alpha, 3 RGB and 4 RGBA
    (unassociated alpha), integers scaled by their type's range.
    """
    if a.ndim == 2:
        a = a[:, :, None]
    if fmt is None:
        n = a.shape[2]
        fmt = _PixelFormat(_RGB if n >= 3 else _MINISBLACK, 3 if n >= 3 else 1,
                           3 if n == 4 else 1 if n == 2 else None, False, None, None)
    if fmt.photometric == _PALETTE:
        if fmt.colormap is None:
            raise SlideFormatError("palette image without a colour map",
                                   hint="re-save the image as RGB")
        cmap = fmt.colormap
        idx = np.clip(a[:, :, 0].astype(np.intp), 0, cmap.shape[1] - 1)
        lut = _scale_to_uint8(cmap, 65535.0 if cmap.dtype != np.uint8 else None)
        rgb = np.ascontiguousarray(lut.T[idx])
    else:
        color = _scale_to_uint8(a[:, :, : fmt.color_samples], fmt.max_value)
        if fmt.photometric == _MINISWHITE:
            color = 255 - color
        rgb = np.repeat(color, 3, axis=2) if fmt.color_samples == 1 else color
    if fmt.alpha_index is not None and fmt.alpha_index < a.shape[2]:
        alpha = _scale_to_uint8(a[:, :, fmt.alpha_index], fmt.max_value)
        if int(alpha.min()) < 255:
            af = alpha.astype(np.float32)[:, :, None] / np.float32(255.0)
            background = np.float32(255.0) * (np.float32(1.0) - af)
            fg = rgb.astype(np.float32) if fmt.alpha_associated else rgb * af
            rgb = np.clip(np.rint(fg + background), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Full-range (JFIF, ITU-R BT.601) YCbCr uint8 to RGB uint8."""
    f = ycc.astype(np.float32)
    y, cb, cr = f[..., 0], f[..., 1] - 128.0, f[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _tiff_pixel_format(page: Any, path: Path) -> _PixelFormat:
    """Work out the conversion for a TIFF page, or raise for unsupported photometrics."""
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    compression = int(page.compression)
    if photometric == _YCBCR:
        if compression not in _JPEG_COMPRESSIONS:
            raise SlideFormatError(
                f"{path.name}: YCbCr pixels without JPEG compression are not supported",
                hint="re-save the slide as RGB or JPEG-compressed TIFF")
        photometric = _RGB  # the JPEG decoder returns RGB
    if photometric not in (_MINISWHITE, _MINISBLACK, _RGB, _PALETTE):
        name = _PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
        raise SlideFormatError(f"{path.name}: {name} images are not supported",
                               hint="convert the image to RGB (e.g. with QuPath or vips)")
    color = 3 if photometric == _RGB else 1
    if photometric == _MINISBLACK and samples - len(extras) >= 3:
        log.info("%s: %d-channel MinIsBlack image shown as RGB", path.name, samples)
        color = 3
    alpha_index = None
    associated = False
    for i, e in enumerate(extras):
        if e in (1, 2):
            alpha_index = samples - len(extras) + i
            associated = e == 1
            break
    if alpha_index is None and color == 1 and samples == 2:
        alpha_index = 1  # gray + unspecified extra: treat as alpha
    max_value = None
    tag = page.tags.get("MaxSampleValue")
    if tag is not None and page.dtype is not None and page.dtype.kind in "ui":
        values = np.atleast_1d(np.asarray(tag.value, dtype=np.float64))
        top = float(values.max()) if values.size else 0.0
        if 0 < top < float(np.iinfo(page.dtype).max):
            max_value = top
    bits = int(np.max(np.atleast_1d(page.bitspersample)))
    if (max_value is None and page.dtype is not None and page.dtype.kind == "u"
            and bits < 8 * page.dtype.itemsize):
        max_value = float(2**bits - 1)  # e.g. bilevel (1-bit) or 12-bit samples
    colormap = None
    if photometric == _PALETTE:
        cm = page.colormap
        colormap = None if cm is None else np.asarray(cm)
    return _PixelFormat(photometric, color, alpha_index, associated, max_value, colormap)


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

    def __init__(self, slide: Slide, index: int, page: Any, frames: list[Any]) -> None:
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
            except Exception as err:  # noqa: BLE001 - any decoder failure is a damaged file
                raise SlideFormatError(
                    f"cannot decode {self._describe(row, col)}: {err}",
                    hint="the file is damaged or truncated; re-export or re-copy the slide",
                ) from err
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


# --------------------------------------------------------------------------- metadata helpers


def _parse_aperio(description: str) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription."""
    out: dict[str, str] = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _plausible(mpp: float | None, config: SlideConfig) -> float | None:
    if mpp is None or not (config.min_plausible_mpp <= mpp <= config.max_plausible_mpp):
        return None
    return mpp


def _mpp_from_resolution(page: Any, config: SlideConfig) -> float | None:
    """MPP from XResolution/YResolution + ResolutionUnit, if meaningful."""
    try:
        unit = int(page.resolutionunit)
        xres, yres = (float(v) for v in page.resolution)
    except (TypeError, ValueError, AttributeError):
        return None
    um = _RESUNIT_UM.get(unit)
    if um is None or xres <= 0 or yres <= 0:
        return None
    mx, my = um / xres, um / yres
    if abs(mx - my) > 0.01 * max(mx, my):
        log.warning("pixels are not square (%.4g x %.4g µm); using their mean", mx, my)
    return _plausible((mx + my) / 2, config)


def _parse_ome(xml: str) -> tuple[float | None, float | None]:
    """(MPP, objective magnification) of the first OME Image."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        log.warning("unreadable OME-XML (%s); ignoring its metadata", err)
        return None, None
    image = root.find("{*}Image")
    pixels = image.find("{*}Pixels") if image is not None else None
    mpp = None
    if pixels is not None:
        sizes = []
        for axis in ("X", "Y"):
            value = _float_or_none(pixels.get(f"PhysicalSize{axis}"))
            unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            if value is not None and unit in _OME_UNITS_UM:
                sizes.append(value * _OME_UNITS_UM[unit])
        if sizes:
            mpp = sum(sizes) / len(sizes)
    magnification = None
    settings = image.find("{*}ObjectiveSettings") if image is not None else None
    objectives = root.findall("{*}Instrument/{*}Objective")
    chosen = None
    if settings is not None:
        chosen = next((o for o in objectives if o.get("ID") == settings.get("ID")), None)
    if chosen is None and len(objectives) == 1:
        chosen = objectives[0]
    if chosen is not None:
        magnification = _float_or_none(chosen.get("NominalMagnification"))
    return mpp, magnification


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
        import tifffile

        self._check_ifd_chain()
        try:
            self._tif = tifffile.TiffFile(self.path)
            self._fh = self._tif.filehandle
            series = self._tif.series
        except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
            self.close()
            raise SlideFormatError(f"{self.path} is not a readable TIFF: {err}",
                                   hint="the file is damaged, truncated or not a TIFF") from err
        if not series:
            raise SlideFormatError(f"{self.path} contains no images")
        try:
            self._setup_tiff()
        except Her2Error:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged structure surfaces in many ways
            raise SlideFormatError(f"{self.path} has a damaged TIFF structure: {err}",
                                   hint="re-copy or re-export the slide") from err

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
        self._check_extents()

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

    def _check_ifd_chain(self) -> None:
        """Walk the IFD chain: a pointer past the end of the file means truncation.

        Done before tifffile parses the file: tifffile stops listing pages at
        a bad pointer and only logs it, which would silently hide pyramid
        levels or associated images.
        """
        import struct

        size = self._file_size
        pointers: list[int] = []
        with open(self.path, "rb") as fh:
            head = fh.read(16)
            bo = "<" if head[:2] == b"II" else ">"
            big = struct.unpack(bo + "H", head[2:4])[0] == 43
            off_fmt, cnt_fmt, entry = (bo + "Q", bo + "Q", 20) if big else (bo + "I", bo + "H", 12)
            off_size, cnt_size = struct.calcsize(off_fmt), struct.calcsize(cnt_fmt)
            start = 8 if big else 4
            if len(head) < start + off_size:
                raise SlideFormatError(f"{self.path} is truncated: the TIFF header is incomplete",
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
                f"{self.path} is truncated or damaged: an image directory at byte {pointers[0]} "
                f"lies beyond the end of the file ({size} bytes)",
                hint="re-copy or re-export the slide")

    def _check_extents(self) -> None:
        """Refuse files whose SubIFDs or tile tables point past the end (truncated copies)."""
        subifds = getattr(self._tif.pages.first, "subifds", None) or ()
        if any(int(o) >= self._file_size for o in subifds):
            raise SlideFormatError(f"{self.path} is truncated: pyramid levels lie beyond the end "
                                   f"of the file ({self._file_size} bytes)",
                                   hint="re-copy or re-export the slide")
        for level in self._levels:
            assert isinstance(level, _TiffLevel)
            ends = level.extents()
            bad = int(np.count_nonzero(ends > self._file_size))
            if bad:
                raise SlideFormatError(
                    f"{self.path} is truncated: {bad} of {ends.size} data segments of level "
                    f"{level.index} lie beyond the end of the file ({self._file_size} bytes)",
                    hint="re-copy or re-export the slide")

    def _open_pillow(self) -> None:
        import warnings

        from PIL import Image

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
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
            raise SlideFormatError(f"cannot read {self.path} as an image: {err}",
                                   hint="the file is damaged or truncated") from err
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
        except Exception as err:  # noqa: BLE001
            raise SlideFormatError(f"cannot decode an associated image of {self.path}: {err}",
                                   hint="the file is damaged") from err
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
        import cv2

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


def _compression_name(page: Any) -> str:
    names = {1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate",
             33003: "jpeg2000 (Aperio YCbCr)", 33005: "jpeg2000 (Aperio RGB)",
             34712: "jpeg2000", 50000: "zstd", 50001: "webp", 50002: "jpegxl", 32773: "packbits"}
    code = int(page.compression)
    if code in names:
        return names[code]
    try:
        return str(page.compression.name).lower()
    except AttributeError:
        return str(code)


def _pillow_to_rgb(img: Any, path: Path) -> np.ndarray:
    """Decode a Pillow image into RGB uint8 (alpha on white, 16-bit scaled)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("CMYK", "LAB", "HSV"):
        raise SlideFormatError(f"{path.name}: {mode} images are not supported",
                               hint="convert the image to RGB")
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode == "I":  # 32-bit ints (often 16-bit data): clip to the 16-bit range
        a = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        return to_rgb8(a)
    if mode in ("I;16", "I;16B", "I;16L"):
        return to_rgb8(np.asarray(img).astype(np.uint16))
    if mode == "F":
        return to_rgb8(np.asarray(img, dtype=np.float32))
    if mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")
    return to_rgb8(np.asarray(img))


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

