"""Synthetic brightfield slides whose answer is known by construction.

Images follow the Beer-Lambert model used by colour deconvolution:
``I_c = I0_c * 10^-(h * H_c + d * D_c + e * E_c + noise_c)`` with unit stain OD
vectors ``H`` (hematoxylin), ``D`` (DAB), ``E`` (eosin) and a white point
``I0`` that is deliberately not 255. Tissue is a smooth blob split into
vertical regions; each region is packed with round cells (a hematoxylin
nucleus, a faint counterstained cytoplasm and a DAB membrane ring). Every
cell's HER2 class, membrane intensity and completeness are drawn so that each
region holds exactly the requested percentages of cells at 0, 1+, 2+, 3+.

* :func:`synthetic_ihc` -> ``(rgb, h_od, dab_od, truth)``
* :func:`synthetic_pair` -> an H&E image and an IHC image of the same tissue,
  the IHC one moved by a known affine transform (returned).

Rendering is vectorised on a jittered grid (one cell per grid square), so a
4096 x 4096 slide takes about a second.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import StainConfig
from .errors import UserInputError

__all__ = [
    "MembraneClass",
    "MEMBRANE_CLASSES",
    "DEFAULT_REGIONS",
    "EOSIN",
    "synthetic_ihc",
    "synthetic_pair",
    "compose_rgb",
    "render_stains",
]

log = logging.getLogger(__name__)

#: Eosin OD vector (Ruifrok & Johnston; skimage's rgb_from_hed second row).
EOSIN: tuple[float, float, float] = (0.07, 0.99, 0.11)


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

#: Default regions: a 3+ region (40 % of cells 3+), and a negative one.
DEFAULT_REGIONS: tuple[Mapping[str, float], ...] = (
    {"0": 50.0, "1+": 10.0, "2+": 0.0, "3+": 40.0},
    {"0": 100.0, "1+": 0.0, "2+": 0.0, "3+": 0.0},
)

_KEYS = ("0", "1+", "2+", "3+")


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def _region_fractions(regions: Sequence[Mapping[str, float]]) -> np.ndarray:
    out = []
    for i, r in enumerate(regions):
        unknown = set(r) - set(_KEYS)
        if unknown:
            raise UserInputError(
                f"region {i} has unknown classes {sorted(unknown)}",
                hint="use the keys '0', '1+', '2+', '3+'",
            )
        p = np.array([float(r.get(k, 0.0)) for k in _KEYS])
        if np.any(p < 0) or abs(p.sum() - 100.0) > 1e-6:
            raise UserInputError(
                f"region {i} percentages must be non-negative and sum to 100, got {p.tolist()}",
                hint="e.g. {'0': 60, '3+': 40}",
            )
        out.append(p / 100.0)
    if not out:
        raise UserInputError("at least one region is needed", hint="pass regions=[{'0': 100}]")
    return np.array(out)


def _tissue_mask(shape: tuple[int, int], rng: np.random.Generator, fill: float) -> np.ndarray:
    """A smooth blob covering about ``fill`` of the image, away from the border."""
    import cv2

    h, w = shape
    lo = rng.standard_normal((24, 24)).astype(np.float32)
    lo = np.asarray(cv2.GaussianBlur(lo, (0, 0), 3.0), dtype=np.float32)
    yy, xx = np.mgrid[0:24, 0:24].astype(np.float32)
    r2 = ((yy - 11.5) / 12) ** 2 + ((xx - 11.5) / 12) ** 2
    field = lo / (lo.std() + 1e-6) * 0.35 - r2 * 2.0
    field[:2, :] = field[-2:, :] = -10.0
    field[:, :2] = field[:, -2:] = -10.0
    big = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    cut = np.quantile(field, 1.0 - fill)
    return big > cut


def _normal_table() -> np.ndarray:
    """65536 standard-normal quantiles: a uniform uint16 index draws N(0, 1) (5x faster)."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536).astype(np.float32)


def render_stains(h_od: np.ndarray, dab_od: np.ndarray, *, noise: float = 0.0,
                  rng: np.random.Generator | None = None, stain: StainConfig | None = None,
                  white: float = 255.0) -> np.ndarray:
    """uint8 RGB of a section holding ``h_od`` hematoxylin and ``dab_od`` DAB (OD, H x W each).

    Beer-Lambert with the stain vectors of ``stain`` (unit length):
    ``I_c = round(clip(white * 10^-(h unit(H)_c + d unit(DAB)_c) + N(0, noise)))``, the
    noise being scanner noise in 8-bit levels (``rng``; none when ``noise`` is 0). The one
    renderer of synthetic tiles and test images; :func:`compose_rgb` draws whole slides.
    """
    stain = stain or StainConfig()
    od = (np.asarray(h_od, dtype=np.float64)[..., None] * _unit(stain.hematoxylin)
          + np.asarray(dab_od, dtype=np.float64)[..., None] * _unit(stain.dab))
    rgb = white * np.power(10.0, -od)
    if noise:
        rgb = rgb + (rng if rng is not None else np.random.default_rng(0)).normal(0.0, noise, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def compose_rgb(
    od_maps: Sequence[tuple[np.ndarray, Sequence[float]]],
    background: Sequence[float],
    *,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint8 RGB from stain amounts and their OD vectors by Beer-Lambert, with OD noise.

    ``I_c = round(I0_c * 10^-(sum_s amount_s * unit(vec_s)_c + N(0, noise)))``,
    computed in cache-sized row strips.
    """
    first = np.asarray(od_maps[0][0])
    h, w = first.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    vecs = [(np.asarray(a, dtype=np.float32), _unit(v)) for a, v in od_maps]
    bg = np.asarray(background, dtype=np.float32)
    rows = max(1, (1 << 16) // max(w, 1))
    od = np.empty((rows, w, 3), dtype=np.float32)
    nz = np.empty((rows, w, 3), dtype=np.float32)
    ln10 = np.float32(-np.log(10.0))
    table = _normal_table() * np.float32(noise)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        o = od[:n]
        o.fill(0.0)
        for amount, vec in vecs:
            o += amount[r0 : r0 + n, :, None] * vec
        if noise > 0:
            z = nz[:n].reshape(-1)
            idx = np.frombuffer(rng.bytes(z.size * 2), dtype=np.uint16)
            np.take(table, idx, out=z)  # standard normal by inverse-CDF table
            o += nz[:n]
        o *= ln10
        np.exp(o, out=o)
        o *= bg
        np.rint(o, out=o)
        np.clip(o, 0, 255, out=o)
        out[r0 : r0 + n] = o
    return out


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


def _class_map_from_truth(
    dmap: np.ndarray, tissue: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    t1, t2, t3 = thresholds
    out = np.ones(dmap.shape, dtype=np.uint8)
    out += dmap >= t1
    out += dmap >= t2
    out += dmap >= t3
    out[~tissue] = 0
    return out


#: layout name -> (renderer, default cell radius um, default nucleus radius um)
LAYOUTS: dict[str, tuple[Any, float, float]] = {
    "isolated": (_render_isolated, 6.0, 3.0),
    "packed": (_render_packed, 7.0, 3.5),
}


def _generate(
    shape: tuple[int, int],
    *,
    seed: int,
    mpp: float,
    regions: Sequence[Mapping[str, float]],
    tissue_fraction: float,
    layout: str,
    cell_radius_um: float | None,
    nucleus_radius_um: float | None,
    membrane_width_um: float,
    nucleus_od: float,
    cytoplasm_od: float,
    stroma_od: float,
    cytoplasm_dab: float,
) -> dict[str, Any]:
    h, w = (int(shape[0]), int(shape[1]))
    if layout not in LAYOUTS:
        raise UserInputError(f"unknown layout {layout!r}", hint=f"use one of {sorted(LAYOUTS)}")
    render, default_cell, default_nucleus = LAYOUTS[layout]
    cell_radius_um = default_cell if cell_radius_um is None else cell_radius_um
    nucleus_radius_um = default_nucleus if nucleus_radius_um is None else nucleus_radius_um
    if h < 32 or w < 32:
        raise UserInputError(f"shape {shape} is too small", hint="use at least 32 x 32 pixels")
    if mpp <= 0:
        raise UserInputError(f"mpp must be positive, got {mpp}", hint="e.g. mpp=0.5")
    fractions = _region_fractions(regions)
    rng = np.random.default_rng(seed)
    tissue = _tissue_mask((h, w), rng, tissue_fraction)
    # Vertical bands over the tissue's horizontal extent, one per region.
    cols = np.flatnonzero(tissue.any(axis=0))
    x0, x1 = (cols[0], cols[-1] + 1) if cols.size else (0, w)
    edges = np.linspace(x0, x1, fractions.shape[0] + 1)
    band = np.clip(
        np.searchsorted(edges, np.arange(w), side="right") - 1, 0, fractions.shape[0] - 1
    )
    region_map = np.where(tissue, (band + 1)[None, :], 0).astype(np.uint8)
    hmap, dmap, cyto, cells = render(
        (h, w),
        tissue,
        region_map,
        fractions,
        rng,
        mpp=mpp,
        cell_radius_um=cell_radius_um,
        nucleus_radius_um=nucleus_radius_um,
        membrane_width_um=membrane_width_um,
        nucleus_od=nucleus_od,
        cytoplasm_od=cytoplasm_od,
        stroma_od=stroma_od,
        cytoplasm_dab=cytoplasm_dab,
    )
    return {
        "layout": layout,
        "rng": rng,
        "tissue": tissue,
        "region_map": region_map,
        "fractions": fractions,
        "h": hmap,
        "d": dmap,
        "cyto": cyto,
        "cells": cells,
    }


def _truth(
    g: dict[str, Any], *, mpp: float, background: Sequence[float], config: StainConfig
) -> dict[str, Any]:
    cells = g["cells"]
    class_map = _class_map_from_truth(g["d"], g["tissue"], config.thresholds)
    regions = []
    for r in range(g["fractions"].shape[0]):
        sel = cells["region"] == r
        cc = np.bincount(cells["her2_class"][sel], minlength=4)
        px = np.bincount(class_map[g["region_map"] == r + 1], minlength=5)[1:5]
        regions.append(
            {
                "index": r,
                "requested_percentages": dict(
                    zip(_KEYS, (100 * g["fractions"][r]).tolist(), strict=True)
                ),
                "cell_counts": cc.tolist(),
                "cell_percentages": dict(
                    zip(_KEYS, (100 * cc / max(cc.sum(), 1)).tolist(), strict=True)
                ),
                "pixel_counts": px.tolist(),
                "pixel_percentages": dict(
                    zip(_KEYS, (100 * px / max(px.sum(), 1)).tolist(), strict=True)
                ),
            }
        )
    cc = np.bincount(cells["her2_class"], minlength=4)
    px = np.bincount(class_map.ravel(), minlength=5)
    return {
        "mpp": mpp,
        "layout": g["layout"],
        "background": tuple(float(x) for x in background),
        "thresholds": tuple(config.thresholds),
        "tissue_mask": g["tissue"],
        "region_map": g["region_map"],
        "class_map": class_map,
        "cells": cells,
        "cell_counts": cc.tolist(),
        "pixel_counts": px.tolist(),
        "regions": regions,
    }


def synthetic_ihc(
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    mpp: float = 0.5,
    regions: Sequence[Mapping[str, float]] = DEFAULT_REGIONS,
    background: Sequence[float] = (238.0, 233.0, 243.0),
    noise: float = 0.01,
    tissue_fraction: float = 0.6,
    layout: str = "isolated",
    cell_radius_um: float | None = None,
    nucleus_radius_um: float | None = None,
    membrane_width_um: float = 1.5,
    nucleus_od: float = 0.6,
    cytoplasm_od: float = 0.12,
    stroma_od: float = 0.15,
    cytoplasm_dab: float = 0.0,
    config: StainConfig = StainConfig(),  # noqa: B008 (frozen, immutable default)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A hematoxylin-DAB IHC image with known stain amounts and HER2 cell classes.

    Returns ``(rgb uint8 (H, W, 3), h_od float32 (H, W), dab_od float32 (H, W),
    truth)``. ``h_od``/``dab_od`` are the stain amounts (OD along the unit
    vectors ``config.hematoxylin``/``config.dab``) before noise. ``truth`` holds
    ``tissue_mask``, ``region_map`` (0 outside tissue, i+1 in region i),
    ``class_map`` (the pixel classes 0..4 the thresholds give on the true DAB
    OD), ``cells`` (arrays ``x, y, nucleus_radius, her2_class,
    membrane_od, completeness, region`` in pixels, and ``cell_radius`` for the
    isolated layout), per-region cell and pixel counts and percentages,
    ``background``, ``mpp``, ``layout``.

    ``layout="isolated"`` (default) draws round cells of ``cell_radius_um``
    (default 6) apart, with stroma between them and the membrane ring at the
    rim; ``layout="packed"`` draws an epithelium: polygonal (Voronoi) cells of
    pitch ``2 * cell_radius_um`` (default 7) sharing their borders, each with
    its membrane band inside its border — harder for a cell analysis, since a
    negative cell's border touches its stained neighbours'. Nucleus radius
    defaults to 3 / 3.5 um.

    ``cytoplasm_dab`` (fraction of the membrane OD put into the cytoplasm)
    makes stained cells read as stained areas at pixel level.
    """
    g = _generate(
        shape,
        seed=seed,
        mpp=mpp,
        regions=regions,
        tissue_fraction=tissue_fraction,
        layout=layout,
        cell_radius_um=cell_radius_um,
        nucleus_radius_um=nucleus_radius_um,
        membrane_width_um=membrane_width_um,
        nucleus_od=nucleus_od,
        cytoplasm_od=cytoplasm_od,
        stroma_od=stroma_od,
        cytoplasm_dab=cytoplasm_dab,
    )
    rgb = compose_rgb(
        [(g["h"], config.hematoxylin), (g["d"], config.dab)], background, noise=noise, rng=g["rng"]
    )
    return rgb, g["h"], g["d"], _truth(g, mpp=mpp, background=background, config=config)


def synthetic_pair(
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    mpp: float = 0.5,
    regions: Sequence[Mapping[str, float]] = DEFAULT_REGIONS,
    rotation_deg: float = 7.0,
    translation: tuple[float, float] = (25.0, -15.0),
    scale: float = 1.0,
    he_background: Sequence[float] = (245.0, 240.0, 246.0),
    ihc_background: Sequence[float] = (238.0, 233.0, 243.0),
    noise: float = 0.01,
    eosin_od: float = 0.35,
    config: StainConfig = StainConfig(),  # noqa: B008 (frozen, immutable default)
    **tissue_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """An H&E image and an IHC image of the same tissue, related by a known affine.

    Returns ``(he_rgb, ihc_rgb, matrix, truth)``. ``matrix`` (3 x 3, float64)
    maps H&E pixel coordinates ``(x, y, 1)`` to IHC pixel coordinates: a
    rotation by ``rotation_deg`` about the image centre, a ``scale`` and a
    ``translation`` ``(tx, ty)`` in pixels. Both images have the same shape.
    ``truth`` is :func:`synthetic_ihc`'s truth in the H&E frame, plus
    ``ihc_cells_xy`` (cell centres mapped into the IHC frame), ``ihc_tissue_mask``
    and ``ihc_region_map`` (warped). ``tissue_kwargs`` go to the tissue layout
    (``layout``, ``cell_radius_um``, ``nucleus_radius_um``, ``membrane_width_um``, ...).
    """
    import cv2

    allowed = {
        "tissue_fraction",
        "layout",
        "cell_radius_um",
        "nucleus_radius_um",
        "membrane_width_um",
        "nucleus_od",
        "cytoplasm_od",
        "stroma_od",
        "cytoplasm_dab",
    }
    bad = set(tissue_kwargs) - allowed
    if bad:
        raise UserInputError(f"unknown options {sorted(bad)}", hint=f"use {sorted(allowed)}")
    opts: dict[str, Any] = {
        "tissue_fraction": 0.5,
        "layout": "isolated",
        "cell_radius_um": None,
        "nucleus_radius_um": None,
        "membrane_width_um": 1.5,
        "nucleus_od": 0.6,
        "cytoplasm_od": 0.12,
        "stroma_od": 0.15,
        "cytoplasm_dab": 0.0,
    }
    opts.update(tissue_kwargs)
    g = _generate(shape, seed=seed, mpp=mpp, regions=regions, **opts)
    h, w = g["h"].shape
    rng: np.random.Generator = g["rng"]
    # H&E: same nuclei (hematoxylin); eosin in cytoplasm and stroma.
    eos = np.where(g["tissue"], np.float32(eosin_od), np.float32(0))
    eos = np.where(g["cyto"], np.float32(eosin_od * 1.4), eos)
    he = compose_rgb(
        [(g["h"], config.hematoxylin), (eos, EOSIN)], he_background, noise=noise, rng=rng
    )
    c = np.array([w / 2.0, h / 2.0])
    a = np.deg2rad(rotation_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    matrix[:2, 2] = c - rot @ c + np.asarray(translation, dtype=np.float64)
    m23 = matrix[:2].astype(np.float64)
    warp: dict[str, Any] = dict(
        dsize=(w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    hw = cv2.warpAffine(g["h"], m23, **warp)
    dw = cv2.warpAffine(g["d"], m23, **warp)
    ihc = compose_rgb(
        [(hw, config.hematoxylin), (dw, config.dab)], ihc_background, noise=noise, rng=rng
    )
    near: dict[str, Any] = dict(
        dsize=(w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    truth = _truth(g, mpp=mpp, background=ihc_background, config=config)
    truth["he_background"] = tuple(float(x) for x in he_background)
    truth["ihc_tissue_mask"] = cv2.warpAffine(g["tissue"].astype(np.uint8), m23, **near).astype(
        bool
    )
    truth["ihc_region_map"] = cv2.warpAffine(g["region_map"], m23, **near)
    xy = np.stack([truth["cells"]["x"], truth["cells"]["y"], np.ones_like(truth["cells"]["x"])])
    truth["ihc_cells_xy"] = (matrix @ xy)[:2].T
    return he, ihc, matrix, truth
