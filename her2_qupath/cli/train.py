"""``her2-qupath train classifier|segmenter``: train the models C, L and M on your own data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import TilingConfig, TrainConfig
from ._common import progress

__all__ = ["command"]

_DATA_HELP = """DATA is a folder holding either class folders of tiles (DATA/<class>/*.png),
QuPath GeoJSON exports beside their slides (DATA/<name>.geojson + DATA/<name>.svs; tiles
are cut inside each classified annotation), or for the segmenter image/mask pairs
(x.png + x_mask.png, mask values 0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+).
Tiles are split into training and validation BY SLIDE (DATA/slides.csv or the file-name
prefix before a double underscore, e.g. slideA__0001.png); see docs/models.md."""


def _common(f: Any) -> Any:
    options = [
        click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
                     help="Model directory to write (best epoch, metrics.json, checkpoint)."),
        click.option("--pretrained", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=None, help="Start from a local save_pretrained directory."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Epochs (default: the paper's Table 1)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Peak learning rate (default: Table 1)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Batch size (default: Table 1)."),
        click.option("--patience", type=click.IntRange(min=0), default=TrainConfig.patience,
                     show_default=True, help="Stop after this many epochs without improvement (0: never)."),
        click.option("--val", "val_data", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=None, help="A separate validation folder (default: hold out slides of DATA)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=TrainConfig.val_fraction, show_default=True,
                     help="Share of tiles (whole slides) held out for validation."),
        click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=TilingConfig.mpp,
                     show_default=True, help="Pixel size (µm/px) the tiles are (or are cut) at."),
        click.option("--tile-size", type=click.IntRange(min=16), default=None,
                     help="Tile size in pixels at --mpp (default: the tiles' own size; 512 for slides)."),
        click.option("--input-size", type=click.IntRange(min=16), default=None,
                     help="Network input size (default: the architecture's)."),
        click.option("--slide-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Pixel size of slides that carry none (GeoJSON source)."),
        click.option("--no-augment", is_flag=True, help="Train without augmentation."),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for torch (default: all available)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=TrainConfig.precision,
                     show_default=True, help="bf16: mixed precision (faster on CPUs with bfloat16 units)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run in the output directory."),
        click.option("--overwrite", is_flag=True, help="Replace a model already in the output directory."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(opts: dict[str, Any]) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(TrainConfig(), patience=opts["patience"], val_fraction=opts["val_fraction"],
                               seed=opts["seed"], augment=not opts["no_augment"],
                               num_threads=opts["threads"], precision=opts["precision"])


def _report(result: Any) -> None:
    click.echo(f"best epoch {result.best_epoch}: {result.monitor} = {result.best_metric:.4f}"
               + (" (stopped early)" if result.stopped_early else ""))
    click.echo(f"model saved in {result.model_dir}")


@click.group(name="train", help="Train the models on your own labelled data.\n\n" + _DATA_HELP)
def command() -> None:
    """Train the models on your own labelled data."""


@command.command("classifier")
@_common
@click.option("--kind", type=click.Choice(["tumor", "stain"]), default="tumor", show_default=True,
              help="tumor: H&E tumor classifier C; stain: IHC stain-intensity classifier L.")
@click.option("--arch", type=click.Choice(["vit-small", "vit-base", "tiny"]), default="vit-small",
              show_default=True, help="Architecture when training from scratch.")
@click.option("--positive", default=None, help="The tumor class (default: the class named 'Tumor').")
@click.option("--classes", default=None, help="Comma-separated classes to use (default: all found).")
def classifier(**opts: Any) -> None:
    """Train the tumor classifier C or the stain classifier L (ViT)."""
    from ..models.datasets import discover_dataset
    from ..models.io import stain_value
    from ..models.train import train_classifier

    classes = [c.strip() for c in opts["classes"].split(",")] if opts["classes"] else None
    class_filter = (lambda n: stain_value(n) in (1, 2, 3, 4)) if opts["kind"] == "stain" else None
    tile_size = opts["tile_size"] or TilingConfig.tile_size

    def load(path: Path) -> Any:
        return discover_dataset(path, task="classifier", tile_size=tile_size, mpp=opts["mpp"],
                                classes=classes, class_filter=class_filter, slide_mpp=opts["slide_mpp"])

    data = load(opts["data"])
    val = load(opts["val_data"]) if opts["val_data"] else None
    click.echo(f"{len(data)} tiles: " + ", ".join(f"{k} {v}" for k, v in data.class_counts().items()),
               err=True)
    try:
        with progress("training", unit="step") as bar:
            result = train_classifier(
                data, opts["output"], kind=opts["kind"], arch=opts["arch"], pretrained_dir=opts["pretrained"],
                config=_config(opts), mpp=opts["mpp"], tile_size=opts["tile_size"],
                input_size=opts["input_size"], positive_label=opts["positive"], val_dataset=val,
                lr=opts["lr"], batch_size=opts["batch_size"], epochs=opts["epochs"], resume=opts["resume"],
                overwrite=opts["overwrite"], progress=bar)
    finally:
        data.close()
        if val is not None:
            val.close()
    _report(result)


@command.command("segmenter")
@_common
@click.option("--arch", type=click.Choice(["segformer-b0", "segformer-b1", "tiny"]), default="segformer-b0",
              show_default=True, help="Architecture when training from scratch.")
def segmenter(**opts: Any) -> None:
    """Train the stain segmenter M (SegFormer) on image/mask pairs."""
    from ..models.datasets import load_mask_pairs
    from ..models.train import train_segmenter

    data = load_mask_pairs(opts["data"])
    val = load_mask_pairs(opts["val_data"]) if opts["val_data"] else None
    click.echo(f"{len(data)} image/mask pairs from {len(set(data.groups))} slide(s)", err=True)
    with progress("training", unit="step") as bar:
        result = train_segmenter(
            data, opts["output"], arch=opts["arch"], pretrained_dir=opts["pretrained"], config=_config(opts),
            mpp=opts["mpp"], tile_size=opts["tile_size"], input_size=opts["input_size"], val_dataset=val,
            lr=opts["lr"], batch_size=opts["batch_size"], epochs=opts["epochs"], resume=opts["resume"],
            overwrite=opts["overwrite"], progress=bar)
    _report(result)
