"""``her2-qupath info``: text and JSON output, --mpp, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from her2_qupath.cli import main
from her2_qupath.slide_writer import write_slide


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["info", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory):
    rgb = np.full((700, 1200, 3), 230, np.uint8)
    path = tmp_path_factory.mktemp("cli") / "s.svs"
    return write_slide(path, rgb, mpp=0.25, magnification=40, kind="svs", levels=2)


@pytest.fixture(scope="module")
def no_mpp_path(tmp_path_factory: pytest.TempPathFactory):
    rgb = np.full((300, 400, 3), 200, np.uint8)
    return write_slide(tmp_path_factory.mktemp("cli") / "n.tif", rgb, kind="pyramidal", levels=1)


def test_text_output(capsys, slide_path):
    code, out, err = _run(capsys, str(slide_path))
    assert code == 0 and err == ""
    assert "svs" in out and "1200 × 700 px" in out
    assert "0.25 µm/px (Aperio ImageDescription)" in out
    assert "40×" in out and "256 × 256" in out and "thumbnail" in out
    assert re.search(r"^\s+1\s+600\s+350\s+2\s+0\.5\s*$", out, re.MULTILINE)


def test_json_output(capsys, slide_path):
    code, out, _ = _run(capsys, str(slide_path), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["dimensions"] == [1200, 700] and info["mpp"] == 0.25
    assert [lv["width"] for lv in info["levels"]] == [1200, 600]
    assert info["levels"][1]["mpp"] == pytest.approx(0.5)
    assert info["magnification"] == 40 and info["compression"] == "jpeg"


def test_mpp_override(capsys, no_mpp_path):
    code, out, _ = _run(capsys, str(no_mpp_path))
    assert code == 0 and "unknown (none in the file; give it with --mpp)" in out
    code, out, _ = _run(capsys, str(no_mpp_path), "--json", "--mpp", "0.5")
    assert code == 0 and json.loads(out)["mpp"] == 0.5
    assert json.loads(out)["mpp_source"] == "given with --mpp"


@pytest.mark.parametrize("make", ["missing", "directory", "text", "empty", "truncated"])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, slide_path, make):
    target = tmp_path / "x.svs"
    if make == "directory":
        target = tmp_path
    elif make == "text":
        target.write_text("hello\n")
    elif make == "empty":
        target.write_bytes(b"")
    elif make == "truncated":
        data = slide_path.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    code, out, err = _run(capsys, str(target))
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("make", ["text", "truncated"])
def test_console_script_subprocess(tmp_path, slide_path, make):
    """The real process (logging configured): exit code 2, one line on stderr, no traceback."""
    bad = tmp_path / "bad.svs"
    if make == "text":
        bad.write_text("not a slide")
    else:
        data = slide_path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    proc = subprocess.run(
        [sys.executable, "-c", "from her2_qupath.cli import main; main()", "info", str(bad)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert ("not a supported slide image" if make == "text" else "truncated") in lines[0]


@pytest.mark.shared_data
def test_real_slides(capsys, shared_data):
    code, out, _ = _run(capsys, str(shared_data / "slides" / "CMU-1-Small-Region.svs"), "--json")
    info = json.loads(out)
    assert code == 0 and info["dimensions"] == [2220, 2967]
    assert info["mpp"] == pytest.approx(0.499) and info["magnification"] == 20
    assert set(info["associated_images"]) == {"thumbnail", "label", "macro"}
    code, out, _ = _run(capsys, str(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"))
    assert code == 0 and "give it with --mpp" in out and "4443 × 3567 px" in out
