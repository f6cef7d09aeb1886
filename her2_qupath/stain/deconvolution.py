"""Colour deconvolution: the white point, optical density and the unmixing into stain amounts.

The uint8 -> OD step is a 256-entry lookup table and the 3 x 3 unmixing one
per-pixel affine matrix product, both in float32 through OpenCV in
cache-sized row strips (see :mod:`her2_qupath.stain`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..config import StainConfig
from ..errors import UserInputError
from ..optics import estimate_white_point
from ..optics import od_lut as _optics_od_lut
from .vectors import StainVectors, Vec3

__all__ = ["estimate_background", "od_lut", "rgb_to_od", "deconvolve", "dab_od"]

log = logging.getLogger(__name__)

#: Pixels per strip: the float32 intermediate (12 bytes/pixel) stays in the L2 cache.
_STRIP_PIXELS = 1 << 17
#: At most this many threads per call.
_MAX_THREADS = 4


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise UserInputError(
            f"expected an RGB image of shape (rows, cols, 3), got shape {a.shape}",
            hint="pass an RGB uint8 array (an alpha channel is dropped)",
        )
    if a.dtype != np.uint8:
        raise UserInputError(
            f"expected a uint8 RGB image, got dtype {a.dtype}",
            hint="convert with skimage.util.img_as_ubyte or read the slide as 8-bit RGB",
        )
    if a.shape[2] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def estimate_background(
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    config: StainConfig | None = None,
    mpp: float | None = None,
) -> Vec3:
    """The white point (empty glass) ``(r, g, b)`` of a brightfield image.

    The glass estimate of :func:`her2_qupath.optics.estimate_white_point`
    (``mask``, of the image's shape, limits the pixels that may be glass, e.g.
    ``~tissue_mask``). When no glass is found (a tile full of tissue),
    ``config.background`` is returned if set, else (255, 255, 255) with a
    logged warning; the pipeline uses :func:`~her2_qupath.optics.estimate_white_point`
    itself, whose fallback is smarter and reported in the summary.
    """
    config = config or StainConfig()
    wp = estimate_white_point(_as_rgb(rgb), mpp, mask=mask)
    if wp.source == "glass":
        return wp.rgb
    if config.background is not None:
        return tuple(float(x) for x in config.background)  # type: ignore[return-value]
    log.warning(
        "no empty glass found (%s); using white (255, 255, 255). "
        "Estimate the background on a slide thumbnail and pass it explicitly.",
        wp.note,
    )
    return (255.0, 255.0, 255.0)


def _background(background: Any, rgb: np.ndarray | None, config: StainConfig) -> np.ndarray:
    if background is None:
        background = config.background
    if background is None:
        if rgb is None:
            raise UserInputError("no background given", hint="pass background=(r, g, b)")
        background = estimate_background(rgb, config=config)
    bg = np.asarray(background, dtype=np.float64).reshape(-1)
    if bg.size == 1:
        bg = np.repeat(bg, 3)
    if bg.shape != (3,) or np.any(bg <= 0) or np.any(bg > 255) or not np.all(np.isfinite(bg)):
        raise UserInputError(
            f"background must be three values in (0, 255], got {background!r}",
            hint="estimate it with stain.estimate_background on a slide thumbnail",
        )
    return bg


def od_lut(background: Any) -> np.ndarray:
    """(256, 3) float32 table: ``OD_c(I) = -log10(max(I, 1) / I0_c)`` for each channel c."""
    return _optics_od_lut(_background(background, None, StainConfig()))


def rgb_to_od(rgb: np.ndarray, background: Any = None) -> np.ndarray:
    """Optical density (rows, cols, 3) float32 of a uint8 RGB image via a lookup table.

    ``background`` is the per-channel white point (estimated from ``rgb`` when
    omitted). Pixels brighter than the background get a small negative OD.
    """
    import cv2

    a = _as_rgb(rgb)
    lut = od_lut(_background(background, a, StainConfig()))
    return cv2.LUT(a, np.ascontiguousarray(lut.reshape(1, 256, 3)))


#: ``-log10(max(I, 1))`` for I = 0..255; the background enters as an offset.
_NEG_LOG10 = (-np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0))).astype(np.float32)


def _transform(
    a: np.ndarray,
    bg: np.ndarray,
    m: np.ndarray,
    finish: Callable[[np.ndarray, slice], None] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``out = OD @ m`` (m: 3 x k) with ``OD_c = -log10(max(I_c, 1) / bg_c)``; float32.

    ``OD = L[I] + log10(bg)`` with one 256-entry table ``L``, so
    ``out = L[I] @ m + log10(bg) @ m``: ``cv2.LUT`` (uint8 -> float32) then one
    affine ``cv2.transform``, per row strip small enough to stay in cache;
    strips run on a few threads (OpenCV releases the GIL). With ``finish``,
    each strip's result is handed to ``finish(strip, rows)`` while still in
    cache instead of being stored (the returned array is then empty).
    """
    import cv2

    h, w = a.shape[:2]
    k = m.shape[1]
    if out is None:
        out = np.empty((0 if finish else h, w, k), dtype=np.float32)
    elif out.shape != (h, w, k) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise UserInputError(
            f"out must be a C-contiguous float32 array of shape {(h, w, k)}, "
            f"got {out.dtype} {out.shape}",
            hint="allocate it with np.empty((rows, cols, 3), np.float32)",
        )
    if h == 0 or w == 0:
        return out
    affine = np.empty((k, 4), dtype=np.float32)  # cv2.transform: dst = A[:, :3] @ src + A[:, 3]
    affine[:, :3] = m.T
    affine[:, 3] = np.log10(bg) @ m
    lut = _NEG_LOG10.reshape(1, 256)
    rows = max(1, _STRIP_PIXELS // w)
    starts = range(0, h, rows)
    local = threading.local()

    def work(r0: int) -> None:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((rows, w, 3), dtype=np.float32)
            local.res = np.empty((rows, w, k), dtype=np.float32)
        src = a[r0 : r0 + rows]
        od = buf[: src.shape[0]]
        cv2.LUT(src, lut, dst=od)
        dst = local.res[: src.shape[0]] if finish else out[r0 : r0 + rows]
        res = cv2.transform(od, affine, dst=dst if k > 1 else None)
        if k == 1 or res is not dst:
            dst[...] = res.reshape(dst.shape)
        if finish is not None:
            finish(dst, slice(r0, r0 + src.shape[0]))

    # Threads only for large arrays: tiles (a few strips) run single-threaded,
    # so a pipeline that processes tiles in parallel is not oversubscribed.
    workers = min(_MAX_THREADS, os.cpu_count() or 1, len(starts) // 4)
    if workers <= 1:
        for r0 in starts:
            work(r0)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, starts):
                pass
    return out


def deconvolve(
    rgb: np.ndarray,
    vectors: StainVectors | None = None,
    background: Any = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Stain optical densities (rows, cols, 3) float32, channels [H, DAB, residual].

    ``vectors`` default to :meth:`StainVectors.default`; ``background`` defaults
    to ``vectors.background``, then to :func:`estimate_background` of ``rgb``.
    Values are not clipped (slightly negative amounts are noise). ``out``, a
    C-contiguous float32 array of the result's shape, is filled and returned
    (reusing it across tiles saves the page faults of a fresh allocation).
    """
    a = _as_rgb(rgb)
    vectors = vectors or StainVectors.default()
    bg = _background(background if background is not None else vectors.background, a, StainConfig())
    return _transform(a, bg, vectors.inverse, out=out)


def dab_od(
    rgb: np.ndarray,
    vectors: StainVectors | None = None,
    background: Any = None,
) -> np.ndarray:
    """DAB optical density only (rows, cols) float32 (cheaper than :func:`deconvolve`)."""
    a = _as_rgb(rgb)
    vectors = vectors or StainVectors.default()
    bg = _background(background if background is not None else vectors.background, a, StainConfig())
    return _transform(a, bg, vectors.inverse[:, 1:2])[..., 0]
