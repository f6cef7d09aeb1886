"""``her2-qupath calibrate``: fit the membrane grading to the laboratory's cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .score import score_options

__all__ = ["command"]


@click.command("calibrate")
@click.argument("cases", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@score_options
@click.option("-o", "--output", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The calibration file (JSON).")
@click.option("--min-cases-per-class", type=click.IntRange(min=1), default=2, show_default=True,
              help="Refuse to fit when a score class has fewer cases.")
def command(cases: Path, out: Path, min_cases_per_class: int, **kw: Any) -> None:
    """Fit the membrane thresholds (and the scored-tissue threshold) to the cases of CASES
    (CSV as for `validate`), keeping the guideline's percentage rules; report the
    leave-one-case-out agreement of the calibrated and of the default grading.

    Use the file with `score`, `batch` or `validate` --calibration FILE.
    """
    from ..agreement import agreement
    from ..calibration import (
        check_classes,
        cross_validate,
        fit_grading,
        predict,
        record_cases,
        write_calibration,
    )
    from ..scoring import SCORE_NAMES
    from ..validation import read_cases
    from ._common import progress
    from .score import build_options

    case_list = read_cases(cases)
    truth = [c.score for c in case_list]
    check_classes(truth, min_cases_per_class)
    options = build_options(**kw)
    guidelines = [c.guideline or options.scoring.guideline for c in case_list]
    with progress("Measuring", unit="case") as cb:
        blocks = record_cases(case_list, options, progress=cb)
    st = options.stain
    default = (st.membrane_tissue_od_sum, *st.membrane_thresholds)
    grading, _ = fit_grading(blocks, truth, guidelines)
    folds = cross_validate(blocks, truth, guidelines)
    names = ("0", "1+", "2+", "3+")
    cv_cal = agreement([names[t] for t in truth], [names[p] for _, p in folds])
    cv_def = agreement([names[t] for t in truth],
                       [names[predict(b, default, g)] for b, g in zip(blocks, guidelines, strict=True)])
    report = {"calibrated_leave_one_out": cv_cal.to_dict(), "default": cv_def.to_dict(),
              "cases": [{"case": c.name, "pathologist": SCORE_NAMES[c.score],
                         "calibrated_leave_one_out": SCORE_NAMES[p]}
                        for c, (_, p) in zip(case_list, folds, strict=True)]}
    write_calibration(out, grading, n_cases=len(case_list), cross_validation=report)
    click.echo(f"{len(case_list)} cases; fitted: scored tissue {grading[0]:.3f} OD sum, "
               f"1+ / 2+ / 3+ at {grading[1]:.3f} / {grading[2]:.3f} / {grading[3]:.3f} OD·µm")
    for label, a in (("calibrated (leave-one-out)", cv_cal), ("default", cv_def)):
        click.echo(f"  {label:27s} exact {a.exact:.2f}  within one {a.within_one:.2f}  "
                   f"quadratic kappa {a.quadratic_kappa:.2f}  two-step errors {a.two_step_errors}")
    click.echo(f"Calibration written to {out}")
