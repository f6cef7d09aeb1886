"""Cells drawn into a tissue mask: the isolated and packed layouts, and each HER2 class's membrane.

A renderer fills hematoxylin and DAB OD maps, the cytoplasm mask and the cell
table (centres, radii, drawn class, membrane OD and completeness, region) on a
jittered grid, one cell per grid square, vectorised over row strips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserInputError

__all__ = ["MembraneClass", "MEMBRANE_CLASSES", "LAYOUTS"]


@dataclass(frozen=True)
class MembraneClass:
    """How a cell of one HER2 class is drawn: membrane DAB OD range and completeness range."""

    od: tuple[float, float]
    completeness: tuple[float, float]


#: Drawn membranes per HER2 class 0..3 (OD ranges sit between the default 0.2/0.4/0.6
#: thresholds; 1+ rings are incomplete, 2+ and 3+ complete, as in the guidelines).
MEMBRANE_CLASSES: tuple[MembraneClass, MembraneClass, MembraneClass, MembraneClass] = (
    MembraneClass((0.0, 0.05), (0.0, 0.0)),
    MembraneClass((0.26, 0.34), (0.3, 0.6)),
    MembraneClass((0.46, 0.54), (0.9, 1.0)),
    MembraneClass((0.75, 0.95), (0.95, 1.0)),
)


def _cell_grid(
    shape: tuple[int, int],
    pitch: float,
    jitter: float,
    grid: tuple[int, int],
    tissue: np.ndarray,
    region_map: np.ndarray,
    fractions: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """Cell centres on a jittered square grid and their drawn classes.

    Returns ``cy, cx`` (centres), ``reg`` (region index, -1 outside), ``present``
    (centre in tissue and a region), ``cls`` (HER2 class, exact per-region quotas
    assigned at random), ``mem_od``, ``comp`` (membrane OD and completeness drawn
    from the class's range) and ``theta0`` (start angle of the stained arc).
    """
    h, w = shape
    gh, gw = grid
    cy = (np.arange(gh)[:, None] * pitch + pitch / 2
          + rng.uniform(-jitter, jitter, (gh, gw))).astype(np.float32)
    cx = (np.arange(gw)[None, :] * pitch + pitch / 2
          + rng.uniform(-jitter, jitter, (gh, gw))).astype(np.float32)
    iy = np.clip(cy.round().astype(int), 0, h - 1)
    ix = np.clip(cx.round().astype(int), 0, w - 1)
    reg = region_map[iy, ix].astype(np.int64) - 1  # -1 outside tissue
    present = tissue[iy, ix] & (reg >= 0)
    # Exact class percentages per region: assign shuffled, rounded quotas.
    cls = np.full((gh, gw), -1, dtype=np.int64)
    for r in range(fractions.shape[0]):
        idx = np.flatnonzero((reg == r) & present)
        n = idx.size
        quota = np.floor(fractions[r] * n + 0.5).astype(int)
        quota[np.argmax(fractions[r])] += n - quota.sum()
        labels = np.repeat(np.arange(4), quota)
        rng.shuffle(labels)
        cls.flat[idx] = labels
    mem_od = np.zeros((gh, gw), dtype=np.float32)
    comp = np.zeros((gh, gw), dtype=np.float32)
    for k, mc in enumerate(MEMBRANE_CLASSES):
        m = cls == k
        mem_od[m] = rng.uniform(*mc.od, m.sum())
        comp[m] = rng.uniform(*mc.completeness, m.sum())
    theta0 = rng.uniform(0, 2 * np.pi, (gh, gw)).astype(np.float32)
    return cy, cx, reg, present, cls, mem_od, comp, theta0


def _render_packed(
    shape: tuple[int, int],
    tissue: np.ndarray,
    region_map: np.ndarray,
    fractions: np.ndarray,
    rng: np.random.Generator,
    *,
    mpp: float,
    cell_radius_um: float,
    nucleus_radius_um: float,
    membrane_width_um: float,
    nucleus_od: float,
    cytoplasm_od: float,
    stroma_od: float,
    cytoplasm_dab: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Hematoxylin OD, DAB OD, cytoplasm mask and the cell table.

    Cell centres lie on a jittered square grid of pitch ``2 * cell_radius``;
    each cell is its Voronoi region (nearest centre) bounded by a disc of
    ``1.5 * cell_radius``, so neighbouring cells share their borders as in an
    epithelium. A cell's membrane is the band of ``membrane_width`` inside its
    border, stained along an arc of its ``completeness`` from a random angle.
    """
    h, w = shape
    s = 2.0 * cell_radius_um / mpp  # grid pitch in pixels
    rn = nucleus_radius_um / mpp
    mw = max(membrane_width_um / mpp, 1.0)
    if rn >= s / 2 - mw - 1:
        raise UserInputError(
            "nucleus radius must be smaller than the cell radius minus the membrane width",
            hint="e.g. cell_radius_um=7, nucleus_radius_um=3.5, membrane_width_um=1.5",
        )
    r_max = np.float32(0.75 * s)
    jit = 0.25 * s
    gh, gw = int(np.ceil(h / s)), int(np.ceil(w / s))
    cy, cx, reg, present, cls, mem_od, comp, theta0 = _cell_grid(
        (h, w), s, jit, (gh, gw), tissue, region_map, fractions, rng)
    rnuc = (rn * rng.uniform(0.85, 1.1, (gh, gw))).astype(np.float32)
    hn = (nucleus_od * rng.uniform(0.8, 1.2, (gh, gw))).astype(np.float32)

    # Padded centre arrays: absent cells sit far away so they never win.
    far = np.float32(1e7)
    pcy = np.full((gh + 2, gw + 2), far, dtype=np.float32)
    pcx = np.full((gh + 2, gw + 2), far, dtype=np.float32)
    pcy[1:-1, 1:-1] = np.where(present, cy, far)
    pcx[1:-1, 1:-1] = np.where(present, cx, far)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    def padded(a: np.ndarray) -> np.ndarray:
        p = np.zeros((gh + 2, gw + 2), dtype=a.dtype)
        p[1:-1, 1:-1] = a
        return p

    attrs = {
        "rnuc": padded(rnuc),
        "theta0": padded(theta0),
        "comp": padded(comp),
        "hn": padded(hn),
        "mem_od": padded(mem_od),
    }

    hmap = np.zeros((h, w), dtype=np.float32)
    dmap = np.zeros((h, w), dtype=np.float32)
    cyto = np.zeros((h, w), dtype=bool)
    xs = np.arange(w, dtype=np.float32)
    cols = np.arange(w)[None, :]
    gxs = np.minimum((np.arange(w) / s).astype(np.int64), gw - 1)
    gys_all = np.minimum((np.arange(h) / s).astype(np.int64), gh - 1)
    two_pi = np.float32(2 * np.pi)
    # One strip per grid row: every pixel in it shares the 3 x 3 neighbourhood
    # of grid rows, so the candidate centres are per-column vectors.
    bounds = [0, *(np.flatnonzero(np.diff(gys_all)) + 1).tolist(), h]
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        if r1 <= r0:
            continue
        gy = int(gys_all[r0])
        ys = np.arange(r0, r1, dtype=np.float32)
        ccy9 = np.stack([pcy[gy + 1 + dy, gxs + 1 + dx] for dy, dx in offsets])  # (9, w)
        ccx9 = np.stack([pcx[gy + 1 + dy, gxs + 1 + dx] for dy, dx in offsets])
        ccy = ccy9[:, None, :]
        ccx = ccx9[:, None, :]
        ddy = ys[None, :, None] - ccy
        ddx = xs[None, None, :] - ccx
        d2 = ddy * ddy + ddx * ddx  # squared distances to the 9 candidates: (9, rows, w)
        k1 = np.argmin(d2, axis=0)
        d1sq = np.take_along_axis(d2, k1[None], 0)[0]
        c1y = ccy9[k1, cols]
        c1x = ccx9[k1, cols]
        # attributes of each pixel's cell, picked from the 9 candidates
        at = {
            k: np.stack([v[gy + 1 + dy, gxs + 1 + dx] for dy, dx in offsets])[k1, cols]
            for k, v in attrs.items()
        }
        # distance to the Voronoi border: min over others of (d_j^2 - d_1^2) / (2 |c_j - c_1|)
        sep = np.sqrt((ccy - c1y[None]) ** 2 + (ccx - c1x[None]) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            border = np.where(sep > 0, (d2 - d1sq[None]) / (2 * sep), np.inf)
        border = border.min(axis=0)
        d1 = np.sqrt(d1sq)
        border = np.minimum(border, r_max - d1)  # bounded expansion (absent cells are far)
        inside = border >= 0
        nuc = inside & (d1 <= at["rnuc"])
        ang = np.mod(np.arctan2(ys[:, None] - c1y, xs[None, :] - c1x) - at["theta0"], two_pi)
        ring = inside & ~nuc & (border < mw) & (ang < at["comp"] * two_pi)
        cy_mask = inside & ~nuc
        t = tissue[r0:r1]
        hh = np.where(t, np.float32(stroma_od), np.float32(0.0))
        hh = np.where(cy_mask, np.float32(cytoplasm_od), hh)
        hh = np.where(nuc, at["hn"], hh)
        dd = np.where(ring, at["mem_od"], np.float32(0.0))
        if cytoplasm_dab > 0:
            dd = np.where(cy_mask & ~ring, at["mem_od"] * np.float32(cytoplasm_dab), dd)
        hmap[r0:r1] = hh * t
        dmap[r0:r1] = dd * t
        cyto[r0:r1] = cy_mask & t
    sel = present & (cls >= 0)
    cells = {
        "x": cx[sel].astype(np.float64),
        "y": cy[sel].astype(np.float64),
        "nucleus_radius": rnuc[sel].astype(np.float64),
        "her2_class": cls[sel].astype(np.int64),
        "membrane_od": mem_od[sel].astype(np.float64),
        "completeness": comp[sel].astype(np.float64),
        "region": reg[sel].astype(np.int64),
    }
    return hmap, dmap, cyto, cells


def _render_isolated(
    shape: tuple[int, int],
    tissue: np.ndarray,
    region_map: np.ndarray,
    fractions: np.ndarray,
    rng: np.random.Generator,
    *,
    mpp: float,
    cell_radius_um: float,
    nucleus_radius_um: float,
    membrane_width_um: float,
    nucleus_od: float,
    cytoplasm_od: float,
    stroma_od: float,
    cytoplasm_dab: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Isolated round cells, one per square of a jittered grid, stroma between them.

    Each cell is a disc of ``cell_radius`` with a hematoxylin nucleus and a
    DAB membrane ring of ``membrane_width`` at its rim. Returns hematoxylin OD,
    DAB OD, the cytoplasm mask and the cell table.
    """
    h, w = shape
    rc = cell_radius_um / mpp
    rn = nucleus_radius_um / mpp
    mw = max(membrane_width_um / mpp, 1.0)
    if rn >= rc - mw:
        raise UserInputError(
            "nucleus radius must be smaller than the cell radius minus the membrane width",
            hint="e.g. cell_radius_um=6, nucleus_radius_um=3, membrane_width_um=1.5",
        )
    s = int(np.ceil(2 * rc + mw + 2))  # grid pitch: one cell per square
    jit = max((s - 2 * rc - mw) / 2 - 0.5, 0.0)
    gh, gw = -(-h // s), -(-w // s)
    cy, cx, reg, present, cls, mem_od, comp, theta0 = _cell_grid(
        (h, w), s, jit, (gh, gw), tissue, region_map, fractions, rng)
    rcell = (rc * rng.uniform(0.9, 1.0, (gh, gw))).astype(np.float32)
    rnuc = (rn * rng.uniform(0.8, 1.1, (gh, gw))).astype(np.float32)
    hn = (nucleus_od * rng.uniform(0.8, 1.2, (gh, gw))).astype(np.float32)

    hmap = np.zeros((h, w), dtype=np.float32)
    dmap = np.zeros((h, w), dtype=np.float32)
    cyto = np.zeros((h, w), dtype=bool)
    rows = max(1, (1 << 21) // w // s * s) if w else 1
    xs = np.arange(w)
    gxs = xs // s
    for r0 in range(0, h, rows):
        ys = np.arange(r0, min(h, r0 + rows))
        gys = ys // s
        G = (gys[:, None], gxs[None, :])
        dy = ys[:, None].astype(np.float32) - cy[G]
        dx = xs[None, :].astype(np.float32) - cx[G]
        d = np.sqrt(dx * dx + dy * dy)
        pres = present[G]
        rcl = rcell[G]
        inside = pres & (d <= rcl + mw / 2)
        nuc = pres & (d <= rnuc[G])
        ring = pres & (np.abs(d - rcl) <= mw / 2)
        ang = np.mod(np.arctan2(dy, dx) - theta0[G], 2 * np.pi)
        ring &= ang < comp[G] * np.float32(2 * np.pi)
        cy_mask = inside & ~nuc
        t = tissue[r0 : r0 + ys.size]
        hh = np.where(t, np.float32(stroma_od), np.float32(0.0))
        hh = np.where(cy_mask, np.float32(cytoplasm_od), hh)
        hh = np.where(nuc, hn[G], hh)
        dd = np.where(ring, mem_od[G], np.float32(0.0))
        if cytoplasm_dab > 0:
            dd = np.where(cy_mask & ~ring, mem_od[G] * np.float32(cytoplasm_dab), dd)
        hmap[r0 : r0 + ys.size] = hh * t
        dmap[r0 : r0 + ys.size] = dd * t
        cyto[r0 : r0 + ys.size] = cy_mask & t
    sel = present & (cls >= 0)
    cells = {
        "x": cx[sel].astype(np.float64),
        "y": cy[sel].astype(np.float64),
        "cell_radius": rcell[sel].astype(np.float64),
        "nucleus_radius": rnuc[sel].astype(np.float64),
        "her2_class": cls[sel].astype(np.int64),
        "membrane_od": mem_od[sel].astype(np.float64),
        "completeness": comp[sel].astype(np.float64),
        "region": reg[sel].astype(np.int64),
    }
    return hmap, dmap, cyto, cells


#: layout name -> (renderer, default cell radius um, default nucleus radius um)
LAYOUTS: dict[str, tuple[Any, float, float]] = {
    "isolated": (_render_isolated, 6.0, 3.0),
    "packed": (_render_packed, 7.0, 3.5),
}
