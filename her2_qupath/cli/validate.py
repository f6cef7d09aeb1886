"""``her2-qupath validate``: agreement with the laboratory's pathologists on its own cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .score import score_options

__all__ = ["command", "case_options", "cases_from"]


def case_options(f: Any) -> Any:
    """Where the cases come from: a CSV, or a QuPath project (``validate`` and ``calibrate``)."""
    opts = [
        click.argument("cases", type=click.Path(exists=True, path_type=Path)),
        click.option("--score-key", default="HER2 score", show_default=True,
                     help="QuPath project: the image metadata key holding the pathologist's score."),
        click.option("--image-root", "image_roots", multiple=True,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="QuPath project: a folder to look for images that moved (repeatable)."),
        click.option("--roi", "case_roi", type=click.Path(exists=True, path_type=Path), default=None,
                     help="QuPath project without QuPath: a GeoJSON file, or a folder of "
                          "<image>.geojson files, with the regions to score."),
        click.option("--roi-class", "case_roi_class", default=None,
                     help="QuPath project: score only annotations of this class (e.g. Tumor)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def cases_from(cases: Path, kw: dict[str, Any]) -> list[Any]:
    """The cases named on the command line (pops the case options from ``kw``)."""
    from ..validation import load_cases

    return load_cases(cases, score_key=kw.pop("score_key"), image_roots=tuple(kw.pop("image_roots")),
                      roi=kw.pop("case_roi"), roi_class=kw.pop("case_roi_class"))


def _fmt(entry: dict[str, Any]) -> str:
    v, (lo, hi) = entry["value"], entry["ci95"]
    if v is None:
        return "n/a"
    return f"{v:.2f} (95 % CI {lo if lo is not None else float('nan'):.2f}-" \
           f"{hi if hi is not None else float('nan'):.2f})"


@click.command("validate")
@case_options
@score_options
@click.option("-o", "--output", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--resume", is_flag=True, help="Keep the cases already scored in OUTPUT.")
@click.option("--dask-scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Send tile work to this Dask distributed cluster instead of the local pool.")
def command(cases: Path, outdir: Path, resume: bool, dask_scheduler: str | None, **kw: Any) -> None:
    """Score every case of CASES and compare with the pathologists' scores: OUTPUT/report.html,
    OUTPUT/report.json and one folder per case (the outputs of `score`, with its case report).

    CASES is a CSV (image,score[,roi,roi_class,mpp,guideline,he]) or a QuPath project whose
    images carry the pathologist's score as a metadata value (--score-key). The cases are
    scored as `her2-qupath score` scores them, with the same options.
    """
    from .. import preflight
    from ..errors import OutputExists
    from ..executors import dask_executor
    from ..validation import run_validation
    from ._common import progress
    from .score import build_options

    case_list = cases_from(cases, kw)  # every case checked before any work
    preflight.check_output_dir(outdir)
    preflight.check_cases(case_list)
    if outdir.exists() and any(outdir.iterdir()) and not resume:
        raise OutputExists(f"output directory {outdir} is not empty",
                           hint="choose a new -o directory, or pass --resume to keep its cases")
    options = build_options(**kw)
    with dask_executor(dask_scheduler) as executor, progress("Validating", unit="case") as cb:
        report = run_validation(case_list, outdir, options, resume=resume, progress=cb,
                                executor=executor)
    click.echo(f"{report['n']} cases scored, {report['unscored']} not evaluable")
    click.echo(f"  exact agreement   {_fmt(report['exact'])}")
    click.echo(f"  within one step   {_fmt(report['within_one'])}")
    click.echo(f"  quadratic kappa   {_fmt(report['quadratic_kappa'])}")
    click.echo(f"  two-step errors   {report['two_step_errors']}   0 called 2+/3+ "
               f"{report['negative_called_positive']}")
    for d in report["discordant"]:
        click.echo(f"  discordant: {d['case']}: pathologist {d['pathologist']}, "
                   f"her2-qupath {d['her2_qupath']}")
    click.echo(f"Report written to {outdir / 'report.html'} and {outdir / 'report.json'}")
