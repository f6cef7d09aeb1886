"""Speed of the cell analysis on 512 x 512 tiles, as ratios to baselines of the same run.

Prints the time of ``cells.detect_cells`` per 512 x 512 tile and its ratio to
two baselines timed on the same tiles in the same run (so machine load cancels
out): the colour deconvolution alone (``stain.deconvolve``, the floor any cell
analysis pays) and scikit-image's ``rgb2hed`` + one Gaussian filter (a naive
"do almost nothing" pipeline). Also the share of each stage.

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
SHARED = (
    Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "ihc"
    / "ki67"
)


def tiles() -> list[tuple[str, np.ndarray, float]]:
    """Real IHC tiles: scikit-image's FHL2 image (0.5 µm/px assumed) and the Ki67 tiles if present."""
    from skimage.data import immunohistochemistry
    from skimage.io import imread

    out = [("skimage-ihc", immunohistochemistry(), 0.5)]
    for p in sorted(SHARED.glob("*.png")):
        if not p.name.endswith(".groundtruth.png"):
            out.append((p.stem, imread(p)[..., :3], 0.25))
    return out


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    from her2_qupath import cells
    from her2_qupath.stain import deconvolve, estimate_background

    print(
        f"{'tile':<14} {'cells':>6} {'detect_cells s':>15} {'deconvolve s':>13} "
        f"{'ratio':>7} {'skimage s':>10} {'ratio':>7}"
    )
    ratios = []
    for name, rgb, mpp in tiles():
        bg = estimate_background(rgb)
        result = cells.detect_cells(rgb, mpp, background=bg)
        t_cells = best_of(
            lambda rgb=rgb, mpp=mpp, bg=bg: cells.detect_cells(rgb, mpp, background=bg),
            args.repeats,
        )
        t_dec = best_of(lambda rgb=rgb, bg=bg: deconvolve(rgb, None, bg), args.repeats)
        t_sk = best_of(lambda rgb=rgb: ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 2.0), args.repeats)
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
        lambda: (cells.label_polygons(nuclei), cells.label_polygons(comp[0])), args.repeats
    )
    total = t_nuc + t_comp + t_meas + t_poly
    print(
        f"\nstages on {name} ({int(nuclei.max())} cells): nuclei {t_nuc:.3f} s "
        f"({100 * t_nuc / total:.0f} %), cells+rings {t_comp:.3f} s ({100 * t_comp / total:.0f} %), "
        f"measurements {t_meas:.3f} s ({100 * t_meas / total:.0f} %), "
        f"outlines {t_poly:.3f} s ({100 * t_poly / total:.0f} %)"
    )
    print(f"detect_cells / (rgb2hed + gaussian): median ratio {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
