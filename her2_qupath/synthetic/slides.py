"""Synthetic IHC slides and H&E / IHC pairs, with their ground truth.

The tissue is a smooth blob split into vertical regions, each holding exactly
the requested percentages of cells at 0, 1+, 2+, 3+ (see :mod:`her2_qupath.synthetic`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..config import StainConfig
from ..errors import UserInputError
from .layouts import LAYOUTS
from .render import EOSIN, compose_rgb

__all__ = ["DEFAULT_REGIONS", "synthetic_ihc", "synthetic_pair"]

#: Default regions: a 3+ region (40 % of cells 3+), and a negative one.
DEFAULT_REGIONS: tuple[Mapping[str, float], ...] = (
    {"0": 50.0, "1+": 10.0, "2+": 0.0, "3+": 40.0},
    {"0": 100.0, "1+": 0.0, "2+": 0.0, "3+": 0.0},
)

_KEYS = ("0", "1+", "2+", "3+")


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
