"""Batched inference of the models C, L (classification) and M (segmentation).

Tiles (uint8 RGB arrays of any size) are read on a background thread one
batch ahead of the network, resized to the model's input, normalised with
the stored mean/std and run under ``torch.inference_mode()``. On CPUs with
native bfloat16 arithmetic (AVX512-BF16 or AMX) the weights are cast to
bfloat16, which is several times faster than float32 for these networks;
elsewhere float32 is used and a log line says so.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np

from .._types import ProgressCallback
from ..config import ModelConfig
from ..errors import ModelError, UserInputError
from .io import LoadedModel

__all__ = [
    "Precision",
    "bf16_supported",
    "resolve_precision",
    "configure_threads",
    "prefetch",
    "batched",
    "stack_resized",
    "normalise",
    "to_input",
    "classify_tiles",
    "segment_tiles",
    "stain_grades",
    "semantic_logits",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    import torch

    # Other platforms: trust torch's own capability report (Apple/ARM report none we use).
    cap = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())
    return "AMX" in cap.upper()


def resolve_precision(precision: str, device: str = "cpu") -> Precision:
    """The precision to run at: bf16 only where the hardware supports it."""
    if precision not in ("fp32", "bf16"):
        raise UserInputError(f"unknown precision {precision!r}", hint="use fp32 or bf16")
    if precision == "bf16" and device == "cpu" and not bf16_supported():
        log.info("this CPU has no native bfloat16 arithmetic; running in fp32")
        return "fp32"
    return precision  # type: ignore[return-value]


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    An explicit ``num_threads`` is applied as given. Without one, the count is
    capped at the CPUs this process may use (containers often show torch more
    cores than they grant), and a lower count chosen by the caller is kept.
    """
    import torch

    if num_threads is not None:
        target = max(1, int(num_threads))
    else:
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:
            available = os.cpu_count() or 1
        target = max(1, min(torch.get_num_threads(), available))
    if torch.get_num_threads() != target:
        torch.set_num_threads(target)
    return target


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_DONE = object()


def prefetch(items: Iterable[Any], *, depth: int = 1) -> Iterator[Any]:
    """Iterate ``items`` on a background thread, ``depth`` items ahead of the consumer.

    Used to read and prepare the next batch of tiles while the network runs on the
    current one (reading releases the GIL in the decoders; torch releases it while
    computing). Exceptions raised while producing are re-raised in the consumer.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, _DONE))
        except BaseException as err:  # handed to the consumer, re-raised there
            q.put((False, err))

    thread = threading.Thread(target=produce, name="her2-qupath-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _as_uint8_rgb(tile: Any) -> np.ndarray:
    arr = np.asarray(tile)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UserInputError(f"a tile must be an H x W x 3 RGB array, got shape {arr.shape}",
                             hint="pass RGB tiles (uint8)")
    if arr.dtype != np.uint8:
        raise UserInputError(f"tiles must be uint8, got {arr.dtype}", hint="convert with np.uint8")
    return arr[..., :3]


def stack_resized(tiles: list[np.ndarray] | np.ndarray, size: int) -> Any:
    """Stack uint8 RGB tiles into a float32 tensor (N, 3, size, size) of values 0..255."""
    import torch
    import torch.nn.functional as F

    arrays = [_as_uint8_rgb(t) for t in tiles]
    if len({a.shape for a in arrays}) == 1:
        groups = [torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).permute(0, 3, 1, 2).float()]
    else:
        groups = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() for a in arrays]
    parts = []
    for x in groups:
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 255.0)
        parts.append(x)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def normalise(x: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """(x / 255 - mean) / std per channel, for a float tensor (N, 3, H, W) of values 0..255."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def to_input(tiles: list[np.ndarray] | np.ndarray, loaded: LoadedModel) -> Any:
    """Stack tiles into a normalised float32 tensor (N, 3, S, S) at the model's input size."""
    pre = loaded.spec.preprocessing
    return normalise(stack_resized(tiles, pre.input_size), pre.mean, pre.std)


def _iter_tiles(tiles: Iterable[Any] | np.ndarray) -> tuple[Iterable[Any], int | None]:
    if isinstance(tiles, np.ndarray):
        if tiles.ndim == 3:
            tiles = tiles[None]
        if tiles.ndim != 4:
            raise UserInputError(f"tile array must be N x H x W x 3, got shape {tiles.shape}",
                                 hint="stack RGB tiles along the first axis")
        return list(tiles), len(tiles)
    total = len(tiles) if hasattr(tiles, "__len__") else None  # type: ignore[arg-type]
    return tiles, total


class _Runner:
    """The network in the requested precision (a cached cast copy; the fp32 original is untouched)."""

    def __init__(self, loaded: LoadedModel, precision: str) -> None:
        import torch

        self.loaded = loaded
        net = loaded.network
        self.device = next(net.parameters()).device
        self.precision = resolve_precision(precision, self.device.type)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.network = loaded.network_as(self.dtype)
        self.classify = self._classifier()

    def _classifier(self) -> Callable[[Any], Any]:
        """logits = f(pixel_values): the fused ViT path in bf16, transformers' module otherwise."""
        import torch

        from ._fastvit import fast_vit, supports_fast_path

        net = self.network
        if self.dtype == torch.bfloat16 and self.loaded.kind != "segmenter" and supports_fast_path(net):
            cache = self.loaded.__dict__.setdefault("_fast", {})
            if self.dtype not in cache:
                cache[self.dtype] = fast_vit(net)
            return cache[self.dtype]  # type: ignore[no-any-return]
        return lambda x: net(pixel_values=x).logits

    def __enter__(self) -> _Runner:
        self.was_training = self.network.training
        self.network.eval()
        return self

    def __exit__(self, *exc: object) -> None:
        self.network.train(self.was_training)


def _run(loaded: LoadedModel, tiles: Iterable[Any] | np.ndarray, *, precision: str, batch_size: int,
         progress: ProgressCallback | None, num_threads: int | None,
         head: Callable[[Any, list[np.ndarray]], list[np.ndarray]]) -> list[np.ndarray]:
    import torch

    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}", hint="use e.g. 32")
    configure_threads(num_threads)
    items, total = _iter_tiles(tiles)

    def prepare(batch: list[Any]) -> tuple[list[np.ndarray], Any]:
        arrays = [_as_uint8_rgb(t) for t in batch]
        return arrays, to_input(arrays, loaded)

    out: list[np.ndarray] = []
    done = 0
    with _Runner(loaded, precision) as runner, torch.inference_mode():
        for arrays, x in prefetch(prepare(b) for b in batched(items, batch_size)):
            x = x.to(runner.device, runner.dtype)
            out.extend(head(runner, [x, arrays]))  # type: ignore[list-item]
            done += len(arrays)
            if progress is not None:
                progress(done, total if total is not None else done)
    return out


def classify_tiles(model: LoadedModel, tiles: Iterable[Any] | np.ndarray, *,
                   precision: str = ModelConfig.precision, batch_size: int = ModelConfig.batch_size,
                   progress: ProgressCallback | None = None,
                   num_threads: int | None = None) -> np.ndarray:
    """Class probabilities (N x K float32, columns in ``model.labels`` order) of RGB tiles.

    ``tiles`` is an N x H x W x 3 uint8 array or any iterable of H x W x 3 uint8
    arrays (a generator reading from a slide is consumed one batch ahead of the
    network). Tiles are resized to the model's input size.
    """
    import torch

    if model.kind == "segmenter":
        raise ModelError("classify_tiles needs a classifier, got a segmenter",
                         hint="use segment_tiles for the segmenter")

    def head(runner: _Runner, xs: list[Any]) -> list[np.ndarray]:
        logits = runner.classify(xs[0]).float()
        return list(torch.softmax(logits, dim=-1).cpu().numpy())

    probs = _run(model, tiles, precision=precision, batch_size=batch_size, progress=progress,
                 num_threads=num_threads, head=head)
    if not probs:
        return np.zeros((0, model.num_labels), np.float32)
    return np.stack(probs).astype(np.float32)


def segment_tiles(model: LoadedModel, tiles: Iterable[Any] | np.ndarray, *,
                  precision: str = ModelConfig.precision, batch_size: int = 4,
                  progress: ProgressCallback | None = None,
                  num_threads: int | None = None) -> list[np.ndarray]:
    """Pixel class maps (uint8, values of the stain map: 0 background, 1 HER2 0 .. 4 3+).

    Each map has its tile's height and width: logits are upsampled bilinearly
    from the network's 1/4-resolution output before the arg-max.
    """
    import torch
    import torch.nn.functional as F

    if model.kind != "segmenter":
        raise ModelError(f"segment_tiles needs a segmenter, got a {model.kind} classifier",
                         hint="use classify_tiles for classifiers")
    lut = torch.tensor(model.spec.values, dtype=torch.uint8)

    def head(runner: _Runner, xs: list[Any]) -> list[np.ndarray]:
        x, arrays = xs
        logits = semantic_logits(runner.network, x)[1].float()
        maps = []
        for i, a in enumerate(arrays):
            up = F.interpolate(logits[i:i + 1], size=a.shape[:2], mode="bilinear", align_corners=False)
            maps.append(lut[up[0].argmax(0).cpu()].numpy())
        return maps

    return _run(model, tiles, precision=precision, batch_size=batch_size, progress=progress,
                num_threads=num_threads, head=head)


def semantic_logits(network: Any, pixel_values: Any, **labels: Any) -> tuple[Any, Any]:
    """The network's outputs and per-class scores (B, K, h, w) of a SegFormer or MaskFormer.

    MaskFormer's per-query class probabilities (less "no object") weight its
    per-query mask probabilities, summed over queries (its semantic inference).
    """
    import torch

    out = network(pixel_values=pixel_values, **labels)
    if getattr(network.config, "model_type", None) == "maskformer":
        cls = out.class_queries_logits.float().softmax(-1)[..., :-1]
        masks = out.masks_queries_logits.float().sigmoid()
        return out, torch.einsum("bqc,bqhw->bchw", cls, masks)
    return out, out.logits


def stain_grades(model: LoadedModel, probs: np.ndarray) -> np.ndarray:
    """HER2 grade (0 no-stain .. 3 strong, int64) of each tile from a stain classifier's probabilities.

    Use this rather than the arg-max column: a model's classes may be in any order
    (class folders load alphabetically).
    """
    lut = np.asarray(model.grade_of_class, dtype=np.int64)
    return lut[np.asarray(probs).argmax(axis=1)]
