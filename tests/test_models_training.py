"""Learning works: tiny models trained on synthetic IHC tiles with known classes.

The tiles are rendered by the Beer–Lambert law with DAB densities of four known
classes (her2_qupath.models.synthetic), so the ground truth holds by construction.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2_qupath.config import TrainConfig
from her2_qupath.errors import OutputExists, UserInputError
from her2_qupath.models import infer
from her2_qupath.models.attention import attention_rollout, tile_measurements
from her2_qupath.models.datasets import MaskDataset, TileDataset
from her2_qupath.models.evaluation import evaluate, write_evaluation
from her2_qupath.models.io import STAIN_LABELS, load_model
from her2_qupath.models.synthetic import stain_masks, stain_tiles
from her2_qupath.models.train import CHECKPOINT, train_classifier, train_segmenter

CFG = TrainConfig(patience=0, num_threads=2)


def _stain_dataset(n: int, seed: int, slides: int = 10) -> TileDataset:
    x, y = stain_tiles(n, 64, seed=seed)
    return TileDataset.from_arrays(x, y, [f"slide{i % slides}" for i in range(n)], STAIN_LABELS)


@pytest.fixture(scope="module")
def stain_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("stain") / "model"
    result = train_classifier(_stain_dataset(400, 1), out, kind="stain", arch="tiny", config=CFG,
                              lr=1e-3, batch_size=32, epochs=6, input_size=64)
    return out, result


@pytest.fixture(scope="module")
def test_tiles() -> tuple[np.ndarray, np.ndarray]:
    return stain_tiles(300, 64, seed=99)


def test_stain_classifier_learns(stain_model: tuple[Path, object],
                                 test_tiles: tuple[np.ndarray, np.ndarray]) -> None:
    out, result = stain_model
    assert result.best_metric >= 0.9  # validation accuracy on held-out slides
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["epochs"]) == 6
    assert not set(metrics["split"]["train_slides"]) & set(metrics["split"]["val_slides"])
    assert not (out / CHECKPOINT).exists()  # removed once training ends
    model = load_model(out, expected_kind="stain")
    x, y = test_tiles
    probs = infer.classify_tiles(model, x, precision="fp32", batch_size=64)
    assert probs.shape == (300, 4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() >= 0.9  # fresh tiles from an unseen seed
    assert model.spec.provenance["best_epoch"] == result.best_epoch


def test_bf16_agrees_with_fp32(stain_model: tuple[Path, object], test_tiles: tuple[np.ndarray, np.ndarray],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "bf16_supported", lambda: True)  # check the numerics on any CPU
    model = load_model(stain_model[0])
    x, _ = test_tiles
    p32 = infer.classify_tiles(model, x, precision="fp32")
    p16 = infer.classify_tiles(model, x, precision="bf16")
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.99
    assert np.abs(p32 - p16).max() < 0.1
    assert next(model.network.parameters()).dtype.is_floating_point  # original kept in fp32
    import torch

    assert next(model.network.parameters()).dtype == torch.float32


def test_generator_input_odd_sizes_and_progress(stain_model: tuple[Path, object],
                                                test_tiles: tuple[np.ndarray, np.ndarray]) -> None:
    model = load_model(stain_model[0])
    x, _ = test_tiles
    calls: list[tuple[int, int]] = []
    whole = infer.classify_tiles(model, x[:10], precision="fp32", batch_size=4)
    streamed = infer.classify_tiles(model, (t for t in x[:10]), precision="fp32", batch_size=4,
                                    progress=lambda d, t: calls.append((d, t)))
    assert np.allclose(whole, streamed, atol=1e-6)
    assert [d for d, _ in calls] == [4, 8, 10]
    # 128 px tiles are resized to the 64 px input; mixed sizes in one batch work too
    big = np.repeat(np.repeat(x[:2], 2, axis=1), 2, axis=2)
    mixed = infer.classify_tiles(model, [big[0], x[1]], precision="fp32")
    assert mixed.argmax(1).tolist() == whole[:2].argmax(1).tolist()


def test_reader_errors_reach_the_caller(stain_model: tuple[Path, object]) -> None:
    model = load_model(stain_model[0])

    def broken():
        yield np.zeros((64, 64, 3), np.uint8)
        raise OSError("tile read failed")

    with pytest.raises(OSError, match="tile read failed"):
        infer.classify_tiles(model, broken(), batch_size=1)
    with pytest.raises(UserInputError, match="uint8"):
        infer.classify_tiles(model, np.zeros((1, 64, 64, 3), np.float32))


def test_attention_rollout_and_measurements(stain_model: tuple[Path, object],
                                            test_tiles: tuple[np.ndarray, np.ndarray]) -> None:
    model = load_model(stain_model[0])
    before = model.network.config._attn_implementation
    x, _ = test_tiles
    probs, maps = attention_rollout(model, x[:5], return_probs=True)
    assert maps.shape == (5, 8, 8)  # 64 px input, 8 px patches
    assert np.all(maps >= 0) and np.all(maps.sum((1, 2)) <= 1 + 1e-5)
    assert np.allclose(probs, infer.classify_tiles(model, x[:5], precision="fp32"), atol=1e-5)
    rows = tile_measurements(model, probs, maps)
    assert rows[0]["faint probability"] == pytest.approx(float(probs[0, 1]))
    assert rows[0]["Attention max"] == pytest.approx(float(maps[0].max()))
    assert model.network.config._attn_implementation == before  # restored after the rollout


def test_evaluate_writes_metrics_and_plots(stain_model: tuple[Path, object], tmp_path: Path) -> None:
    model = load_model(stain_model[0])
    data = _stain_dataset(80, 7)
    result = evaluate(model, data)
    assert result["accuracy"] >= 0.9 and result["macro_auc"] >= 0.95
    assert np.asarray(result["confusion_matrix"]).sum() == 80
    assert result["decision_curve"]["positive"] == "strong"
    out = write_evaluation(result, tmp_path / "eval")
    for name in ("confusion_matrix.png", "roc.png", "decision_curve.png"):
        picture = np.asarray(Image.open(out / name).convert("RGB"))
        assert min(picture.shape[:2]) >= 200 and picture.std() > 10  # a drawn chart, not a blank
    assert json.loads((out / "metrics.json").read_text())["n"] == 80


def test_segmenter_learns(tmp_path: Path) -> None:
    x, m = stain_masks(160, 64, seed=1)
    data = MaskDataset.from_arrays(x, m, [f"s{i % 8}" for i in range(len(x))])
    result = train_segmenter(data, tmp_path / "seg", arch="tiny", config=CFG, lr=1e-3, batch_size=8,
                             epochs=5, input_size=64)
    assert result.best_metric >= 0.7
    model = load_model(tmp_path / "seg", expected_kind="segmenter")
    xt, mt = stain_masks(24, 64, seed=42)
    ev = evaluate(model, MaskDataset.from_arrays(xt, mt, ["t"] * 24))
    assert ev["mean_iou"] >= 0.7
    maps = infer.segment_tiles(model, xt[:2])
    assert maps[0].shape == (64, 64) and (maps[0] == mt[0]).mean() > 0.7


def _history(out: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"}
            for e in json.loads((out / "metrics.json").read_text())["epochs"]]


def test_resume_continues_an_interrupted_run_identically(tmp_path: Path) -> None:
    data = _stain_dataset(64, 5, slides=4)
    kw = dict(kind="stain", arch="tiny", config=CFG, lr=1e-3, batch_size=16, epochs=3, input_size=32)
    train_classifier(data, tmp_path / "straight", **kw)

    class Stop(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        if done == 5:  # inside epoch 2 (3 training batches per epoch)
            raise Stop

    with pytest.raises(Stop):
        train_classifier(data, tmp_path / "resumed", progress=interrupt, **kw)
    assert (tmp_path / "resumed" / CHECKPOINT).exists()
    with pytest.raises(OutputExists, match="--resume"):
        train_classifier(data, tmp_path / "resumed", **kw)
    train_classifier(data, tmp_path / "resumed", resume=True, **kw)
    resumed, straight = _history(tmp_path / "resumed"), _history(tmp_path / "straight")
    assert len(resumed) == len(straight) == 3
    for a, b in zip(resumed, straight):
        assert a.keys() == b.keys()
        assert [a[k] for k in a] == pytest.approx([b[k] for k in b], rel=1e-5)
    with pytest.raises(UserInputError, match="nothing to resume"):
        train_classifier(data, tmp_path / "resumed", resume=True, **kw)


def test_early_stopping(tmp_path: Path) -> None:
    data = _stain_dataset(48, 6, slides=4)
    cfg = dataclasses.replace(CFG, patience=2)
    result = train_classifier(data, tmp_path / "es", kind="stain", arch="tiny", config=cfg, lr=1e-9,
                              batch_size=16, epochs=10, input_size=32)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_stain_classes_are_ordered_by_grade(tmp_path: Path) -> None:
    x, y = stain_tiles(32, 32, seed=8)
    names = ("weak", "strong", "no-stain", "faint")  # grades 2, 3, 0, 1
    perm = np.array([2, 3, 0, 1])  # folder index -> grade
    inv = np.argsort(perm)
    data = TileDataset.from_arrays(x, inv[y], [f"s{i % 4}" for i in range(32)], names)
    train_classifier(data, tmp_path / "m", kind="stain", arch="tiny", config=CFG, epochs=1, batch_size=16,
                     input_size=32)
    model = load_model(tmp_path / "m")
    assert model.labels == ("no-stain", "faint", "weak", "strong")
    from her2_qupath.models.train import _order_by_stain_value

    reordered = _order_by_stain_value(data)
    assert [reordered.label_names[k] for k in reordered.labels] == [STAIN_LABELS[k] for k in y]
    assert model.grade_of_class == (0, 1, 2, 3)
    assert model.spec.provenance["training"] == {"lr": CFG.lr, "batch_size": 16, "epochs": 1}


def test_stain_classifier_learns_in_bf16_mixed_precision(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "bf16_supported", lambda: True)
    cfg = dataclasses.replace(CFG, precision="bf16")
    result = train_classifier(_stain_dataset(400, 1), tmp_path / "bf16", kind="stain", arch="tiny", config=cfg,
                              lr=1e-3, batch_size=32, epochs=6, input_size=64)
    assert result.best_metric >= 0.9
    import torch

    assert next(load_model(tmp_path / "bf16").network.parameters()).dtype == torch.float32


def test_maskformer_training_path_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x, m = stain_masks(16, 64, seed=3)
    data = MaskDataset.from_arrays(x, m, [f"s{i % 4}" for i in range(16)])
    result = train_segmenter(data, tmp_path / "mf", arch="maskformer-tiny", config=CFG, lr=1e-4,
                             batch_size=4, epochs=2, input_size=64)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
    assert "experimental" in caplog.text
    assert load_model(tmp_path / "mf").network.config.model_type == "maskformer"
