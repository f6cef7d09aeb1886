"""`her2-qupath calibrate` and `--calibration`: a laboratory whose staining is paler."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from her2_qupath.calibration import apply_calibration, load_calibration, write_calibration
from her2_qupath.cli import cli
from her2_qupath.errors import UserInputError
from her2_qupath.pipeline import ScoreOptions

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LINE_BY_CLASS, ihc_rgb, write_png  # noqa: E402

#: this laboratory's membranes are drawn at 0.45 x the reference densities
SCALE = 0.45


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cases per score 0..3+, every tile of a case at its class, paler than the reference
    (glass along the top edge gives the white point)."""
    d = tmp_path_factory.mktemp("lab")
    rows = []
    for k in range(4):
        for rep in range(2):
            layout = [[None] * 3] + [[k] * 3 for _ in range(3)]  # glass along the top
            if rep:  # the second case of a class holds some unstained tumour too
                layout[1] = [0, 0, k]
            path = write_png(d / f"case{k}{rep}.png", ihc_rgb(layout, line_scale=SCALE))
            rows.append({"image": path.name, "score": ("0", "1+", "2+", "3+")[k]})
    with open(d / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "score"])
        w.writeheader()
        w.writerows(rows)
    return d / "cases.csv"


def test_calibrate_then_validate_with_the_calibration(cases: Path, tmp_path: Path) -> None:
    cal = tmp_path / "calibration.json"
    r = CliRunner().invoke(cli, ["calibrate", str(cases), "-o", str(cal), "--tile-size", "384"])
    assert r.exit_code == 0, r.output
    obj = json.loads(cal.read_text())
    cv = obj["cross_validation"]
    # the default grading under-calls the paler lab; the calibrated one does not
    assert cv["default"]["exact"] < 0.8
    assert cv["calibrated_leave_one_out"]["exact"] >= 0.95
    t1, t2, t3 = obj["membrane_thresholds"]
    assert t1 < ScoreOptions().stain.membrane_thresholds[0]  # the thresholds came down
    out = tmp_path / "val"
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out), "--tile-size", "384",
                                 "--calibration", str(cal)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["exact"]["value"] == 1.0
    assert report["settings"]["thresholds"] == [t1, t2, t3]
    summary = json.loads((out / report["cases"][0]["folder"] / "summary.json").read_text())
    assert summary["calibration"].startswith(str(cal)) and "sha256" in summary["calibration"]
    assert str(cal) in summary["provenance"]["parameters"]["calibration"]


def test_too_few_cases_of_a_class_are_refused(cases: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(cases)))
    few = tmp_path / "few.csv"
    with open(few, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "score"])
        w.writeheader()
        w.writerows({"image": str(cases.parent / r["image"]), "score": r["score"]}
                    for r in rows if r["score"] != "3+")
    r = CliRunner().invoke(cli, ["calibrate", str(few), "-o", str(tmp_path / "c.json")])
    assert r.exit_code != 0 and "too few cases" in str(r.exception)
    assert not (tmp_path / "c.json").exists()


def test_calibration_file_is_validated(tmp_path: Path) -> None:
    good = write_calibration(tmp_path / "good.json", (0.1, 0.02, 0.06, 0.15), n_cases=8)
    loaded = load_calibration(good)
    opts = apply_calibration(ScoreOptions(), loaded)
    assert opts.stain.membrane_thresholds == (0.02, 0.06, 0.15)
    assert opts.stain.membrane_tissue_od_sum == 0.1 and opts.stain.intensity == "membrane"
    assert loaded["sha256"] in opts.calibration
    bad = tmp_path / "bad.json"
    for text, message in (("not json", "not JSON"), ('{"format": "x"}', "not a her2-qupath"),
                          (json.dumps({**json.loads(good.read_text()), "version": 99}), "version 99"),
                          (json.dumps({**json.loads(good.read_text()),
                                       "membrane_thresholds": [0.2, 0.1, 0.3]}), "no valid grading")):
        bad.write_text(text)
        with pytest.raises(UserInputError, match=message):
            load_calibration(bad)
    with pytest.raises(UserInputError, match="not found"):
        load_calibration(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- threshold recovery

#: the second laboratory stains at this factor of the reference laboratory
LAB_FACTOR = 0.6
#: 1+ tumour with glass along the top and left edges (glass gives the white point)
_CASE_LAYOUT = [[None] * 4] + [[None, 1, 1, 1]] * 3


@pytest.mark.slow
def test_calibrate_recovers_a_known_staining_factor(tmp_path: Path) -> None:
    """Two laboratories see the same 40 cases; the second stains at 0.6x the DAB.

    The reference laboratory's calls are those of the default grading on its own
    images (membranes drawn at line densities spread over 0.5x the 1+ to 1.6x the
    3+ threshold, with scanner noise). The true thresholds of the second
    laboratory are then the defaults times 0.6: calibrating on its images must
    find them within 10 % and reproduce the reference calls.
    """
    from her2_qupath.pipeline import ScoreRequest, run_score

    default = np.array(ScoreOptions().stain.membrane_thresholds)
    rows = []
    for i, x in enumerate(np.geomspace(0.5 * default[0], 1.6 * default[2], 40)):
        def image(factor: float, i: int = i, x: float = x) -> np.ndarray:
            return ihc_rgb(_CASE_LAYOUT, line_scale=factor * x / LINE_BY_CLASS[1], noise=1.5, seed=i)

        ref = write_png(tmp_path / "ref" / f"case{i:02d}.png", image(1.0))
        lab = write_png(tmp_path / "lab" / f"case{i:02d}.png", image(LAB_FACTOR))
        rows.append({"image": str(lab), "score": run_score(ScoreRequest(ihc=ref)).summary["her2_score"]})
    assert {r["score"] for r in rows} == {"0", "1+", "2+", "3+"}  # every class is represented
    cases = tmp_path / "cases.csv"
    with open(cases, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "score"])
        w.writeheader()
        w.writerows(rows)
    cal = tmp_path / "calibration.json"
    r = CliRunner().invoke(cli, ["calibrate", str(cases), "-o", str(cal)])
    assert r.exit_code == 0, r.output
    obj = json.loads(cal.read_text())
    fitted = np.array(obj["membrane_thresholds"])
    np.testing.assert_allclose(fitted, LAB_FACTOR * default, rtol=0.10)
    cv = obj["cross_validation"]
    assert cv["default"]["exact"] < 0.7  # the default grading under-calls the paler lab
    assert cv["calibrated_leave_one_out"]["exact"] >= 0.85
    assert cv["calibrated_leave_one_out"]["two_step_errors"] == 0
    out = tmp_path / "validated"
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out), "--calibration", str(cal)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["exact"]["value"] >= 0.95
