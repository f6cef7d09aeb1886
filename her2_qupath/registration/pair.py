"""The fixed and moving images at one working resolution, and the moving image resampled onto the fixed grid.

Shared by the registration stages (:mod:`.core`, :mod:`.nonrigid`, :mod:`.quality`):
a :class:`Pair` of :class:`~._images.Level`, the conversions of warps between
level and level-0 pixels, the structure image a stage aligns
(:func:`channel`) and :func:`warp_moving_to_fixed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._images import Level, level_matrix
from ._ops import m3, warp
from .search import structure
from .transform import Transform

__all__ = ["Pair", "to_level0", "to_level", "channel", "moving_maps", "warp_moving_to_fixed"]


@dataclass
class Pair:
    """Fixed and moving image at one common working pixel size (``unit`` per pixel)."""

    fixed: Level
    moving: Level
    unit: float  # working pixel size in µm (or level-0 pixels when MPPs are unknown)


def to_level0(w_level: np.ndarray, pair: Pair) -> np.ndarray:
    """Level warp (fixed level px → moving level px) to level-0 (fixed → moving)."""
    sf = level_matrix(pair.fixed.scale)
    sm = level_matrix(pair.moving.scale)
    return sm @ m3(w_level) @ np.linalg.inv(sf)


def to_level(a0: np.ndarray, pair: Pair) -> np.ndarray:
    """Level-0 matrix (fixed → moving) to the 2×3 level warp of ``pair`` (inverse of :func:`to_level0`)."""
    sf = level_matrix(pair.fixed.scale)
    sm = level_matrix(pair.moving.scale)
    return (np.linalg.inv(sm) @ a0 @ sf)[:2].astype(np.float32)


def channel(level: Level, kind: str) -> np.ndarray:
    """The structure image of ``level`` named by ``kind`` (see :data:`.core.METRICS`)."""
    return structure(level.od, level.feat, kind)


def moving_maps(pair: Pair, transform: Transform, *, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """For every fixed-level pixel, the moving-level coordinates it maps to (float32 maps).

    The transform is evaluated every ``step`` pixels and interpolated bilinearly
    in between: exact for the affine part, and far below a pixel for the
    displacement field, which is smooth on a scale of tens of pixels.
    """
    import cv2

    h, w = pair.fixed.od.shape
    step = max(1, int(step)) if transform.field is not None else 1
    sf = level_matrix(pair.fixed.scale)
    sm_inv = np.linalg.inv(level_matrix(pair.moving.scale))
    hs, ws = (h - 1) // step + 2, (w - 1) // step + 2
    ys, xs = np.mgrid[0:hs, 0:ws].astype(np.float64) * step
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) @ sf[:2, :2].T + sf[:2, 2]
    mp = transform.apply(pts) @ sm_inv[:2, :2].T + sm_inv[:2, 2]
    mx = mp[:, 0].reshape(hs, ws).astype(np.float32)
    my = mp[:, 1].reshape(hs, ws).astype(np.float32)
    if step == 1:
        return mx[:h, :w], my[:h, :w]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(step)
    return (cv2.remap(mx, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
            cv2.remap(my, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def warp_moving_to_fixed(pair: Pair, transform: Transform, image: np.ndarray, *,
                         nearest: bool = False, border: float = 0.0,
                         maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Resample a moving-level image onto the fixed level grid through ``transform``."""
    import cv2

    h, w = pair.fixed.od.shape
    if transform.field is None and maps is None:
        return warp(image, to_level(transform.matrix, pair), (w, h), nearest=nearest, border=border)
    mx, my = maps if maps is not None else moving_maps(pair, transform)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
