"""Tissue masks of slides, in level-0 coordinates.

The mask is computed on a thumbnail at ``TissueConfig.thumbnail_mpp`` (8 µm/px;
finer for small images, so the thumbnail keeps at least ``thumbnail_min_size``
pixels on its long side) by :func:`her2_qupath.optics.tissue_mask`: the summed
optical density relative to the slide's white point (estimated from the glass,
:func:`her2_qupath.optics.estimate_white_point`), above a threshold adapted to
the noise of that glass, closed and cleaned in micrometres. Pale hematoxylin,
faint DAB and tissue filling the image edge to edge are kept.

Pen marks, cover-slip edges and air bubbles are not removed: dark ink has a
high optical density and is detected as tissue. Draw an ROI (or remove ink in
QuPath) for slides with pen marks.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import TissueConfig
from .errors import MPPMissing, UserInputError
from .optics import tissue_mask

__all__ = [
    "TissueMask",
    "detect_tissue",
    "thumbnail_mpp",
    "slide_thumbnail",
    "tissue_mask_from_rgb",
    "otsu_threshold",
]

logger = logging.getLogger(__name__)
_DEFAULT_TISSUE = TissueConfig()  # frozen: safe to share as a default


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask and how it maps to level-0 pixels.

    ``mask[r, c]`` covers level-0 pixels ``[c * downsample, (c + 1) * downsample)`` in
    x and ``[r * downsample, (r + 1) * downsample)`` in y. ``mpp`` is the pixel size of
    the mask (micrometres per mask pixel) when known.
    """

    mask: np.ndarray
    downsample: float
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.mask.ndim != 2:
            raise UserInputError(
                f"a tissue mask must be 2-D, got shape {self.mask.shape}",
                hint="pass a (rows, cols) boolean array",
            )
        if not self.downsample > 0:
            raise UserInputError(f"downsample must be > 0, got {self.downsample}")
        if self.mask.dtype != bool:
            object.__setattr__(self, "mask", self.mask.astype(bool))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def level0_mpp(self) -> float | None:
        """Pixel size of level 0 (``mpp / downsample``) when ``mpp`` is known."""
        return None if self.mpp is None else self.mpp / self.downsample

    @property
    def fraction(self) -> float:
        """Fraction of the mask that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_um2(self) -> float | None:
        """Tissue area in square micrometres (None without a pixel size)."""
        if self.mpp is None:
            return None
        return float(self.mask.sum()) * self.mpp**2

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    @functools.cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table with a zero first row/column, ``(rows + 1, cols + 1)``."""
        rows, cols = self.mask.shape
        dtype = np.int32 if rows * cols < 2**31 - 1 else np.int64
        table = np.zeros((rows + 1, cols + 1), dtype=dtype)
        table[1:, 1:] = self.mask
        # in place over the contiguous table: several times faster than into a slice
        np.cumsum(table, axis=0, out=table)
        np.cumsum(table, axis=1, out=table)
        return table

    def _area_below(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask pixels) in ``[0, u) x [0, v)`` for fractional u (x) and v (y).

        The integral of a piecewise-constant image is bilinear inside every pixel,
        so bilinear interpolation of the summed-area table is exact.
        """
        table = self._integral
        rows, cols = self.mask.shape
        u = np.clip(u, 0.0, cols)
        v = np.clip(v, 0.0, rows)
        c0 = np.minimum(np.floor(u).astype(np.int64), max(cols - 1, 0))
        r0 = np.minimum(np.floor(v).astype(np.int64), max(rows - 1, 0))
        fu = u - c0
        fv = v - r0
        c1 = np.minimum(c0 + 1, cols)
        r1 = np.minimum(r0 + 1, rows)
        t00 = table[r0, c0].astype(np.float64)
        t01 = table[r0, c1]
        t10 = table[r1, c0]
        t11 = table[r1, c1]
        return t00 * (1 - fu) * (1 - fv) + t01 * fu * (1 - fv) + t10 * (1 - fu) * fv + t11 * fu * fv

    def fractions_in(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of many level-0 boxes ``(n, 4)`` as ``(x, y, width, height)``.

        The fraction is over the whole box: parts of a box outside the mask count
        as glass. Partial mask pixels are weighted by their covered area.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0 or self.mask.size == 0:
            return np.zeros(boxes.shape[0])
        x0 = boxes[:, 0] / self.downsample
        y0 = boxes[:, 1] / self.downsample
        x1 = (boxes[:, 0] + boxes[:, 2]) / self.downsample
        y1 = (boxes[:, 1] + boxes[:, 3]) / self.downsample
        inside = (
            self._area_below(x1, y1)
            - self._area_below(x0, y1)
            - self._area_below(x1, y0)
            + self._area_below(x0, y0)
        )
        area = (x1 - x0) * (y1 - y0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(area > 0, inside / area, 0.0)
        return np.clip(frac, 0.0, 1.0)

    def fraction_in(self, box: tuple[float, float, float, float]) -> float:
        """Tissue fraction of one level-0 box ``(x, y, width, height)``."""
        return float(self.fractions_in(np.asarray([box], dtype=np.float64))[0])

    def to_geometry(self) -> Any:
        """The tissue as a shapely (Multi)Polygon in level-0 coordinates (holes kept).

        Outlines follow the pixel edges of the mask exactly: the union of the
        mask's row runs, with collinear vertices removed. An empty mask gives an empty polygon.
        """
        import shapely
        from shapely.geometry import MultiPolygon, Polygon

        if self.is_empty:
            return Polygon()
        rows, cols = self.mask.shape
        padded = np.zeros((rows, cols + 2), dtype=np.int8)
        padded[:, 1:-1] = self.mask
        step = np.diff(padded, axis=1)
        r_start, c_start = np.nonzero(step == 1)
        _, c_end = np.nonzero(step == -1)  # same row-major order as the starts
        ds = self.downsample
        runs = shapely.box(c_start * ds, r_start * ds, c_end * ds, (r_start + 1) * ds)
        geom = shapely.simplify(shapely.union_all(runs), 0.0)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        polys = [
            g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty
        ]
        if not polys:
            return Polygon()
        return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def otsu_threshold(values: np.ndarray, *, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (the between-class variance maximiser).

    A constant sample has no split: its value is returned.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    # a plateau of equal maxima (two well-separated modes): take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float(edges[int(best[len(best) // 2]) + 1])


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, config: TissueConfig = _DEFAULT_TISSUE, *, white: Any = None,
    glass: np.ndarray | None = None,
) -> np.ndarray:
    """The boolean tissue mask of an RGB image whose pixels are ``mpp`` micrometres.

    ``white`` is the white point (a :class:`~her2_qupath.optics.WhitePoint` or RGB);
    estimated from the image when omitted. ``glass``: its glass mask, when known.
    """
    return tissue_mask(rgb, mpp, white, config, glass=glass)


def _resize_area(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def thumbnail_mpp(dimensions: tuple[int, int], level0_mpp: float,
                  config: TissueConfig = _DEFAULT_TISSUE) -> float:
    """Pixel size of the thumbnail tissue (and the white point) is computed on.

    ``config.thumbnail_mpp`` for slides, finer for small images so that the
    thumbnail keeps ``config.thumbnail_min_size`` pixels on its long side, and
    never finer than the image itself.
    """
    long_um = max(dimensions) * level0_mpp
    return float(max(level0_mpp, min(config.thumbnail_mpp, long_um / config.thumbnail_min_size)))


def detect_tissue(
    slide_or_rgb: Any,
    config: TissueConfig = _DEFAULT_TISSUE,
    *,
    mpp: float | None = None,
    downsample: float | None = None,
    white: Any = None,
) -> TissueMask:
    """Detect tissue on a slide (via its thumbnail) or on an RGB array.

    * a slide (anything with ``.thumbnail(mpp=)``, ``.mpp`` and ``.dimensions``): the
      thumbnail at :func:`thumbnail_mpp` is analysed; ``mpp`` overrides the slide's
      level-0 pixel size. The mask maps to level 0 of the slide.
    * an RGB ``uint8`` array: ``mpp`` is the pixel size of the array (required);
      ``downsample`` says how many level-0 pixels one array pixel spans (default 1:
      the array is level 0). Arrays finer than :func:`thumbnail_mpp` are reduced first.

    ``white`` is the white point (estimated from the thumbnail when omitted).
    A blank image gives an empty mask.
    """
    if isinstance(slide_or_rgb, np.ndarray):
        rgb = slide_or_rgb
        if mpp is None:
            raise MPPMissing(
                "the pixel size of the image is needed to detect tissue",
                hint="pass mpp= (micrometres per pixel), or --mpp on the command line",
            )
        base = 1.0 if downsample is None else float(downsample)
        target = thumbnail_mpp(rgb.shape[:2], float(mpp), config) if rgb.ndim == 3 else mpp
        factor = target / mpp
        if factor > 1.0 and rgb.ndim == 3:
            shape = (
                max(1, int(round(rgb.shape[0] / factor))),
                max(1, int(round(rgb.shape[1] / factor))),
            )
            small = _resize_area(np.ascontiguousarray(rgb[..., :3]), shape)
            scale = rgb.shape[1] / shape[1]
            mask = tissue_mask_from_rgb(small, mpp * scale, config, white=white)
            return TissueMask(mask, base * scale, mpp * scale)
        mask = tissue_mask_from_rgb(rgb, mpp, config, white=white)
        return TissueMask(mask, base, float(mpp))
    if not hasattr(slide_or_rgb, "thumbnail"):
        raise UserInputError(
            f"detect_tissue needs a slide or an RGB array, got {type(slide_or_rgb).__name__}",
            hint="open the slide with her2_qupath.slide.open_slide",
        )
    slide = slide_or_rgb
    thumb, ds, level0_mpp = slide_thumbnail(slide, config, mpp=mpp)
    mask = tissue_mask_from_rgb(thumb, level0_mpp * ds, config, white=white)
    logger.info(
        "tissue: %.1f %% of a %dx%d thumbnail (%.2f um/px)",
        100.0 * mask.mean() if mask.size else 0.0,
        thumb.shape[1],
        thumb.shape[0],
        level0_mpp * ds,
    )
    return TissueMask(mask, ds, level0_mpp * ds)


def slide_thumbnail(slide: Any, config: TissueConfig = _DEFAULT_TISSUE, *,
                    mpp: float | None = None) -> tuple[np.ndarray, float, float]:
    """The slide's analysis thumbnail, its downsample from level 0 and the level-0 pixel size.

    ``mpp`` overrides the slide's own pixel size (the thumbnail is then asked
    by size, so a missing or wrong recorded size is not used).
    """
    width, height = slide.dimensions
    level0_mpp = float(slide.mpp) if mpp is None else float(mpp)  # MPPMissing names --mpp
    target = thumbnail_mpp((width, height), level0_mpp, config)
    ds = max(1.0, target / level0_mpp)
    if mpp is None and ds > 1.0:
        thumb = np.asarray(slide.thumbnail(mpp=target))
    else:
        thumb = np.asarray(slide.thumbnail(max_size=max(1, int(round(max(width, height) / ds)))))
    ds = width / thumb.shape[1] if thumb.shape[1] else 1.0
    return thumb, ds, level0_mpp
