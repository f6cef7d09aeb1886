"""A picture of a registration: checkerboard and side-by-side views, landmark arrows."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..render import checkerboard
from ._images import level_matrix
from .transform import Transform

__all__ = ["render_registration", "warp_image", "reliability_text"]


def reliability_text(q: dict[str, Any]) -> str:
    """One line: the reliability score and what it is made of (see :mod:`.quality`)."""
    if "consistent_share" not in q:  # a transform file from an older version
        return f"score {q.get('score', float('nan')):.2f}"
    return (f"reliability {q.get('score', float('nan')):.2f}: {100 * q['consistent_share']:.0f} % of patches "
            f"consistent, residual {q.get('residual_pct', float('nan')):.2f} % of the diagonal")


def warp_image(moving_rgb: np.ndarray, transform: Transform, fixed_shape: tuple[int, int],
               fixed_scale: tuple[float, float], moving_scale: tuple[float, float]) -> np.ndarray:
    """Resample a (downsampled) moving image onto a (downsampled) fixed grid."""
    import cv2

    h, w = fixed_shape
    sf = level_matrix(fixed_scale)
    sm_inv = np.linalg.inv(level_matrix(moving_scale))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) @ sf[:2, :2].T + sf[:2, 2]
    mp = transform.apply(pts) @ sm_inv[:2, :2].T + sm_inv[:2, 2]
    return cv2.remap(moving_rgb, mp[:, 0].reshape(h, w).astype(np.float32),
                     mp[:, 1].reshape(h, w).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))


def render_registration(fixed_rgb: np.ndarray, moving_rgb: np.ndarray, transform: Transform, *,
                        landmarks: tuple[Any, Any] | None = None, max_size: int = 800,
                        squares: int = 8) -> np.ndarray:
    """RGB overview: H&E | IHC aligned to it | checkerboard of both.

    ``fixed_rgb`` and ``moving_rgb`` may be downsampled views of the slides (their
    scale is inferred from the transform's level-0 sizes). ``landmarks``, a pair of
    ``(N, 2)`` arrays in fixed and moving level-0 pixels, draws arrows on the
    checkerboard from each fixed landmark to where the transform puts its moving
    partner (short arrows = good alignment).
    """
    import cv2

    fw, fh = transform.fixed_size
    mw, mh = transform.moving_size
    k = min(1.0, max_size / max(fixed_rgb.shape[:2]))
    fixed = fixed_rgb[..., :3]
    if k < 1.0:
        fixed = cv2.resize(fixed, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    h, w = fixed.shape[:2]
    fscale = (fw / w, fh / h)
    mscale = (mw / moving_rgb.shape[1], mh / moving_rgb.shape[0])
    warped = warp_image(np.ascontiguousarray(moving_rgb[..., :3]), transform, (h, w), fscale, mscale)
    check = checkerboard(fixed, warped, squares=squares).copy()
    if landmarks is not None:
        lf, lm = (np.asarray(a, dtype=np.float64).reshape(-1, 2) for a in landmarks)
        n = min(len(lf), len(lm))
        # where the true moving partner sits in fixed coordinates (through the inverse)
        back = transform.apply_inverse(lm[:n])
        for p, q in zip(lf[:n], back, strict=True):
            a = (int(round((p[0] + 0.5) / fscale[0] - 0.5)), int(round((p[1] + 0.5) / fscale[1] - 0.5)))
            b = (int(round((q[0] + 0.5) / fscale[0] - 0.5)), int(round((q[1] + 0.5) / fscale[1] - 0.5)))
            cv2.circle(check, a, 2, (0, 160, 0), -1)
            cv2.arrowedLine(check, a, b, (255, 0, 0), 1, tipLength=0.3)
    gap = np.full((h, 6, 3), 255, np.uint8)
    out = np.hstack([fixed, gap, warped, gap, check])
    q = transform.quality
    if q:
        text = reliability_text(q)
        if not q.get("reliable", True):
            text += "  UNRELIABLE"
        cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out
