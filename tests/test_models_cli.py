"""The train and evaluate commands end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2_qupath.cli import main
from her2_qupath.models.io import STAIN_LABELS
from her2_qupath.models.synthetic import stain_masks, stain_tiles


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiles")
    x, y = stain_tiles(160, 32, seed=4)
    for i, (tile, k) in enumerate(zip(x, y)):
        folder = root / STAIN_LABELS[k]
        folder.mkdir(exist_ok=True)
        Image.fromarray(tile).save(folder / f"slide{i % 8}__{i:04d}.png")
    return root


def test_train_and_evaluate_classifier(tile_folder: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "stain-model"
    args = ["train", "classifier", str(tile_folder), "-o", str(model), "--kind", "stain", "--arch", "tiny",
            "--epochs", "4", "--lr", "1e-3", "--batch-size", "16", "--input-size", "32", "--threads", "2"]
    assert _run(args) == 0
    out = capsys.readouterr().out
    assert "best epoch" in out and str(model) in out
    spec = json.loads((model / "her2_qupath.json").read_text())
    assert spec["kind"] == "stain" and spec["preprocessing"]["tile_size"] == 32
    assert sorted(spec["values"]) == [1, 2, 3, 4]
    # a second run into the same folder is refused without --overwrite / --resume
    assert _run(args) == 2
    assert "--resume" in capsys.readouterr().err
    evald = tmp_path / "eval"
    assert _run(["evaluate", str(model), str(tile_folder), "-o", str(evald)]) == 0
    metrics = json.loads((evald / "metrics.json").read_text())
    assert metrics["n"] == 160 and np.asarray(metrics["confusion_matrix"]).sum() == 160
    cm = np.asarray(metrics["confusion_matrix"])
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())  # rows truth, columns called
    assert metrics["decision_curve"]["positive"] == "strong"
    assert (evald / "roc.png").exists() and (evald / "decision_curve.png").exists()
    assert _run(["evaluate", str(model), str(tile_folder), "-o", str(evald)]) == 2  # exists


def test_train_segmenter_cli(tmp_path: Path) -> None:
    data = tmp_path / "pairs"
    data.mkdir()
    x, m = stain_masks(16, 32, seed=2)
    for i in range(16):
        Image.fromarray(x[i]).save(data / f"s{i % 4}__{i}.png")
        Image.fromarray(m[i]).save(data / f"s{i % 4}__{i}_mask.png")
    model = tmp_path / "seg"
    assert _run(["train", "segmenter", str(data), "-o", str(model), "--arch", "tiny", "--epochs", "1",
                 "--input-size", "32", "--batch-size", "4", "--lr", "1e-3"]) == 0
    assert json.loads((model / "her2_qupath.json").read_text())["kind"] == "segmenter"
    assert _run(["evaluate", str(model), str(data), "-o", str(tmp_path / "ev")]) == 0
    assert "mean_iou" in json.loads((tmp_path / "ev" / "metrics.json").read_text())


def test_bad_model_dir_is_a_one_line_error(tmp_path: Path, tile_folder: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert _run(["evaluate", str(tmp_path / "empty"), str(tile_folder), "-o", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "lacks" in err and "\n" not in err
    assert not (tmp_path / "e").exists()
