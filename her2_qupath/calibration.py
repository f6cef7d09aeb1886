"""Calibrate the membrane grading to a laboratory's cases, and apply a calibration file.

Staining intensity differs from laboratory to laboratory, so no fixed set of
DAB thresholds fits every lab. :func:`fit_grading` fits the scored-tissue
threshold and the three membrane line-density thresholds (1+, 2+, 3+) to
cases with pathologists' scores, keeping the guideline's percentage rules
fixed: the pipeline records every membrane block's intensity, pixel count and
mean OD sum once per case (``ScoreOptions.record_blocks``), and a grid search
maximises exact agreement minus three times the clinically serious errors (two
steps off, a 0 called 2+ or 3+); the centre of the optimal region is kept
(the least sensitive choice). :func:`cross_validate` reports the
leave-one-case-out agreement of the fitted grading next to the defaults'.

The file (:func:`write_calibration`, :func:`load_calibration`, in
:mod:`her2_qupath.calibration_file` and re-exported here) is versioned JSON,
validated on load, and recorded in every run's provenance
(``ScoreOptions.calibration``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .agreement import agreement
from .calibration_file import (
    FORMAT,
    VERSION,
    apply_calibration,
    check_calibration,
    load_calibration,
    write_calibration,
)
from .config import GUIDELINES
from .errors import UserInputError
from .membrane import classify_intensity
from .pipeline import ScoreRequest, run_score
from .scoring import SCORE_NAMES, guideline_score

__all__ = [
    "FORMAT",
    "VERSION",
    "TISSUE_GRID",
    "Blocks",
    "fit_grading",
    "predict",
    "cross_validate",
    "load_calibration",
    "check_calibration",
    "apply_calibration",
    "write_calibration",
    "MIN_CASES_PER_CLASS",
    "result_blocks",
    "record_cases",
    "calibrate_cases",
]

#: candidate scored-tissue thresholds (block mean OD sum)
TISSUE_GRID: tuple[float, ...] = (0.04, 0.06, 0.08, 0.1, 0.12)
#: candidate line-density thresholds (OD·µm), log-spaced
LINE_GRID = np.geomspace(0.01, 0.6, 70)
#: a class with fewer cases than this cannot be fitted
MIN_CASES_PER_CLASS = 2

#: one case's recorded blocks: (intensity OD·µm, pixels, mean OD sum), flat arrays
Blocks = tuple[np.ndarray, np.ndarray, np.ndarray]


def _objective(preds: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Exact agreement minus three times the serious errors, per candidate (row)."""
    exact = (preds == truth).sum(axis=1)
    serious = (np.abs(preds - truth) >= 2).sum(axis=1) + ((truth == 0) & (preds >= 2)).sum(axis=1)
    return exact - 3 * serious


def predict(blocks: Blocks, grading: Sequence[float], guideline: str) -> int:
    """The guideline score of a case's blocks for (scored-tissue OD sum, t1, t2, t3)."""
    values, weights, od = blocks
    keep = od >= grading[0]
    if not keep.any():
        return 0
    cls = classify_intensity(values[keep], tuple(grading[1:]))  # type: ignore[arg-type]
    counts = np.bincount(cls, weights=weights[keep].astype(np.float64), minlength=4)[:4]
    return guideline_score(np.round(counts).astype(np.int64), GUIDELINES[guideline])


def fit_grading(blocks: Sequence[Blocks], truth: Sequence[int],
                guidelines: Sequence[str]) -> tuple[tuple[float, float, float, float], int]:
    """(scored-tissue OD sum, t1, t2, t3) maximising the objective, and its value."""
    grid = LINE_GRID
    combos = np.array([(a, b, c) for i, a in enumerate(grid) for j, b in enumerate(grid[i + 1:], i + 1)
                       for c in grid[j + 1:]])
    y = np.asarray(truth)
    best_rows: list[np.ndarray] = []
    best_obj = -(10**9)
    for tissue in TISSUE_GRID:
        preds = np.empty((len(combos), len(blocks)), dtype=np.int64)
        for k, (values, weights, od) in enumerate(blocks):
            keep = od >= tissue
            order = np.argsort(values[keep])
            v, w = values[keep][order], weights[keep][order].astype(np.float64)
            tail = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])  # weight at >= v[i]
            total = max(float(w.sum()), 1.0)
            p1, p2, p3 = (100.0 * tail[np.searchsorted(v, combos[:, i], side="left")] / total
                          for i in range(3))
            rule = GUIDELINES[guidelines[k]]
            inc3, inc2, inc1 = rule.inclusive
            pr = np.zeros(len(combos), dtype=np.int64)
            pr[(p1 >= rule.t1) if inc1 else (p1 > rule.t1)] = 1
            pr[(p2 >= rule.t2) if inc2 else (p2 > rule.t2)] = 2
            pr[(p3 >= rule.t3) if inc3 else (p3 > rule.t3)] = 3
            preds[:, k] = pr
        obj = _objective(preds, y[None, :])
        m = int(obj.max())
        rows = np.column_stack([np.full(int((obj == m).sum()), tissue), combos[obj == m]])
        if m > best_obj:
            best_obj, best_rows = m, [rows]
        elif m == best_obj:
            best_rows.append(rows)
    best = np.concatenate(best_rows)
    t = [float(np.exp(np.median(np.log(best[:, i])))) for i in range(4)]
    t[2] = max(t[2], t[1] * 1.01)
    t[3] = max(t[3], t[2] * 1.01)
    return (t[0], t[1], t[2], t[3]), best_obj


def cross_validate(blocks: Sequence[Blocks], truth: Sequence[int],
                   guidelines: Sequence[str]) -> list[tuple[tuple[float, ...], int]]:
    """Leave-one-case-out: per case, the grading fitted without it and its prediction."""
    out: list[tuple[tuple[float, ...], int]] = []
    for i in range(len(blocks)):
        idx = [k for k in range(len(blocks)) if k != i]
        g, _ = fit_grading([blocks[k] for k in idx], [truth[k] for k in idx],
                           [guidelines[k] for k in idx])
        out.append((g, predict(blocks[i], g, guidelines[i])))
    return out


def check_classes(truth: Sequence[int], minimum: int = MIN_CASES_PER_CLASS) -> None:
    """Refuse to fit when a score class has too few cases."""
    counts = np.bincount(np.asarray(truth, dtype=np.int64), minlength=4)[:4]
    thin = [f"{name}: {int(n)}" for name, n in zip(("0", "1+", "2+", "3+"), counts, strict=True)
            if n < minimum]
    if thin:
        raise UserInputError(
            f"too few cases to calibrate ({', '.join(thin)}; at least {minimum} per class needed)",
            hint="add cases of every score 0, 1+, 2+ and 3+, or keep the default grading")


def result_blocks(result: Any) -> Blocks:
    """A run's recorded membrane blocks (``ScoreOptions.record_blocks``) as one :data:`Blocks`."""
    recs = result.block_records or []
    return tuple(np.concatenate([r[i] for r in recs]) if recs else np.zeros(0)  # type: ignore[return-value]
                 for i in range(3))


def record_cases(cases: Sequence[Any], options: Any,
                 progress: Callable[[int, int], None] | None = None
                 ) -> list[tuple[Blocks, tuple[str, ...]]]:
    """Score each case once (pixel level), recording its membrane blocks; per case the
    blocks and why it is not evaluable at these settings (empty: evaluable)."""
    opts = dataclasses.replace(options, record_blocks=True,
                               scoring=dataclasses.replace(options.scoring, level="pixel"))
    out: list[tuple[Blocks, tuple[str, ...]]] = []
    for k, case in enumerate(cases):
        if progress is not None:
            progress(k, len(cases))
        res = run_score(ScoreRequest(ihc=case.image, he=case.he, ihc_mpp=case.mpp, rois=case.load_rois(),
                                     roi_class=case.roi_class, options=opts))
        out.append((result_blocks(res), tuple(res.summary.get("not_evaluable_reasons") or ())))
    if progress is not None:
        progress(len(cases), len(cases))
    return out


def calibrate_cases(cases: Sequence[Any], options: Any, *,
                    min_cases_per_class: int = MIN_CASES_PER_CLASS,
                    progress: Callable[[int, int], None] | None = None
                    ) -> tuple[tuple[float, float, float, float], dict[str, Any]]:
    """Fit the grading to the cases; the fitted (tissue, t1, t2, t3) and the report.

    Cases that are not evaluable at ``options`` (too little tissue, too few cells)
    are left out of the fit and listed; the report gives the leave-one-case-out
    agreement of the calibrated grading and the agreement of ``options``' grading
    on the same cases.
    """
    check_classes([c.score for c in cases], min_cases_per_class)
    recorded = record_cases(cases, options, progress=progress)
    kept = [k for k, (_, reasons) in enumerate(recorded) if not reasons]
    left_out = [{"case": cases[k].name, "pathologist": SCORE_NAMES[cases[k].score],
                 "reason": recorded[k][1][0]} for k in range(len(cases)) if k not in kept]
    truth = [cases[k].score for k in kept]
    check_classes(truth, min_cases_per_class)
    blocks = [recorded[k][0] for k in kept]
    guidelines = [cases[k].guideline or options.scoring.guideline for k in kept]
    st = options.stain
    default = (st.membrane_tissue_od_sum, *st.membrane_thresholds)
    grading, _ = fit_grading(blocks, truth, guidelines)
    folds = cross_validate(blocks, truth, guidelines)
    names = [SCORE_NAMES[t] for t in truth]
    cv_cal = agreement(names, [SCORE_NAMES[p] for _, p in folds])
    cv_def = agreement(names, [SCORE_NAMES[predict(b, default, g)]
                               for b, g in zip(blocks, guidelines, strict=True)])
    report = {"calibrated_leave_one_out": cv_cal.to_dict(), "default": cv_def.to_dict(),
              "default_grading": [round(float(x), 5) for x in default],
              "cases": [{"case": cases[k].name, "pathologist": SCORE_NAMES[cases[k].score],
                         "calibrated_leave_one_out": SCORE_NAMES[p]}
                        for k, (_, p) in zip(kept, folds, strict=True)],
              "left_out": left_out}
    return grading, report
