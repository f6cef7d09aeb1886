"""How far a registration can be trusted: forward-backward consistent local matches.

Tissue-mask overlap says little (masks differ with the stain: a pale IHC masks
wider than a dense H&E) and a global correlation depends on the stains. What
does not depend on them: once two sections are aligned, each small patch of
the H&E finds its partner in the aligned IHC close to where it is, and the IHC
patch there finds the H&E patch back (forward-backward consistency). On a
wrong alignment the correlation peaks land anywhere and rarely agree.

:func:`consistency` works at the coarse level (``coarse_size`` px, where a
good registration is within a pixel or two): it cuts the fixed image into
patches of :data:`PATCH_PX` on a grid inside its tissue, keeps the textured
ones, locates each in the aligned IHC within :data:`RADIUS_PX` by normalised
cross-correlation and the IHC patch there back in the H&E; the pair is
**consistent** when both peaks reach :data:`MIN_PEAK` and the two
displacements cancel to within :data:`AGREE_PX`. Two figures follow:

* ``consistent_share``: consistent patches / textured patches (are the
  matches meaningful at all?);
* ``residual_pct``: the median length of the consistent displacements in %
  of the image diagonal, an estimate of the remaining misalignment made by
  the images themselves.

``score = min(share / (2·MIN_SHARE), 1 − residual / (2·MAX_RESIDUAL_PCT))``
clipped to [0, 1], so that the default ``min_quality`` of 0.5 means *share ≥
MIN_SHARE and residual ≤ MAX_RESIDUAL_PCT*. Calibration (ANHIR pairs, see
``docs/registration.md``): correct registrations of the rat kidney and five
lung-lesion pairs (every stain; rotated, mirrored, rescaled, cropped; affine
and non-rigid) give shares 0.10–0.75 and residuals 0.2–1.0 %; the same
transforms spoiled by 3° of rotation or 1.5–3 % of shift give residuals
0.9–3.2 %; unrelated tissue and a mirror image registered without
``allow_mirror`` give residuals of 1.3–3 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._ops import subpixel
from .pair import Pair, warp_moving_to_fixed
from .transform import Transform

__all__ = ["consistency", "reliability_score", "measure", "MIN_SHARE", "MAX_RESIDUAL_PCT"]

PATCH_PX = 16  # patch side (coarse-level px)
STEP_PX = 8  # grid spacing of the patches
RADIUS_PX = 12  # search radius of each match
AGREE_PX = 1.5  # forward + backward displacement must cancel to within this
MIN_PEAK = 0.2  # weaker correlation peaks do not count
MIN_STD = 0.03  # flatter patches (glass, uniform tissue) are not judged
MIN_SHARE = 0.06  # fewer consistent patches: the images do not match (score 0.5 here)
MAX_RESIDUAL_PCT = 1.2  # larger residual (% of the diagonal): misaligned (score 0.5 here)


def _locate(template: np.ndarray, window: np.ndarray, radius: int) -> tuple[float, float, float]:
    import cv2

    r = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    _, peak, _, (px, py) = cv2.minMaxLoc(r)
    sx = subpixel(r[py, px - 1], r[py, px], r[py, px + 1]) if 0 < px < r.shape[1] - 1 else 0.0
    sy = subpixel(r[py - 1, px], r[py, px], r[py + 1, px]) if 0 < py < r.shape[0] - 1 else 0.0
    return float(px + sx - radius), float(py + sy - radius), float(peak)


def consistency(fixed: np.ndarray, warped: np.ndarray, fixed_mask: np.ndarray,
                warped_mask: np.ndarray) -> dict[str, Any]:
    """Forward-backward consistency of local matches between ``fixed`` and the aligned ``warped``.

    Both images are on the fixed grid (the moving one already resampled through
    the transform). Returns the patch counts, the consistent share and the
    residual displacement (median over the consistent patches, % of the diagonal).
    """
    h, w = fixed.shape
    half, rad = PATCH_PX // 2, RADIUS_PX
    lo = half + rad
    n_tex = 0
    disp: list[float] = []
    for y in range(lo, h - lo, STEP_PX):
        for x in range(lo, w - lo, STEP_PX):
            if not fixed_mask[y, x]:
                continue
            tf = fixed[y - half:y + half, x - half:x + half]
            if float(tf.std()) < MIN_STD:
                continue
            n_tex += 1
            if not warped_mask[y, x]:
                continue  # the IHC shows glass where the H&E has tissue
            tm = warped[y - half:y + half, x - half:x + half]
            if float(tm.std()) < MIN_STD * 0.5:
                continue
            dx, dy, pf = _locate(tf, warped[y - lo:y + lo, x - lo:x + lo], rad)
            bx, by, pb = _locate(tm, fixed[y - lo:y + lo, x - lo:x + lo], rad)
            if min(pf, pb) >= MIN_PEAK and np.hypot(dx + bx, dy + by) <= AGREE_PX:
                disp.append(float(np.hypot(dx, dy)))
    share = len(disp) / n_tex if n_tex else 0.0
    resid = 100.0 * float(np.median(disp)) / float(np.hypot(h, w)) if disp else 100.0
    return {"patches": n_tex, "consistent": len(disp), "consistent_share": round(share, 4),
            "residual_pct": round(resid, 3)}


def reliability_score(share: float, residual_pct: float) -> float:
    """One number in [0, 1]; 0.5 where either figure reaches its limit."""
    a = share / (2.0 * MIN_SHARE)
    b = 1.0 - residual_pct / (2.0 * MAX_RESIDUAL_PCT)
    return float(np.clip(min(a, b), 0.0, 1.0))


def measure(pair: Pair, transform: Transform, channel: np.ndarray, moving_channel: np.ndarray,
            maps: Any = None) -> dict[str, Any]:
    """Consistency of ``transform`` on the images of ``pair`` (structure images given)."""
    import cv2

    warped = warp_moving_to_fixed(pair, transform, moving_channel, maps=maps)
    wmask = warp_moving_to_fixed(pair, transform, pair.moving.mask.astype(np.uint8), nearest=True, maps=maps) > 0
    a = cv2.GaussianBlur(channel, (0, 0), 1.0)
    b = cv2.GaussianBlur(warped, (0, 0), 1.0)
    return consistency(a, b, pair.fixed.mask, wmask)
