"""Synthetic IHC tiles with known stain classes, rendered by the Beer–Lambert law.

Used by the tests (a learnable signal with ground truth by construction),
the benchmarks and quick demonstrations of training. A pixel's optical
density is ``OD = h * H + d * DAB`` (Ruifrok & Johnston stain vectors, the
defaults of :class:`~her2_qupath.config.StainConfig`); its RGB value is
``255 * 10^-OD`` with a little noise. DAB optical densities of the four
classes lie inside QuPath's default bins (0.2 / 0.4 / 0.6).
"""

from __future__ import annotations

import numpy as np

from ..config import StainConfig
from ..synthetic import render_stains

__all__ = ["DAB_LEVELS", "render_od", "stain_tiles", "stain_masks"]

#: DAB optical density (low, high) of HER2 0, 1+, 2+, 3+ tissue.
_STAIN = StainConfig()

DAB_LEVELS: tuple[tuple[float, float], ...] = ((0.0, 0.08), (0.24, 0.34), (0.45, 0.55), (0.7, 0.9))


def render_od(h: np.ndarray, d: np.ndarray, rng: np.random.Generator, *, noise: float = 3.0,
              stain: StainConfig = _STAIN) -> np.ndarray:
    """RGB uint8 from hematoxylin and DAB optical densities (H x W each), scanner noise 3 levels."""
    return render_stains(h, d, noise=noise, rng=rng, stain=stain)


def _texture(rng: np.random.Generator, size: int, blobs: int) -> np.ndarray:
    """Smooth random blobs in [0, 1] (nuclei-like hematoxylin texture)."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((size, size))
    for _ in range(blobs):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 24, size / 10)
        out = np.maximum(out, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    return out


def stain_tiles(n: int, size: int = 64, *, seed: int = 0, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` IHC tiles (n x size x size x 3 uint8) and their DAB class (0..classes-1).

    Each tile is tissue with nuclei-like hematoxylin blobs; a random share (40–90 %)
    of its pixels carries DAB at the class's optical density.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    tiles = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(labels):
        h = 0.15 + 0.5 * _texture(rng, size, 6)
        lo, hi = DAB_LEVELS[int(k)]
        stained = _texture(rng, size, 10) > rng.uniform(0.1, 0.6)
        d = np.where(stained, rng.uniform(lo, hi), rng.uniform(0.0, 0.05))
        tiles[i] = render_od(h, np.full((size, size), d) if np.isscalar(d) else d, rng)
    return tiles, labels.astype(np.int64)


def stain_masks(n: int, size: int = 64, *, seed: int = 0, regions: int = 5
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` IHC tiles and pixel masks with the stain-map values (0 background, 1..4 HER2 0..3+).

    Each tile is split into ``regions`` Voronoi cells of random class; background
    cells are glass (white), the others tissue with the class's DAB density.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    tiles = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        centres = rng.uniform(0, size, (regions, 2))
        values = rng.integers(0, 5, regions)
        dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        mask = values[dist.argmin(-1)].astype(np.uint8)
        h = np.where(mask > 0, 0.2 + 0.4 * _texture(rng, size, 6), 0.0)
        d = np.zeros((size, size))
        for v in range(1, 5):
            lo, hi = DAB_LEVELS[v - 1]
            d = np.where(mask == v, rng.uniform(lo, hi, (size, size)), d)
        tiles[i] = render_od(h, d, rng)
        masks[i] = mask
    return tiles, masks
