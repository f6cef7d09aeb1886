"""What a pathologist should see before trusting the number: QC warnings and evaluability.

Swapped or mislabelled stains, a doubtful white point, stain vectors far from
QuPath's H-DAB defaults, little tissue, much tissue (or many tiles) left out of the
count; and each region's "not evaluable" reasons (:func:`her2_qupath.scoring.evaluability`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ..config import ScoreOptions, StainConfig
from ..scoring import evaluability
from ..stain import stain_shares

__all__ = ["MAX_EXCLUDED_SHARE", "MAX_VECTOR_ANGLE_DEG"]

log = logging.getLogger(__name__)


def _stain_warnings(ihc_thumb: np.ndarray, ihc_tissue: np.ndarray, background: Any, he: Any,
                    opts: ScoreOptions) -> list[str]:
    """Warn when the IHC slide looks like H&E (or the H&E slide like IHC): swapped inputs?"""
    out = []
    check = stain_shares(ihc_thumb, background, config=opts.stain, tissue_mask=ihc_tissue)
    if check.tissue_pixels and check.looks_like_he(opts.stain):
        out.append(f"the IHC slide looks like an H&E stain (eosin carries {100 * check.eosin:.0f} % "
                   "of the stain): check that --ihc is the HER2 IHC slide; its DAB figures are "
                   "not meaningful otherwise")
    if he is not None:
        he_thumb = he.thumbnail(mpp=opts.tissue.thumbnail_mpp)
        he_check = stain_shares(he_thumb, config=opts.stain)
        if he_check.tissue_pixels and not he_check.looks_like_he(opts.stain):
            out.append(f"the H&E slide shows almost no eosin ({100 * he_check.eosin:.0f} % of the "
                       "stain): check that --he and --ihc are not swapped")
    for w in out:
        log.warning(w)
    return out


#: Stain vectors further than this angle (degrees) from QuPath's H-DAB defaults are flagged.
MAX_VECTOR_ANGLE_DEG = 25.0


def _qc_warnings(white: Any, vectors: Any, tissue: Any, opts: ScoreOptions) -> list[str]:
    """Warnings a pathologist should see before trusting the number."""
    out: list[str] = []
    if white.source in ("glass", "fallback") and not white.reliable:
        out.append(f"white point doubtful: {white.note}; measured "
                   f"{[round(x) for x in white.rgb]} — pass --background R,G,B (the RGB of "
                   "empty glass on this slide) if it looks wrong")
    ref = StainConfig()
    for name, v, r in (("hematoxylin", vectors.hematoxylin, ref.hematoxylin),
                       ("DAB", vectors.dab, ref.dab)):
        a, b = np.asarray(v, float), np.asarray(r, float)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        angle = float(np.degrees(np.arccos(min(1.0, max(-1.0, cos)))))
        if angle > MAX_VECTOR_ANGLE_DEG:
            out.append(f"{name} stain vector is {angle:.0f}° from QuPath's H-DAB default: "
                       "check the stain vectors")
    area = tissue.area_um2
    if area is not None and area * 1e-6 < 10 * opts.scoring.min_tissue_mm2:
        out.append(f"little tissue: {area * 1e-6:.3f} mm² on the slide")
    for w in out:
        log.warning(w)
    return out


#: QC: warn when more than this share of the tissue (or of the tiles) is left out of the count
MAX_EXCLUDED_SHARE = 0.5


def _excluded_warnings(region: Any, opts: ScoreOptions) -> list[str]:
    """A large share of the tissue left out of the count is worth a look."""
    out = []
    if region.tissue_pixels:
        share = 1.0 - region.analysed_pixels / region.tissue_pixels
        if share > MAX_EXCLUDED_SHARE:
            out.append(f"{100 * share:.0f} % of the tissue was left out of the count as too pale "
                       "to be tumour (stroma, fat, lumina): check the overlay, or draw the tumour")
    total = region.n_tiles + region.n_tiles_excluded
    if total and region.n_tiles_excluded / total > MAX_EXCLUDED_SHARE:
        out.append(f"{region.n_tiles_excluded} of {total} tiles were called non-tumour on the H&E "
                   "slide and left out")
    return out


def _judged(region: Any, white: Any, opts: ScoreOptions) -> Any:
    """The region with its "not evaluable" reasons (:func:`scoring.evaluability`) filled in."""
    reasons = list(evaluability(region, pixel_area_um2=opts.tiling.mpp ** 2, config=opts.scoring))
    if not white.usable:
        reasons.insert(0, f"unreliable white point: {white.note}; pass --background R,G,B")
    return dataclasses.replace(region, not_evaluable=tuple(reasons))
