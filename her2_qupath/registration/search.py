"""The start of the registration: which rotation, mirror and scale bring the IHC onto the H&E.

Nothing here depends on the pixel sizes or on the tissue-mask areas (which
differ with the stain: a pale IHC masks wider than a dense H&E):

* **Rotation and scale search**: every rotation in steps of
  ``rotation_step_deg`` (and the mirror image when allowed) at each scale of a
  geometric grid (:data:`SCALES`, sections of one block at one magnification
  differ by a few per cent; the grid covers 0.8–1.25 and the ECC refinement
  the rest), about the tissue centroids, translated by phase correlation and
  scored by normalised cross-correlation of the smoothed structure images.
* **Feature matching**: SIFT key points of the optical-density images,
  ratio-tested matches and a RANSAC similarity (which finds any scale). Across
  stains such matches are few, so the fit is one more candidate, never trusted
  alone.

The best candidates are refined with ECC restricted to the fixed tissue mask
at the coarse level, and the one with the highest correlation wins.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ._ops import ncc, warp

__all__ = ["SCALES", "Candidate", "centroid", "similarity", "rotation_search", "feature_candidate",
           "structure"]

log = logging.getLogger(__name__)

#: scales (moving px per fixed px) tried when the pixel sizes are unknown
SCALES: tuple[float, ...] = (0.8, 0.894, 1.0, 1.118, 1.25)
#: the scales tried when both pixel sizes are known (the ratio is then exact up to shrinkage)
SCALES_KNOWN: tuple[float, ...] = (0.9, 1.0, 1.11)
FEATURE_SIZE = 384  # longest side (px) of the images for SIFT
FEATURE_RATIO = 0.85  # Lowe's ratio test
FEATURE_MIN_INLIERS = 8  # fewer RANSAC inliers: no feature candidate


@dataclass
class Candidate:
    """A fixed → moving level warp (2×3) and how it was found."""

    w: np.ndarray
    score: float
    source: str  # "search" or "features"
    scale: float
    mirror: bool


def structure(od: np.ndarray, hema: np.ndarray, kind: str) -> np.ndarray:
    """The image aligned: ``"hema"`` (hematoxylin), ``"od"`` (all stains) or ``"mix"`` (their mean)."""
    if kind == "hema":
        return hema
    if kind == "od":
        return od
    return (0.5 * (od + hema)).astype(np.float32)


def centroid(mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight * mask
    s = float(w.sum())
    if s <= 0:
        h, wd = mask.shape
        return np.array([(wd - 1) / 2.0, (h - 1) / 2.0])
    ys, xs = np.indices(mask.shape)
    return np.array([float((xs * w).sum() / s), float((ys * w).sum() / s)])


def similarity(theta: float, mirror: bool, s: float, cf: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """fixed → moving level warp: rotate/mirror/scale about the fixed point ``cf`` onto ``cm``."""
    c, sn = math.cos(theta), math.sin(theta)
    lin = s * np.array([[c, -sn], [sn, c]])
    if mirror:
        lin = lin @ np.diag([-1.0, 1.0])
    t = cm - lin @ cf
    return np.hstack([lin, t[:, None]])


def rotation_search(fixed: np.ndarray, moving: np.ndarray, cf: np.ndarray, cm: np.ndarray, *,
                    step_deg: float, scales: tuple[float, ...], mirrors: tuple[bool, ...],
                    keep: int) -> tuple[list[Candidate], float]:
    """Best ``keep`` candidates of every (scale, mirror) and the distinctness of the overall peak."""
    import cv2

    size = (fixed.shape[1], fixed.shape[0])
    hann = cv2.createHanningWindow(size, cv2.CV_32F)
    angles = np.arange(0.0, 360.0, max(0.5, float(step_deg)))
    out: list[Candidate] = []
    all_scores: list[float] = []
    for s in scales:
        for mirror in mirrors:
            scored: list[Candidate] = []
            for deg in angles:
                w = similarity(math.radians(deg), mirror, s, cf, cm)
                (dx, dy), _ = cv2.phaseCorrelate(fixed, warp(moving, w, size), hann)
                w2 = w.copy()
                if abs(dx) <= size[0] / 3 and abs(dy) <= size[1] / 3:
                    w2[:, 2] += w[:, :2] @ np.array([dx, dy])
                score = ncc(fixed, warp(moving, w2, size))
                scored.append(Candidate(w2, score, "search", s, mirror))
                all_scores.append(score)
            scored.sort(key=lambda c: -c.score)
            out.extend(_distinct(scored, keep, step_deg))
    out.sort(key=lambda c: -c.score)
    arr = np.asarray(all_scores)
    distinct = float((arr.max() - np.median(arr)) / (float(np.std(arr)) or 1e-6))
    return out, distinct


def _distinct(ranked: list[Candidate], keep: int, step_deg: float) -> list[Candidate]:
    """The best ``keep`` candidates whose rotations differ by more than two steps."""
    chosen: list[Candidate] = []
    for c in ranked:
        ang = math.atan2(c.w[1, 0], c.w[0, 0])
        if all(abs((math.degrees(ang - math.atan2(o.w[1, 0], o.w[0, 0])) + 180) % 360 - 180) > 2 * step_deg
               for o in chosen):
            chosen.append(c)
        if len(chosen) >= keep:
            break
    return chosen


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def feature_candidate(fixed_od: np.ndarray, fixed_mask: np.ndarray, moving_od: np.ndarray,
                      moving_mask: np.ndarray, mirrors: tuple[bool, ...]) -> tuple[Candidate | None, dict]:
    """A RANSAC similarity from SIFT matches of the optical-density images, with its statistics.

    Images come at any common working resolution; they are resized to
    :data:`FEATURE_SIZE` here and the warp returned in the input's pixels.
    """
    import cv2

    k = FEATURE_SIZE / max(fixed_od.shape + moving_od.shape)
    k = min(1.0, k)

    def prep(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        im = cv2.resize(_u8(img), None, fx=k, fy=k, interpolation=cv2.INTER_AREA) if k < 1 else _u8(img)
        mk = cv2.resize(mask.astype(np.uint8) * 255, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_NEAREST)
        return im, cv2.dilate(mk, np.ones((7, 7), np.uint8))

    cv2.setRNGSeed(0)  # RANSAC draws samples: the same images give the same result
    sift = cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.02)
    fim, fmk = prep(fixed_od, fixed_mask)
    kf, df = sift.detectAndCompute(fim, fmk)
    best: tuple[int, np.ndarray | None, bool, int] = (0, None, False, 0)
    stats = {"keypoints": len(kf), "matches": 0, "inliers": 0}
    if df is None or len(kf) < 8:
        return None, stats
    mim, mmk = prep(moving_od, moving_mask)
    thr = max(2.0, 0.01 * max(fim.shape))
    for mirror in mirrors:
        img, mk = (mim[:, ::-1].copy(), mmk[:, ::-1].copy()) if mirror else (mim, mmk)
        km, dm = sift.detectAndCompute(img, mk)
        if dm is None or len(km) < 8:
            continue
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(df, dm, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < FEATURE_RATIO * p[1].distance]
        if len(good) < FEATURE_MIN_INLIERS:
            continue
        pf = np.float32([kf[g.queryIdx].pt for g in good])
        pm = np.float32([km[g.trainIdx].pt for g in good])
        s, inl = cv2.estimateAffinePartial2D(pf, pm, method=cv2.RANSAC, ransacReprojThreshold=thr,
                                             maxIters=5000, confidence=0.999)
        n = int(inl.sum()) if inl is not None else 0
        if s is not None and n > best[0]:
            best = (n, s, mirror, len(good))
    n, s, mirror, n_good = best
    stats.update(matches=n_good, inliers=n)
    if s is None or n < FEATURE_MIN_INLIERS:
        return None, stats
    w = np.vstack([s, [0.0, 0.0, 1.0]])
    if mirror:  # matched against the flipped image: x' = W - 1 - x
        flip = np.array([[-1.0, 0.0, mim.shape[1] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        w = flip @ w
    # back to the input resolution (pixel centres: x_small = k (x + 0.5) - 0.5)
    down = np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])
    w = np.linalg.inv(down) @ w @ down
    scale = float(math.sqrt(abs(np.linalg.det(w[:2, :2]))))
    return Candidate(w[:2], float(n), "features", scale, mirror), stats
