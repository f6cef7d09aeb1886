"""Cell level at whole-slide scale: s/mm², peak memory, cost against reading + deconvolving.

Builds a pyramidal SVS (JPEG, 0.25 µm/px, like a 40x scan) from real HER2 IHC
tissue — the gastro-oesophageal tissue-microarray cores in
``../shared/data/her2-ihc/gastric-tma`` (≈ 0.25 µm/px, 5468 px, dense tumour,
glass around each core; laid out side by side with flips and rotations, like
a TMA slide) — in ``/tmp`` (never in the repository), at two sizes, and on
each measures, as separate processes, median of ``--runs`` interleaved runs:

* **read+deconvolve**: every tile of the run's grid (tissue detection and tile
  grid as the run builds them) read with the product's reader and
  colour-deconvolved, in ``--workers`` worker processes — the least any run
  must do with those pixels;
* **cell level**: ``run_score`` at ``--level cell`` (its default executor: as
  many worker processes) and ``write_result`` (the streamed detections file
  included) — what ``her2-qupath score --level cell`` does.

With ``--before DIR`` the cell level also runs from another source tree (e.g. an
exported older commit) in the same rounds, interleaved, for before/after figures
under the same load; each run's output is reduced to a digest (the detections
file and ``summary.json`` less provenance, random ids masked) and the digests of
both trees are compared: identical cells, classes and summary, or not.

Both sides use the same number of workers (printed). Peak memory is the
largest sum of the resident sizes of the measured process and all its
children (workers, fork server), sampled every 0.1 s. Prints seconds per mm² of
analysed tiles, the extrapolation to 1 cm² (0.25 µm/px scan, 0.5 µm/px working
resolution), the ratio cell / read+deconvolve, and peak RSS at both sizes.

    python benchmarks/slide_scale.py [--sides 15000,30000] [--runs 3] [--tree DIR] [--before DIR]

``--tree DIR`` runs the cell level from another source tree (e.g. an
exported older commit) for before/after figures on the same slides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "her2-ihc" / "gastric-tma"
SCAN_MPP = 0.25


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- the slide


def make_slide(path: Path, side: int, seed: int = 0) -> Path:
    """A ``side`` x ``side`` SVS of real IHC tissue cores at 0.25 µm/px (cached in /tmp)."""
    import numpy as np
    from PIL import Image

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    cores = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(DATA.glob("*.jpg"))]
    if not cores:
        raise SystemExit(f"no tissue cores in {DATA}")
    p = min(min(c.shape[:2]) for c in cores)
    glass = np.median(np.concatenate([c[:64, :64].reshape(-1, 3) for c in cores]), axis=0)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = glass.astype(np.uint8)
    for y in range(0, side, p):
        for x in range(0, side, p):
            tile = np.rot90(cores[rng.integers(len(cores))][:p, :p], k=int(rng.integers(4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            h, w = min(p, side - y), min(p, side - x)
            canvas[y:y + h, x:x + w] = tile[:h, :w]
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_aperio(path, canvas)
    return path


def _write_aperio(path: Path, rgb: object) -> None:
    """An SVS laid out as Aperio scanners write 40x slides: levels at 1x, 4x, 16x (64x), JPEG
    256 px tiles, a thumbnail page — so a 0.5 µm/px tile is read from the 0.25 µm/px level
    and resampled, as on a real scan."""
    import cv2
    import numpy as np
    import tifffile

    a = np.asarray(rgb)
    h, w = a.shape[:2]
    levels, ds = [a], 4
    while max(w, h) // ds >= 1024:
        levels.append(cv2.resize(a, (w // ds, h // ds), interpolation=cv2.INTER_AREA))
        ds *= 4
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=85"
    keys = f"AppMag = 40|MPP = {SCAN_MPP:g}"
    jpeg = {"compression": "jpeg", "compressionargs": {"level": 85}, "tile": (256, 256),
            "photometric": "rgb", "metadata": None}
    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(levels[0], description=f"{head}|{keys}", **jpeg)
        th = cv2.resize(levels[-1], (768, round(768 * h / w)), interpolation=cv2.INTER_AREA)
        tw.write(th, photometric="rgb", metadata=None, rowsperstrip=16,
                 description=f"Aperio Image Library v12.0.15 \n{w}x{h} -> {th.shape[1]}x{th.shape[0]} - |{keys}")
        for lv in levels[1:]:
            tw.write(lv, description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} (256x256) -> "
                                     f"{lv.shape[1]}x{lv.shape[0]} JPEG/RGB Q=85", **jpeg)
    tmp.replace(path)


# --------------------------------------------------------------------------- measured children


def _grid(path: str) -> tuple[list, tuple[float, float, float]]:
    from her2_qupath.pipeline import ScoreOptions
    from her2_qupath.slide import open_slide
    from her2_qupath.stain import estimate_background
    from her2_qupath.tiling import tile_grid
    from her2_qupath.tissue import detect_tissue

    opts = ScoreOptions()
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, opts.tissue)
        grid = tile_grid(slide.dimensions, slide.mpp, opts.tiling, tissue=tissue)
        bg = estimate_background(slide.thumbnail(mpp=opts.tissue.thumbnail_mpp))
    return list(grid.tiles), tuple(float(b) for b in bg)


def _read_deconvolve(args: tuple[str, list, tuple]) -> int:
    from her2_qupath.pipeline.tiles import _cached_slide
    from her2_qupath.stain import deconvolve
    from her2_qupath.tiling import read_tile

    path, tiles, bg = args
    slide = _cached_slide(path, None)
    for t in tiles:
        deconvolve(read_tile(slide, t), None, bg)
    return len(tiles)


def child_baseline(path: str, workers: int) -> dict:
    import concurrent.futures as cf
    import multiprocessing as mp

    t0 = time.perf_counter()
    tiles, bg = _grid(path)
    chunks = [(path, tiles[i:i + 8], bg) for i in range(0, len(tiles), 8)]
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        n = sum(pool.map(_read_deconvolve, chunks))
    return {"seconds": time.perf_counter() - t0, "tiles": n}


def child_cells(path: str, outdir: str) -> dict:
    from her2_qupath.config import ScoringConfig
    from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result

    t0 = time.perf_counter()
    res = run_score(ScoreRequest(ihc=Path(path), options=ScoreOptions(scoring=ScoringConfig(level="cell"))))
    out = write_result(res, outdir)
    seconds = time.perf_counter() - t0
    det = Path(out) / "detections.geojson"
    return {"seconds": seconds, "tiles": res.summary["n_tiles"], "cells": res.summary["n_cells"],
            "her2_score": res.summary["her2_score"], "detections_mb": det.stat().st_size / 2**20}


# --------------------------------------------------------------------------- the harness

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def output_digest(outdir: Path) -> str:
    """sha256 of a run's detections file and summary (less provenance), random ids masked."""
    h = hashlib.sha256(_UUID.sub(b"-", (outdir / "detections.geojson").read_bytes()))
    summary = json.loads((outdir / "summary.json").read_text())
    summary.pop("provenance", None)
    h.update(_UUID.sub(b"-", json.dumps(summary, sort_keys=True).encode()))
    return h.hexdigest()[:16]



def _measure(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float]:
    """Run ``cmd`` in ``cwd``; its JSON result and the peak RSS (GiB) of it and its children.

    ``cwd`` must hold no ``her2_qupath``: the forkserver of the worker processes is
    started with ``python -c`` (the working directory first on its path) and preloads
    the package from there, whatever PYTHONPATH says — run from the repository root,
    the workers of a ``--tree`` / ``--before`` run would run this tree's code.
    """
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            peak = max(peak, total)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="15000,30000", help="slide sides in pixels at 0.25 µm/px")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs of each (medians)")
    ap.add_argument("--workers", type=int, default=_workers(), help="worker processes, both sides")
    ap.add_argument("--workdir", default="/tmp/her2-slide-scale", help="where slides are made")
    ap.add_argument("--tree", default=None, help="source tree to run the cell level from")
    ap.add_argument("--before", default=None,
                    help="also run the cell level from this source tree, interleaved (before/after)")
    ap.add_argument("--skip-baseline", action="store_true", help="cell level only")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, *rest = args.child
        res = child_baseline(path, int(rest[0])) if kind == "baseline" else child_cells(path, rest[0])
        print(json.dumps(res))
        return

    work = Path(args.workdir)
    if work.resolve().is_relative_to(ROOT):
        raise SystemExit("the slides go to /tmp, never into the repository")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(args.tree).resolve() if args.tree else ROOT)
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    env_before = dict(os.environ, PYTHONPATH=str(Path(args.before).resolve())) if args.before else None
    rows = []
    for side in (int(s) for s in args.sides.split(",")):
        slide = make_slide(work / f"bci-{side}.svs", side)
        base_t, cell_t, base_rss, cell_rss, info = [], [], [], [], {}
        before_t, before_rss, digests, before_digests = [], [], set(), set()
        for _ in range(args.runs):  # interleaved: the machine is shared and noisy
            if not args.skip_baseline:
                r, rss = _measure([*me, "baseline", str(slide), str(args.workers)], env, work)
                base_t.append(r["seconds"])
                base_rss.append(rss)
                info["tiles_baseline"] = r["tiles"]
            r, rss = _measure([*me, "cells", str(slide), str(work / f"out-{side}")], env, work)
            cell_t.append(r["seconds"])
            cell_rss.append(rss)
            info.update(r)
            digests.add(output_digest(work / f"out-{side}"))
            if env_before is not None:
                rb, rss = _measure([*me, "cells", str(slide), str(work / f"out-{side}-before")],
                                   env_before, work)
                before_t.append(rb["seconds"])
                before_rss.append(rss)
                before_digests.add(output_digest(work / f"out-{side}-before"))
        mm2 = info["tiles"] * (512 * 0.5e-3) ** 2
        t_cell = statistics.median(cell_t)
        row = {
            "slide": f"{side}x{side} px ({side * side / 1e6:.0f} MP) at {SCAN_MPP} um/px, SVS/JPEG",
            "workers (both sides)": args.workers,
            "runs (medians)": args.runs,
            "tiles (512 px at 0.5 um/px)": info["tiles"],
            "analysed mm2": round(mm2, 2),
            "cells": info["cells"],
            "cell level s (median)": round(t_cell, 1),
            "cell level s/mm2": round(t_cell / mm2, 3),
            "1 cm2 extrapolated, min": round(t_cell / mm2 * 100 / 60, 1),
            "cell level peak RSS GiB": round(max(cell_rss), 2),
            "detections MiB": round(info["detections_mb"], 1),
            "cell runs s": [round(t, 1) for t in cell_t],
        }
        if base_t:
            t_base = statistics.median(base_t)
            row.update({
                "read+deconvolve s (median)": round(t_base, 1),
                "read+deconvolve peak RSS GiB": round(max(base_rss), 2),
                "ratio cell / read+deconvolve": round(t_cell / t_base, 2),
                "read+deconvolve runs s": [round(t, 1) for t in base_t],
            })
        if before_t:
            t_before = statistics.median(before_t)
            row.update({
                "before: cell level s (median)": round(t_before, 1),
                "before: cell level s/mm2": round(t_before / mm2, 3),
                "before: 1 cm2 extrapolated, min": round(t_before / mm2 * 100 / 60, 1),
                "before: cell level peak RSS GiB": round(max(before_rss), 2),
                "before: cell runs s": [round(t, 1) for t in before_t],
                "speed-up before / after": round(t_before / t_cell, 2),
            })
            if base_t:
                row["before: ratio cell / read+deconvolve"] = round(t_before / t_base, 2)
        row["output digest"] = sorted(digests)
        if before_t:
            row["before: output digest"] = sorted(before_digests)
            row["identical output before/after"] = digests == before_digests and len(digests) == 1
        rows.append(row)
        for k, v in row.items():
            print(f"{k:>32}: {v}", flush=True)
        print(flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
