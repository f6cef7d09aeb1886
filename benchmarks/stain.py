"""Colour deconvolution speed and agreement: her2_qupath.stain vs scikit-image.

One 4096 x 4096 RGB array (the real scikit-image IHC sample tiled 8 x 8, so
the colours are those of a real H-DAB slide) is deconvolved by
``skimage.color.rgb2hed`` (the baseline) and by ``her2_qupath.stain.deconvolve``
in the same run; the script prints megapixels per second of both and the
ratio (target >= 10x). Agreement is checked on the same vectors: skimage's
``separate_stains`` with the inverse of our H-DAB-residual matrix and a white
point of 255. skimage returns ``log(I/255) / log(1e-6) @ inv(M)`` clipped at 0,
which is OD10 / 6, so it is scaled by 6 and compared with our OD clipped at 0,
on pixels whose channels are all >= 1 (skimage maps I = 0 to OD 6, we clamp I
to 1). Target: max |difference| <= 1e-3 OD.

Run: ``python benchmarks/stain.py [--size 4096] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    from skimage import data
    from skimage.color import rgb2hed, separate_stains

    from her2_qupath import stain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    tile = data.immunohistochemistry()
    reps = -(-args.size // tile.shape[0])
    rgb = np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[: args.size, : args.size])
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    vectors = stain.StainVectors.default()

    t_sk = best_time(lambda: rgb2hed(rgb), args.repeat)
    t_ours = best_time(lambda: stain.deconvolve(rgb, vectors, 255), args.repeat)
    t_cls = best_time(lambda: stain.dab_class_map(rgb, background=255), args.repeat)

    ours = stain.deconvolve(rgb, vectors, 255)
    ref = separate_stains(rgb, vectors.inverse) * 6.0
    ok = (rgb > 0).all(axis=-1)
    diff = float(np.abs(np.maximum(ours, 0)[ok] - ref[ok]).max())

    result = {
        "image": f"{rgb.shape[1]}x{rgb.shape[0]} RGB (skimage IHC sample tiled)",
        "skimage_rgb2hed_mpix_s": round(mp / t_sk, 1),
        "ours_deconvolve_mpix_s": round(mp / t_ours, 1),
        "ours_dab_class_map_mpix_s": round(mp / t_cls, 1),
        "speedup_deconvolve": round(t_sk / t_ours, 1),
        "speedup_class_map": round(t_sk / t_cls, 1),
        "max_abs_od_difference": diff,
        "pixels_compared_fraction": round(float(ok.mean()), 6),
        "targets": {"speedup": ">= 10", "max_abs_od_difference": "<= 1e-3"},
        "pass": bool(t_sk / t_ours >= 10 and diff <= 1e-3),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
