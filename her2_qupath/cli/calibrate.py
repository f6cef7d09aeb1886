"""``her2-qupath calibrate``: fit the membrane grading to the laboratory's cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .score import score_options
from .validate import case_options, cases_from

__all__ = ["command"]


@click.command("calibrate")
@case_options
@score_options
@click.option("-o", "--output", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The calibration file (JSON).")
@click.option("--min-cases-per-class", type=click.IntRange(min=1), default=2, show_default=True,
              help="Refuse to fit when a score class has fewer cases.")
def command(cases: Path, out: Path, min_cases_per_class: int, **kw: Any) -> None:
    """Fit the membrane thresholds (and the scored-tissue threshold) to the cases of CASES
    (a CSV or a QuPath project, as for `validate`), keeping the guideline's percentage rules; report the
    leave-one-case-out agreement of the calibrated and of the default grading.

    Use the file with `score`, `batch` or `validate` --calibration FILE.
    """
    from .. import preflight
    from ..calibration import calibrate_cases, write_calibration
    from ._common import progress
    from .score import build_options

    case_list = cases_from(cases, kw)
    preflight.check_output_file(out)  # before the work, not after it
    preflight.check_cases(case_list)
    options = build_options(**kw)
    with progress("Measuring", unit="case") as cb:
        grading, report = calibrate_cases(case_list, options, min_cases_per_class=min_cases_per_class,
                                          progress=cb)
    n = len(report["cases"])
    write_calibration(out, grading, n_cases=n, cross_validation=report)
    for left in report["left_out"]:
        click.echo(f"  left out, not evaluable: {left['case']}: {left['reason']}", err=True)
    click.echo(f"{n} cases; fitted: scored tissue {grading[0]:.3f} OD sum, "
               f"1+ / 2+ / 3+ at {grading[1]:.3f} / {grading[2]:.3f} / {grading[3]:.3f} OD·µm")
    for label, key in (("calibrated (leave-one-out)", "calibrated_leave_one_out"),
                       ("default", "default")):
        a = report[key]
        click.echo(f"  {label:27s} exact {a['exact']:.2f}  within one {a['within_one']:.2f}  "
                   f"quadratic kappa {a['quadratic_kappa']:.2f}  two-step errors {a['two_step_errors']}")
    click.echo(f"Calibration written to {out}")
