"""Small image operations shared by the registration stages (warping, correlation, ECC, MI, sub-pixel peaks)."""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["m3", "warp", "ncc", "ecc", "nmi", "dilate", "subpixel"]

log = logging.getLogger(__name__)


def m3(w: np.ndarray) -> np.ndarray:
    """A 2×3 (or 3×3) matrix as 3×3 float64."""
    w = np.asarray(w, dtype=np.float64)
    return np.vstack([w[:2], [0.0, 0.0, 1.0]])


def subpixel(a: float, b: float, c: float) -> float:
    """Offset of a parabola's peak through three samples (b the largest)."""
    d = a - 2.0 * b + c
    return float(0.5 * (a - c) / d) if d < 0 else 0.0


def warp(img: np.ndarray, w: np.ndarray, size: tuple[int, int], *, nearest: bool = False,
         border: float = 0.0) -> np.ndarray:
    """Sample ``img`` (moving level) on the fixed level grid through ``w`` (fixed → moving)."""
    import cv2

    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(img, np.asarray(w, dtype=np.float64)[:2], size, flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def ncc(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images (over ``weight > 0`` when given)."""
    if weight is not None:
        if weight.sum() < 16:
            return 0.0
        a, b = a[weight], b[weight]
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def nmi(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None, bins: int = 32) -> float:
    """Normalised mutual information ``(H(a) + H(b)) / H(a, b) - 1`` in [0, 1].

    Stain-agnostic: it asks only that one image's intensities predict the
    other's, whatever the relation (Studholme et al. 1999).
    """
    if weight is not None:
        if weight.sum() < 64:
            return 0.0
        a, b = a[weight], b[weight]
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()

    def q(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, [1.0, 99.0])
        return np.clip(((x - lo) / max(hi - lo, 1e-9) * bins).astype(np.int64), 0, bins - 1)

    joint = np.bincount(q(a) * bins + q(b), minlength=bins * bins).astype(np.float64)
    p = joint / max(joint.sum(), 1.0)
    pa, pb = p.reshape(bins, bins).sum(1), p.reshape(bins, bins).sum(0)

    def ent(x: np.ndarray) -> float:
        x = x[x > 0]
        return float(-(x * np.log(x)).sum())

    hab = ent(p)
    return (ent(pa) + ent(pb)) / hab - 1.0 if hab > 0 else 0.0


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if px <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


MAX_STRETCH = 1.5  # ECC may change each singular value of the linear part by this factor at most


def ecc(template: np.ndarray, image: np.ndarray, w: np.ndarray, motion: int, iterations: int, eps: float,
        gauss: int, moving_mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """OpenCV's ECC maximisation from ``w`` (fixed → moving).

    ``moving_mask`` (the moving image's tissue) is carried along by the warp and
    restricts the correlation to the pixels it covers, so glass does not count.
    Returns the final correlation and warp; ``(-1, w)`` when it does not converge.
    """
    import cv2

    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), float(eps))
    start = np.asarray(w, dtype=np.float32)[:2].copy()
    mm = None if moving_mask is None else moving_mask.astype(np.uint8)
    try:
        cc, out = cv2.findTransformECC(template, image, start.copy(), motion, crit, mm, gauss)
    except cv2.error as err:  # did not converge: keep the start
        log.debug("ECC did not converge: %s", str(err).splitlines()[-1] if str(err) else err)
        return -1.0, start
    if not np.all(np.isfinite(out)) or abs(float(np.linalg.det(out[:, :2]))) < 1e-6:
        return -1.0, start
    # a refinement, not a search: a warp that shrinks or stretches by more than MAX_STRETCH
    # against its start has collapsed onto a small patch of tissue (the mask allows that)
    ratio = np.linalg.svd(out[:, :2].astype(np.float64), compute_uv=False) / np.linalg.svd(
        start[:, :2].astype(np.float64), compute_uv=False)
    if not (1.0 / MAX_STRETCH <= ratio.min() and ratio.max() <= MAX_STRETCH):
        log.debug("ECC result stretches by %s against its start: rejected", np.round(ratio, 3))
        return -1.0, start
    return float(cc), out
