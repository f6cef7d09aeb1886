"""Speed of the cell analysis on 512 x 512 tiles, as ratios to baselines of the same run.

Prints the time of ``cells.detect_cells`` per 512 x 512 tile and its ratio to
two baselines timed on the same tiles in the same run (so machine load cancels
out): the colour deconvolution alone (``stain.deconvolve``, the floor any cell
analysis pays) and scikit-image's ``rgb2hed`` + one Gaussian filter (a naive
"do almost nothing" pipeline). Also the share of each stage, and each fast
path of the module against the library routine it replaces (same results, checked
by ``tests/test_cells.py`` and ``tests/test_cells_compiled.py``), timed on the same tile:

* outlines: ``label_outlines`` (compiled marching squares, Douglas-Peucker as GEOS and
  an exact simplicity test, as arrays) vs. ``skimage.measure.find_contours`` per label
  and shapely's ``simplify``;
* seeds: ``_local_peaks`` (OpenCV's maximum filter, one pass over the kept seeds)
  vs. ``skimage.feature.peak_local_max``;
* seed dynamics: ``_h_maxima_at`` (a compiled flood fill from each seed, stopped at
  the first higher ground) vs. ``skimage.morphology.h_maxima`` at the seeds;
* watershed: the compiled ``flood`` (scikit-image's heap and rules) vs.
  ``skimage.segmentation.watershed``;
* seed response: the compiled Laplacian of Gaussian (SciPy's kernels and sums) vs.
  ``scipy.ndimage.gaussian_laplace``;
* cell expansion: the compiled port of SciPy's feature transform vs.
  ``skimage.segmentation.expand_labels``;
* inner boundaries of the cells: four comparisons vs. ``find_boundaries``;
* background and opening: OpenCV vs. ``scipy.ndimage`` grey / binary opening;
* per-cell counts, means, maxima and centroids: one compiled pass vs. ``scipy.ndimage``;
* membrane band and depth: one compiled pass, exact below the band width, vs. the whole
  tile's ``scipy.ndimage.distance_transform_edt``.

Like with like: everything runs on **one thread** (OpenCV's own threads are
switched off: with them the fast paths borrowed a second core the library
routines did not get), and each figure is the median of ``--repeats`` (>= 3)
rounds in which the contenders run interleaved, so machine load hits both.

Target: a 512 x 512 tile in well under a second on one core.

Usage: python benchmarks/cells.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED = DATA / "ihc" / "ki67"
#: real HER2 IHC (gastro-oesophageal TMA cores, ~0.25 µm/px): the tissue of benchmarks/slide_scale.py
HER2_TMA = DATA / "her2-ihc" / "gastric-tma"


def tiles() -> list[tuple[str, np.ndarray, float]]:
    """Real IHC tiles: scikit-image's FHL2 image (0.5 µm/px assumed), the Ki67 tiles and two
    HER2 TMA cores (halved to 0.5 µm/px as the pipeline reads them, the centre 512²) if present."""
    import cv2
    from skimage.data import immunohistochemistry
    from skimage.io import imread

    out = [("skimage-ihc", immunohistochemistry(), 0.5)]
    for p in sorted(SHARED.glob("*.png")):
        if not p.name.endswith(".groundtruth.png"):
            out.append((p.stem, imread(p)[..., :3], 0.25))
    for p in sorted(HER2_TMA.glob("*.jpg"))[-2:]:
        core = imread(p)[..., :3]
        half = cv2.resize(core, (core.shape[1] // 2, core.shape[0] // 2), interpolation=cv2.INTER_AREA)
        r, c = half.shape[0] // 2 - 256, half.shape[1] // 2 - 256
        out.append((f"her2-{p.stem[:8]}", np.ascontiguousarray(half[r:r + 512, c:c + 512]), 0.5))
    return out


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median time of each function over ``repeats`` (>= 3) rounds, run in turn each round."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(3, repeats)):
        for k, fn in enumerate(fns):
            times[k].append(_time(fn))
    return [statistics.median(t) for t in times]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Median time of ``fn`` over ``repeats`` (>= 3) runs (a stage alone)."""
    return interleaved([fn], repeats)[0]


def _band_scipy(cells: np.ndarray, nuclei: np.ndarray, not_inner: np.ndarray,
                width: np.float32) -> tuple[np.ndarray, ...]:
    """The membrane band by SciPy's exact distance transform of the whole tile."""
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(not_inner).astype(np.float32)
    band = (depth < width) & (nuclei == 0)
    return np.where(band, cells, 0), np.where(~band & (nuclei == 0), cells, 0), depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # one thread on both sides (rgb2hed, scipy, skimage use one)
    print("threads: 1 on every side (cv2.setNumThreads(1)); medians of interleaved rounds")

    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    from her2_qupath import cells
    from her2_qupath.cells.outlines import label_outlines
    from her2_qupath.stain import deconvolve, estimate_background

    print(
        f"{'tile':<14} {'cells':>6} {'detect_cells s':>15} {'deconvolve s':>13} "
        f"{'ratio':>7} {'skimage s':>10} {'ratio':>7}"
    )
    ratios = []
    for name, rgb, mpp in tiles():
        bg = estimate_background(rgb)
        result = cells.detect_cells(rgb, mpp, background=bg)
        t_cells, t_dec, t_sk = interleaved(
            [
                lambda rgb=rgb, mpp=mpp, bg=bg: cells.detect_cells(rgb, mpp, background=bg),
                lambda rgb=rgb, bg=bg: deconvolve(rgb, None, bg),
                lambda rgb=rgb: ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 2.0),
            ],
            args.repeats,
        )
        ratios.append(t_cells / t_sk)
        print(
            f"{name:<14} {len(result):>6} {t_cells:>15.3f} {t_dec:>13.4f} "
            f"{t_cells / t_dec:>7.1f} {t_sk:>10.4f} {t_cells / t_sk:>7.1f}"
        )

    # stage breakdown on the first tile
    name, rgb, mpp = tiles()[0]
    bg = estimate_background(rgb)
    od = deconvolve(rgb, None, bg)
    chan = cells.nucleus_channel(od)
    t_nuc = best_of(lambda: cells.detect_nuclei(chan, mpp), args.repeats)
    nuclei = cells.detect_nuclei(chan, mpp)
    t_comp = best_of(lambda: cells.cell_compartments(nuclei, mpp), args.repeats)
    comp = cells.cell_compartments(nuclei, mpp)
    t_meas = best_of(lambda: cells.measure_cells(od, nuclei, comp, mpp), args.repeats)
    t_poly = best_of(
        lambda: (label_outlines(nuclei), label_outlines(comp[0])), args.repeats
    )
    total = t_nuc + t_comp + t_meas + t_poly
    print(
        f"\nstages on {name} ({int(nuclei.max())} cells): nuclei {t_nuc:.3f} s "
        f"({100 * t_nuc / total:.0f} %), cells+rings {t_comp:.3f} s ({100 * t_comp / total:.0f} %), "
        f"measurements {t_meas:.3f} s ({100 * t_meas / total:.0f} %), "
        f"outlines {t_poly:.3f} s ({100 * t_poly / total:.0f} %)"
    )
    print(f"detect_cells / (rgb2hed + gaussian): median ratio {statistics.median(ratios):.1f}")
    fast_paths(rgb, mpp, bg, args.repeats)


def _stats_scipy(compartments: tuple[np.ndarray, ...], hema: np.ndarray, dab: np.ndarray,
                 n: int) -> list[np.ndarray]:
    """What the one compiled pass gives, with ``scipy.ndimage``: counts, means and maxima."""
    from scipy import ndimage as ndi

    index = np.arange(1, n + 1)
    cell, nucleus, membrane, cytoplasm = compartments
    with np.errstate(invalid="ignore", divide="ignore"):  # a cell without cytoplasm: NaN
        out = [ndi.sum_labels(np.ones_like(dab), labels=x, index=index) for x in compartments]
        out += [ndi.mean(dab, labels=x, index=index) for x in compartments]
        out += [ndi.mean(hema, labels=nucleus, index=index)]
        out += [ndi.maximum(dab, labels=x, index=index) for x in (nucleus, membrane, cytoplasm)]
        out += list(ndi.center_of_mass(np.ones_like(dab), labels=cell, index=index))
    return out


def _reference_polygons(labels: np.ndarray, tolerance: float = 0.5) -> list[object]:
    """Outlines the plain way: marching squares on each label's padded crop, then simplify."""
    from scipy import ndimage as ndi
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    out: list[object] = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = np.pad(labels[sl] == i, 1).astype(np.float32)
        polys = [Polygon(c[:, ::-1]) for c in find_contours(crop, 0.5) if len(c) >= 4]
        out.append(max(polys, key=lambda p: p.area).simplify(tolerance, preserve_topology=False))
    return out


def fast_paths(rgb: np.ndarray, mpp: float, bg: object, repeats: int) -> None:
    """Time each fast path of ``cells`` against the library routine it replaces."""
    import math

    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima
    from skimage.segmentation import expand_labels, find_boundaries, watershed

    from her2_qupath import cells
    from her2_qupath.cells import _compiled, _compiled_cells, measure
    from her2_qupath.cells import nuclei as nuclei_mod
    from her2_qupath.cells.outlines import label_outlines
    from her2_qupath.config import CellConfig
    from her2_qupath.stain import deconvolve

    cfg = CellConfig()
    od = deconvolve(rgb, None, bg)
    chan = cells.nucleus_channel(od)
    nuclei = cells.detect_nuclei(chan, mpp)
    comp = cells.cell_compartments(nuclei, mpp)
    cell_labels = comp[0]
    hema = np.ascontiguousarray(od[..., 0])
    n = int(nuclei.max())
    s = cfg.split_sigma_um / mpp
    blob = -(s * s) * ndi.gaussian_laplace(np.clip(chan, 0, cfg.nucleus_max_od), sigma=s)
    log_blob = np.log(np.maximum(blob, 0.01)).astype(np.float32)
    h = -math.log(1.0 - cfg.split_min_dip)
    side = 2 * round(cfg.background_radius_um / mpp) + 1
    smooth = ndi.gaussian_filter(chan, cfg.smoothing_um / mpp)
    mask = smooth > np.median(smooth)
    disk = nuclei_mod._disk(cfg.opening_um / mpp)
    dab = np.ascontiguousarray(od[..., 1])
    inner = ~find_boundaries(cell_labels, mode="inner")
    width = np.float32(cfg.membrane_width_um / mpp)
    distance = round(cfg.split_min_distance_um / mpp)
    peaks = nuclei_mod._local_peaks(blob, nuclei > 0, distance)
    markers = np.zeros(blob.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    pairs = {
        "outlines (nuclei + cells)": (
            lambda: (label_outlines(nuclei), label_outlines(cell_labels)),
            lambda: (_reference_polygons(nuclei), _reference_polygons(cell_labels)),
        ),
        "seeds (local maxima)": (
            lambda: nuclei_mod._local_peaks(blob, nuclei > 0, distance),
            lambda: peak_local_max(blob, min_distance=distance, labels=(nuclei > 0).astype(np.int32),
                                   exclude_border=False),
        ),
        "seed dynamics (h-maxima)": (
            lambda: nuclei_mod._h_maxima_at(log_blob, h, *peaks.T),
            lambda: h_maxima(log_blob, h)[tuple(peaks.T)],
        ),
        "watershed": (
            lambda: _compiled.flood(-blob, markers.copy(), nuclei > 0),
            lambda: watershed(-blob, markers, mask=nuclei > 0),
        ),

        "seed response (LoG)": (
            lambda: _compiled.gaussian_laplace(chan, s),
            lambda: ndi.gaussian_laplace(chan, s, mode="nearest"),
        ),
        "cell expansion": (
            lambda: _compiled_cells.expand(nuclei, cfg.expansion_um / mpp),
            lambda: expand_labels(nuclei, cfg.expansion_um / mpp),
        ),
        "background (grey opening)": (
            lambda: nuclei_mod._grey_opening(smooth, side),
            lambda: ndi.maximum_filter(
                ndi.minimum_filter(smooth, size=side, mode="nearest"), size=side, mode="nearest"
            ),
        ),
        "mask opening (binary)": (
            lambda: nuclei_mod._binary_opening(mask, disk),
            lambda: ndi.binary_opening(mask, structure=disk),
        ),
        "membrane band and depth": (
            lambda: _compiled_cells.split_band(cell_labels, nuclei, ~inner, width),
            lambda: _band_scipy(cell_labels, nuclei, inner, width),
        ),
        "inner boundaries": (
            lambda: measure._inner_boundaries(cell_labels),
            lambda: find_boundaries(cell_labels, mode="inner"),
        ),
        "per-cell means and maxima": (
            lambda: _compiled_cells.compartment_sums(comp[0], nuclei, comp[1], comp[2], hema, dab, n),
            lambda: _stats_scipy((comp[0], nuclei, comp[1], comp[2]), hema, dab, n),
        ),
    }
    print(f"\nfast paths on the first tile ({n} cells): module s, library s, speed-up")
    for label, (fast, ref) in pairs.items():
        t_fast, t_ref = interleaved([fast, ref], repeats)
        print(f"  {label:<27} {t_fast:8.4f} {t_ref:8.4f} {t_ref / t_fast:6.1f}x")


if __name__ == "__main__":
    main()
