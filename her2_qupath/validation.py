"""Validate the scoring on a laboratory's own cases: agreement with its pathologists.

A laboratory validates an image-analysis HER2 score on its own cases before
reporting it (CAP guideline on quantitative image analysis of HER2 IHC,
Bui MM et al., Arch Pathol Lab Med 2019;143:1180-1195). :func:`run_validation`
scores every case through the same code path as ``her2-qupath score``
(:func:`her2_qupath.pipeline.run_score` and :func:`~her2_qupath.pipeline.write_result`,
one subfolder per case) and :func:`agreement_report` compares the scores with
the pathologists': confusion matrix, exact and within-one agreement, Cohen's
kappa (unweighted and quadratic), per-class sensitivity and positive
predictive value, agreement on the clinical groups, Spearman correlation of
the H-score and the % positive with the score, each with a 95 % bootstrap
interval (cases resampled), and the discordant cases.

Cases come as a CSV with the columns ``image`` and ``score`` (0, 1+, 2+, 3+)
and optionally ``roi`` (QuPath GeoJSON), ``roi_class``, ``mpp``, ``guideline``
and ``he``; relative paths are relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._io import atomic_write_json
from .agreement import agreement, cohen_kappa, score_index
from .config import GUIDELINES
from .errors import UserInputError
from .pipeline import ScoreRequest, run_score, write_result
from .qupath.batch import entry_rois
from .qupath.geojson import read_geojson
from .qupath.project import open_project
from .scoring import SCORE_NAMES
from .validation_report import write_html_report

__all__ = ["Case", "read_cases", "read_project_cases", "load_cases", "SCORE_KEY", "agreement_report", "run_validation", "CLINICAL_GROUPS",
           "bootstrap_interval", "spearman"]

log = logging.getLogger(__name__)

#: Groupings of the 0-3+ scores on which agreement is reported: each maps a group's name to
#: the scores in it. "scores" are the four clinical categories of the ASCO/CAP wording
#: (HER2-negative 0, -low 1+, -equivocal 2+, -positive 3+); "therapy" the groups the
#: HER2-low trials treat differently (Modi S et al., N Engl J Med 2022;387:9-20); "ish" the
#: split into no reflex test (0, 1+) and ISH or positive (2+, 3+).
CLINICAL_GROUPS: dict[str, dict[str, tuple[int, ...]]] = {
    "scores": {"negative (0)": (0,), "low (1+)": (1,), "equivocal (2+)": (2,), "positive (3+)": (3,)},
    "therapy": {"HER2-0": (0,), "HER2-low (1+, 2+)": (1, 2), "HER2-positive (3+)": (3,)},
    "ish": {"negative (0, 1+)": (0, 1), "equivocal or positive (2+, 3+)": (2, 3)},
}
#: Bootstrap resamples of the 95 % intervals (fixed seed: the report is reproducible).
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Case:
    """One case: an IHC image, its pathologist's score and how to score it."""

    row: int  # 1-based data row of the CSV (for messages)
    image: Path
    score: int  # 0..3
    roi: Path | None = None
    roi_class: str | None = None
    mpp: float | None = None
    guideline: str | None = None
    he: Path | None = None
    rois: tuple[Any, ...] | None = None  # the regions themselves (a QuPath project's annotations)

    @property
    def name(self) -> str:
        return self.image.stem

    def load_rois(self) -> tuple[Any, ...] | None:
        """The regions to score: given, read from ``roi``, or None (all tissue)."""
        if self.rois is not None:
            return self.rois
        if self.roi is None:
            return None
        return tuple(read_geojson(self.roi))


def _path(value: str, base: Path, row: int, column: str) -> Path:
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise UserInputError(f"cases row {row}: {column} {value!r} does not exist (looked at {p})",
                             hint="give a path absolute or relative to the cases CSV")
    return p


def _pathologist_score(value: Any, label: str, *, fix: str) -> int:
    """The 0-3 index of a pathologist's score; one clear line, starting with ``label``, when
    it is not 0, 1+, 2+ or 3+ ("not evaluable" is no score to compare with)."""
    text = str(value or "").strip()
    try:
        score = score_index(text)
    except UserInputError as err:
        raise UserInputError(f"{label} {value!r} is not 0, 1+, 2+ or 3+", hint=fix) from err
    if score is None:
        raise UserInputError(f"{label} {value!r} is not a score",
                             hint="leave out the cases without a pathologist's score")
    return score


def read_cases(path: str | Path) -> list[Case]:
    """The cases of a CSV; a bad row gets one clear line naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"cases file {path} not found", hint="give a CSV with image,score columns")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        missing = {"image", "score"} - columns
        if missing:
            raise UserInputError(f"cases file {path} lacks the column(s) {', '.join(sorted(missing))}",
                                 hint="the header needs image,score (and optionally roi, roi_class, "
                                 "mpp, guideline, he)")
        rows = list(reader)
    if not rows:
        raise UserInputError(f"cases file {path} holds no case", hint="add one row per image")
    base = path.parent
    cases = []
    for i, r in enumerate(rows, start=1):
        image = (r.get("image") or "").strip()
        if not image:
            raise UserInputError(f"cases row {i}: no image", hint="fill the image column")
        score = _pathologist_score(r.get("score"), f"cases row {i}: score",
                                   fix="write the pathologist's score as 0, 1+, 2+ or 3+")
        mpp = None
        raw_mpp = (r.get("mpp") or "").strip()
        if raw_mpp:
            try:
                mpp = float(raw_mpp.split()[0])
            except ValueError as err:
                raise UserInputError(f"cases row {i}: mpp {raw_mpp!r} is not a number",
                                     hint="micrometres per pixel, e.g. 0.25") from err
            if not (math.isfinite(mpp) and 0.05 <= mpp <= 20):
                raise UserInputError(f"cases row {i}: mpp {mpp} is not a brightfield pixel size",
                                     hint="0.05-20 µm/px (0.25 at 40x, 0.5 at 20x)")
        guideline = (r.get("guideline") or "").strip() or None
        if guideline is not None and guideline not in GUIDELINES:
            raise UserInputError(f"cases row {i}: unknown guideline {guideline!r}",
                                 hint=f"one of {', '.join(GUIDELINES)}")
        roi = (r.get("roi") or "").strip()
        he = (r.get("he") or "").strip()
        cases.append(Case(i, _path(image, base, i, "image"), score,
                          _path(roi, base, i, "roi") if roi else None,
                          (r.get("roi_class") or "").strip() or None, mpp, guideline,
                          _path(he, base, i, "he") if he else None))
    return cases


#: The project metadata key that holds the pathologist's score by default.
SCORE_KEY = "HER2 score"


def _metadata_value(metadata: dict[str, Any], key: str) -> str | None:
    """The value of ``key`` (case and surrounding spaces ignored); None when absent or empty."""
    wanted = key.strip().casefold()
    for k, v in metadata.items():
        if str(k).strip().casefold() == wanted and str(v).strip():
            return str(v).strip()
    return None


def read_project_cases(path: str | Path, *, score_key: str = SCORE_KEY,
                       image_roots: Sequence[Path] = (), roi: Path | None = None,
                       roi_class: str | None = None, backend: str = "auto") -> list[Case]:
    """The cases of a QuPath project: every entry whose metadata holds ``score_key``.

    Read with QuPath (paquo: the entry's own annotations are its regions) or, without
    it, from ``project.qpproj`` (regions from GeoJSON files, as ``batch`` finds them).
    Entries without the key are left out; a bad value or a missing image stops with
    one line naming the entry.
    """
    project = open_project(path, backend=backend, image_roots=image_roots)  # type: ignore[arg-type]
    cases: list[Case] = []
    try:
        for k, entry in enumerate(project.images(), start=1):
            value = _metadata_value(entry.metadata, score_key)
            if value is None:
                continue
            where = f"project entry {entry.entry_id} ({entry.name})"
            score = _pathologist_score(value, f"{where}: {score_key}",
                                       fix="set the metadata value to 0, 1+, 2+ or 3+")
            if entry.path is None or not entry.exists:
                raise UserInputError(f"{where}: image file not found ({entry.problem or entry.uri})",
                                     hint="pass --image-root FOLDER where the images now lie")
            rois, _source = entry_rois(project, entry, roi=roi)
            cases.append(Case(k, entry.path, score, roi_class=roi_class, mpp=entry.mpp,
                              rois=tuple(rois) if rois else None))
    finally:
        project.close()
    if not cases:
        raise UserInputError(f"no image of the project {path} carries a {score_key!r} metadata value",
                             hint="add the pathologist's score to each image's metadata in QuPath, "
                             "or name the key with --score-key")
    return cases


def load_cases(source: str | Path, *, score_key: str = SCORE_KEY, image_roots: Sequence[Path] = (),
               roi: Path | None = None, roi_class: str | None = None,
               backend: str = "auto") -> list[Case]:
    """Cases from a CSV file or a QuPath project (a folder or its ``project.qpproj``)."""
    p = Path(source)
    if p.is_dir() or p.suffix.lower() == ".qpproj":
        return read_project_cases(p, score_key=score_key, image_roots=image_roots, roi=roi,
                                  roi_class=roi_class, backend=backend)
    return read_cases(p)


# ----------------------------------------------------------------------------- statistics


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    a = np.asarray(x, float)
    b = np.asarray(y, float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(v.size)
        r[order] = np.arange(1, v.size + 1)
        for value in np.unique(v):  # average ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def bootstrap_interval(stat: Callable[[np.ndarray], float], n: int, *,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(indices)`` over case resamples (NaNs left out)."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return (float(lo), float(hi))


def _with_ci(value: float, stat: Callable[[np.ndarray], float], n: int) -> dict[str, Any]:
    lo, hi = bootstrap_interval(stat, n)
    return {"value": _num(value), "ci95": [_num(lo), _num(hi)]}


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 4)


def agreement_report(truth: Sequence[Any], pred: Sequence[Any], *,
                     h_scores: Sequence[float] | None = None,
                     percent_positive: Sequence[float] | None = None,
                     names: Sequence[str] | None = None) -> dict[str, Any]:
    """The agreement figures of predictions against the truth, with 95 % bootstrap intervals.

    ``pred`` may hold "not evaluable" (None): such cases are counted as unscored
    and left out of the figures. ``h_scores`` / ``percent_positive`` (per case)
    give the Spearman correlations with the truth.
    """
    names = list(names) if names is not None else [str(i + 1) for i in range(len(truth))]
    ag = agreement(truth, pred)
    t_all = [score_index(t) for t in truth]
    p_all = [score_index(p) for p in pred]
    keep = [i for i, p in enumerate(p_all) if p is not None]
    t = np.array([t_all[i] for i in keep], dtype=np.int64)
    p = np.array([p_all[i] for i in keep], dtype=np.int64)
    n = len(keep)

    def on(idx: np.ndarray, f: Callable[[np.ndarray, np.ndarray], float]) -> float:
        return f(t[idx], p[idx])

    exact = _with_ci(ag.exact, lambda i: on(i, lambda a, b: float((a == b).mean())), n)
    within = _with_ci(ag.within_one, lambda i: on(i, lambda a, b: float((abs(a - b) <= 1).mean())), n)
    kappa = _with_ci(ag.kappa, lambda i: on(i, lambda a, b: cohen_kappa(a, b)), n)
    qwk = _with_ci(ag.quadratic_kappa,
                   lambda i: on(i, lambda a, b: cohen_kappa(a, b, weights="quadratic")), n)
    per_class = {}
    for k, name in enumerate(SCORE_NAMES):
        def sens(i: np.ndarray, k: int = k) -> float:
            a, b = t[i], p[i]
            return float((b[a == k] == k).mean()) if (a == k).any() else float("nan")

        def ppv(i: np.ndarray, k: int = k) -> float:
            a, b = t[i], p[i]
            return float((a[b == k] == k).mean()) if (b == k).any() else float("nan")

        all_idx = np.arange(n)
        per_class[name] = {"n_truth": int((t == k).sum()), "n_called": int((p == k).sum()),
                           "sensitivity": _with_ci(sens(all_idx), sens, n),
                           "ppv": _with_ci(ppv(all_idx), ppv, n)}
    groupings = {}
    for key, groups in CLINICAL_GROUPS.items():
        of = {k: i for i, ks in enumerate(groups.values()) for k in ks}
        gt = np.array([of[int(v)] for v in t], dtype=np.int64)
        gp = np.array([of[int(v)] for v in p], dtype=np.int64)

        def g_exact(i: np.ndarray, gt: np.ndarray = gt, gp: np.ndarray = gp) -> float:
            return float((gt[i] == gp[i]).mean()) if i.size else float("nan")

        def g_kappa(i: np.ndarray, gt: np.ndarray = gt, gp: np.ndarray = gp,
                    m: int = len(groups)) -> float:
            return cohen_kappa(gt[i], gp[i], n_classes=m)

        all_idx = np.arange(n)
        groupings[key] = {"groups": list(groups),
                          "exact": _with_ci(g_exact(all_idx), g_exact, n),
                          "kappa": _with_ci(g_kappa(all_idx) if n else float("nan"), g_kappa, n)}
    report: dict[str, Any] = {
        "n": n,
        "unscored": ag.unscored,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "confusion_matrix": {"rows": "pathologist 0, 1+, 2+, 3+", "columns": "her2-qupath 0, 1+, 2+, 3+",
                             "counts": ag.confusion},
        "exact": exact,
        "within_one": within,
        "kappa": kappa,
        "quadratic_kappa": qwk,
        "two_step_errors": ag.two_step_errors,
        "negative_called_positive": ag.negative_called_positive,
        "per_class": per_class,
        "clinical_groups": groupings,
    }
    for key, values in (("h_score", h_scores), ("percent_positive", percent_positive)):
        if values is None:
            continue
        v = np.array([values[i] for i in keep], float)

        def rho(i: np.ndarray, v: np.ndarray = v) -> float:
            return spearman(v[i], t[i])

        report[f"spearman_{key}"] = _with_ci(spearman(v, t), rho, n)
    report["discordant"] = [
        {"case": names[i], "pathologist": SCORE_NAMES[t_all[i]],  # type: ignore[index]
         "her2_qupath": "not evaluable" if p_all[i] is None else SCORE_NAMES[p_all[i]]}  # type: ignore[index]
        for i in range(len(truth)) if p_all[i] != t_all[i]]
    return report


# ----------------------------------------------------------------------------- the run


def run_validation(cases: Sequence[Case], outdir: str | Path, options: Any, *,
                   resume: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   executor: Any = None) -> dict[str, Any]:
    """Score every case into ``outdir/cases/<n>-<name>/`` and write ``outdir/report.json``.

    ``options`` is a :class:`~her2_qupath.pipeline.ScoreOptions`; a case's own
    ``guideline`` overrides the options'. With ``resume`` a case whose folder
    already holds a ``summary.json`` is not scored again. ``executor`` runs the tile work
    (e.g. a Dask cluster's, as ``batch --dask-scheduler``; default: the local pool).
    """
    out = Path(outdir)
    rows = []
    for k, case in enumerate(cases):
        if progress is not None:
            progress(k, len(cases))
        folder = out / "cases" / f"{case.row:03d}-{case.name}"
        summary_path = folder / "summary.json"
        if not (resume and summary_path.is_file()):
            opts = options
            if case.guideline is not None:
                opts = dataclasses.replace(opts, scoring=dataclasses.replace(
                    opts.scoring, guideline=case.guideline))
            request = ScoreRequest(ihc=case.image, he=case.he, ihc_mpp=case.mpp, rois=case.load_rois(),
                                   roi_class=case.roi_class, options=opts)
            write_result(run_score(request, executor=executor), folder, he=case.he is not None or None)
        summary = json.loads(summary_path.read_text())
        rows.append({"row": case.row, "case": case.name, "image": str(case.image),
                     "pathologist": SCORE_NAMES[case.score], "her2_qupath": summary["her2_score"],
                     "h_score": summary["h_score"], "percent_positive": summary["percent_positive"],
                     "class_percentages": summary["class_percentages"],
                     "not_evaluable_reasons": summary.get("not_evaluable_reasons", []),
                     "folder": str(folder.relative_to(out))})
    if progress is not None:
        progress(len(cases), len(cases))
    report = agreement_report([r["pathologist"] for r in rows], [r["her2_qupath"] for r in rows],
                              h_scores=[r["h_score"] for r in rows],
                              percent_positive=[r["percent_positive"] for r in rows],
                              names=[r["case"] for r in rows])
    report["cases"] = rows
    report["settings"] = {"guideline": options.scoring.guideline, "level": options.scoring.level,
                          "aggregation": options.scoring.aggregation,
                          "calibration": options.calibration, "her2_qupath": __version__,
                          "intensity": options.stain.intensity,
                          "thresholds": list(options.stain.membrane_thresholds
                                             if options.stain.intensity == "membrane"
                                             else options.stain.thresholds)}
    atomic_write_json(out / "report.json", report)
    write_html_report(report, out)
    return report
