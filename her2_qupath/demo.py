"""The built-in demo: a synthetic H&E/IHC slide pair with a known answer.

:func:`make_demo_inputs` renders an H&E slide and a consecutive HER2 IHC slide
of the same synthetic tissue (Beer–Lambert, :mod:`her2_qupath.synthetic`),
the IHC section rotated and shifted against the H&E one by a known affine,
saves both as Aperio-style SVS files with a pixel size, and writes the
pathologist's tumour annotations (one per region of known HER2 class
percentages) as QuPath GeoJSON on the H&E slide. :func:`run_demo` then runs the
whole pipeline — registration, tile mapping, cell-level membrane analysis,
guideline scoring — and compares every region's measured percentages with the
truth. Nothing is downloaded and no model weights are needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._types import ProgressCallback
from .config import GUIDELINES, ScoringConfig, StainConfig
from .scoring import guideline_score

__all__ = ["DEMO_REGIONS", "DemoInputs", "make_demo_inputs", "run_demo", "compare_to_truth"]

log = logging.getLogger(__name__)

#: Regions of the demo tissue: percentages of tumour cells at each HER2 class.
DEMO_REGIONS: tuple[dict[str, float], ...] = (
    {"0": 45.0, "1+": 15.0, "2+": 10.0, "3+": 30.0},  # clearly 3+ (>10 % at 3+)
    {"0": 65.0, "1+": 30.0, "2+": 5.0, "3+": 0.0},  # 1+ (>10 % at >=1+, only 5 % at 2+)
)
DEMO_MPP = 0.5


@dataclass(frozen=True)
class DemoInputs:
    he: Path
    ihc: Path
    rois: Path
    matrix: np.ndarray  # 3x3, H&E level-0 → IHC level-0 (the truth the registration must find)
    region_truth: list[dict[str, Any]] = field(default_factory=list)


def _region_polygons(region_map: np.ndarray, n_regions: int) -> list[Any]:
    from .tissue import TissueMask

    return [TissueMask(region_map == r + 1, 1.0).to_geometry() for r in range(n_regions)]


def make_demo_inputs(outdir: str | Path, *, size: int = 2048, seed: int = 7) -> DemoInputs:
    """Write ``he.svs``, ``ihc.svs`` and ``he_annotations.geojson`` into ``outdir``."""
    from .qupath.geojson import write_geojson
    from .qupath.objects import annotation_object
    from .slide_writer import write_slide
    from .synthetic import synthetic_pair

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    he, ihc, matrix, truth = synthetic_pair(
        (size, size), seed=seed, mpp=DEMO_MPP, regions=DEMO_REGIONS,
        rotation_deg=6.0, translation=(40.0, -25.0),
    )
    write_slide(out / "he.svs", he, mpp=DEMO_MPP, kind="svs", magnification=20)
    write_slide(out / "ihc.svs", ihc, mpp=DEMO_MPP, kind="svs", magnification=20)
    polys = _region_polygons(truth["region_map"], len(DEMO_REGIONS))
    names = [f"Tumor region {chr(ord('A') + r)}" for r in range(len(DEMO_REGIONS))]
    write_geojson(out / "he_annotations.geojson",
                  [annotation_object(p, "Tumor", name=n) for p, n in zip(polys, names)])
    region_truth = []
    for r, reg in enumerate(truth["regions"]):
        counts = reg["cell_counts"]
        region_truth.append({
            "name": names[r],
            "cell_percentages": reg["cell_percentages"],
            "expected_score": ("0", "1+", "2+", "3+")[
                guideline_score(counts, GUIDELINES[ScoringConfig().guideline])],
        })
    return DemoInputs(out / "he.svs", out / "ihc.svs", out / "he_annotations.geojson",
                      np.asarray(matrix, dtype=np.float64), region_truth)


def compare_to_truth(summary: dict[str, Any], inputs: DemoInputs) -> list[dict[str, Any]]:
    """Per region: expected vs measured score and the largest class-percentage error."""
    rows = []
    measured = {r["name"]: r for r in summary["regions"]}
    for t in inputs.region_truth:
        m = measured.get(t["name"])
        if m is None:
            rows.append({"region": t["name"], "expected": t["expected_score"], "measured": None,
                         "max_percent_error": None})
            continue
        err = max(abs(m["class_percentages"][k] - t["cell_percentages"][k])
                  for k in ("0", "1+", "2+", "3+"))
        rows.append({"region": t["name"], "expected": t["expected_score"],
                     "measured": m["her2_score"], "max_percent_error": float(err),
                     "truth": t["cell_percentages"], "found": m["class_percentages"]})
    return rows


def run_demo(outdir: str | Path, *, size: int = 2048, seed: int = 7,
             progress: ProgressCallback | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Make the inputs, score the pair at cell level and write results into ``outdir/results``."""
    from .pipeline import ScoreOptions, ScoreRequest, run_score, write_result
    from .qupath.geojson import read_geojson

    out = Path(outdir)
    inputs = make_demo_inputs(out / "inputs", size=size, seed=seed)
    # The synthetic membranes are drawn at DAB OD levels between QuPath's 0.2 / 0.4 / 0.6, so the
    # demo grades DAB OD ("od"), whose truth the drawing defines; real slides use the default
    # membrane line-density grading, checked on real IHC (benchmarks/real_her2.py).
    options = ScoreOptions(stain=StainConfig(intensity="od"), scoring=ScoringConfig(level="cell"))
    request = ScoreRequest(ihc=inputs.ihc, he=inputs.he, rois=tuple(read_geojson(inputs.rois)),
                           roi_class="Tumor", options=options)
    result = run_score(request, progress=progress)
    result.summary["demo"] = {"truth_matrix": inputs.matrix.tolist(),
                              "regions": compare_to_truth(result.summary, inputs)}
    write_result(result, out / "results")
    return result, result.summary["demo"]["regions"]
