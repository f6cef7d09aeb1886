"""Registration accuracy and speed on the real rat-kidney pair (ANHIR landmarks).

Prints, for the identity, the best affine (least squares on the landmarks
themselves), a plain ECC baseline (OpenCV's findTransformECC on the images'
optical density from the identity, no coarse search) and each model of
``register``: the median and 90th-percentile landmark error in pixels and as
rTRE (error / IHC image diagonal), the time taken, and the time as a ratio to
the plain ECC baseline measured in the same run (timings on a shared machine
are noisy; the ratio is what to compare).

    python benchmarks/registration.py [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from her2_qupath.config import RegistrationConfig  # noqa: E402
from her2_qupath.registration import Transform, register  # noqa: E402
from her2_qupath.registration._images import od_magnitude  # noqa: E402
from her2_qupath.registration.files import read_points_csv  # noqa: E402

N_PAIRS = 69  # only the first 69 rows of the two landmark files correspond


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _landmarks(path: Path) -> np.ndarray:
    return read_points_csv(path)[2][:N_PAIRS]  # the product's own landmark CSV reader


def _errors(t: Transform, lf: np.ndarray, lm: np.ndarray) -> np.ndarray:
    return np.hypot(*(t.apply(lf) - lm).T)


def _plain_ecc(he: np.ndarray, ihc: np.ndarray) -> Transform:
    import cv2

    f = od_magnitude(he).astype(np.float32)
    m = od_magnitude(ihc).astype(np.float32)
    w = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    try:
        _, w = cv2.findTransformECC(f, m, w, cv2.MOTION_AFFINE, crit, None, 5)
    except cv2.error:
        pass
    return Transform(np.vstack([w, [0, 0, 1]]), (he.shape[1], he.shape[0]), (ihc.shape[1], ihc.shape[0]))


def main() -> int:
    default = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default, help="the shared data folder")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method (median reported)")
    args = ap.parse_args()
    d = args.data / "pairs" / "rat-kidney"
    if not d.is_dir():
        print(f"rat-kidney pair not found under {args.data} (use --data)", file=sys.stderr)
        return 2
    he, ihc = _load(d / "HE.jpg"), _load(d / "IHC-PanCytokeratin.jpg")
    lf, lm = _landmarks(d / "HE.landmarks.csv"), _landmarks(d / "IHC-PanCytokeratin.landmarks.csv")
    diag = math.hypot(*ihc.shape[:2])
    fsize, msize = (he.shape[1], he.shape[0]), (ihc.shape[1], ihc.shape[0])

    rows: list[tuple[str, np.ndarray, float | None]] = []
    rows.append(("identity", _errors(Transform.identity(fsize, msize), lf, lm), None))
    x = np.hstack([lf, np.ones((N_PAIRS, 1))])
    best = Transform(np.vstack([np.linalg.lstsq(x, lm, rcond=None)[0].T, [0, 0, 1]]), fsize, msize)
    rows.append(("best affine (fitted to landmarks)", _errors(best, lf, lm), None))

    def timed(fn):
        times, result = [], None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return result, statistics.median(times)

    t_plain, base = timed(lambda: _plain_ecc(he, ihc))
    rows.append(("plain ECC from identity (baseline)", _errors(t_plain, lf, lm), base))
    cfg = RegistrationConfig()
    for model in ("rigid", "affine", "nonrigid"):
        t, secs = timed(lambda m=model: register(he, ihc, replace(cfg, model=m)))
        rows.append((f"register --model {model}", _errors(t, lf, lm), secs))
        rows[-1] = (rows[-1][0] + ("" if t.reliable else " [flagged unreliable]"), rows[-1][1], secs)

    print(f"rat-kidney H&E -> IHC, {N_PAIRS} landmark pairs, IHC diagonal {diag:.0f} px")
    print(f"{'method':44s} {'median px':>9s} {'p90 px':>8s} {'median rTRE':>12s} {'p90 rTRE':>9s} "
          f"{'time s':>7s} {'x baseline':>10s}")
    for name, err, secs in rows:
        med, p90 = float(np.median(err)), float(np.percentile(err, 90))
        tcol = f"{secs:7.2f} {secs / base:10.2f}" if secs is not None else f"{'':7s} {'':10s}"
        print(f"{name:44s} {med:9.2f} {p90:8.2f} {100 * med / diag:11.3f}% {100 * p90 / diag:8.3f}% {tcol}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
