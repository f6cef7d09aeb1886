"""Colour deconvolution of brightfield IHC: hematoxylin, DAB and residual optical density.

The method is Ruifrok & Johnston's colour deconvolution (Anal Quant Cytol Histol
2001;23:291-9). Light passing a stained section follows the Beer-Lambert law,
``I_c = I0_c * 10^(-OD_c)``, so in optical-density space the contributions of
the stains add: ``OD = c_H * v_H + c_DAB * v_DAB + c_R * v_R`` with unit OD
vectors ``v``. Stacking the vectors as the rows of ``M`` gives ``OD = c @ M``
and the stain amounts ``c = OD @ inv(M)``.

Implementation: the uint8 -> OD step is a 256-entry lookup table
(``OD_c = -log10(max(I, 1)) + log10(I0_c)``; the per-channel background is an
additive offset), and the 3 x 3 unmixing is one per-pixel affine matrix
product; both run in float32 through OpenCV (``cv2.LUT`` and
``cv2.transform``) in cache-sized row strips on a few threads, so memory
stays bounded to the output on large arrays.

Pixel classes mirror the seed paper's segmentation map: 0 background (no
tissue), 1 HER2 0, 2 HER2 1+, 3 HER2 2+, 4 HER2 3+ from DAB OD thresholds
(QuPath's positive-cell defaults 0.2 / 0.4 / 0.6).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import StainConfig
from .errors import UserInputError

__all__ = [
    "StainVectors",
    "estimate_background",
    "rgb_to_od",
    "od_lut",
    "deconvolve",
    "dab_od",
    "dab_class_map",
    "class_map_from_stains",
    "estimate_vectors",
    "StainCheck",
    "stain_shares",
    "BACKGROUND_CLASS",
]

log = logging.getLogger(__name__)

#: Value of non-tissue pixels in a class map (HER2 0..3+ are 1..4).
BACKGROUND_CLASS = 0

Vec3 = tuple[float, float, float]

#: Pixels per strip: the float32 intermediate (12 bytes/pixel) stays in the L2 cache.
_STRIP_PIXELS = 1 << 17
#: At most this many threads per call.
_MAX_THREADS = 4


def _three_numbers(raw: Any, field: str, hint: str) -> list[float]:
    """Three numbers from a QuPath stain field such as ``"0.65111 0.70119 0.29049"``."""
    try:
        nums = [float(x) for x in re.split(r"[\s,]+", str(raw).strip()) if x]
    except ValueError as err:
        raise UserInputError(f"QuPath '{field}' is not numeric: {raw!r}",
                             hint="it must hold three numbers separated by spaces") from err
    if len(nums) != 3:
        raise UserInputError(f"QuPath '{field}' must hold three numbers, got {raw!r}", hint=hint)
    return nums


def _unit(v: Any, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise UserInputError(
            f"{what} stain vector must be three finite numbers, got {v!r}",
            hint="give the optical density of the stain in R, G and B, e.g. '0.65 0.70 0.29'",
        )
    n = float(np.linalg.norm(a))
    if n <= 1e-12:
        raise UserInputError(f"{what} stain vector is zero", hint="give a non-zero OD vector")
    return a / n


@dataclass(frozen=True)
class StainVectors:
    """Unit optical-density vectors of hematoxylin, DAB and a residual (third) stain.

    Vectors are normalised on construction. When ``residual`` is ``None`` it is
    the normalised cross product ``hematoxylin x dab`` (as scikit-image's
    ``hdx_from_rgb`` and QuPath do for two-stain images), oriented so that its
    components sum to a non-negative value.
    ``background`` optionally carries the white point that came with the
    vectors (QuPath stain strings have one); ``name`` is informative.
    """

    hematoxylin: Vec3
    dab: Vec3
    residual: Vec3 | None = None
    background: Vec3 | None = None
    name: str = "H-DAB"

    def __post_init__(self) -> None:
        h = _unit(self.hematoxylin, "hematoxylin")
        d = _unit(self.dab, "DAB")
        if abs(float(h @ d)) > 0.999:
            raise UserInputError(
                "hematoxylin and DAB stain vectors are (nearly) parallel",
                hint="give two distinct stain vectors",
            )
        if self.residual is None:
            r = np.cross(h, d)
            if r.sum() < 0:
                r = -r
            r = r / np.linalg.norm(r)
        else:
            r = _unit(self.residual, "residual")
        object.__setattr__(self, "hematoxylin", tuple(float(x) for x in h))
        object.__setattr__(self, "dab", tuple(float(x) for x in d))
        object.__setattr__(self, "residual", tuple(float(x) for x in r))
        m = np.array([h, d, r])
        if abs(np.linalg.det(m)) < 1e-6:
            raise UserInputError(
                "the three stain vectors are linearly dependent",
                hint="leave the residual out so that it is derived as the cross product",
            )
        if self.background is not None:
            bg = np.asarray(self.background, dtype=np.float64).reshape(-1)
            if bg.shape != (3,) or np.any(bg <= 0) or np.any(bg > 255):
                raise UserInputError(
                    f"background must be three values in (0, 255], got {self.background!r}",
                    hint="give the RGB of empty glass, e.g. '242 240 245'",
                )
            object.__setattr__(self, "background", tuple(float(x) for x in bg))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls, config: StainConfig | None = None) -> StainVectors:
        """The vectors of a :class:`StainConfig` (by default Ruifrok & Johnston's H-DAB)."""
        config = config or StainConfig()
        return cls(config.hematoxylin, config.dab, config.residual, config.background)

    @classmethod
    def from_qupath(cls, text_or_dict: str | Mapping[str, Any]) -> StainVectors:
        """Parse QuPath's colour-deconvolution stains.

        Accepts the JSON object QuPath writes in workflow scripts, with or without
        the surrounding call, e.g.
        ``setColorDeconvolutionStains('{"Name" : "H-DAB default", "Stain 1" : "Hematoxylin",
        "Values 1" : "0.65111 0.70119 0.29049", "Stain 2" : "DAB", "Values 2" : "0.26917
        0.56824 0.77759", "Background" : " 255 255 255"}')``, or the same as a dict.
        ``Stain 3``/``Values 3`` are optional. The stain named DAB (case-insensitive)
        is the chromogen; otherwise stain 2 is taken as the chromogen and a warning
        is logged.
        """
        if isinstance(text_or_dict, Mapping):
            data: Mapping[str, Any] = text_or_dict
        else:
            text = str(text_or_dict)
            start, end = text.find("{"), text.rfind("}")
            if start < 0 or end <= start:
                raise UserInputError(
                    "no stain definition found in the QuPath stain text",
                    hint="paste the JSON object from setColorDeconvolutionStains('{...}')",
                )
            try:
                data = json.loads(text[start : end + 1])
            except json.JSONDecodeError as err:
                raise UserInputError(
                    f"QuPath stain text is not valid JSON: {err.msg} at character {err.pos}",
                    hint="copy the whole setColorDeconvolutionStains('...') line from QuPath",
                ) from err
            if not isinstance(data, Mapping):
                raise UserInputError(
                    "QuPath stain text must be a JSON object", hint='it starts with {"Name" : ...'
                )

        def values(i: int) -> np.ndarray | None:
            raw = data.get(f"Values {i}")
            if raw is None:
                return None
            return np.array(_three_numbers(
                raw, f"Values {i}", "give the R, G and B optical densities separated by spaces"))

        v1, v2, v3 = values(1), values(2), values(3)
        if v1 is None or v2 is None:
            raise UserInputError(
                "QuPath stain text needs 'Values 1' and 'Values 2'",
                hint="copy the whole setColorDeconvolutionStains('...') line from QuPath",
            )
        n1 = str(data.get("Stain 1", "")).strip().lower()
        n2 = str(data.get("Stain 2", "")).strip().lower()
        if "dab" in n1 and "dab" not in n2:
            v1, v2 = v2, v1
        elif "dab" not in n2:
            log.warning(
                "QuPath stains %r/%r name no DAB stain; taking stain 2 as the chromogen",
                data.get("Stain 1"),
                data.get("Stain 2"),
            )
        background: Vec3 | None = None
        raw_bg = data.get("Background")
        if raw_bg is not None:
            bg = _three_numbers(raw_bg, "Background", "e.g. ' 242 240 245'")
            background = (bg[0], bg[1], bg[2])
        return cls(
            tuple(v1),  # type: ignore[arg-type]
            tuple(v2),  # type: ignore[arg-type]
            None if v3 is None else tuple(v3),  # type: ignore[arg-type]
            background,
            str(data.get("Name", "QuPath stains")),
        )

    def to_qupath(self, background: Vec3 | None = None) -> str:
        """The QuPath ``setColorDeconvolutionStains`` JSON for these vectors."""
        bg = background or self.background or (255.0, 255.0, 255.0)

        def fmt(v: Vec3) -> str:
            return " ".join(f"{x:.5f}" for x in v)

        assert self.residual is not None
        obj = {
            "Name": self.name,
            "Stain 1": "Hematoxylin",
            "Values 1": fmt(self.hematoxylin),
            "Stain 2": "DAB",
            "Values 2": fmt(self.dab),
            "Stain 3": "Residual",
            "Values 3": fmt(self.residual),
            "Background": " " + " ".join(str(int(round(x))) for x in bg),
        }
        return json.dumps(obj, separators=(", ", " : "))

    # ------------------------------------------------------------------ matrices
    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 float64 matrix whose rows are the H, DAB and residual OD vectors (``OD = c @ M``)."""
        return np.array([self.hematoxylin, self.dab, self.residual], dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        """``inv(matrix)``: stain amounts ``c = OD @ inverse``."""
        return np.linalg.inv(self.matrix)


# ---------------------------------------------------------------------- background / OD
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
    from .optics import estimate_white_point

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
    from .optics import od_lut as _lut

    return _lut(_background(background, None, StainConfig()))


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


def dab_class_map(
    rgb: np.ndarray,
    config: StainConfig = StainConfig(),  # noqa: B008 (frozen, immutable default)
    *,
    vectors: StainVectors | None = None,
    background: Any = None,
    tissue_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Pixel classes (rows, cols) uint8: 0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+.

    A pixel is tissue when its summed optical density over R, G and B (QuPath's
    "OD Sum") is at least ``config.tissue_od`` and, if ``tissue_mask`` is given,
    the mask is true there. Tissue pixels are classed by DAB OD against
    ``config.thresholds = (t1, t2, t3)``: ``< t1`` -> 1, ``[t1, t2)`` -> 2,
    ``[t2, t3)`` -> 3, ``>= t3`` -> 4 (QuPath's ``>=`` convention).
    """
    a = _as_rgb(rgb)
    if vectors is None:
        vectors = estimate_vectors(a, config=config) if config.estimate_vectors else None
        vectors = vectors or StainVectors.default(config)
    if background is None:
        background = vectors.background
    bg = _background(background, a, config)
    t1, t2, t3 = (np.float32(t) for t in config.thresholds)
    if not (0 < t1 < t2 < t3):
        raise UserInputError(
            f"DAB thresholds must increase, got {config.thresholds}",
            hint="e.g. thresholds=(0.2, 0.4, 0.6)",
        )
    tm = None
    if tissue_mask is not None:
        tm = np.asarray(tissue_mask, dtype=bool)
        if tm.shape != a.shape[:2]:
            raise UserInputError(
                f"tissue_mask shape {tm.shape} differs from the image's {a.shape[:2]}",
                hint="resize the mask to the tile",
            )
    m = np.empty((3, 2), dtype=np.float64)
    m[:, 0] = vectors.inverse[:, 1]  # DAB amount
    m[:, 1] = 1.0  # OD sum
    out = np.empty(a.shape[:2], dtype=np.uint8)
    tissue_od = np.float32(config.tissue_od)

    import cv2

    def finish(res: np.ndarray, rows: slice) -> None:
        dab, odsum = cv2.split(res)  # contiguous planes compare 3x faster
        o = out[rows]
        tmp = np.empty(o.shape, dtype=bool)
        np.greater_equal(dab, t1, out=o)  # bool -> 0/1
        np.greater_equal(dab, t2, out=tmp)
        o += tmp
        np.greater_equal(dab, t3, out=tmp)
        o += tmp
        o += 1
        np.greater_equal(odsum, tissue_od, out=tmp)
        if tm is not None:
            tmp &= tm[rows]
        o *= tmp

    _transform(a, bg, m, finish)
    return out


def class_map_from_stains(
    stains: np.ndarray,
    config: StainConfig = StainConfig(),  # noqa: B008 (frozen, immutable default)
    *,
    vectors: StainVectors | None = None,
    tissue_mask: np.ndarray | None = None,
) -> np.ndarray:
    """The :func:`dab_class_map` classes from an already deconvolved array.

    ``stains`` is :func:`deconvolve`'s output for the same ``vectors``; the OD
    sum is recovered as ``stains @ vectors.matrix.sum(axis=1)``, so a caller
    that needs both the stain amounts and the classes deconvolves only once.
    """
    st = np.asarray(stains)
    if st.ndim != 3 or st.shape[2] != 3:
        raise UserInputError(
            f"expected deconvolved stains of shape (rows, cols, 3), got {st.shape}",
            hint="pass the output of stain.deconvolve",
        )
    vectors = vectors or StainVectors.default(config)
    t1, t2, t3 = config.thresholds
    if not (0 < t1 < t2 < t3):
        raise UserInputError(
            f"DAB thresholds must increase, got {config.thresholds}",
            hint="e.g. thresholds=(0.2, 0.4, 0.6)",
        )
    dab = st[..., 1]
    odsum = st @ vectors.matrix.sum(axis=1).astype(np.float32)
    out = np.ones(dab.shape, dtype=np.uint8)
    out += dab >= t1
    out += dab >= t2
    out += dab >= t3
    keep = odsum >= config.tissue_od
    if tissue_mask is not None:
        tm = np.asarray(tissue_mask, dtype=bool)
        if tm.shape != dab.shape:
            raise UserInputError(
                f"tissue_mask shape {tm.shape} differs from the stains' {dab.shape}",
                hint="resize the mask to the tile",
            )
        keep &= tm
    out *= keep
    return out


# ---------------------------------------------------------------------- Macenko
def estimate_vectors(
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    background: Any = None,
    config: StainConfig | None = None,
) -> StainVectors | None:
    """Estimate H and DAB vectors from the image (Macenko et al., ISBI 2009).

    On tissue pixels (``mask`` if given, and OD sum above
    ``config.macenko_min_od`` in every channel's sum), the OD vectors are
    projected on the plane of the two main singular vectors; the directions at
    the ``config.macenko_alpha`` and ``100 - alpha`` angle percentiles are the
    two stains. They are assigned to hematoxylin and DAB by their similarity to
    the configured reference vectors (DAB absorbs blue most, hematoxylin red).

    Returns ``None`` (and logs why) when the image does not hold two separable
    stains: too few tissue pixels, or the two directions are nearly the same,
    or one of them is far from both references. Callers then keep the defaults.
    """
    config = config or StainConfig()
    a = _as_rgb(rgb)
    od = rgb_to_od(a, _background(background, a, config)).reshape(-1, 3)
    sel = od.sum(axis=1) >= config.macenko_min_od
    if mask is not None:
        sel &= np.asarray(mask, dtype=bool).reshape(-1)
    od = od[sel]
    if od.shape[0] < config.macenko_min_pixels:
        log.info("stain estimation: only %d tissue pixels; keeping the defaults", od.shape[0])
        return None
    step = max(1, od.shape[0] // 1_000_000)
    od = od[::step].astype(np.float64)
    _, _, vt = np.linalg.svd(od.T @ od)
    plane = vt[:2]  # rows: the two main directions
    if plane[0].sum() < 0:
        plane[0] = -plane[0]
    if plane[1].sum() < 0:
        plane[1] = -plane[1]
    proj = od @ plane.T
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [config.macenko_alpha, 100 - config.macenko_alpha])
    v1 = np.cos(lo) * plane[0] + np.sin(lo) * plane[1]
    v2 = np.cos(hi) * plane[0] + np.sin(hi) * plane[1]
    v1 = v1 / np.linalg.norm(v1) * np.sign(v1.sum() or 1.0)
    v2 = v2 / np.linalg.norm(v2) * np.sign(v2.sum() or 1.0)
    if float(v1 @ v2) > config.macenko_max_cos:
        log.info("stain estimation: the two stain directions coincide; keeping the defaults")
        return None
    ref_h = _unit(config.hematoxylin, "hematoxylin")
    ref_d = _unit(config.dab, "DAB")
    # Assign by the larger total similarity of the two possible pairings.
    if (v1 @ ref_h + v2 @ ref_d) >= (v2 @ ref_h + v1 @ ref_d):
        h, d = v1, v2
    else:
        h, d = v2, v1
    if min(h @ ref_h, d @ ref_d) < config.macenko_min_ref_cos:
        log.info(
            "stain estimation: estimated vectors are far from H-DAB (cos %.2f, %.2f); keeping the defaults",
            h @ ref_h,
            d @ ref_d,
        )
        return None
    return StainVectors(tuple(h), tuple(d), None, None, "estimated")  # type: ignore[arg-type]


@dataclass(frozen=True)
class StainCheck:
    """Shares of hematoxylin, eosin and DAB in a slide's tissue optical density."""

    hematoxylin: float
    eosin: float
    dab: float
    tissue_pixels: int

    def looks_like_he(self, config: StainConfig | None = None) -> bool:
        """True when eosin carries more of the stain than a DAB IHC slide shows."""
        return self.eosin > (config or StainConfig()).max_ihc_eosin_share


def stain_shares(rgb: np.ndarray, background: Any = None, *, config: StainConfig | None = None,
                 tissue_mask: np.ndarray | None = None) -> StainCheck:
    """Unmix tissue OD into hematoxylin, eosin and DAB and return each one's share.

    Tells an H&E slide from a DAB IHC slide (eosin share; see
    ``StainConfig.max_ihc_eosin_share``), e.g. to catch swapped ``--he``/``--ihc``.
    Use a thumbnail. Negative amounts count as zero.
    """
    config = config or StainConfig()
    a = _as_rgb(rgb)
    od = rgb_to_od(a, _background(background, a, config)).reshape(-1, 3)
    tissue = od.sum(axis=1) > config.tissue_od
    if tissue_mask is not None:
        tissue &= np.asarray(tissue_mask, dtype=bool).reshape(-1)
    m = np.stack([_unit(v, name) for v, name in ((config.hematoxylin, "hematoxylin"),
                                                 (config.eosin, "eosin"), (config.dab, "dab"))])
    amounts = np.clip(od[tissue] @ np.linalg.inv(m), 0.0, None).sum(axis=0, dtype=np.float64)
    total = float(amounts.sum())
    if total <= 0:
        return StainCheck(0.0, 0.0, 0.0, int(tissue.sum()))
    h, e, d = (float(x) / total for x in amounts)
    return StainCheck(h, e, d, int(tissue.sum()))
