"""``her2-qupath validate``: agreement with the laboratory's pathologists on its own cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .score import score_options

__all__ = ["command"]


def _fmt(entry: dict[str, Any]) -> str:
    v, (lo, hi) = entry["value"], entry["ci95"]
    if v is None:
        return "n/a"
    return f"{v:.2f} (95 % CI {lo if lo is not None else float('nan'):.2f}-" \
           f"{hi if hi is not None else float('nan'):.2f})"


@click.command("validate")
@click.argument("cases", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@score_options
@click.option("-o", "--output", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--resume", is_flag=True, help="Keep the cases already scored in OUTPUT.")
def command(cases: Path, outdir: Path, resume: bool, **kw: Any) -> None:
    """Score every case of CASES (CSV: image,score[,roi,roi_class,mpp,guideline,he]) and
    compare with the pathologists' scores: OUTPUT/report.json and one folder per case.

    The cases are scored as `her2-qupath score` scores them, with the same options.
    """
    from ..errors import OutputExists
    from ..validation import read_cases, run_validation
    from ._common import progress
    from .score import build_options

    case_list = read_cases(cases)  # every row checked before any work
    if outdir.exists() and any(outdir.iterdir()) and not resume:
        raise OutputExists(f"output directory {outdir} is not empty",
                           hint="choose a new -o directory, or pass --resume to keep its cases")
    options = build_options(**kw)
    with progress("Validating", unit="case") as cb:
        report = run_validation(case_list, outdir, options, resume=resume, progress=cb)
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
