"""``her2-qupath batch``: score every IHC image (or H&E + IHC pair) of a QuPath project."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .score import score_options

__all__ = ["command"]


@click.command("batch")
@click.argument("project", type=click.Path(exists=True, path_type=Path))
@click.option("--roi-class", default=None, help="Score only annotations of this class (e.g. Tumor).")
@click.option("--pairs", "pairs_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns ihc,he[,case] (image names or entry IDs) pairing H&E and IHC.")
@click.option("--pair-pattern", default=None,
              help="Regex with named groups case and stain, e.g. '(?P<case>.+)_(?P<stain>HE|HER2)'.")
@click.option("--pair-metadata", default=None, metavar="KEY",
              help="Pair images sharing this metadata value; the 'stain' metadata marks H&E.")
@click.option("--images", multiple=True, metavar="GLOB", help="Only images whose name matches (repeatable).")
@click.option("--image-root", "image_roots", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Folder searched by file name for images not at their recorded path (repeatable).")
@click.option("--roi", type=click.Path(exists=True, path_type=Path), default=None,
              help="GeoJSON file (all images) or folder of <entryID|image name|stem>.geojson ROIs.")
@click.option("--dry-run", is_flag=True, help="List what would be scored and written; write nothing.")
@click.option("--resume", is_flag=True, help="Skip images that already have results.")
@click.option("--force", is_flag=True, help="Write even if the project looks open in QuPath.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel size (µm/px) for images whose project entry and file record none; per image: "
                   "an mpp (and he_mpp) column in the --pairs CSV.")
@click.option("--force-mpp", is_flag=True,
              help="Score pixel sizes outside 0.05-20 µm/px, or ones the working resolution enlarges "
                   "more than 8 times (--force is about the project being open).")
@click.option("--no-write-back", is_flag=True, help="Only write GeoJSON files, even when QuPath is installed.")
@click.option("--backend", type=click.Choice(["auto", "paquo", "json"]), default="auto", show_default=True,
              help="paquo needs QuPath (PAQUO_QUPATH_DIR); json reads project.qpproj directly.")
@click.option("--dask-scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Send tile work to this Dask distributed cluster instead of the local pool.")
@score_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def command(
    project: Path, roi_class: str | None, pairs_csv: Path | None, pair_pattern: str | None,
    pair_metadata: str | None, images: tuple[str, ...], image_roots: tuple[Path, ...], roi: Path | None,
    dry_run: bool, resume: bool, force: bool, mpp: float | None, force_mpp: bool, no_write_back: bool,
    backend: str,
    dask_scheduler: str | None, as_json: bool,
    **score_kw: Any,
) -> None:
    """Score the images of a QuPath PROJECT (folder or project.qpproj).

    Results go to PROJECT/her2_qupath/<entryID>/ as GeoJSON (detections,
    annotations) and summary.json, plus batch_summary.csv/.json (cumulative: one
    row per image, its latest result and run id); with QuPath installed
    (PAQUO_QUPATH_DIR) they are also written into the project after a backup. An
    image whose file is not the one its entry records, or whose pixel size or work
    is implausible, is refused. Exits with 1 only when no image could be scored;
    with 2 when an input is unusable (nothing is computed).
    """
    import json

    from .._io import json_default
    from ..qupath.batch import BatchOptions, run_batch
    from ._common import progress
    from .score import build_options

    opts = BatchOptions(
        project=project, roi_class=roi_class, pairs_csv=pairs_csv, pair_pattern=pair_pattern,
        pair_metadata=pair_metadata, images=images, image_roots=image_roots, roi=roi, dry_run=dry_run,
        resume=resume, force=force, mpp=mpp, force_mpp=force_mpp, backend=backend,  # type: ignore[arg-type]
        write_back=not no_write_back,
        options=build_options(**score_kw), dask_scheduler=dask_scheduler,  # dry run: for the checks
    )
    from tqdm import tqdm

    bar = tqdm(desc="images", unit="image", file=sys.stderr, dynamic_ncols=True, disable=None)

    def image_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    tiles: list = []

    def tile_progress(name: str):
        for cm in tiles:
            cm.__exit__(None, None, None)
        tiles.clear()
        cm = progress(f"  {name[:40]}")
        cb = cm.__enter__()
        tiles.append(cm)
        return cb

    try:
        report = run_batch(opts, image_progress=image_progress, tile_progress=tile_progress)
    finally:
        for cm in tiles:
            cm.__exit__(None, None, None)
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), default=json_default, indent=2))
    else:
        _print_report(report)
    if report.failed_run:
        sys.exit(1)


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    echo = click.echo
    versions = ", ".join(f"QuPath {v}: {n}" for v, n in sorted(report.qupath_versions.items()))
    echo(f"Project {report.project} ({report.backend}; {len(report.entries)} entries; {versions})")
    for note in report.notes:
        echo(f"Note: {note}")
    for o in report.outcomes:
        score = o.summary.get("her2_score", "") if o.summary else ""
        pair = f" + H&E {o.he_image}" if o.he_image else ""
        echo(f"  [{o.status:>11}] {o.entry_id:>6} {o.image}{pair} {score} {o.message}".rstrip())
    for u in report.unpaired:
        echo(f"  [   unpaired] {u['entry_id']:>6} {u['image']}: {u['reason']}")
    from ..qupath.batch import STATUSES

    counts = ", ".join(f"{s} {report.count(s)}" for s in STATUSES if report.count(s))
    echo(f"Done: {counts or 'nothing to do'}.")
    if report.backup_dir:
        echo(f"Backup of the project files: {report.backup_dir}")
    if not report.dry_run:
        echo(f"Summary: {report.output_dir}/batch_summary.csv")
