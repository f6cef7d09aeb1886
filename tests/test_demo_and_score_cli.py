"""The demo's known answer, and the `score` command's files, messages and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from her2_qupath.cli import cli
from her2_qupath.demo import DEMO_REGIONS, run_demo
from her2_qupath.qupath.geojson import load_features
from her2_qupath.qupath.validate import validate_features
from her2_qupath.slide_writer import write_slide
from her2_qupath.synthetic import synthetic_ihc


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list]:
    out = tmp_path_factory.mktemp("demo")
    result, rows = run_demo(out, size=1536, seed=3)
    return out, result, rows


def test_demo_recovers_the_known_scores(demo) -> None:
    _out, result, rows = demo
    assert len(rows) == len(DEMO_REGIONS)
    for row in rows:
        assert row["measured"] == row["expected"], row
        assert row["max_percent_error"] < 6.0, row
    reg = result.summary["registration"]
    assert reg["reliable"] and reg["quality"]["dice"] > 0.9
    # the registration found the true affine: H&E tile centres land where the truth puts them
    m = np.array(result.summary["demo"]["truth_matrix"])
    for he_obj, ihc_obj in zip(result.he_detections[:5], [d for d in result.detections
                                                          if d.object_type == "tile"][:5]):
        c = he_obj.geometry.centroid
        want = m @ np.array([c.x, c.y, 1.0])
        got = ihc_obj.geometry.centroid
        assert np.hypot(got.x - want[0], got.y - want[1]) < 4.0


def test_demo_writes_importable_files(demo) -> None:
    out, result, _rows = demo
    res = out / "results"
    for name in ("detections.geojson", "annotations.geojson", "he_detections.geojson",
                 "ihc_detections.geojson"):
        assert validate_features(load_features(res / name)) > 0
    summary = json.loads((res / "summary.json").read_text())
    assert summary["level"] == "cell" and summary["n_cells"] > 500
    assert (out / "inputs" / "he.svs").stat().st_size > 0


def _ihc(tmp_path: Path, mpp: float | None = 0.5) -> Path:
    rgb = synthetic_ihc((768, 768), seed=2, mpp=0.5)[0]
    path = tmp_path / ("ihc.svs" if mpp else "ihc.png")
    write_slide(path, rgb, mpp=mpp, kind="svs" if mpp else "png")
    return path


def test_score_cli_writes_outputs_and_refuses_to_overwrite(tmp_path: Path) -> None:
    ihc = _ihc(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["score", "--ihc", str(ihc), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    counts = synthetic_ihc((768, 768), seed=2, mpp=0.5)[3]["cell_counts"]  # cells drawn 0/1+/2+/3+
    assert 100 * counts[3] / sum(counts) > 10  # ASCO/CAP: > 10 % complete intense staining is 3+
    assert summary["her2_score"] == "3+"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "annotations.geojson", "detections.geojson", "overlay.png", "report.pdf", "report.png",
        "summary.json"]
    before = (tmp_path / "out" / "summary.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(ihc),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "summary.json").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--roi-class", "Tumor"], "no ROIs"),
    (["--tumor-model", "."], "needs --he"),
    (["--thresholds", "0.5,0.2,0.6"], "increase"),
])
def test_score_cli_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    ihc = _ihc(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(ihc),
                           "-o", str(tmp_path / "o"), *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_score_cli_png_needs_mpp(tmp_path: Path) -> None:
    png = _ihc(tmp_path, mpp=None)
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(png),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--mpp" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(png),
                           "--mpp", "0.5", "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_score_cli_not_evaluable_writes_outputs_and_exits_0(tmp_path: Path) -> None:
    """A slide of glass is "not evaluable" with the reason: outputs written, exit 0, a warning."""
    glass = tmp_path / "glass.svs"
    write_slide(glass, np.full((600, 600, 3), 241, np.uint8), mpp=0.5, kind="svs")
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(glass),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HER2 not evaluable" in proc.stdout
    assert "NOT EVALUABLE: too little tissue" in proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["her2_score"] == "not evaluable" and summary["evaluable"] is False
    ann = json.loads((tmp_path / "out" / "annotations.geojson").read_text())["features"]
    assert ann[0]["properties"]["classification"]["name"] == "HER2 not evaluable"
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 1000


def test_score_cli_background_and_intensity(tmp_path: Path) -> None:
    ihc = _ihc(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["score", "--ihc", str(ihc), "-o", str(tmp_path / "a"), "--json",
                            "--background", "250,249,251", "--intensity", "od",
                            "--thresholds", "0.25,0.45,0.65"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output[r.output.index("{"):])
    assert s["white_point"] == {**s["white_point"], "source": "user", "rgb": [250.0, 249.0, 251.0]}
    assert s["intensity"] == "od" and s["thresholds"] == [0.25, 0.45, 0.65]
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(ihc),
                           "-o", str(tmp_path / "b"), "--background", "300,1,1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "(0, 255]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_out_of_memory_is_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A MemoryError (e.g. the slide reader's, naming the file) is a message, not a traceback."""
    import her2_qupath.pipeline as pipeline
    from her2_qupath.cli import main

    def run_score(*args: object, **kwargs: object) -> None:
        raise MemoryError("reading ihc.svs: tile 3 of level 0 (512 x 512) did not fit in memory")

    monkeypatch.setattr(pipeline, "run_score", run_score)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--ihc", str(_ihc(tmp_path)), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "out of memory: reading ihc.svs: tile 3" in err and "--working-mpp" in err
    assert not (tmp_path / "o").exists()
