"""`her2-qupath validate`: cases CSV, agreement figures with intervals, the scoring run."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from her2_qupath.cli import cli
from her2_qupath.errors import UserInputError
from her2_qupath.validation import agreement_report, bootstrap_interval, read_cases, spearman

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LAYOUT_1, LAYOUT_2, LAYOUT_3, ihc_rgb, write_png  # noqa: E402


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cases")
    return {"3+": write_png(d / "a.png", ihc_rgb(LAYOUT_3)),
            "2+": write_png(d / "b.png", ihc_rgb(LAYOUT_2)),
            "1+": write_png(d / "c.png", ihc_rgb(LAYOUT_1))}


@pytest.mark.parametrize(("row", "message"), [
    ({"image": "a.png", "score": "4+"}, "row 1: score '4+'"),
    ({"image": "a.png", "score": "2+", "mpp": "abc"}, "row 1: mpp 'abc'"),
    ({"image": "a.png", "score": "2+", "mpp": "100"}, "brightfield pixel size"),
    ({"image": "missing.png", "score": "2+"}, "row 1: image 'missing.png' does not exist"),
    ({"image": "a.png", "score": "2+", "guideline": "lung"}, "unknown guideline"),
    ({"image": "a.png", "score": ""}, "row 1: score"),
])
def test_bad_rows_are_named(images, tmp_path: Path, row: dict, message: str) -> None:
    row = {**row, "image": str(images["3+"].parent / row["image"])} if row["image"] == "a.png" else row
    path = _csv(tmp_path / "cases.csv", [row])
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        read_cases(path)
    with pytest.raises(UserInputError, match="lacks the column"):
        read_cases(_csv(tmp_path / "x.csv", [{"file": "a.png"}]))


def test_relative_paths_and_columns(images, tmp_path: Path) -> None:
    path = _csv(images["3+"].parent / "cases.csv", [
        {"image": "a.png", "score": "3+", "mpp": "0.5 (20x)", "guideline": "gastric"},
        {"image": str(images["2+"]), "score": "2", "mpp": ""}])
    cases = read_cases(path)
    assert [c.score for c in cases] == [3, 2] and cases[0].image == images["3+"]
    assert cases[0].mpp == 0.5 and cases[0].guideline == "gastric" and cases[1].mpp is None


def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)  # ties
    y = x + rng.normal(0, 1.5, 40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_report_figures_by_hand() -> None:
    truth = ["0", "0", "1+", "1+", "2+", "2+", "3+", "3+"]
    pred = ["0", "1+", "1+", "1+", "2+", "3+", "3+", None]
    r = agreement_report(truth, pred, h_scores=[0, 20, 60, 70, 120, 180, 250, 290],
                         names=list("abcdefgh"))
    assert r["n"] == 7 and r["unscored"] == 1
    assert r["exact"]["value"] == pytest.approx(5 / 7, abs=1e-4)
    assert r["within_one"]["value"] == 1.0
    # 0: 1 of 2 called 0 (sensitivity 0.5), 1 call of 0 is right (ppv 1); 1+: 2/2, ppv 2/3
    assert r["per_class"]["0"]["sensitivity"]["value"] == 0.5
    assert r["per_class"]["0"]["ppv"]["value"] == 1.0
    assert r["per_class"]["1+"]["ppv"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["confusion_matrix"]["counts"][0] == [1, 1, 0, 0]
    assert [d["case"] for d in r["discordant"]] == ["b", "f", "h"]
    assert r["discordant"][2]["her2_qupath"] == "not evaluable"
    lo, hi = r["exact"]["ci95"]
    assert 0 <= lo <= 5 / 7 <= hi <= 1
    assert r["spearman_h_score"]["value"] > 0.9
    # kappas by hand: observed 5/7, chance (2*1 + 2*3 + 2*1 + 1*2) / 49 -> 23/37; quadratic:
    # observed weighted disagreement 2, chance 110/7 -> 1 - 14/110
    assert r["kappa"]["value"] == pytest.approx(23 / 37, abs=1e-4)
    assert r["quadratic_kappa"]["value"] == pytest.approx(1 - 14 / 110, abs=1e-4)
    groups = r["clinical_groups"]
    assert groups["scores"]["exact"]["value"] == pytest.approx(5 / 7, abs=1e-4)
    assert groups["therapy"]["exact"]["value"] == pytest.approx(5 / 7, abs=1e-4)  # b: 0->low, f: low->pos
    assert groups["ish"]["exact"]["value"] == 1.0  # every call on the right side of 1+/2+
    assert groups["ish"]["kappa"]["value"] == 1.0


def test_bootstrap_interval_is_degenerate_on_a_constant_and_covers_the_mean() -> None:
    assert bootstrap_interval(lambda i: 1.0, 10) == (1.0, 1.0)
    x = np.random.default_rng(0).normal(5.0, 1.0, 200)
    lo, hi = bootstrap_interval(lambda i: float(x[i].mean()), len(x))
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)


def test_validate_cli_scores_known_cases_and_resumes(images, tmp_path: Path) -> None:
    cases = _csv(tmp_path / "cases.csv", [
        {"image": str(images["3+"]), "score": "3+"},
        {"image": str(images["2+"]), "score": "2+"},
        {"image": str(images["1+"]), "score": "0"}])  # the pathologist disagrees on this one
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out), "--tile-size", "256"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 3 and report["exact"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["discordant"] == [{"case": "c", "pathologist": "0", "her2_qupath": "1+"}]
    assert [c["her2_qupath"] for c in report["cases"]] == ["3+", "2+", "1+"]
    folder = out / report["cases"][0]["folder"]
    assert (folder / "summary.json").is_file() and (folder / "annotations.geojson").is_file()
    assert "discordant: c" in r.output
    # an existing output needs --resume; resumed cases are not scored again
    again = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out)])
    assert again.exit_code != 0
    stamp = (folder / "summary.json").stat().st_mtime_ns
    resumed = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (folder / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.shared_data
def test_validate_reproduces_the_benchmark_on_real_ihc(shared_data: Path, tmp_path: Path) -> None:
    labels = shared_data / "her2-ihc" / "labels.csv"
    if not labels.exists():
        pytest.skip("no real HER2 IHC in the shared data (../shared/data/her2-ihc)")
    rows = [r for r in csv.DictReader(open(labels)) if "no tumour" not in r["note"].lower()]
    cases = _csv(tmp_path / "cases.csv", [
        {"image": str(shared_data / "her2-ihc" / r["file"]), "score": r["her2_level"],
         "mpp": r["mpp"], "guideline": r["guideline"]} for r in rows])
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # the figures of benchmarks/real_her2.py at the defaults (docs/stain.md)
    assert report["n"] == 12 and report["unscored"] == 0
    assert report["exact"]["value"] == pytest.approx(0.75, abs=1e-4)
    assert report["quadratic_kappa"]["value"] == pytest.approx(0.87, abs=0.01)
    assert report["two_step_errors"] == 0
    assert report["spearman_h_score"]["value"] >= 0.75  # measured 0.77


@pytest.mark.browser
def test_html_report_renders_the_numbers_of_report_json(images, tmp_path: Path, browser) -> None:
    """report.html in headless Chromium: the tables show report.json's figures, pictures load."""
    from selenium.webdriver.common.by import By

    from her2_qupath.validation_report import fmt_ci

    cases = _csv(tmp_path / "cases.csv", [
        {"image": str(images["3+"]), "score": "3+"}, {"image": str(images["2+"]), "score": "2+"},
        {"image": str(images["1+"]), "score": "2+"},  # discordant: her2-qupath says 1+
        {"image": str(images["3+"]), "score": "3+"}])
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    browser.get((out / "report.html").as_uri())
    assert browser.find_element(By.ID, "n").text == str(report["n"]) == "4"
    for key in ("exact", "within_one", "kappa", "quadratic_kappa", "spearman_h_score"):
        cells = browser.find_elements(By.CSS_SELECTOR, f'#agreement tr[data-key="{key}"] td')
        assert [c.text for c in cells[1:]] == list(fmt_ci(report[key]))
    assert report["exact"]["value"] == 0.75
    for i, score in enumerate(("0", "1+", "2+", "3+")):
        cells = browser.find_elements(By.CSS_SELECTOR, f'#confusion tr[data-key="{score}"] td')
        assert [int(c.text) for c in cells[1:5]] == report["confusion_matrix"]["counts"][i]
    sens = browser.find_elements(By.CSS_SELECTOR, '#per-class tr[data-key="2+"] td')[3].text
    assert sens == fmt_ci(report["per_class"]["2+"]["sensitivity"])[0] == "0.50"
    discordant = browser.find_elements(By.CSS_SELECTOR, ".case")
    assert [d.get_attribute("data-case") for d in discordant] == ["c"]
    for img in browser.find_elements(By.TAG_NAME, "img"):
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
    assert len(browser.find_elements(By.TAG_NAME, "img")) == 3  # confusion, strip plot, one case


def test_cases_from_a_qupath_project(images, tmp_path: Path) -> None:
    """Entries carry the pathologist's score as metadata; entries without it are left out."""
    from test_project import make_project

    def entry(name: str, path: Path, meta: dict[str, str]) -> dict:
        return {"name": name, "uri": path.as_uri(), "mpp": 0.5, "metadata": meta}

    proj = make_project(tmp_path / "proj", [
        entry("a.png", images["3+"], {"HER2 score": "3+"}),
        entry("b.png", images["2+"], {"her2 score ": "2+", "case": "B"}),  # key matched loosely
        entry("c.png", images["1+"], {"case": "C"}),  # no score: not a validation case
    ])
    r = CliRunner().invoke(cli, ["validate", str(proj), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["a", "b"]
    assert report["n"] == 2 and report["exact"]["value"] == 1.0
    # another key, and a value that is no score: one line naming the entry
    bad = make_project(tmp_path / "bad", [entry("a.png", images["3+"], {"IHC": "strong"})])
    r = CliRunner().invoke(cli, ["validate", str(bad), "-o", str(tmp_path / "o2"), "--score-key", "IHC"])
    assert r.exit_code != 0 and "project entry 1 (a.png): IHC 'strong' is not 0, 1+, 2+ or 3+" in str(
        r.exception)
    r = CliRunner().invoke(cli, ["validate", str(bad), "-o", str(tmp_path / "o3")])
    assert r.exit_code != 0 and "carries a 'HER2 score' metadata value" in str(r.exception)
    gone = make_project(tmp_path / "gone", [{"name": "x.svs", "uri": "file:/nowhere/x.svs",
                                             "metadata": {"HER2 score": "0"}}])
    r = CliRunner().invoke(cli, ["validate", str(gone), "-o", str(tmp_path / "o4")])
    assert r.exit_code != 0 and "project entry 1 (x.svs): image file not found" in str(r.exception)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o4").exists()


def test_validate_sends_tile_work_to_a_dask_cluster(images, tmp_path: Path, monkeypatch) -> None:
    """--dask-scheduler: the cases' tile work goes to the cluster's executor, closed at the end."""
    from concurrent.futures import ThreadPoolExecutor

    import her2_qupath.executors as executors_mod

    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *a, **k):  # type: ignore[no-untyped-def]
            CountingPool.submitted += 1
            return super().submit(*a, **k)

    pool = CountingPool(1)
    seen: dict[str, object] = {}

    class FakeDask:
        def __init__(self, address: str) -> None:
            seen["address"] = address

        def executor(self) -> CountingPool:
            return pool

        def close(self) -> None:
            seen["closed"] = True

    monkeypatch.setattr(executors_mod, "DaskBackend", FakeDask)
    cases = _csv(tmp_path / "cases.csv", [{"image": str(images["3+"]), "score": "3+"}])
    r = CliRunner().invoke(cli, ["validate", str(cases), "-o", str(tmp_path / "out"),
                                 "--dask-scheduler", "tcp://10.0.0.5:8786"])
    pool.shutdown()
    assert r.exit_code == 0, r.output
    assert seen == {"address": "tcp://10.0.0.5:8786", "closed": True}
    assert CountingPool.submitted >= 1
    assert json.loads((tmp_path / "out" / "report.json").read_text())["exact"]["value"] == 1.0
