"""``her2-qupath evaluate``: measure a model on a labelled set (JSON + PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import progress

__all__ = ["command"]


@click.command(name="evaluate")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for metrics.json and the plots.")
@click.option("--positive", default=None,
              help="Positive class of the decision curve (default: tumor, or the strongest stain class).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--slide-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel size of slides that carry none (GeoJSON source).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def command(model_dir: Path, data: Path, output: Path, positive: str | None, precision: str,
            batch_size: int, slide_mpp: float | None, overwrite: bool) -> None:
    """Evaluate MODEL_DIR on the labelled DATA (same layouts as `train`).

    Writes metrics.json (accuracy, per-class precision/recall/specificity/F1, macro
    means, confusion matrix, one-vs-rest ROC and AUC, decision curve; mean IoU per
    class for the segmenter) and confusion_matrix.png, roc.png, decision_curve.png.
    """
    from ..errors import OutputExists
    from ..models.datasets import discover_dataset
    from ..models.evaluation import evaluate, write_evaluation
    from ..models.io import load_model, stain_value

    if output.exists() and not overwrite:
        raise OutputExists(f"output folder {output} exists", hint="pass --overwrite or choose another -o")
    model = load_model(model_dir)
    pre = model.spec.preprocessing
    task = "segmenter" if model.kind == "segmenter" else "classifier"
    class_filter: Any = None
    classes = None
    if model.kind == "stain":
        class_filter = lambda n: stain_value(n) in (1, 2, 3, 4)  # noqa: E731
    elif model.kind == "tumor":
        classes = list(model.labels)
    dataset = discover_dataset(data, task=task, tile_size=pre.tile_size, mpp=pre.mpp, classes=classes,
                               class_filter=class_filter, slide_mpp=slide_mpp)
    try:
        with progress("evaluating") as bar:
            result = evaluate(model, dataset, precision=precision, batch_size=batch_size,
                              positive=positive, progress=bar)
    finally:
        dataset.close()
    write_evaluation(result, output, overwrite=overwrite)
    if model.kind == "segmenter":
        click.echo(f"mean IoU {result['mean_iou']:.4f}, pixel accuracy {result['accuracy']:.4f}")
    else:
        click.echo(f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, "
                   f"macro AUC {result['macro_auc']:.4f}")
    click.echo(f"written to {output}")
