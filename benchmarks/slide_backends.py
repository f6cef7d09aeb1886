"""Benchmark: the product's slide reader (``her2_qupath.slide``) against tiffslide.

Reads the real slides in ``../shared/data/slides`` (anything there that is not
a TIFF-based slide is skipped) and a generated pyramidal SVS (real HER2 IHC
tissue cores from ``../shared/data/her2-ihc/gastric-tma`` tiled with flips and
rotations, JPEG, 0.25 µm/px, written with ``her2_qupath.slide_writer``;
``--side`` px square, 16384 = 268 MP by default, cached in ``/tmp``) with both
backends and measures, each run in its own subprocess, median of ``--runs``
interleaved runs (the backend order alternates):

* **open**: ``open_slide(path)`` / ``TiffSlide(path)`` plus the level count,
  median of 15 opens after the first (the first, with cold imports and caches,
  is kept in the JSON as ``open_first_s``);
* **tiles**: every 512² tile of level 0 through ``read_region`` (as a NumPy
  array on both sides: ``as_array=True`` for tiffslide), one request at a time;
* **thumbnail**: ``thumbnail(max_size=1024)`` / ``get_thumbnail((1024, 1024))``;
* **peak RSS**: the child's peak resident size (``VmHWM``) and its growth over
  the resident size after the imports (what the reading itself costs).

The product is measured twice: as it runs (its LRU of decoded tiles,
``SlideConfig.tile_cache_mb`` = 128 MiB per open slide) and with that cache
off (``product-nocache``), since the cache is most of its memory.

Both sides read from one thread and decode with ``--threads`` threads
(default 1): tiffslide's ``TIFFSLIDE_NUM_DECODE_THREADS`` and zarr's thread
pool, OpenCV's ``setNumThreads`` for the product's resampling; the CPU / wall
ratio of each run is printed to show that the limit held. The pixels of the
interior tiles are compared between the backends (max absolute difference).

Then the error each backend gives for: a missing file, a truncated copy, a
JPEG 2000 slide (the real TCGA SVS) when the JPEG 2000 codec is missing (its
decoder replaced by one raising imagecodecs' ``DelayedImportError``), a TIFF
with a compression no codec knows, a damaged tile, and a text file named
``.svs``.

Prints a table with the ratios product ÷ tiffslide (time ratios below 1: the
product is faster; memory ratios below 1: it is smaller) and the errors side by side. Exit 0: it is a measurement.

    python benchmarks/slide_backends.py [--side 16384] [--runs 3] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORES = DATA / "her2-ihc" / "gastric-tma"
TILE = 512
THUMB = 1024
OPENS = 15
BACKENDS = ("product", "tiffslide", "product-nocache")
ERROR_BACKENDS = ("product", "tiffslide")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# --------------------------------------------------------------------------- slides


def real_slides() -> list[Path]:
    """The TIFF-based slides in ``DATA/slides`` (anything else is skipped, with a note)."""
    found = []
    folder = DATA / "slides"
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if path.is_file() and head in _TIFF_MAGIC:
            found.append(path)
        else:
            print(f"skipped {path.name}: not a TIFF-based slide")
    return found


def generated_slide(side: int) -> Path:
    """A ``side`` × ``side`` pyramidal JPEG SVS of real IHC tissue cores (cached in /tmp)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from her2_qupath.slide_writer import write_slide

    path = Path(tempfile.gettempdir()) / f"her2-qupath-backends-{side}.svs"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    cores = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(CORES.glob("*.jpg"))]
    if not cores:
        rng_img = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        cores = [rng_img]  # no real tissue at hand: noise (compresses worse, reads slower)
        print(f"note: no tissue cores in {CORES}; the generated slide is noise")
    p = min(min(c.shape[:2]) for c in cores)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    for y in range(0, side, p):
        for x in range(0, side, p):
            tile = np.rot90(cores[int(rng.integers(len(cores)))][:p, :p], k=int(rng.integers(4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            h, w = min(p, side - y), min(p, side - x)
            canvas[y: y + h, x: x + w] = tile[:h, :w]
    t0 = time.perf_counter()
    write_slide(path, canvas, kind="svs", mpp=0.25, magnification=40, compression="jpeg")
    print(f"generated {path} ({side}×{side}, {side * side / 1e6:.0f} MP, "
          f"{path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    return path


# --------------------------------------------------------------------------- measured child


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _limit_threads(threads: int) -> None:
    os.environ["TIFFSLIDE_NUM_DECODE_THREADS"] = str(threads)
    import cv2

    cv2.setNumThreads(threads)
    try:
        import zarr

        zarr.config.set({"threading.max_workers": threads, "async.concurrency": threads})
    except (ImportError, AttributeError, KeyError, ValueError):
        pass


def _open(backend: str, path: str) -> Any:
    if backend.startswith("product"):
        from her2_qupath.config import SlideConfig
        from her2_qupath.slide import open_slide

        return open_slide(path, config=SlideConfig(tile_cache_mb=0) if "nocache" in backend else None)
    from tiffslide import TiffSlide

    return TiffSlide(path)


def _tile_reader(backend: str, slide: Any) -> Any:
    if backend.startswith("product"):
        return lambda x, y: slide.read_region((x, y), 0, (TILE, TILE))
    return lambda x, y: slide.read_region((x, y), 0, (TILE, TILE), as_array=True)


def child_measure(backend: str, path: str, threads: int) -> dict[str, Any]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    _limit_threads(threads)
    if backend.startswith("product"):
        import her2_qupath.slide  # noqa: F401
    else:
        import tiffslide  # noqa: F401
    base = _status_mib("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    slide = _open(backend, path)
    _ = slide.level_count
    t_first = time.perf_counter() - w0
    opens = []
    for _ in range(OPENS):  # milliseconds each: repeated for a median that load cannot skew
        o0 = time.perf_counter()
        again = _open(backend, path)
        _ = again.level_count
        opens.append(time.perf_counter() - o0)
        again.close()
    t_open = statistics.median(opens)
    w, h = slide.dimensions
    read = _tile_reader(backend, slide)
    grid = [(x, y) for y in range(0, h, TILE) for x in range(0, w, TILE)]
    w1, c1 = time.perf_counter(), time.process_time()
    digest = []
    for i, (x, y) in enumerate(grid):
        tile = read(x, y)
        if i % 37 == 0 and x + TILE <= w and y + TILE <= h:
            digest.append((x, y, np.asarray(tile)[:, :, :3].astype(np.int16)))
    t_tiles, cpu_tiles = time.perf_counter() - w1, time.process_time() - c1
    w2 = time.perf_counter()
    if backend.startswith("product"):
        thumb = slide.thumbnail(max_size=THUMB)
    else:
        thumb = np.asarray(slide.get_thumbnail((THUMB, THUMB)))
    t_thumb = time.perf_counter() - w2
    levels = len(slide.level_dimensions)
    slide.close()
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    peak = _status_mib("VmHWM")  # ru_maxrss would carry the parent's peak over exec
    dump = Path(tempfile.gettempdir()) / f"her2-qupath-backends-{backend}-{os.getpid()}.npz"
    np.savez(dump, **{f"{x}_{y}": t for x, y, t in digest})
    return {"open_s": t_open, "open_first_s": t_first, "tiles_s": t_tiles, "tiles": len(grid), "thumb_s": t_thumb,
            "thumb_shape": list(np.asarray(thumb).shape), "peak_mib": peak,
            "peak_growth_mib": peak - base, "cpu_per_wall": cpu / wall if wall else 0.0,
            "tiles_cpu_per_wall": cpu_tiles / t_tiles if t_tiles else 0.0, "dump": str(dump),
            "levels": levels}


def _missing_j2k_codec() -> None:
    """Make the JPEG 2000 decoder unavailable, as a build of imagecodecs without it would."""
    import imagecodecs
    import tifffile

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise imagecodecs.DelayedImportError("jpeg2k")

    imagecodecs.jpeg2k_decode = missing
    for code in (33003, 33004, 33005, 34712):
        tifffile.TIFF.DECOMPRESSORS._codecs.pop(code, None)


def child_errors(backend: str, cases: dict[str, str], threads: int) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    _limit_threads(threads)
    out = {}
    for name, path in cases.items():
        if name == "JPEG 2000, codec missing":
            _missing_j2k_codec()  # last case: the patch stays for the rest of this process
        try:
            slide = _open(backend, path)
            try:
                w, h = slide.dimensions
                read = _tile_reader(backend, slide)
                for y in range(0, h, TILE):
                    for x in range(0, w, TILE):
                        read(x, y)
            finally:
                slide.close()
            out[name] = "(no error)"
        except BaseException as err:  # noqa: BLE001 - recorded, it is what is measured
            if isinstance(err, KeyboardInterrupt):
                raise
            out[name] = f"{type(err).__name__}: {err}"
    return out


def _run_child(args: list[str]) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode:
        print(done.stderr[-2000:])
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- error cases


def error_cases(work: Path, real: list[Path], generated: Path) -> dict[str, str]:
    import tifffile

    sys.path.insert(0, str(ROOT))
    import numpy as np

    from her2_qupath.slide_writer import write_slide

    src = real[0] if real else generated
    cases: dict[str, str] = {"missing file": str(work / "no-such-slide.svs")}
    data = src.read_bytes()
    truncated = work / f"truncated-{src.name}"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    cases["truncated copy (60 %)"] = str(truncated)
    rgb = np.random.default_rng(1).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    plain = write_slide(work / "plain.tif", rgb, kind="plain", compression="zlib")
    with tifffile.TiffFile(plain) as tif:
        where = tif.pages[0].tags["Compression"].valueoffset
        offset, count = int(tif.pages[0].dataoffsets[2]), int(tif.pages[0].databytecounts[2])
    raw = bytearray(plain.read_bytes())
    odd = bytearray(raw)
    odd[where: where + 2] = (34666).to_bytes(2, "little")
    (work / "unknown-compression.tif").write_bytes(bytes(odd))
    cases["unknown compression"] = str(work / "unknown-compression.tif")
    raw[offset: offset + count] = b"\x00" * count
    (work / "damaged-tile.tif").write_bytes(bytes(raw))
    cases["damaged tile"] = str(work / "damaged-tile.tif")
    (work / "notes.svs").write_text("these are not pixels\n")
    cases["text file named .svs"] = str(work / "notes.svs")
    j2k = [p for p in real if "TCGA" in p.name]
    if j2k:
        cases["JPEG 2000, codec missing"] = str(j2k[0])
    return cases


# --------------------------------------------------------------------------- report


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _pixels_agree(a: dict[str, Any], b: dict[str, Any]) -> str:
    import numpy as np

    with np.load(a["dump"]) as da, np.load(b["dump"]) as db:
        keys = sorted(set(da.files) & set(db.files))
        if not keys:
            return "n/a"
        diff = max(int(np.abs(da[k] - db[k]).max()) for k in keys)
    return f"max |Δ| {diff} over {len(keys)} tiles"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=16384, help="generated slide side, px")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="decode threads on both sides")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, backend, *rest = args.child
        if kind == "measure":
            print(json.dumps(child_measure(backend, rest[0], args.threads)))
        else:
            print(json.dumps(child_errors(backend, json.loads(rest[0]), args.threads)))
        return 0
    try:
        import tiffslide
    except ImportError:
        print("tiffslide is not installed (pip install tiffslide): nothing to compare")
        return 0
    import imagecodecs
    import tifffile

    print(f"tiffslide {tiffslide.__version__}, tifffile {tifffile.__version__}, "
          f"imagecodecs {imagecodecs.__version__}; {args.threads} decode thread(s) on both sides, "
          f"one requesting thread; median of {args.runs} interleaved runs, one process each")
    real = real_slides()
    slides = [*real, generated_slide(args.side)]
    results: dict[str, Any] = {"threads": args.threads, "runs": args.runs, "slides": {}}
    rows = []
    for path in slides:
        runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
        for i in range(args.runs):
            for backend in (BACKENDS if i % 2 == 0 else BACKENDS[::-1]):
                got = _run_child(["--threads", str(args.threads), "--child", "measure",
                                  backend, str(path)])
                if got is not None:
                    runs[backend].append(got)
        if not all(runs.values()):
            print(f"{path.name}: a backend failed to read it; see above")
            continue
        med = {b: {k: _median(runs[b], k) for k in
                   ("open_s", "tiles_s", "thumb_s", "peak_mib", "peak_growth_mib",
                    "cpu_per_wall", "tiles_cpu_per_wall")} for b in BACKENDS}
        agree = _pixels_agree(runs["product"][-1], runs["tiffslide"][-1])
        for r in (r for b in BACKENDS for r in runs[b]):
            Path(r["dump"]).unlink(missing_ok=True)
        n = runs["product"][0]["tiles"]
        results["slides"][path.name] = {"tiles": n, "median": med, "pixels": agree,
                                        "runs": runs}
        rows.append((path.name, n, med, agree))

    print()
    print(f"{'slide':34} {'':15} {'open ms':>9} {'tiles/s':>9} {'thumb ms':>9} "
          f"{'peak MiB':>9} {'growth':>8} {'cpu/wall':>8}")
    for name, n, med, agree in rows:
        for b in BACKENDS:
            m = med[b]
            print(f"{name[:34]:34} {b:15} {m['open_s'] * 1e3:9.1f} {n / m['tiles_s']:9.1f} "
                  f"{m['thumb_s'] * 1e3:9.1f} {m['peak_mib']:9.0f} {m['peak_growth_mib']:8.0f} "
                  f"{m['tiles_cpu_per_wall']:8.2f}")
        t = med["tiffslide"]
        for label, p in (("product÷tiff", med["product"]), ("nocache÷tiff", med["product-nocache"])):
            print(f"{'':34} {label:15} {p['open_s'] / t['open_s']:9.2f} "
                  f"{p['tiles_s'] / t['tiles_s']:9.2f} {p['thumb_s'] / t['thumb_s']:9.2f} "
                  f"{p['peak_mib'] / t['peak_mib']:9.2f} "
                  f"{p['peak_growth_mib'] / max(t['peak_growth_mib'], 1e-9):8.2f}")
        print(f"{'':34} pixels: {agree}")

    work = Path(tempfile.mkdtemp(prefix="her2-qupath-backends-"))
    cases = error_cases(work, real, slides[-1])
    errors = {b: _run_child(["--threads", str(args.threads), "--child", "errors", b,
                             json.dumps(cases)]) or {} for b in ERROR_BACKENDS}
    results["errors"] = errors
    print()
    for case in cases:
        print(f"{case}:")
        for b in ERROR_BACKENDS:
            text = errors[b].get(case, "(child failed)").replace(str(work) + "/", "")
            print(f"  {b:10} {text[:220]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
