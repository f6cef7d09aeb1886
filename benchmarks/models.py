"""Throughput of the tumor classifier C (ViT-S/16 at 224 px) against this machine's roofline.

Prints, from one run: the matrix-product rate of the machine in fp32 and bf16
(GFLOP/s, the roofline), tiles/s of ViT-S/16 (randomly initialised, nothing is
downloaded) at batch 32 in fp32 and bf16 through ``classify_tiles`` (the
product's inference path: preparation on a reader thread, normalisation, the
network), and the achieved fraction of each precision's roofline.

ViT-S/16 at 224 px is "4.6 GFLOPs" in the DeiT/timm tables, which count a
multiply-accumulate as one operation; the matrix-product rate counts two
(2·M·N·K). The work per tile is therefore counted here the same way, from the
configuration (about 4.6 G multiply-accumulates = 9.2 GFLOP), so that the
fraction compares like with like. Target: >= 50 % of the bf16 roofline.

    PYTHONPATH=. python benchmarks/models.py [--rounds 4] [--threads N]

Timings are noisy on a shared machine; the fractions compare numbers measured
in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def vit_gmacs(cfg: object) -> float:
    """Multiply-accumulates (G) of one ViT forward pass, counted from its configuration."""
    d = cfg.hidden_size  # type: ignore[attr-defined]
    p = cfg.patch_size  # type: ignore[attr-defined]
    n = (cfg.image_size // p) ** 2 + 1  # type: ignore[attr-defined]
    f = cfg.intermediate_size  # type: ignore[attr-defined]
    patch = (n - 1) * 3 * p * p * d
    layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * f
    return (patch + cfg.num_hidden_layers * layer) / 1e9  # type: ignore[attr-defined]


def matmul_gflops(dtype: object, *, repeats: int = 3) -> float:
    """Best-of rate of a matrix product shaped like ViT-S's MLP at batch 32 (6304 x 384 x 1536)."""
    import torch

    a = torch.randn(32 * 197, 384).to(dtype)
    b = torch.randn(384, 1536).to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        dt = (time.perf_counter() - t0) / 4
        best = max(best, 2 * a.shape[0] * a.shape[1] * b.shape[1] / dt / 1e9)
    return best


def tiles_per_s(model: object, precision: str, tiles: np.ndarray) -> float:
    from her2_qupath.models.infer import classify_tiles

    t0 = time.perf_counter()
    classify_tiles(model, tiles, precision=precision, batch_size=32)  # type: ignore[arg-type]
    return len(tiles) / (time.perf_counter() - t0)


def unfused_bf16_tiles_per_s(model: object, tiles: np.ndarray) -> float:
    """transformers' own ViT module in bf16 (what the fused path replaces), same input."""
    import torch

    from her2_qupath.models.infer import to_input

    net = model.network_as(torch.bfloat16)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    with torch.inference_mode():
        net(pixel_values=to_input(tiles, model).to(torch.bfloat16))  # type: ignore[arg-type]
    return len(tiles) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved rounds; the best of each measurement is kept")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from her2_qupath.models.infer import bf16_supported, configure_threads
    from her2_qupath.models.io import LoadedModel, build_network, make_spec

    threads = configure_threads(args.threads)
    torch.manual_seed(0)
    spec = make_spec("tumor", "vit-small", ("Other", "Tumor"), mpp=0.5, tile_size=224, input_size=224)
    model = LoadedModel(spec=spec, network=build_network(spec).eval())
    tiles = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
    for precision in ("fp32", "bf16"):  # warm-up, and the one-off bf16 cast
        tiles_per_s(model, precision, tiles[:4])

    best = {"roof32": 0.0, "roof16": 0.0, "fp32": 0.0, "bf16": 0.0, "bf16_unfused": 0.0}
    # Interleaved so that load from other processes hits every measurement alike.
    for _ in range(args.rounds):
        best["roof32"] = max(best["roof32"], matmul_gflops(torch.float32))
        best["fp32"] = max(best["fp32"], tiles_per_s(model, "fp32", tiles))
        best["roof16"] = max(best["roof16"], matmul_gflops(torch.bfloat16))
        best["bf16"] = max(best["bf16"], tiles_per_s(model, "bf16", tiles))
        best["bf16_unfused"] = max(best["bf16_unfused"], unfused_bf16_tiles_per_s(model, tiles))

    roof32, roof16, t32, t16 = best["roof32"], best["roof16"], best["fp32"], best["bf16"]
    gmacs = vit_gmacs(model.network.config)
    gflop = 2 * gmacs
    f32 = t32 * gflop / roof32
    f16 = t16 * gflop / roof16
    print(f"threads {threads}, native bf16: {bf16_supported()}, best of {args.rounds} interleaved rounds")
    print(f"matmul roofline   fp32 {roof32:8.1f} GFLOP/s   bf16 {roof16:8.1f} GFLOP/s   "
          f"(bf16/fp32 {roof16 / roof32:.2f}x)")
    print(f"ViT-S/16 batch 32 fp32 {t32:8.1f} tiles/s   bf16 {t16:8.1f} tiles/s   "
          f"(bf16/fp32 {t16 / t32:.2f}x)")
    print(f"bf16 without the fused encoder path (transformers' module): {best['bf16_unfused']:.1f} tiles/s "
          f"(fused path {t16 / best['bf16_unfused']:.2f}x faster)")
    print(f"work per tile     {gmacs:.2f} G multiply-accumulates = {gflop:.2f} GFLOP; achieved "
          f"fp32 {t32 * gflop:.0f} GFLOP/s, bf16 {t16 * gflop:.0f} GFLOP/s")
    print(f"achieved fraction of roofline: fp32 {f32:.0%}   bf16 {f16:.0%}   "
          f"(target >= 50 % in bf16: {'met' if f16 >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
