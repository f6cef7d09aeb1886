"""Evaluation of the models on a labelled set: the metrics the paper reports.

Classifiers: accuracy, per-class precision, recall (sensitivity), specificity
and F1 with their macro averages, the confusion matrix, one-vs-rest ROC curves
with their AUC, and a decision-curve analysis (Vickers & Elkin 2006) for one
positive class: net benefit ``TP/n - FP/n * pt/(1-pt)`` of acting on the model
at threshold probabilities ``pt`` from 0 to 0.30, against treating all
(``prevalence - (1-prevalence) * pt/(1-pt)``) and treating none (0).
Segmenter: the pixel confusion matrix over the stain-map values, IoU per class
and their mean over classes present, and the same per-class pixel metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_output_dir, atomic_write_json
from .._types import ProgressCallback
from ..errors import ModelError
from .infer import classify_tiles, segment_tiles
from .io import LoadedModel, stain_value

__all__ = [
    "DCA_THRESHOLDS",
    "confusion_matrix",
    "per_class_metrics",
    "roc_curve",
    "auc",
    "iou_per_class",
    "decision_curve",
    "classification_report",
    "evaluate",
    "write_evaluation",
]

log = logging.getLogger(__name__)

#: Threshold probabilities of the decision curves (0 to 0.30 in steps of 0.01, as in the paper).
DCA_THRESHOLDS: np.ndarray = np.round(np.arange(0, 0.3001, 0.01), 2)


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts (K x K, int64): row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def per_class_metrics(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy; precision, recall, specificity, F1 and support per class; macro means."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    out: dict[str, Any] = {"accuracy": _div(np.trace(cm), n), "n": int(n), "per_class": {}}
    for k, name in enumerate(labels):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        tn = n - tp - fp - fn
        precision = _div(tp, tp + fp)
        recall = _div(tp, tp + fn)
        f1 = _div(2 * tp, 2 * tp + fp + fn)
        out["per_class"][name] = {"precision": precision, "recall": recall, "sensitivity": recall,
                                  "specificity": _div(tn, tn + fp), "f1": f1,
                                  "support": int(cm[k, :].sum())}
    present = [v for v in out["per_class"].values() if v["support"] > 0]
    for key in ("precision", "recall", "specificity", "f1"):
        vals = [v[key] for v in present if np.isfinite(v[key])]
        out[f"macro_{key}"] = float(np.mean(vals)) if vals else float("nan")
    out["macro_sensitivity"] = out["macro_recall"]
    return out


def roc_curve(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score (ties kept together), and thresholds.

    ``y_true`` is binary (1 positive). The curve starts at (0, 0) and ends at (1, 1).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, int)
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    pos, neg = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tps / pos] if pos else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / neg] if neg else np.full(len(fps) + 1, np.nan)
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule."""
    if len(fpr) < 2 or not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class from a confusion matrix (NaN where a class is absent)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def decision_curve(y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray,
                   thresholds: Sequence[float] | np.ndarray = DCA_THRESHOLDS) -> dict[str, Any]:
    """Net benefit of the model, of treating all and of treating none at each threshold.

    A case counts as positive for the model when ``prob >= pt``.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    n = len(y)
    prevalence = y.mean() if n else float("nan")
    model, treat_all = [], []
    for pt in np.asarray(thresholds, dtype=np.float64):
        w = pt / (1 - pt)
        act = p >= pt
        tp = np.sum(act & y)
        fp = np.sum(act & ~y)
        model.append(float(tp / n - fp / n * w) if n else float("nan"))
        treat_all.append(float(prevalence - (1 - prevalence) * w))
    return {"thresholds": [float(t) for t in thresholds], "model": model, "treat_all": treat_all,
            "treat_none": [0.0] * len(model), "prevalence": float(prevalence)}


def classification_report(y_true: np.ndarray, prob: np.ndarray, labels: Sequence[str], *,
                          positive: int | None = None) -> dict[str, Any]:
    """All classifier metrics from true class indices and predicted probabilities (N x K)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    k = len(labels)
    cm = confusion_matrix(y_true, prob.argmax(1), k)
    report = per_class_metrics(cm, labels)
    report["labels"] = list(labels)
    report["confusion_matrix"] = cm.tolist()
    report["roc"] = {}
    for j, name in enumerate(labels):
        fpr, tpr, thr = roc_curve(y_true == j, prob[:, j])
        report["roc"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                               "thresholds": [float(t) if np.isfinite(t) else "Infinity" for t in thr],
                               "auc": auc(fpr, tpr)}
    aucs = [v["auc"] for v in report["roc"].values() if np.isfinite(v["auc"])]
    report["macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    if positive is not None:
        report["decision_curve"] = {"positive": labels[positive],
                                    **decision_curve(y_true == positive, prob[:, positive])}
    return report


def _dataset_targets(model: LoadedModel, dataset: Any) -> np.ndarray:
    """Dataset class indices translated into the model's class indices (by name)."""
    names = list(dataset.label_names)
    mapping: dict[int, int] = {}
    for i, name in enumerate(names):
        if name in model.labels:
            mapping[i] = model.labels.index(name)
        elif model.spec.values is not None and stain_value(name) in model.spec.values:
            mapping[i] = model.spec.values.index(stain_value(name))  # type: ignore[arg-type]
        else:
            raise ModelError(f"data class {name!r} is not one of the model's classes {list(model.labels)}",
                             hint="name the class folders as the model's classes")
    return np.asarray([mapping[int(t)] for t in dataset.labels], dtype=np.int64)


def evaluate(model: LoadedModel, dataset: Any, *, precision: str = "fp32", batch_size: int = 16,
             positive: str | None = None, progress: ProgressCallback | None = None
             ) -> dict[str, Any]:
    """Evaluate ``model`` on a labelled dataset (``TileDataset`` or ``MaskDataset``)."""
    images = (dataset.image(i) for i in range(len(dataset)))
    result: dict[str, Any] = {"model": str(model.path) if model.path else None, "kind": model.kind,
                              "data": getattr(dataset, "description", ""), "n": len(dataset),
                              "precision": precision}
    if model.kind == "segmenter":
        values = list(model.spec.values or ())
        k = len(values)
        lut = np.full(256, 0, dtype=np.int64)
        for idx, v in enumerate(values):
            lut[v] = idx
        cm = np.zeros((k, k), dtype=np.int64)
        chunk = 64  # maps in memory at a time
        for start in range(0, len(dataset), chunk):
            stop = min(len(dataset), start + chunk)
            maps = segment_tiles(model, [dataset.image(i) for i in range(start, stop)], precision=precision,
                                 batch_size=max(1, batch_size // 4))
            for i, pred in zip(range(start, stop), maps):
                truth = dataset.target(i)
                if truth.shape != pred.shape:
                    raise ModelError(f"mask {i} is {truth.shape}, its image {pred.shape}",
                                     hint="masks must match their images pixel for pixel")
                cm += confusion_matrix(lut[truth], lut[pred], k)
            if progress is not None:
                progress(stop, len(dataset))
        ious = iou_per_class(cm)
        result.update(per_class_metrics(cm, model.labels))
        result["labels"] = list(model.labels)
        result["confusion_matrix"] = cm.tolist()
        result["iou"] = {name: float(v) for name, v in zip(model.labels, ious)}
        result["mean_iou"] = float(np.nanmean(ious)) if np.any(np.isfinite(ious)) else float("nan")
        return result
    targets = _dataset_targets(model, dataset)
    prob = classify_tiles(model, _Sized(images, len(dataset)), precision=precision,
                          batch_size=batch_size, progress=progress)
    pos = _positive_index(model, positive)
    result.update(classification_report(targets, prob, model.labels, positive=pos))
    return result


def _positive_index(model: LoadedModel, positive: str | None) -> int:
    if positive is not None:
        if positive in model.labels:
            return model.labels.index(positive)
        v = stain_value(positive)
        if model.spec.values is not None and v in model.spec.values:
            return model.spec.values.index(v)  # type: ignore[arg-type]
        raise ModelError(f"positive class {positive!r} is not one of {list(model.labels)}",
                         hint="pass one of the model's classes")
    if model.spec.positive_index is not None:
        return model.spec.positive_index
    values = list(model.spec.values or range(model.num_labels))
    return values.index(max(values))  # stain models: the strongest class


class _Sized:
    """An iterator with a known length (for progress totals)."""

    def __init__(self, it: Any, n: int) -> None:
        self.it, self.n = it, n

    def __iter__(self) -> Any:
        return iter(self.it)

    def __len__(self) -> int:
        return self.n


def write_evaluation(result: dict[str, Any], out_dir: str | os.PathLike[str], *,
                     overwrite: bool = True) -> Path:
    """Write ``metrics.json`` and PNG plots (confusion matrix, ROC, decision curve) to ``out_dir``."""
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "metrics.json", result)
        _plot_confusion(result, tmp / "confusion_matrix.png")
        if "roc" in result:
            _plot_roc(result, tmp / "roc.png")
        if "decision_curve" in result:
            _plot_dca(result["decision_curve"], tmp / "decision_curve.png")
    return Path(out_dir)


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(5.5, 4.5), dpi=120)


def _plot_confusion(result: dict[str, Any], path: Path) -> None:
    cm = np.asarray(result["confusion_matrix"], dtype=np.float64)
    labels = result["labels"]
    fig = _figure()
    ax = fig.add_subplot()
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (accuracy {result['accuracy']:.3f})")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path)


def _plot_roc(result: dict[str, Any], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    for name, roc in result["roc"].items():
        if np.isfinite(roc["auc"]):
            ax.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {roc['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("One-vs-rest ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_dca(dca: dict[str, Any], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    t = dca["thresholds"]
    ax.plot(t, dca["model"], label=f"model ({dca['positive']})")
    ax.plot(t, dca["treat_all"], label="treat all", linestyle="--")
    ax.plot(t, dca["treat_none"], label="treat none", color="black", linestyle=":")
    top = max(max(dca["model"]), dca["prevalence"])
    ax.set_ylim(-0.05, top + 0.05 if np.isfinite(top) else 1)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title("Decision curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
