"""Throughput of a whole scoring run against its irreducible work, like with like.

Baseline: read every tile of the run's grid and colour-deconvolve it, in as
many worker processes as the run uses (the least any run must do with those
pixels, as parallel as the run). Pipeline: ``run_score`` + ``write_result``
on the same slide (tissue detection, background, tiles, scoring, QuPath
objects, overlay, the output files — writing included) at the pixel level
(the thread pool ``run_score`` uses by default) and at the cell level (worker
processes by default). All three run interleaved, ``--repeats`` (>= 3) rounds;
each figure is the median. Tiles are the pipeline's (512 px at 0.5 µm/px).
Prints tiles/s of each and the ratios run / baseline (the run's cost in units
of reading + deconvolving the same pixels; 1 would be free analysis).

    python benchmarks/pipeline.py [--size 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her2_qupath.config import ScoringConfig  # noqa: E402
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result  # noqa: E402
from her2_qupath.pipeline.tiles import _cached_slide  # noqa: E402
from her2_qupath.pipeline.work import _pool_workers  # noqa: E402
from her2_qupath.slide import open_slide  # noqa: E402
from her2_qupath.slide_writer import write_slide  # noqa: E402
from her2_qupath.stain import deconvolve, estimate_background  # noqa: E402
from her2_qupath.synthetic import synthetic_ihc  # noqa: E402
from her2_qupath.tiling import read_tile, tile_grid  # noqa: E402
from her2_qupath.tissue import detect_tissue  # noqa: E402


def _read_deconvolve(job: tuple[str, list, tuple]) -> int:
    path, tiles, bg = job
    slide = _cached_slide(path, None)
    for tile in tiles:
        deconvolve(read_tile(slide, tile), None, bg)
    return len(tiles)


def baseline(path: Path, opts: ScoreOptions, workers: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, opts.tissue)
        grid = tile_grid(slide.dimensions, slide.mpp, opts.tiling, tissue=tissue)
        bg = tuple(float(b) for b in estimate_background(slide.thumbnail(mpp=opts.tissue.thumbnail_mpp)))
    tiles = list(grid.tiles)
    jobs = [(str(path), tiles[i:i + 8], bg) for i in range(0, len(tiles), 8)]
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        n = sum(pool.map(_read_deconvolve, jobs))
    return n, time.perf_counter() - t0


def pipeline(path: Path, opts: ScoreOptions, out: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    res = run_score(ScoreRequest(ihc=path, options=opts))
    write_result(res, out)
    return res.summary["n_tiles"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="side of the synthetic slide (px)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (>= 3; medians)")
    args = ap.parse_args()
    repeats = max(3, args.repeats)
    workers = _pool_workers(None)
    opts = ScoreOptions()
    cell_opts = replace(opts, scoring=ScoringConfig(level="cell"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ihc.svs"
        rgb = synthetic_ihc((args.size, args.size), seed=1, mpp=0.5, tissue_fraction=0.7)[0]
        write_slide(path, rgb, mpp=0.5, kind="svs")
        del rgb
        pipeline(path, opts, Path(tmp) / "warm")  # warm-up: imports, caches
        base_t, pix_t, cell_t = [], [], []
        for r in range(repeats):  # interleaved: the machine is shared and noisy
            n, t = baseline(path, opts, workers)
            base_t.append(t)
            pix_t.append(pipeline(path, opts, Path(tmp) / f"pixel-{r}")[1])
            cell_t.append(pipeline(path, cell_opts, Path(tmp) / f"cell-{r}")[1])
    t_base, t_pix, t_cell = (statistics.median(x) for x in (base_t, pix_t, cell_t))
    out = {
        "slide": f"{args.size}x{args.size} synthetic IHC, SVS/JPEG, 0.5 um/px, 512 px tiles",
        "workers (every side)": workers,
        "rounds (medians)": repeats,
        "tiles": n,
        "baseline_tiles_per_s": round(n / t_base, 1),
        "pipeline_pixel_tiles_per_s": round(n / t_pix, 1),
        "pipeline_cell_tiles_per_s": round(n / t_cell, 2),
        "pixel_level_cost_x_baseline": round(t_pix / t_base, 2),
        "cell_level_cost_x_baseline": round(t_cell / t_base, 2),
        "seconds": {"baseline": [round(t, 2) for t in base_t], "pixel": [round(t, 2) for t in pix_t],
                    "cell": [round(t, 2) for t in cell_t]},
    }
    for k, v in out.items():
        print(f"{k:>30}: {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
