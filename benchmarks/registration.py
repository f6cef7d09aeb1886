"""Registration accuracy, CPU time and reliability on real landmark pairs and generated variants.

For every pair folder (``../shared/data/pairs/*`` and any ``--pairs`` folder)
and every generated variant of its IHC image (rotations by multiples of 45°,
mirror, rescaling by 0.8 and 1.25, a crop), prints the median landmark error
as rTRE (% of the IHC image diagonal) of:

* ``identity`` (no registration) and ``best affine`` (least squares on the
  landmarks themselves: the best any affine registration can do);
* each model of ``register`` (rigid, affine, nonrigid), **without any pixel
  size**, with its CPU time (``time.process_time``, all threads, median of
  ``--repeat`` runs) and its reliability score (``*`` when flagged unreliable).

A pair folder holds the H&E image ``HE.<ext>``, one IHC image and, for each,
``<image stem>.landmarks.csv`` (columns ``,X,Y`` in that image's pixels; row i
of one file matches row i of the other; extra rows in the longer file are
ignored).

    python benchmarks/registration.py [--data ../shared/data] [--pairs DIR ...]
        [--variants orig,rot45,...] [--models rigid,affine,nonrigid] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from her2_qupath.config import RegistrationConfig  # noqa: E402
from her2_qupath.registration import Transform, register  # noqa: E402
from her2_qupath.registration.files import read_points_csv  # noqa: E402

VARIANTS = ("orig", "rot45", "rot90", "rot135", "rot180", "rot225", "rot270", "rot315", "mirror",
            "scale0.8", "scale1.25", "crop")
MODELS = ("rigid", "affine", "nonrigid")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass
class PairData:
    name: str
    he: np.ndarray
    ihc: np.ndarray
    lf: np.ndarray  # H&E landmarks (level-0 px)
    lm: np.ndarray  # IHC landmarks


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_pair(folder: Path) -> PairData:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
    he = [p for p in images if p.stem.upper() == "HE"]
    ihc = [p for p in images if p.stem.upper() != "HE"]
    if len(he) != 1 or len(ihc) != 1:
        raise SystemExit(f"{folder}: expected HE.<ext> and one IHC image, found {[p.name for p in images]}")
    lf = read_points_csv(folder / f"{he[0].stem}.landmarks.csv")[2]
    lm = read_points_csv(folder / f"{ihc[0].stem}.landmarks.csv")[2]
    n = min(len(lf), len(lm))
    return PairData(folder.name, _load(he[0]), _load(ihc[0]), lf[:n], lm[:n])


def make_variant(img: np.ndarray, pts: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The IHC image changed as ``name`` says, and its landmarks moved with it."""
    import cv2

    h, w = img.shape[:2]
    if name == "orig":
        return img, pts
    if name.startswith("rot"):
        deg = float(name[3:])
        c = ((w - 1) / 2.0, (h - 1) / 2.0)
        m = cv2.getRotationMatrix2D(c, deg, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * sin + w * cos) + 2, int(h * cos + w * sin) + 2
        m[0, 2] += (nw - 1) / 2.0 - c[0]
        m[1, 2] += (nh - 1) / 2.0 - c[1]
        glass = [int(v) for v in np.percentile(img.reshape(-1, 3), 99, axis=0)]
        out = cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=glass)
        return out, pts @ m[:, :2].T + m[:, 2]
    if name == "mirror":
        return np.ascontiguousarray(img[:, ::-1]), np.stack([w - 1 - pts[:, 0], pts[:, 1]], axis=1)
    if name.startswith("scale"):
        s = float(name[5:])
        out = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        k = np.array([out.shape[1] / w, out.shape[0] / h])
        return out, (pts + 0.5) * k - 0.5
    if name == "crop":  # 10 % off the top, 15 % off the right
        y0, x1 = int(0.10 * h), int(0.85 * w)
        return np.ascontiguousarray(img[y0:, :x1]), pts - [0.0, y0]
    raise SystemExit(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def median_rtre(t: Transform, lf: np.ndarray, lm: np.ndarray, diag: float) -> float:
    """Median landmark error in % of ``diag`` (the original IHC diagonal, so variants compare)."""
    return 100.0 * float(np.median(np.hypot(*(t.apply(lf) - lm).T))) / diag


def best_affine(lf: np.ndarray, lm: np.ndarray, fsize, msize) -> Transform:
    x = np.hstack([lf, np.ones((len(lf), 1))])
    return Transform(np.vstack([np.linalg.lstsq(x, lm, rcond=None)[0].T, [0, 0, 1]]), fsize, msize)


def run_model(he: np.ndarray, ihc: np.ndarray, model: str, mirror: bool, repeat: int) -> tuple[Transform, float]:
    cfg = replace(RegistrationConfig(), model=model, allow_mirror=mirror)
    times, t = [], None
    for _ in range(max(1, repeat)):
        c0 = time.process_time()
        t = register(he, ihc, cfg)
        times.append(time.process_time() - c0)
    assert t is not None
    return t, statistics.median(times)


def main() -> int:
    default = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default, help="the shared data folder (its pairs/*)")
    ap.add_argument("--pairs", type=Path, nargs="*", default=[], help="more pair folders")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated models of register")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per model (median CPU time)")
    args = ap.parse_args()
    folders = sorted(p for p in (args.data / "pairs").glob("*") if p.is_dir()) if (args.data / "pairs").is_dir() else []
    folders += list(args.pairs)
    if not folders:
        print(f"no pair folders under {args.data / 'pairs'} and none given (--pairs)", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    head = f"{'pair':22s} {'variant':9s} {'identity':>8s} {'best aff':>8s}"
    for m in models:
        head += f" | {m + ' %':>11s} {'CPU s':>5s} {'rel':>5s}"
    print("median rTRE in % of the IHC diagonal, no pixel sizes given; rel = reliability score "
          "(* = flagged unreliable)")
    print(head)
    for folder in folders:
        p = load_pair(folder)
        diag = math.hypot(*p.ihc.shape[:2])
        for v in variants:
            img, lm = make_variant(p.ihc, p.lm, v)
            fsize, msize = (p.he.shape[1], p.he.shape[0]), (img.shape[1], img.shape[0])
            k = math.hypot(*img.shape[:2]) / diag if v.startswith("scale") else 1.0
            ident = median_rtre(Transform.identity(fsize, msize), p.lf, lm, diag * k)
            best = median_rtre(best_affine(p.lf, lm, fsize, msize), p.lf, lm, diag * k)
            row = f"{p.name[:22]:22s} {v:9s} {ident:8.2f} {best:8.2f}"
            for m in models:
                t, cpu = run_model(p.he, img, m, v == "mirror", args.repeat)
                flag = "" if t.reliable else "*"
                row += f" | {median_rtre(t, p.lf, lm, diag * k):11.2f} {cpu:5.1f} {t.quality['score']:4.2f}{flag:1s}"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
