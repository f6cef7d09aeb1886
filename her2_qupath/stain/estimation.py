"""What the stains of an image are: Macenko's H and DAB vectors, and the H / eosin / DAB shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import StainConfig
from .deconvolution import _as_rgb, _background, rgb_to_od
from .vectors import StainVectors, _unit

__all__ = ["estimate_vectors", "StainCheck", "stain_shares"]

log = logging.getLogger(__name__)


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
