"""Input sanity before any work (issue 13, findings 4, 6 and 7): each refusal is one line, exit
code 2, nothing computed, nothing left behind; interrupted writes leave no hidden temp folders."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import box

from her2_qupath import preflight
from her2_qupath.cli import main
from her2_qupath.config import TILE_SIZE_RANGE, PreflightConfig, ServerConfig, TilingConfig
from her2_qupath.errors import UserInputError
from her2_qupath.qupath.geojson import QuPathObject, write_geojson
from her2_qupath.slide_writer import write_slide


@pytest.fixture()
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """pipeline.run_score replaced by a recorder that fails the test if a refusal reaches it."""
    import her2_qupath.pipeline as pipeline

    calls: list[Any] = []

    def run_score(request: Any, **_: Any) -> Any:
        calls.append(request)
        raise AssertionError("scoring started although the input should have been refused")

    monkeypatch.setattr(pipeline, "run_score", run_score)
    return calls


def png(tmp_path: Path, size: tuple[int, int] = (512, 512), name: str = "ihc.png") -> Path:
    """A 512-px picture without a pixel size (as in the issue)."""
    rgb = np.full((size[1], size[0], 3), 235, np.uint8)
    rgb[100:400, 100:400] = (150, 110, 90)
    return write_slide(tmp_path / name, rgb, kind="png")


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 2 and one error line; return that line."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    return lines[0]


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------- pixel size and budget


@pytest.mark.parametrize("mpp", ["1000", "25", "0.01"])
def test_score_refuses_an_implausible_pixel_size_before_any_work(tmp_path, capsys, no_scoring, mpp):
    image = png(tmp_path)
    out = tmp_path / "out"
    line = refused(["score", "--ihc", str(image), "--mpp", mpp, "-o", str(out)], capsys)
    assert "outside the plausible brightfield range 0.05 to 20" in line and "--force" in line
    assert no_scoring == [] and not out.exists() and hidden_leftovers(tmp_path) == []


def test_forced_1000_um_pixels_are_refused_by_the_tile_budget(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    out = tmp_path / "out"
    line = refused(["score", "--ihc", str(image), "--mpp", "1000", "--force", "-o", str(out)], capsys)
    # 512 px x 1000 µm at 0.5 µm/px: 4,000,000 tiles of 512 px
    assert "4,000,000 tiles" in line and "PreflightConfig.max_tiles" in line
    assert no_scoring == [] and not out.exists()


def test_force_scores_a_25_um_pixel_size(tmp_path, capsys, monkeypatch):
    """--mpp 25 is refused (range, then 50x enlargement); --force lets it through to the scorer."""
    image = png(tmp_path)
    with pytest.raises(UserInputError, match="plausible brightfield range"):
        preflight.check_pixel_size(25.0, what="IHC", force=False)
    from her2_qupath.pipeline import ScoreOptions

    with pytest.raises(UserInputError, match="50 times the working pixel size"):
        preflight.check_slides(image, ihc_mpp=25.0, options=ScoreOptions(), force=False,
                               config=PreflightConfig(max_mpp=30))
    preflight.check_slides(image, ihc_mpp=25.0, options=ScoreOptions(), force=True)  # no refusal
    import her2_qupath.pipeline as pipeline

    seen: list[Any] = []

    def run_score(request: Any, **_: Any) -> Any:
        seen.append(request)
        raise UserInputError("stop here", hint="the test only checks the request")

    monkeypatch.setattr(pipeline, "run_score", run_score)
    refused(["score", "--ihc", str(image), "--mpp", "25", "--force", "-o", str(tmp_path / "o")], capsys)
    assert [r.ihc_mpp for r in seen] == [25.0]


def test_enlargement_beyond_the_limit_is_refused_inside_the_range(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    line = refused(["score", "--ihc", str(image), "--mpp", "10", "-o", str(tmp_path / "o")], capsys)
    assert "20 times the working pixel size" in line and "--force" in line
    assert no_scoring == []


def test_work_estimate_counts_tiles_and_memory() -> None:
    tiling = TilingConfig(tile_size=512, mpp=0.5)
    est = preflight.estimate_work((4096, 2048), 0.25, tiling)  # 2048 x 1024 px at 0.5: 4 x 2 tiles
    assert (est.tiles, est.upsample) == (8, 0.5)
    assert est.memory_bytes == 8 * PreflightConfig().bytes_per_tile
    roi = preflight.estimate_work((4096, 2048), 0.25, tiling, roi_bounds=[(0, 0, 1500, 1000)])
    assert roi.tiles == 2 * 1  # the ROI box covers 2 x 1 tiles of 1024 level-0 px
    cells = preflight.estimate_work((4096, 2048), 0.25, tiling, level="cell")
    assert cells.memory_bytes == 8 * PreflightConfig().bytes_per_cell_tile
    small = PreflightConfig(max_memory_gb=est.memory_bytes / 2 / 1024**3)
    with pytest.raises(UserInputError, match="GB"):
        preflight.check_work(est, what="x", mpp=0.25, tiling=tiling, config=small)
    with pytest.raises(UserInputError, match="8 tiles"):
        preflight.check_work(est, what="x", mpp=0.25, tiling=tiling, config=PreflightConfig(max_tiles=7))
    preflight.check_work(est, what="x", mpp=0.25, tiling=tiling)


# ---------------------------------------------------------------------- ROIs


def test_empty_roi_file_is_refused_not_the_whole_slide(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    empty = tmp_path / "rois.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    out = tmp_path / "out"
    line = refused(["score", "--ihc", str(image), "--mpp", "0.5", "--roi", str(empty), "-o", str(out)],
                   capsys)
    assert "holds no features" in line and str(empty) in line
    assert no_scoring == [] and not out.exists()


def test_roi_file_is_hashed_into_the_provenance(tmp_path, capsys):
    from her2_qupath.synthetic import synthetic_ihc

    rgb = synthetic_ihc((768, 768), seed=2, mpp=0.5)[0]
    image = write_slide(tmp_path / "ihc.svs", rgb, mpp=0.5)
    roi = tmp_path / "tumour.geojson"
    write_geojson(roi, [QuPathObject(box(100, 100, 600, 600), classification="Tumor", name="T")])
    out = tmp_path / "out"
    main(["score", "--ihc", str(image), "--roi", str(roi), "-o", str(out)])
    prov = json.loads((out / "summary.json").read_text())["provenance"]
    want = hashlib.sha256(roi.read_bytes()).hexdigest()
    assert prov["inputs"]["roi"] == {"path": str(roi), "sha256": want, "bytes": roi.stat().st_size,
                                     "features": 1}


# ---------------------------------------------------------------------- outputs


def test_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    for out in (blocker / "out", Path("/proc/her2-qupath-out")):  # below a file; a folder no one writes
        line = refused(["score", "--ihc", str(image), "--mpp", "0.5", "-o", str(out)], capsys)
        assert "cannot be" in line and str(out) in line
    assert no_scoring == [] and hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_refused(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = refused(["score", "--ihc", str(image), "--mpp", "0.5", "-o", str(ro / "out")], capsys)
    finally:
        ro.chmod(0o755)
    assert "cannot be written" in line and list(ro.iterdir()) == []


def test_calibrate_and_validate_check_output_and_pixel_sizes_first(tmp_path, capsys, no_scoring):
    image = png(tmp_path)
    cases = tmp_path / "cases.csv"
    cases.write_text(f"image,score,mpp\n{image},2,0.5\n")
    blocker = tmp_path / "f"
    blocker.write_text("x")
    line = refused(["validate", str(cases), "-o", str(blocker / "o")], capsys)
    assert "cannot be created" in line
    line = refused(["calibrate", str(cases), "-o", str(blocker / "cal.json")], capsys)
    assert "cannot be created" in line
    assert no_scoring == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv", "f", "ihc.png"]
    from her2_qupath.validation import Case

    with pytest.raises(UserInputError, match="case ihc \\(row 3\\): pixel size 300 .*plausible"):
        preflight.check_cases([Case(row=3, image=image, score=2, mpp=300.0)])  # e.g. from a project
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(UserInputError, match="holds no features"):
        preflight.check_cases([Case(row=1, image=image, score=2, mpp=0.5, roi=empty)])


# ---------------------------------------------------------------------- options that need --he


@pytest.mark.parametrize("args", [["--roi-on", "ihc"], ["--roi-on", "he"], ["--he-mpp", "0.5"]])
def test_he_options_without_he_are_refused(tmp_path, capsys, no_scoring, args):
    image = png(tmp_path)
    line = refused(["score", "--ihc", str(image), "--mpp", "0.5", *args, "-o", str(tmp_path / "o")], capsys)
    assert f"{args[0]} applies to the H&E slide and needs --he" in line
    assert no_scoring == []


def test_tile_size_minimum_is_one_value_for_cli_and_api(tmp_path, capsys, no_scoring):
    from her2_qupath.cli.score import command
    from her2_qupath.server.schemas import SCHEMAS

    (param,) = [p for p in command.params if p.name == "tile_size"]
    assert (param.type.min, param.type.max) == TILE_SIZE_RANGE  # type: ignore[attr-defined]
    schema = SCHEMAS["ScoreOptions"]["properties"]["tile_size"]
    assert (schema["minimum"], schema["maximum"]) == TILE_SIZE_RANGE
    image = png(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["score", "--ihc", str(image), "--tile-size", str(TILE_SIZE_RANGE[0] - 1), "-o", str(tmp_path / "o")])
    assert exc.value.code == 2 and "--tile-size" in capsys.readouterr().err


# ---------------------------------------------------------------------- the server's requests


def test_server_requests_get_the_same_checks(tmp_path):
    from her2_qupath.server.scorers import PipelineScorer, build_spec

    image = png(tmp_path)
    config = ServerConfig(image_roots=(str(tmp_path),))
    with pytest.raises(UserInputError, match="rois holds no features"):
        build_spec({"ihc": str(image), "rois": {"type": "FeatureCollection", "features": []}}, config)
    with pytest.raises(UserInputError, match="ihc_mpp: pixel size 30 .*plausible brightfield range"):
        build_spec({"ihc": str(image), "ihc_mpp": 30}, config)
    feature = {"type": "Feature", "properties": {"objectType": "annotation"},
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [200, 200], [0, 0]]]}}
    spec = build_spec({"ihc": str(image), "ihc_mpp": 0.5, "rois": [feature]}, config)
    summary: dict[str, Any] = {"provenance": {"inputs": {}}}

    class Result:
        pass

    result = Result()
    result.summary = summary  # type: ignore[attr-defined]
    from her2_qupath.server import scorers

    scorers._record_rois(result, spec)
    text = json.dumps([feature], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert summary["provenance"]["inputs"]["roi"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert PipelineScorer().estimate_tiles(spec) == 1


# ---------------------------------------------------------------------- interrupted writes


_WRITER = """
import sys, time
from pathlib import Path
from her2_qupath._io import atomic_output_dir

with atomic_output_dir(Path(sys.argv[1])) as tmp:
    (tmp / "detections.geojson").write_text("{}")
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_interrupted_write_leaves_no_hidden_temp_folder(tmp_path, sig):
    target = tmp_path / "results"
    # the signal as a shell session delivers it: a run started under nohup (which ignores
    # SIGHUP, as the product then does too) must not make the test wait out the sleep
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(target)],
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.")]  # mid-write
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    assert list(tmp_path.iterdir()) == []  # no .results.xxxx.tmp, no results
