"""Pixel classes of the seed paper's segmentation map from the DAB optical density."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import StainConfig
from ..errors import UserInputError
from .deconvolution import _as_rgb, _background, _transform
from .estimation import estimate_vectors
from .vectors import StainVectors

__all__ = ["BACKGROUND_CLASS", "dab_class_map", "class_map_from_stains"]

#: Value of non-tissue pixels in a class map (HER2 0..3+ are 1..4).
BACKGROUND_CLASS = 0


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
