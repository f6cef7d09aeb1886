"""``her2-qupath score``: score one IHC slide (optionally with its H&E partner)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..config import (
    GUIDELINES,
    TILE_SIZE_RANGE,
    ModelConfig,
    ScoringConfig,
    StainConfig,
    TilingConfig,
)
from ._common import mpp_option, progress

__all__ = ["command", "build_options", "score_options"]

_T = TilingConfig()
_S = StainConfig()
_M = ModelConfig()
_SC = ScoringConfig()

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


def score_options(f: Any) -> Any:
    """The scoring options shared by ``score`` and ``batch``."""
    opts = [
        click.option("--guideline", type=click.Choice(sorted(GUIDELINES)), default=_SC.guideline,
                     show_default=True, help="Clinical rule used for the region and slide score."),
        click.option("--level", type=click.Choice(["pixel", "cell"]), default=_SC.level,
                     show_default=True, help="Count stained tumour-area pixels or tumour cells."),
        click.option("--aggregation", type=click.Choice(["guideline", "paper", "paper-adapted"]),
                     default=_SC.aggregation, show_default=True,
                     help="Slide score by the guideline rule or by the paper's Algorithm 1."),
        click.option("--tile-size", type=click.IntRange(*TILE_SIZE_RANGE), default=_T.tile_size,
                     show_default=True, help="Tile size f in pixels at the working pixel size."),
        click.option("--working-mpp", type=click.FloatRange(0.05, 50), default=_T.mpp,
                     show_default=True, help="Working pixel size (µm/px) the tiles are read at."),
        click.option("--intensity", type=click.Choice(["membrane", "od"]), default=_S.intensity,
                     show_default=True,
                     help="What the stain classes grade: the membranes' DAB line density (OD·µm) "
                          "or each pixel's DAB OD with QuPath's thresholds (docs/stain.md)."),
        click.option("--thresholds", default=None,
                     help="Thresholds for 1+, 2+, 3+ of the chosen --intensity [membrane: "
                          + ",".join(str(t) for t in _S.membrane_thresholds) + " OD·µm; od: "
                          + ",".join(str(t) for t in _S.thresholds) + " DAB OD]."),
        click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="A calibration file from `her2-qupath calibrate` "
                     "(membrane thresholds fitted to your laboratory's cases)."),
        click.option("--background", default=None, metavar="R,G,B",
                     help="White point (RGB of empty glass) when the slide shows too little glass "
                          "to estimate it [default: estimated from the glass]."),
        click.option("--stain-vectors", default=None,
                     help="QuPath stain string (setColorDeconvolutionStains JSON) to use instead of H-DAB defaults."),
        click.option("--estimate-stains", is_flag=True, help="Estimate stain vectors from the slide (Macenko)."),
        click.option("--tumor-model", type=_existing_dir, default=None,
                     help="Model directory of the H&E tumour classifier C (needs --he)."),
        click.option("--stain-model", type=_existing_dir, default=None,
                     help="Model directory of the IHC stain-intensity classifier L."),
        click.option("--seg-model", type=_existing_dir, default=None,
                     help="Model directory of the IHC stain segmenter M (replaces colour deconvolution)."),
        click.option("--precision", type=click.Choice(["bf16", "fp32"]), default=_M.precision,
                     show_default=True, help="Model inference precision."),
        click.option("--clip-tiles", is_flag=True,
                     help="Cut the tile outlines written to QuPath to the scored regions "
                          "(their numbers are those of the whole tile's scored part either way)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _parse_thresholds(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is not three comma-separated numbers",
                                 param_hint="--thresholds") from err
    if len(values) != 3 or not (0 < values[0] < values[1] < values[2]):
        raise click.BadParameter("need three increasing positive numbers, e.g. 0.2,0.4,0.6",
                                 param_hint="--thresholds")
    return values  # type: ignore[return-value]


def build_options(**kw: Any) -> Any:
    """ScoreOptions from the shared CLI options (also used by ``batch``)."""
    from ..optics import parse_rgb
    from ..pipeline import ScoreOptions

    base = ScoreOptions()
    intensity = kw.get("intensity") or base.stain.intensity
    stain = replace(base.stain, intensity=intensity, estimate_vectors=kw["estimate_stains"])
    if kw.get("thresholds"):
        key = "membrane_thresholds" if intensity == "membrane" else "thresholds"
        stain = replace(stain, **{key: _parse_thresholds(kw["thresholds"])})
    if kw.get("background"):
        try:
            stain = replace(stain, background=parse_rgb(kw["background"], "--background"))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--background") from err
    options = ScoreOptions(
        tiling=replace(base.tiling, tile_size=kw["tile_size"], mpp=kw["working_mpp"]),
        stain=stain,
        scoring=ScoringConfig(guideline=kw["guideline"], level=kw["level"],
                              aggregation=kw["aggregation"]),
        model=replace(base.model, precision=kw["precision"]),
        tumor_model=kw["tumor_model"],
        stain_model=kw["stain_model"],
        seg_model=kw["seg_model"],
        stain_vectors=kw["stain_vectors"],
        clip_tiles=bool(kw.get("clip_tiles")),
    )
    if kw.get("calibration") is not None:
        from ..calibration import apply_calibration, load_calibration

        if kw.get("thresholds") or kw.get("intensity") == "od":
            raise click.UsageError("--calibration sets the membrane thresholds: "
                                   "drop --thresholds and --intensity od")
        options = apply_calibration(options, load_calibration(kw["calibration"]))
    return options


def print_summary(summary: dict[str, Any], outdir: Path) -> None:
    pct = summary["class_percentages"]
    click.echo(f"HER2 {summary['her2_score']}  ({summary['guideline']}, {summary['level']} level, "
               f"{summary['aggregation']} aggregation)")
    for reason in summary.get("not_evaluable_reasons", []):
        click.echo(f"  NOT EVALUABLE: {reason}", err=True)
    if summary.get("her2_expression"):
        click.echo(f"  expression group: {summary['her2_expression']}")
    click.echo("  classes: " + "  ".join(f"{k}: {pct[k]:.1f}%" for k in ("0", "1+", "2+", "3+")))
    click.echo(f"  H-score {summary['h_score']:.1f}   WSI% (2+/3+ pixels) {summary['percent_positive']:.1f}   "
               f"tiles {summary['n_tiles_counted']}/{summary['n_tiles']}"
               + (f"   cells {summary['n_cells']}" if summary.get("n_cells") is not None else ""))
    for region in summary["regions"]:
        if len(summary["regions"]) > 1:
            click.echo(f"  {region['name']}: HER2 {region['her2_score']} "
                       f"(H-score {region['h_score']:.1f}, {region['n_tiles']} tiles)")
    for warning in summary.get("warnings", []):
        click.echo(f"  WARNING: {warning}", err=True)
    click.echo(f"Results written to {outdir}/")


@click.command("score")
@click.option("--ihc", required=True, type=_existing_file, help="The HER2 IHC slide.")
@click.option("--he", type=_existing_file, default=None,
              help="The consecutive H&E slide; tiles are cut there and mapped to the IHC slide.")
@click.option("--transform", type=_existing_file, default=None,
              help="Transform JSON from `her2-qupath register` (else registered on the fly).")
@click.option("--roi", type=_existing_file, default=None,
              help="QuPath GeoJSON export of the regions to score (on the H&E slide with --he).")
@click.option("--roi-class", default=None, help="Use only ROI annotations of this class, e.g. Tumor.")
@click.option("--roi-on", "roi_space", type=click.Choice(["he", "ihc"]), default=None,
              help="With --he: the slide the ROIs were drawn on (ihc ROIs are mapped to the H&E "
                   "slide) [default: he].")
@mpp_option()
@click.option("--he-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --he: pixel size of the H&E slide if it carries none.")
@score_options
@click.option("-o", "--output", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--force", is_flag=True,
              help="Score with a pixel size outside 0.05-20 µm/px, or one the working resolution "
                   "enlarges more than 8 times (docs/commands/score.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(ihc: Path, he: Path | None, transform: Path | None, roi: Path | None,
            roi_class: str | None, roi_space: str | None, mpp: float | None, he_mpp: float | None,
            outdir: Path,
            overwrite: bool, force: bool, as_json: bool, **kw: Any) -> None:
    """Score HER2 on an IHC slide and write QuPath GeoJSON, a summary and an overlay.

    Without --roi all tissue is scored. Writes detections.geojson,
    annotations.geojson, summary.json and overlay.png into OUTPUT (atomically;
    with --he also he_detections.geojson and ihc_detections.geojson).
    """
    from .. import preflight
    from ..errors import OutputExists, UserInputError
    from ..pipeline import ScoreRequest, run_score, write_result

    preflight.check_output_dir(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise OutputExists(f"output directory {outdir} is not empty",
                           hint="choose a new -o directory or pass --overwrite")
    if kw["tumor_model"] is not None and he is None:
        raise UserInputError("--tumor-model classifies H&E tiles and needs --he",
                             hint="add --he HE_SLIDE, or drop --tumor-model")
    if transform is not None and he is None:
        raise UserInputError("--transform maps H&E tiles and needs --he", hint="add --he HE_SLIDE")
    for flag, value in (("--roi-on", roi_space), ("--he-mpp", he_mpp)):
        if value is not None and he is None:
            raise UserInputError(f"{flag} applies to the H&E slide and needs --he",
                                 hint=f"add --he HE_SLIDE, or drop {flag}")
    roi_space = roi_space or "he"
    preflight.check_pixel_size(mpp, what=f"IHC slide {ihc.name}", source="--mpp", force=force)
    preflight.check_pixel_size(he_mpp, what=f"H&E slide {he.name if he else ''}", source="--he-mpp",
                               force=force)
    rois, roi_source = None, None
    if roi is not None:
        rois, roi_source = preflight.read_roi_file(roi)
    options = build_options(**kw)
    bounds = None if rois is None or (he is not None and roi_space == "ihc") else [
        o.geometry.bounds for o in rois if getattr(o, "geometry", None) is not None]
    preflight.check_slides(ihc, ihc_mpp=mpp, he=he, he_mpp=he_mpp, options=options, roi_bounds=bounds,
                           force=force)
    request = ScoreRequest(ihc=ihc, he=he, ihc_mpp=mpp, he_mpp=he_mpp, rois=rois,
                           roi_class=roi_class, transform=transform, options=options,
                           roi_space=roi_space)  # type: ignore[arg-type]
    with progress("Scoring tiles") as cb:
        result = run_score(request, progress=cb)
    preflight.record_roi_source(result.summary, roi_source)
    write_result(result, outdir)
    if as_json:
        click.echo(json.dumps(result.summary, indent=2, default=str))
    else:
        print_summary(result.summary, outdir)
