"""HER2 scores on real IHC against the pathologists' scores (``../shared/data/her2-ihc``).

Runs the product's scoring (``run_score`` + ``write_result``, what ``her2-qupath
score --ihc IMAGE --mpp MPP --guideline G`` does) on every image of the
development set, at the requested levels and aggregations, and prints per image
label -> score and per setting: exact agreement, within one step, quadratic
weighted kappa, unscored count, two-step errors and 0 called 2+/3+. Images whose
note says "no tumour" are reported apart: they pass when "not evaluable" or at
their label.

``--fit`` re-fits the three membrane thresholds with leave-one-image-out
cross-validation (the held-out image never sees its own fit) and prints the
cross-validated agreement next to the in-sample one; the fit on all images is
what ``StainConfig.membrane_thresholds`` holds (docs/stain.md).

    python benchmarks/real_her2.py [--levels pixel,cell] [--aggregations guideline,paper,paper-adapted]
                                   [--fit] [--json OUT] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her2_qupath import calibration  # noqa: E402
from her2_qupath.agreement import agreement, score_index  # noqa: E402
from her2_qupath.config import ScoringConfig  # noqa: E402
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2-ihc"


@dataclass(frozen=True)
class Case:
    file: Path
    label: str
    mpp: float
    guideline: str
    note: str

    @property
    def name(self) -> str:
        return self.file.stem[:22]

    @property
    def no_tumour(self) -> bool:
        return "no tumour" in self.note.lower()


def load_cases(data: Path) -> list[Case]:
    with open(data / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Case(data / r["file"], r["her2_level"], float(r["mpp"].split()[0]), r["guideline"],
                 r.get("note", "")) for r in rows]


def options(case: Case, level: str, aggregation: str, **stain: Any) -> ScoreOptions:
    base = ScoreOptions()
    return replace(base, scoring=ScoringConfig(guideline=case.guideline, level=level,  # type: ignore[arg-type]
                                               aggregation=aggregation),  # type: ignore[arg-type]
                   stain=replace(base.stain, **stain))


def score_case(case: Case, level: str, aggregation: str, outdir: Path,
               record: bool = False, **stain: Any) -> tuple[dict[str, Any], Any]:
    """``score`` on one case; with ``record`` also its membrane blocks (for the fit)."""
    opts = replace(options(case, level, aggregation, **stain), record_blocks=record)
    t0 = time.perf_counter()
    res = run_score(ScoreRequest(ihc=case.file, ihc_mpp=case.mpp, options=opts))
    write_result(res, outdir)
    seconds = time.perf_counter() - t0
    blocks = calibration.result_blocks(res) if record else None
    return {**res.summary, "seconds": seconds}, blocks


def _acceptance(cases: list[Case], preds: list[str]) -> dict[str, Any]:
    scored = [(c, p) for c, p in zip(cases, preds, strict=True) if not c.no_tumour]
    nt = [(c, p) for c, p in zip(cases, preds, strict=True) if c.no_tumour]
    ag = agreement([c.label for c, _ in scored], [p for _, p in scored])
    nt_ok = sum(1 for c, p in nt if score_index(p) is None or score_index(p) == score_index(c.label))
    return {**ag.to_dict(), "no_tumour_ok": nt_ok, "no_tumour_n": len(nt)}


def _print_setting(title: str, cases: list[Case], preds: list[str], extra: list[str]) -> dict[str, Any]:
    print(f"\n== {title}")
    for c, p, e in zip(cases, preds, extra, strict=True):
        flag = "" if score_index(p) == score_index(c.label) else ("  (no tumour)" if c.no_tumour else "  *")
        print(f"  {c.name:24s} {c.label:>3s} -> {p:14s} {e}{flag}")
    a = _acceptance(cases, preds)
    print(f"  exact {a['exact']:.2f}  within-one {a['within_one']:.2f}  QWK {a['quadratic_kappa']:.2f}  "
          f"unscored {a['unscored']}/{a['n'] + a['unscored']}  two-step errors {a['two_step_errors']}  "
          f"0 called 2+/3+ {a['negative_called_positive']}  no-tumour images NE or at label "
          f"{a['no_tumour_ok']}/{a['no_tumour_n']}")
    return a


# ----------------------------------------------------------------------------- fitting
# The fit is the product's (her2_qupath.calibration, what `her2-qupath calibrate` runs).


def cross_validate(cases: list[Case], blocks: list[Any]) -> dict[str, Any]:
    """Leave-one-image-out: fit on the other scored images, predict the held-out one."""
    fit_idx = [i for i, c in enumerate(cases) if not c.no_tumour]
    truth = [score_index(c.label) for c in cases]
    out = {}
    for i in range(len(cases)):
        train = [k for k in fit_idx if k != i]
        t, _ = calibration.fit_grading([blocks[k] for k in train], [truth[k] for k in train],  # type: ignore[misc]
                                       [cases[k].guideline for k in train])
        out[i] = (t, calibration.predict(blocks[i], t, cases[i].guideline))
    t_all, _ = calibration.fit_grading([blocks[k] for k in fit_idx],  # type: ignore[misc]
                                       [truth[k] for k in fit_idx],
                                       [cases[k].guideline for k in fit_idx])
    return {"folds": out, "all": t_all}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--levels", default="pixel,cell")
    ap.add_argument("--aggregations", default="guideline,paper,paper-adapted")
    ap.add_argument("--fit", action="store_true", help="leave-one-out fit of the membrane thresholds")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a StainConfig field, e.g. min_cell_density=3 (repeatable)")
    args = ap.parse_args(argv)
    stain_overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if not (args.data / "labels.csv").exists():
        print(f"skipped: no real HER2 data at {args.data} (set HER2_QUPATH_SHARED_DATA)")
        return {}
    cases = load_cases(args.data)
    results: dict[str, Any] = {"cases": [dataclasses.asdict(c) | {"file": str(c.file)} for c in cases],
                               "settings": {}}
    print(f"{len(cases)} images from {args.data}; "
          f"{sum(c.no_tumour for c in cases)} whose note says 'no tumour'")
    blocks: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels.split(","):
            for agg in args.aggregations.split(","):
                preds, extra, rows = [], [], []
                record = args.fit and level == "pixel" and agg == "guideline"
                for k, c in enumerate(cases):
                    summary, bl = score_case(c, level, agg, Path(tmp) / f"{level}-{agg}-{k}",
                                             record=record, **stain_overrides)
                    if record:
                        blocks.append(bl)
                    preds.append(summary["her2_score"])
                    pct = summary["class_percentages"]
                    why = "; ".join(summary["not_evaluable_reasons"])
                    extra.append(f"H {summary['h_score']:5.1f}  >=1+ {100 - pct['0']:5.1f}%  "
                                 f">=2+ {pct['2+'] + pct['3+']:5.1f}%  3+ {pct['3+']:5.1f}%  "
                                 f"nuclei {summary['n_nuclei']}  {summary['seconds']:.1f}s"
                                 + (f"  [{why}]" if why else ""))
                    rows.append({"file": str(c.file), "label": c.label, "score": summary["her2_score"],
                                 "h_score": summary["h_score"], "class_percentages": pct,
                                 "n_nuclei": summary["n_nuclei"], "seconds": summary["seconds"],
                                 "not_evaluable_reasons": summary["not_evaluable_reasons"],
                                 "white_point": summary["white_point"], "warnings": summary["warnings"]})
                a = _print_setting(f"level={level} aggregation={agg}", cases, preds, extra)
                results["settings"][f"{level}/{agg}"] = {"agreement": a, "images": rows}
    if args.fit and blocks:
        cv = cross_validate(cases, blocks)
        truth = [c.label for c in cases]
        loo = [("0", "1+", "2+", "3+")[cv["folds"][i][1]] for i in range(len(cases))]
        # the held-out image keeps its run's "not evaluable" verdict (it does not depend on thresholds)
        base = results["settings"]["pixel/guideline"]["images"]
        loo = [p if score_index(b["score"]) is not None else b["score"] for p, b in zip(loo, base)]
        print("\n== leave-one-image-out cross-validation of the membrane grading (pixel, guideline)")
        print("   (scored-tissue OD sum, then the 1+ / 2+ / 3+ line densities in OD·µm)")
        for i, c in enumerate(cases):
            t = cv["folds"][i][0]
            print(f"  {c.name:24s} {c.label:>3s} -> {loo[i]:14s} fitted without it: "
                  f"{t[0]:.3f} | {t[1]:.3f} {t[2]:.3f} {t[3]:.3f}")
        a = _acceptance(cases, loo)
        print(f"  cross-validated: exact {a['exact']:.2f}  within-one {a['within_one']:.2f}  "
              f"QWK {a['quadratic_kappa']:.2f}  two-step errors {a['two_step_errors']}  "
              f"0 called 2+/3+ {a['negative_called_positive']}")
        st = ScoreOptions().stain
        print(f"  fit on all images: tissue {cv['all'][0]:.3f} | {cv['all'][1]:.3f}, {cv['all'][2]:.3f}, "
              f"{cv['all'][3]:.3f} OD·µm (in use: {st.membrane_tissue_od_sum} | "
              f"{st.membrane_thresholds})")
        results["cross_validation"] = {"agreement": a, "predictions": list(zip(truth, loo, strict=True)),
                                       "fit_all": list(cv["all"]),
                                       "folds": {cases[i].name: list(cv["folds"][i][0]) for i in cv["folds"]}}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
