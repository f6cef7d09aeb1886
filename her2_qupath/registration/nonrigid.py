"""Non-rigid refinement: a smooth displacement field on top of the affine transform.

Block matching on the hematoxylin images (the same structures in H&E and IHC):
the fixed image is cut into small patches on a regular grid inside the tissue,
each patch is located in the affinely aligned moving image by normalised
cross-correlation (``cv2.matchTemplate``, insensitive to the stains' different
contrast) within a small search radius, with sub-pixel refinement of the
correlation peak. The local displacements are combined into a dense field by
normalised convolution with a wide Gaussian (each weighted by its correlation),
which keeps only the slow, section-scale deformations (stretching, bending).
The field is sampled on a coarse grid that
:class:`~her2_qupath.registration.transform.DisplacementField` interpolates with
cubic B-splines.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..config import RegistrationConfig
from ._images import level_matrix
from .transform import DisplacementField, Transform

if TYPE_CHECKING:
    from .core import Pair

__all__ = ["refine_nonrigid", "match_blocks"]

log = logging.getLogger(__name__)


def _subpixel(a: float, b: float, c: float) -> float:
    """Offset of a parabola's peak through three samples (b the largest)."""
    d = a - 2.0 * b + c
    return float(0.5 * (a - c) / d) if d < 0 else 0.0


def match_blocks(fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray, *, patch: int, step: int,
                 radius: int, min_ncc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local displacements ``moving(p + d) ≈ fixed(p)`` at grid points inside ``valid``.

    Returns points ``(N, 2)`` (x, y), displacements ``(N, 2)`` and peak correlations ``(N,)``.
    """
    import cv2

    h, w = fixed.shape
    half = patch // 2
    pts, disp, conf = [], [], []
    for y in range(half + radius, h - half - radius, step):
        for x in range(half + radius, w - half - radius, step):
            if not valid[y, x]:
                continue
            tpl = fixed[y - half:y + half, x - half:x + half]
            if float(tpl.std()) < 0.02:
                continue
            win = moving[y - half - radius:y + half + radius, x - half - radius:x + half + radius]
            r = cv2.matchTemplate(win, tpl, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (px, py) = cv2.minMaxLoc(r)
            if peak < min_ncc or not (0 < px < r.shape[1] - 1 and 0 < py < r.shape[0] - 1):
                continue  # weak match, or the peak is on the search border
            ddx = _subpixel(r[py, px - 1], r[py, px], r[py, px + 1])
            ddy = _subpixel(r[py - 1, px], r[py, px], r[py + 1, px])
            pts.append((x, y))
            disp.append((px + ddx - radius, py + ddy - radius))
            conf.append(peak)
    return (np.asarray(pts, dtype=np.int64).reshape(-1, 2), np.asarray(disp, dtype=np.float32).reshape(-1, 2),
            np.asarray(conf, dtype=np.float32))


def _densify(shape: tuple[int, int], pts: np.ndarray, disp: np.ndarray, conf: np.ndarray,
             sigma: float) -> np.ndarray:
    """Normalised convolution of sparse displacements; fades to zero far from any match."""
    import cv2

    h, w = shape
    den = np.zeros((h, w), np.float32)
    num = np.zeros((h, w, 2), np.float32)
    den[pts[:, 1], pts[:, 0]] = conf
    num[pts[:, 1], pts[:, 0]] = disp * conf[:, None]
    dens = cv2.GaussianBlur(den, (0, 0), sigma)
    flow = np.stack([cv2.GaussianBlur(num[..., k], (0, 0), sigma) / np.maximum(dens, 1e-9) for k in range(2)], -1)
    fade = np.clip(dens / max(float(dens.max()) * 0.05, 1e-9), 0.0, 1.0)
    return flow * fade[..., None]


def refine_nonrigid(pair: Pair, affine: Transform, cfg: RegistrationConfig) -> DisplacementField | None:
    """A smooth displacement field refining ``affine`` on the images of ``pair`` (or None)."""
    import cv2

    from .core import warp_moving_to_fixed

    f = pair.fixed
    warped = warp_moving_to_fixed(pair, affine, pair.moving.feat)
    warped_mask = warp_moving_to_fixed(pair, affine, pair.moving.mask.astype(np.uint8), nearest=True) > 0
    valid = f.mask & warped_mask
    # bound the work on large tissue: widen the patch spacing to at most max_patches patches
    step = max(int(cfg.nonrigid_step_px), int(np.ceil(np.sqrt(valid.sum() / max(cfg.nonrigid_max_patches, 1)))))
    pts, disp, conf = match_blocks(
        cv2.GaussianBlur(f.feat, (0, 0), 1.0), cv2.GaussianBlur(warped, (0, 0), 1.0), valid,
        patch=int(cfg.nonrigid_patch_px), step=step,
        radius=int(cfg.nonrigid_radius_px), min_ncc=float(cfg.nonrigid_min_ncc),
    )
    if len(pts) < 16:
        log.info("only %d reliable local matches: no non-rigid refinement", len(pts))
        return None
    sigma = float(cfg.nonrigid_smoothing_px)
    flow = _densify(f.feat.shape, pts, disp, conf, sigma)
    if cfg.nonrigid_outlier_px > 0:
        # drop matches that disagree with their smoothed neighbourhood, then smooth again
        resid = np.hypot(*(disp - flow[pts[:, 1], pts[:, 0]]).T)
        keep = resid <= cfg.nonrigid_outlier_px
        if keep.sum() >= 16 and not keep.all():
            log.debug("non-rigid: %d of %d matches are outliers", int((~keep).sum()), len(keep))
            pts, disp, conf = pts[keep], disp[keep], conf[keep]
            flow = _densify(f.feat.shape, pts, disp, conf, sigma)
    g = max(1, int(cfg.nonrigid_grid_px))
    h, w = f.feat.shape
    rows = np.arange(0, h + g, g)
    cols = np.arange(0, w + g, g)
    sample = flow[np.ix_(rows.clip(max=h - 1), cols.clip(max=w - 1))]
    sx, sy = f.scale
    sf = level_matrix(f.scale)
    log.debug("non-rigid: %d matches, max displacement %.2f px", len(pts), float(np.abs(sample).max()))
    return DisplacementField(
        origin=(float(sf[0, 2]), float(sf[1, 2])),
        spacing=(float(g * sx), float(g * sy)),
        dx=(sample[..., 0] * sx).astype(np.float32),
        dy=(sample[..., 1] * sy).astype(np.float32),
    )
