"""Decoded samples to RGB ``uint8``: the pixel conversions of :mod:`her2_qupath.slide`.

The rules (alpha on white, grey and float scaling, palettes, YCbCr, refused
photometric interpretations) are listed in the package's docstring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideFormatError

__all__ = ["to_rgb8", "ycbcr_to_rgb"]

log = logging.getLogger(__package__)  # "her2_qupath.slide", as before the split

# TIFF photometric interpretations
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_PHOTOMETRIC_NAMES = {4: "transparency mask", 5: "CMYK (separated)", 8: "CIE L*a*b*",
                      9: "ICC L*a*b*", 10: "ITU L*a*b*", 32844: "LogL", 32845: "LogLuv",
                      32803: "colour filter array (raw)", 34892: "linear raw"}
_JPEG_COMPRESSIONS = {6, 7, 33003, 33004, 33005, 34712, 34892, 50001, 50002}


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
