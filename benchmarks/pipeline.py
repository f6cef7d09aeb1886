"""Throughput of a whole scoring run against its irreducible work, measured in one run.

Baseline: read every tile of the run's grid and colour-deconvolve it, serially
(the least any run must do). Pipeline: ``run_score`` on the same slide
(tissue detection, background, tiles in parallel, scoring, QuPath objects,
overlay), at pixel level and at cell level. Prints tiles/s and the ratio
pipeline/baseline (above 1: the parallel pipeline outruns the serial
minimum; its fixed costs show on small slides).

    python benchmarks/pipeline.py [--size 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her2_qupath.config import ScoringConfig  # noqa: E402
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score  # noqa: E402
from her2_qupath.slide import open_slide  # noqa: E402
from her2_qupath.slide_writer import write_slide  # noqa: E402
from her2_qupath.stain import deconvolve, estimate_background  # noqa: E402
from her2_qupath.synthetic import synthetic_ihc  # noqa: E402
from her2_qupath.tiling import read_tile, tile_grid  # noqa: E402
from her2_qupath.tissue import detect_tissue  # noqa: E402


def baseline(path: Path, opts: ScoreOptions) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, opts.tissue)
        grid = tile_grid(slide.dimensions, slide.mpp, opts.tiling, tissue=tissue)
        bg = estimate_background(slide.thumbnail(mpp=opts.tissue.thumbnail_mpp))
        for tile in grid.tiles:
            deconvolve(read_tile(slide, tile), None, bg)
    return len(grid.tiles), time.perf_counter() - t0


def pipeline(path: Path, opts: ScoreOptions) -> tuple[int, float]:
    t0 = time.perf_counter()
    res = run_score(ScoreRequest(ihc=path, options=opts))
    return res.summary["n_tiles"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="side of the synthetic slide (px)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each (medians)")
    args = ap.parse_args()
    opts = ScoreOptions()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ihc.svs"
        rgb = synthetic_ihc((args.size, args.size), seed=1, mpp=0.5, tissue_fraction=0.7)[0]
        write_slide(path, rgb, mpp=0.5, kind="svs")
        del rgb
        pipeline(path, opts)  # warm-up: imports, caches
        # interleaved runs, medians: the machine is shared and noisy
        base_t, pix_t = [], []
        for _ in range(args.repeats):
            n, t = baseline(path, opts)
            base_t.append(t)
            pix_t.append(pipeline(path, opts)[1])
        t_base, t_pix = statistics.median(base_t), statistics.median(pix_t)
        cell_opts = replace(opts, scoring=ScoringConfig(level="cell"))
        _, t_cell = pipeline(path, cell_opts)
    out = {
        "slide": f"{args.size}x{args.size} synthetic IHC, SVS/JPEG, 0.5 um/px",
        "cpus": os.cpu_count(),
        "tiles": n,
        "baseline_tiles_per_s": round(n / t_base, 1),
        "pipeline_pixel_tiles_per_s": round(n / t_pix, 1),
        "pipeline_cell_tiles_per_s": round(n / t_cell, 2),
        "ratio_pixel_vs_baseline": round(t_base / t_pix, 2),
        "ratio_cell_vs_baseline": round(t_base / t_cell, 3),
        "repeats": args.repeats,
    }
    for k, v in out.items():
        print(f"{k:>28}: {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
