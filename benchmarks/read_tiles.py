"""Benchmark: tile reads through ``Slide.read_region`` against decoding with tifffile directly.

Reads every 512 × 512 tile of ``CMU-1-Small-Region.svs`` at level 0 (edge
tiles padded with white) in two ways, in the same run:

* ``read_region``: the product's tile-based reader (decodes only the TIFF
  tiles each request touches, with its LRU tile cache);
* baseline: ``tifffile`` ``page.asarray()`` of the whole level, then slicing.

Prints tiles/s for both, their ratio (target >= 0.8) and the peak Python
memory (tracemalloc) of each way, and checks the pixels are identical.

    python benchmarks/read_tiles.py [SLIDE] [--repeats N]

Skips (exit 0) with a message when the slide is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from her2_qupath.slide import open_slide  # noqa: E402

DATA = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT = DATA / "slides" / "CMU-1-Small-Region.svs"
TILE = 512


def _grid(width: int, height: int) -> list[tuple[int, int]]:
    return [(x, y) for y in range(0, height, TILE) for x in range(0, width, TILE)]


def via_read_region(path: Path) -> list[np.ndarray]:
    with open_slide(path) as slide:
        w, h = slide.dimensions
        return [slide.read_region((x, y), 0, (TILE, TILE)) for x, y in _grid(w, h)]


def via_tifffile(path: Path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        level = tif.pages[0].asarray()
    h, w = level.shape[:2]
    tiles = []
    for x, y in _grid(w, h):
        tile = np.full((TILE, TILE, 3), 255, np.uint8)
        part = level[y: y + TILE, x: x + TILE]
        tile[: part.shape[0], : part.shape[1]] = part
        tiles.append(tile)
    return tiles


def _timed(fn: Callable[[Path], list[np.ndarray]], path: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, tiles) for one pass."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = len(fn(path))
    return time.perf_counter() - w0, time.process_time() - c0, n


def _peak(fn: Callable[[Path], list[np.ndarray]], path: Path) -> float:
    """Peak traced memory in MiB while reading the tiles one request at a time."""
    tracemalloc.start()
    try:
        fn(path)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.slide.is_file():
        print(f"SKIP: {args.slide} not found (set HER2_QUPATH_SHARED_DATA)")
        return 0

    ours, base = via_read_region(args.slide), via_tifffile(args.slide)
    if len(ours) != len(base) or not all(np.array_equal(a, b) for a, b in zip(ours, base, strict=True)):
        print("FAIL: read_region and tifffile disagree on the pixels")
        return 1
    del ours, base

    # interleave the two ways so that machine load affects both alike; keep the best pass
    wall = {"ours": float("inf"), "base": float("inf")}
    cpu = dict(wall)
    n = 0
    for _ in range(args.repeats):
        for key, fn in (("base", via_tifffile), ("ours", via_read_region)):
            w, c, n = _timed(fn, args.slide)
            wall[key], cpu[key] = min(wall[key], w), min(cpu[key], c)
    peak_ours, peak_base = _peak(via_read_region, args.slide), _peak(via_tifffile, args.slide)
    # the read_region list holds all tiles; subtract them to show the reader's own working memory
    held = n * TILE * TILE * 3 / 2**20
    ratio = wall["base"] / wall["ours"]
    cpu_ratio = cpu["base"] / cpu["ours"]
    print(f"slide            {args.slide.name}")
    print(f"tiles            {n} of {TILE}x{TILE} at level 0 (best of {args.repeats})")
    print(f"tifffile         {n / wall['base']:8.1f} tiles/s  (page.asarray() + slicing)")
    print(f"read_region      {n / wall['ours']:8.1f} tiles/s")
    print(f"ratio            {ratio:8.2f}  (target >= 0.8) {'OK' if ratio >= 0.8 else 'BELOW TARGET'}")
    print(f"ratio (CPU time) {cpu_ratio:8.2f}  (less sensitive to other load on the machine)")
    print(f"peak memory      read_region {peak_ours:.1f} MiB, tifffile {peak_base:.1f} MiB "
          f"(both include the {held:.1f} MiB of tiles returned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
