"""``her2-qupath score``: score one IHC slide (optionally with its H&E partner)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import ScoreOptions
from ..options import OPTIONS, OptionSpec
from ..options import score_options as request_options
from ._common import mpp_option, progress

__all__ = ["command", "build_options", "score_options"]

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


def _param(spec: OptionSpec) -> str:
    """The keyword click passes the option's value under (its flag, with underscores)."""
    return spec.cli_flag.lstrip("-").replace("-", "_")


def _click_option(spec: OptionSpec) -> Callable[[Any], Any]:
    """The ``click.option`` of one spec of the request model (her2_qupath.options)."""
    kw: dict[str, Any] = {"help": spec.help}
    lo, hi = spec.bounds or (None, None)
    if spec.kind == "choice":
        kw |= {"type": click.Choice(list(spec.choices)), "default": spec.default, "show_default": True}
    elif spec.kind == "int":
        kw |= {"type": click.IntRange(int(lo), int(hi)), "default": spec.default, "show_default": True}
    elif spec.kind == "float":
        kw |= {"type": click.FloatRange(lo, hi), "default": spec.default, "show_default": True}
    elif spec.kind == "flag":
        kw |= {"is_flag": True}
    elif spec.kind == "calibration":
        kw |= {"type": _existing_file, "default": None}
    elif spec.kind == "model":
        kw |= {"type": _existing_dir, "default": None, "help": f"Model directory of {spec.help[0].lower()}{spec.help[1:]}"}
    else:  # text, R,G,B and thresholds: parsed and checked by the request model
        kw |= {"default": None, "metavar": spec.metavar}
        if spec.kind == "thresholds":
            kw["help"] = f"{spec.help} [default: {spec.default_text}]"
    return click.option(spec.cli_flag, _param(spec), **kw)


def score_options(f: Any) -> Any:
    """The scoring options shared by ``score``, ``batch``, ``validate`` and ``calibrate``.

    Generated from the request model :data:`her2_qupath.options.OPTIONS`, like the
    server's schema and docs/options.md.
    """
    for spec in reversed(OPTIONS):
        f = _click_option(spec)(f)
    return f


def build_options(**kw: Any) -> ScoreOptions:
    """``ScoreOptions`` from the shared command-line options (the request model decides)."""
    values = {spec.name: kw.get(_param(spec)) for spec in OPTIONS}
    return request_options(values, "cli")


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
