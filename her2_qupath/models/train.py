"""Training the classifiers C/L and the segmenter M on the user's own labelled data.

AdamW with linear warm-up then cosine (or linear) decay, histology
augmentation (flips, 90-degree rotations, HED stain jitter after Tellez et al.
2018, mild brightness/contrast), a validation split by slide, a checkpoint
after every epoch (``--resume`` continues an interrupted run), early stopping,
``metrics.json`` rewritten atomically after each epoch, and the best epoch's
weights saved in the model-directory format that :func:`load_model` reads.

For stain models (L, M) the DAB channel is left out of the stain jitter and
no brightness jitter is applied: DAB intensity is what they learn to grade.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_write_json
from .._types import ProgressCallback
from ..config import TilingConfig, TrainConfig
from ..errors import ModelError, OutputExists, UserInputError
from .datasets import MaskDataset, TileDataset, split_by_group
from .evaluation import confusion_matrix, iou_per_class
from .infer import (
    batched,
    configure_threads,
    normalise,
    prefetch,
    resolve_precision,
    semantic_logits,
    stack_resized,
)
from .io import (
    CLASSIFIER_ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEGMENTER_ARCHS,
    SPEC_FILE,
    LoadedModel,
    ModelSpec,
    build_network,
    make_spec,
    save_model,
    stain_value,
)

__all__ = ["TrainResult", "train_classifier", "train_segmenter", "augment_batch", "CHECKPOINT"]

log = logging.getLogger(__name__)

#: The checkpoint of an unfinished run, inside the model directory (removed when training ends).
CHECKPOINT = "checkpoint.pt"
_DEFAULT_CONFIG = TrainConfig()


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    best_epoch: int
    best_metric: float
    monitor: str
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


# ---------------------------------------------------------------- augmentation

def _hed_matrices() -> tuple[Any, Any]:
    import torch
    from skimage.color import hed_from_rgb, rgb_from_hed

    return (torch.tensor(rgb_from_hed, dtype=torch.float32),
            torch.tensor(hed_from_rgb, dtype=torch.float32))


def augment_batch(x: Any, masks: Any | None, *, generator: Any, config: TrainConfig,
                  stain_target: bool) -> tuple[Any, Any | None]:
    """Augment a float batch (N, 3, H, W) of values 0..255 (and its masks, N x H x W).

    Per sample: a random flip and 90-degree rotation (same for the mask), a HED
    stain jitter (scale ``1 +- hed_jitter``, shift ``+- hed_jitter`` per stain
    channel; the DAB channel is kept when ``stain_target``) and, unless
    ``stain_target``, a brightness/contrast change of up to ``brightness_jitter``.
    """
    import torch

    n = x.shape[0]
    out = []
    out_m: list[Any] | None = [] if masks is not None else None
    ks = torch.randint(0, 4, (n,), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator)
    for i in range(n):
        xi = x[i]
        mi = masks[i] if masks is not None else None
        if flips[i]:
            xi = xi.flip(-1)
            mi = mi.flip(-1) if mi is not None else None
        if ks[i]:
            xi = torch.rot90(xi, int(ks[i]), dims=(-2, -1))
            mi = torch.rot90(mi, int(ks[i]), dims=(-2, -1)) if mi is not None else None
        out.append(xi)
        if out_m is not None:
            out_m.append(mi)
    x = torch.stack(out)
    masks = torch.stack(out_m) if out_m is not None else None
    sigma = config.hed_jitter
    if sigma > 0:
        rgb_from_hed, hed_from_rgb = _hed_matrices()
        od = -torch.log((x + 1.0) / 256.0)  # (N, 3, H, W) optical density
        hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)
        alpha = 1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma
        beta = (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma
        if stain_target:
            alpha[:, 2] = 1.0
            beta[:, 2] = 0.0
        hed = hed * alpha + beta
        od = torch.einsum("nchw,cd->ndhw", hed, rgb_from_hed)
        x = (256.0 * torch.exp(-od) - 1.0).clamp(0.0, 255.0)
    b = config.brightness_jitter
    if b > 0 and not stain_target:
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * b
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * b
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean * gain).clamp(0.0, 255.0)
    return x, masks


# ---------------------------------------------------------------- schedule

def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    warm = int(round(config.warmup_fraction * total))
    if warm and step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    rest = max(1, total - warm)
    progress = min(1.0, (step - warm) / rest)
    if config.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- the loop

def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} exists and is not a directory", hint="choose another -o")
    has_model = out.is_dir() and (out / SPEC_FILE).exists()
    has_ckpt = out.is_dir() and (out / CHECKPOINT).exists()
    if resume:
        if not has_ckpt:
            raise UserInputError(f"nothing to resume in {out}: no {CHECKPOINT}",
                                 hint="the run finished or never started; train without --resume")
        return
    if (has_model or has_ckpt) and not overwrite:
        raise OutputExists(f"{out} already holds a model or an unfinished run",
                           hint="pass --resume to continue it, --overwrite to start over, or another -o")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _run_identity(spec: ModelSpec, config: TrainConfig, data_hash: str, task: str) -> dict[str, Any]:
    cfg = dataclasses.asdict(config)
    cfg.pop("num_threads", None)  # does not change the result's meaning
    return {"task": task, "arch": spec.arch, "labels": list(spec.labels), "data_sha256": data_hash,
            "config": cfg, "input_size": spec.preprocessing.input_size}


def _fit(task: str, spec: ModelSpec, network: Any, train_set: Any, val_set: Any, out: Path, *,
         lr: float, batch_size: int, epochs: int, config: TrainConfig, resume: bool,
         progress: ProgressCallback | None, data_hash: str, split: dict[str, Any]) -> TrainResult:
    import torch

    seg = task == "segmenter"
    stain_target = spec.kind in ("stain", "segmenter")
    size = spec.preprocessing.input_size
    values_to_index = np.zeros(256, dtype=np.int64)
    if seg:
        values_to_index[:] = 255  # unknown mask values are ignored by the loss
        for idx, v in enumerate(spec.values or ()):
            values_to_index[v] = idx
    monitor = "val_mean_iou" if seg else "val_accuracy"
    identity = _run_identity(spec, config, data_hash, task)
    identity.update({"lr": lr, "batch_size": batch_size, "epochs": epochs})

    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_set) / batch_size))
    total_steps = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, config))
    history: list[dict[str, float]] = []
    start_epoch, best_metric, best_epoch, stale = 0, -math.inf, -1, 0
    ckpt_path = out / CHECKPOINT
    if resume:
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            raise ModelError(f"cannot read checkpoint {ckpt_path}: {err}",
                             hint="start over with --overwrite") from err
        if state.get("identity") != json.loads(json.dumps(identity)):
            raise UserInputError(
                f"the checkpoint in {out} belongs to a run with other data or settings",
                hint="resume with the same data and options, or start over with --overwrite")
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        start_epoch, best_metric, best_epoch, stale = (state["epoch"] + 1, state["best_metric"],
                                                       state["best_epoch"], state["stale"])
        log.info("resuming %s training at epoch %d of %d", task, start_epoch + 1, epochs)

    loaded = LoadedModel(spec=spec, network=network, path=out)

    def load_batch(indices: list[int], dataset: Any) -> tuple[Any, Any | None]:
        x = stack_resized([dataset.image(i) for i in indices], size)
        if not seg:
            return x, torch.as_tensor(dataset.labels[indices], dtype=torch.long)
        ms = []
        for i in indices:
            m = torch.from_numpy(values_to_index[dataset.target(i)])[None, None].float()
            ms.append(torch.nn.functional.interpolate(m, size=(size, size), mode="nearest")[0, 0].long())
        return x, torch.stack(ms)

    def validate() -> dict[str, float]:
        network.eval()
        k = len(spec.labels)
        cm = np.zeros((k, k), dtype=np.int64)
        loss_sum, n = 0.0, 0
        with torch.inference_mode():
            for x, y in prefetch(load_batch(b, val_set) for b in batched(range(len(val_set)), batch_size)):
                xin = normalise(x, spec.preprocessing.mean, spec.preprocessing.std)
                loss, logits = _forward(network, xin, y, seg)
                if seg:
                    logits = torch.nn.functional.interpolate(logits, size=y.shape[-2:],
                                                             mode="bilinear", align_corners=False)
                    pred = logits.argmax(1)
                    valid = y != 255
                    cm += confusion_matrix(y[valid].numpy(), pred[valid].numpy(), k)
                else:
                    cm += confusion_matrix(y.numpy(), logits.argmax(1).numpy(), k)
                loss_sum += float(loss) * len(x)
                n += len(x)
        metrics = {"val_loss": loss_sum / max(1, n),
                   "val_accuracy": float(np.trace(cm) / max(1, cm.sum()))}
        if seg:
            ious = iou_per_class(cm)
            metrics["val_mean_iou"] = float(np.nanmean(ious)) if np.any(np.isfinite(ious)) else 0.0
            for name, v in zip(spec.labels, ious):
                metrics[f"val_iou[{name}]"] = float(v)
        return metrics

    use_bf16 = resolve_precision(config.precision) == "bf16"
    stopped_early = False
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        network.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=gen).tolist()
        loss_sum, seen = 0.0, 0
        for x, y in prefetch(load_batch(b, train_set) for b in batched(order, batch_size)):
            if config.augment:
                if seg:
                    x, y = augment_batch(x, y, generator=gen, config=config, stain_target=True)
                else:
                    x, _ = augment_batch(x, None, generator=gen, config=config, stain_target=stain_target)
            xin = normalise(x, spec.preprocessing.mean, spec.preprocessing.std)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = _forward(network, xin, y, seg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
            step += 1
            if progress is not None:
                progress(step, total_steps)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                  "lr": float(scheduler.get_last_lr()[0])}
        record.update(validate())
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        metric = record[monitor]
        improved = metric > best_metric + 1e-12
        if improved:
            best_metric, best_epoch, stale = metric, epoch + 1, 0
            spec_now = dataclasses.replace(spec, provenance={
                **spec.provenance, "training": {"lr": lr, "batch_size": batch_size, "epochs": epochs},
                "split": split, "best_epoch": best_epoch, "metrics": record, "history": history})
            loaded.spec = spec_now
            save_model(loaded, out)
        else:
            stale += 1
        log.info("epoch %d/%d: %s", epoch + 1, epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        stop = config.patience > 0 and stale >= config.patience
        atomic_write_json(out / "metrics.json", {
            "task": task, "kind": spec.kind, "monitor": monitor, "best_epoch": best_epoch,
            "best": best_metric, "epochs": history, "split": split,
            "finished": stop or epoch + 1 == epochs})
        if stop or epoch + 1 == epochs:
            stopped_early = stop and epoch + 1 < epochs
            break
        _save_checkpoint(ckpt_path, {
            "identity": json.loads(json.dumps(identity)), "model": network.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "epoch": epoch, "best_metric": best_metric,
            "best_epoch": best_epoch, "stale": stale})
    if ckpt_path.exists():
        ckpt_path.unlink()
    if stopped_early:
        log.info("stopped early: no improvement of %s for %d epochs", monitor, config.patience)
    return TrainResult(out, best_epoch, best_metric, monitor, history, stopped_early)


def _forward(network: Any, xin: Any, y: Any, seg: bool) -> tuple[Any, Any]:
    """Loss and logits of a batch (MaskFormer takes one binary mask per class present)."""
    if not seg:
        out = network(pixel_values=xin, labels=y)
        return out.loss, out.logits
    if getattr(network.config, "model_type", None) == "maskformer":
        import torch

        mask_labels, class_labels = [], []
        for yi in y:
            classes = [int(c) for c in torch.unique(yi) if int(c) != 255]
            mask_labels.append(torch.stack([(yi == c).float() for c in classes]) if classes
                               else torch.zeros((0, *yi.shape)))
            class_labels.append(torch.tensor(classes, dtype=torch.long))
        out, logits = semantic_logits(network, xin, mask_labels=mask_labels, class_labels=class_labels)
        return out.loss, logits
    out, logits = semantic_logits(network, xin, labels=y)
    return out.loss, logits


def _split(dataset: Any, val_dataset: Any | None, config: TrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    if val_dataset is not None:
        return dataset, val_dataset, {"validation": "separate set", "train_slides": sorted(set(dataset.groups)),
                                      "val_slides": sorted(set(val_dataset.groups))}
    tr, va = split_by_group(dataset.groups, dataset.labels, config.val_fraction, seed=config.seed)
    train_set, val_set = dataset.subset(tr), dataset.subset(va)
    return train_set, val_set, {"validation": "held-out slides", "train_slides": sorted(set(train_set.groups)),
                                "val_slides": sorted(set(val_set.groups)),
                                "n_train": len(train_set), "n_val": len(val_set)}


def _order_by_stain_value(dataset: TileDataset) -> TileDataset:
    """The same tiles with the classes reordered no-stain, faint, weak, strong (output k = grade k)."""
    values = [stain_value(n) for n in dataset.label_names]
    if any(v is None for v in values):
        return dataset  # make_spec reports the unknown names
    order = sorted(range(len(values)), key=lambda i: values[i])  # type: ignore[arg-type, return-value]
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    return TileDataset(tuple(dataset.label_names[i] for i in order), dataset.sources,
                       new_index[dataset.labels], dataset.groups, dataset.description, dataset._resources)


def _pretrained_norm(pretrained_dir: str | os.PathLike[str] | None) -> tuple[Any, Any, int | None]:
    """Mean, std and input size from a pretrained directory's preprocessing files, if any."""
    if pretrained_dir is None:
        return IMAGENET_MEAN, IMAGENET_STD, None
    p = Path(pretrained_dir)
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, None
    if (p / SPEC_FILE).is_file():
        pre = json.loads((p / SPEC_FILE).read_text())["preprocessing"]
        return tuple(pre["mean"]), tuple(pre["std"]), int(pre["input_size"])
    if (p / "preprocessor_config.json").is_file():
        pre = json.loads((p / "preprocessor_config.json").read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    if (p / "config.json").is_file():
        size = json.loads((p / "config.json").read_text()).get("image_size")
    return mean, std, size


def _prepare(out_dir: str | os.PathLike[str], resume: bool, overwrite: bool,
             config: TrainConfig) -> Path:
    out = Path(out_dir)
    _check_out_dir(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    configure_threads(config.num_threads)
    import torch

    torch.manual_seed(config.seed)
    return out


def train_classifier(dataset: TileDataset, out_dir: str | os.PathLike[str], *, kind: str = "tumor",
                     arch: str = "vit-small", pretrained_dir: str | os.PathLike[str] | None = None,
                     config: TrainConfig = _DEFAULT_CONFIG, mpp: float = TilingConfig.mpp,
                     tile_size: int | None = None, input_size: int | None = None,
                     positive_label: str | None = None, val_dataset: TileDataset | None = None,
                     lr: float | None = None, batch_size: int | None = None, epochs: int | None = None,
                     resume: bool = False, overwrite: bool = False,
                     arch_overrides: dict[str, Any] | None = None,
                     progress: ProgressCallback | None = None) -> TrainResult:
    """Train the tumor classifier C (``kind="tumor"``) or the stain classifier L (``kind="stain"``).

    The validation set is ``val_dataset`` or whole slides held out of ``dataset``
    (``config.val_fraction``). The best epoch by validation accuracy is saved to
    ``out_dir`` as a model directory; ``metrics.json`` there lists every epoch.
    """
    if kind not in ("tumor", "stain"):
        raise UserInputError(f"a classifier is of kind tumor or stain, not {kind!r}", hint="--kind tumor|stain")
    if pretrained_dir is None and arch not in CLASSIFIER_ARCHS:
        raise UserInputError(f"unknown classifier architecture {arch!r}",
                             hint=f"use one of {', '.join(CLASSIFIER_ARCHS)} or --pretrained DIR")
    if len(dataset) == 0:
        raise UserInputError("the training data holds no tiles", hint="check the data folder")
    if kind == "stain":
        dataset = _order_by_stain_value(dataset)
        if val_dataset is not None:
            val_dataset = _order_by_stain_value(val_dataset)
    out = _prepare(out_dir, resume, overwrite, config)
    mean, std, pre_size = _pretrained_norm(pretrained_dir)
    size = input_size or pre_size or int(CLASSIFIER_ARCHS.get(arch, {}).get("image_size", 224))
    if tile_size is None:
        tile_size = int(dataset.image(0).shape[1])
    spec = make_spec(kind, "pretrained" if pretrained_dir and arch not in CLASSIFIER_ARCHS else arch,  # type: ignore[arg-type]
                     dataset.label_names, mpp=mpp, tile_size=tile_size, input_size=size,
                     mean=mean, std=std, positive_label=positive_label,
                     provenance={"trained_with": f"her2-qupath {__version__}",
                                 "pretrained": str(pretrained_dir) if pretrained_dir else None,
                                 "data": dataset.description, "data_sha256": dataset.fingerprint(),
                                 "class_counts": dataset.class_counts(),
                                 "config": dataclasses.asdict(config)})
    network = build_network(spec, pretrained_dir=pretrained_dir, arch_overrides=arch_overrides)
    train_set, val_set, split = _split(dataset, val_dataset, config)
    return _fit("classifier", spec, network, train_set, val_set, out,
                lr=config.lr if lr is None else lr, batch_size=batch_size or config.batch_size,
                epochs=epochs or config.epochs, config=config, resume=resume, progress=progress,
                data_hash=spec.provenance["data_sha256"], split=split)


def train_segmenter(dataset: MaskDataset, out_dir: str | os.PathLike[str], *, arch: str = "segformer-b0",
                    pretrained_dir: str | os.PathLike[str] | None = None,
                    config: TrainConfig = _DEFAULT_CONFIG, mpp: float = TilingConfig.mpp,
                    tile_size: int | None = None, input_size: int | None = None,
                    val_dataset: MaskDataset | None = None, lr: float | None = None,
                    batch_size: int | None = None, epochs: int | None = None, resume: bool = False,
                    overwrite: bool = False, arch_overrides: dict[str, Any] | None = None,
                    progress: ProgressCallback | None = None) -> TrainResult:
    """Train the stain segmenter M (SegFormer) on image/mask pairs (mask values 0..4).

    Defaults from the paper's Table 1 (``seg_lr``, ``seg_batch_size``, ``seg_epochs``);
    the best epoch by validation mean IoU is saved to ``out_dir``.
    """
    if pretrained_dir is None and arch not in SEGMENTER_ARCHS:
        raise UserInputError(f"unknown segmenter architecture {arch!r}",
                             hint=f"use one of {', '.join(SEGMENTER_ARCHS)} or --pretrained DIR")
    if len(dataset) == 0:
        raise UserInputError("the training data holds no image/mask pairs", hint="check the data folder")
    out = _prepare(out_dir, resume, overwrite, config)
    mean, std, pre_size = _pretrained_norm(pretrained_dir)
    first = dataset.image(0)
    if tile_size is None:
        tile_size = int(first.shape[1])
    size = input_size or pre_size or int(SEGMENTER_ARCHS.get(arch, {}).get("image_size", 512))
    spec = make_spec("segmenter", arch if arch in SEGMENTER_ARCHS else "pretrained", None, mpp=mpp,
                     tile_size=tile_size, input_size=size, mean=mean, std=std,
                     provenance={"trained_with": f"her2-qupath {__version__}",
                                 "pretrained": str(pretrained_dir) if pretrained_dir else None,
                                 "data": dataset.description, "data_sha256": dataset.fingerprint(),
                                 "config": dataclasses.asdict(config)})
    network = build_network(spec, pretrained_dir=pretrained_dir, arch_overrides=arch_overrides)
    if getattr(network.config, "model_type", None) == "maskformer":
        log.warning("MaskFormer training is experimental: in short CPU runs it learnt far more slowly "
                    "than SegFormer; prefer segformer-b0 unless you train for many epochs")
    train_set, val_set, split = _split(dataset, val_dataset, config)
    return _fit("segmenter", spec, network, train_set, val_set, out,
                lr=config.seg_lr if lr is None else lr, batch_size=batch_size or config.seg_batch_size,
                epochs=epochs or config.seg_epochs, config=config, resume=resume, progress=progress,
                data_hash=spec.provenance["data_sha256"], split=split)
