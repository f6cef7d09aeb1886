"""Model directories: exact save/load round trips and clear failures on bad directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from her2_qupath.errors import ModelError
from her2_qupath.models.infer import classify_tiles, segment_tiles
from her2_qupath.models.io import (
    SPEC_FILE,
    LoadedModel,
    build_network,
    load_model,
    make_spec,
    save_model,
    stain_value,
    validate_model_dir,
)
from her2_qupath.models.synthetic import stain_tiles


def _tiny(kind: str, labels: tuple[str, ...] | None = None, **kw: object) -> LoadedModel:
    import torch

    torch.manual_seed(0)
    arch = "tiny"
    spec = make_spec(kind, arch, labels, mpp=0.5, tile_size=64, input_size=64, **kw)  # type: ignore[arg-type]
    return LoadedModel(spec=spec, network=build_network(spec).eval())


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return stain_tiles(12, 64, seed=3)[0]


@pytest.fixture()
def saved_stain(tmp_path: Path) -> Path:
    return save_model(_tiny("stain"), tmp_path / "stain")


def test_round_trip_reproduces_classifier_outputs_exactly(tmp_path: Path, tiles: np.ndarray) -> None:
    model = _tiny("tumor", ("Other", "Tumor"))
    before = classify_tiles(model, tiles, precision="fp32")
    loaded = load_model(save_model(model, tmp_path / "m"), expected_kind="tumor")
    after = classify_tiles(loaded, tiles, precision="fp32")
    assert np.array_equal(before, after)
    assert loaded.spec.positive_label == "Tumor" and loaded.spec.positive_index == 1
    assert loaded.spec.preprocessing == model.spec.preprocessing
    spec = json.loads((tmp_path / "m" / SPEC_FILE).read_text())
    assert spec["kind"] == "tumor" and spec["id2label"] == {"0": "Other", "1": "Tumor"}
    assert "model.safetensors" in spec["provenance"]["weights_sha256"]


def test_round_trip_reproduces_segmenter_maps_exactly(tmp_path: Path, tiles: np.ndarray) -> None:
    model = _tiny("segmenter")
    before = segment_tiles(model, tiles[:3], precision="fp32")
    loaded = load_model(save_model(model, tmp_path / "seg"), expected_kind="segmenter")
    after = segment_tiles(loaded, tiles[:3], precision="fp32")
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert before[0].shape == (64, 64) and before[0].dtype == np.uint8
    assert set(np.unique(np.concatenate(before))) <= {0, 1, 2, 3, 4}


def test_missing_and_not_a_directory(tmp_path: Path, saved_stain: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a directory"):
        load_model(saved_stain / "config.json")
    broken = tmp_path / "broken"
    shutil.copytree(saved_stain, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"lacks model\.safetensors"):
        load_model(broken)
    (saved_stain / SPEC_FILE).unlink()
    with pytest.raises(ModelError, match=SPEC_FILE):
        load_model(saved_stain)


def test_wrong_kind_is_refused(saved_stain: Path) -> None:
    with pytest.raises(ModelError, match="stain model where a tumor model is needed"):
        load_model(saved_stain, expected_kind="tumor")
    assert validate_model_dir(saved_stain, expected_kind="stain").kind == "stain"


def _edit_spec(path: Path, **changes: object) -> None:
    spec = json.loads((path / SPEC_FILE).read_text())
    for key, value in changes.items():
        if key in ("input_size", "mpp"):
            spec["preprocessing"][key] = value
        else:
            spec[key] = value
    (path / SPEC_FILE).write_text(json.dumps(spec))


def test_wrong_label_set_is_refused(saved_stain: Path) -> None:
    _edit_spec(saved_stain, labels=["no-stain", "faint", "weak", "weak2"], values=[1, 2, 3, 3])
    with pytest.raises(ModelError, match=r"stain values \[1, 2, 3, 4\]"):
        load_model(saved_stain)


def test_label_count_not_matching_the_network_is_refused(saved_stain: Path) -> None:
    _edit_spec(saved_stain, kind="tumor", labels=["Other", "Tumor"], values=None, positive_label="Tumor")
    with pytest.raises(ModelError, match="4 outputs but"):
        load_model(saved_stain)


def test_wrong_input_size_is_refused(saved_stain: Path) -> None:
    _edit_spec(saved_stain, input_size=224)
    with pytest.raises(ModelError, match="input size 224 does not match"):
        load_model(saved_stain)


def test_replaced_weights_fail_the_checksum(tmp_path: Path, saved_stain: Path) -> None:
    other = save_model(_tiny("stain"), tmp_path / "other")
    import torch

    with torch.no_grad():
        m = load_model(other)
        next(m.network.parameters()).add_(1.0)
        m.network.save_pretrained(tmp_path / "raw")
    shutil.copy(tmp_path / "raw" / "model.safetensors", saved_stain / "model.safetensors")
    with pytest.raises(ModelError, match="checksum"):
        load_model(saved_stain)


def test_segmenter_is_not_a_classifier(tmp_path: Path, tiles: np.ndarray) -> None:
    seg = _tiny("segmenter")
    with pytest.raises(ModelError, match="segment_tiles"):
        classify_tiles(seg, tiles)
    with pytest.raises(ModelError, match="classify_tiles"):
        segment_tiles(_tiny("stain"), tiles)


@pytest.mark.parametrize(("name", "value"), [
    ("background", 0), ("HER2 0", 1), ("0", 1), ("no-stain", 1), ("Faint", 2), ("HER2 1+", 2),
    ("2+", 3), ("weak", 3), ("Strong", 4), ("HER2 3+", 4), ("Tumor", None)])
def test_stain_value_names(name: str, value: int | None) -> None:
    assert stain_value(name) == value


def test_make_spec_needs_a_tumor_class_and_stain_names() -> None:
    with pytest.raises(ModelError, match="tumor class"):
        make_spec("tumor", "tiny", ("a", "b"), mpp=0.5, tile_size=64, input_size=64)
    with pytest.raises(ModelError, match="do not name a stain class"):
        make_spec("stain", "tiny", ("no-stain", "faint", "weak", "purple"), mpp=0.5, tile_size=64,
                  input_size=64)
    spec = make_spec("tumor", "tiny", ("a", "b"), mpp=0.5, tile_size=64, input_size=64, positive_label="b")
    assert spec.positive_index == 1


def test_stain_grades_follow_the_label_values_not_the_column_order(tmp_path: Path) -> None:
    from her2_qupath.models.infer import stain_grades

    # class folders load alphabetically: faint, no-stain, strong, weak
    model = _tiny("stain", ("faint", "no-stain", "strong", "weak"))
    probs = np.eye(4)
    assert stain_grades(model, probs).tolist() == [1, 0, 3, 2]
    assert _tiny("tumor", ("Tumor", "Stroma")).tumor_index == 0
    with pytest.raises(ModelError, match="no tumor class"):
        _ = model.tumor_index


def test_model_fingerprint_changes_with_the_weights(tmp_path: Path) -> None:
    from her2_qupath.models.io import model_fingerprint

    a = save_model(_tiny("stain"), tmp_path / "a")
    b = save_model(_tiny("stain"), tmp_path / "b")  # same seed: same weights
    assert model_fingerprint(a) == model_fingerprint(b)
    m = _tiny("stain")
    import torch

    with torch.no_grad():
        next(m.network.parameters()).mul_(2)
    assert model_fingerprint(save_model(m, tmp_path / "c")) != model_fingerprint(a)


def test_fused_vit_path_matches_transformers_logits(tiles: np.ndarray) -> None:
    import torch

    from her2_qupath.models._fastvit import fast_vit, supports_fast_path
    from her2_qupath.models.infer import to_input

    model = _tiny("stain")
    assert supports_fast_path(model.network)
    x = to_input(tiles, model)
    with torch.inference_mode():
        ref = model.network(pixel_values=x).logits
        got = fast_vit(model.network)(x)
    assert torch.allclose(ref, got, atol=1e-5)


def test_maskformer_segmenter_round_trip(tmp_path: Path, tiles: np.ndarray) -> None:
    """MaskFormer weights (e.g. brought from elsewhere) load and segment like SegFormer's."""
    import torch

    torch.manual_seed(0)
    spec = make_spec("segmenter", "maskformer-tiny", None, mpp=0.5, tile_size=64, input_size=64)
    model = LoadedModel(spec=spec, network=build_network(spec).eval())
    assert model.network.config.model_type == "maskformer"
    before = segment_tiles(model, tiles[:2], precision="fp32")
    loaded = load_model(save_model(model, tmp_path / "mf"), expected_kind="segmenter")
    after = segment_tiles(loaded, tiles[:2], precision="fp32")
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert before[0].shape == (64, 64) and set(np.unique(before[0])) <= {0, 1, 2, 3, 4}


def test_evaluate_matches_data_classes_by_name_or_grade(tiles: np.ndarray) -> None:
    from her2_qupath.models.datasets import TileDataset
    from her2_qupath.models.evaluation import _dataset_targets, evaluate

    model = _tiny("stain")  # no-stain, faint, weak, strong
    data = TileDataset.from_arrays(tiles[:4], [0, 1, 2, 3], ["a", "a", "b", "b"], ["3+", "0", "faint", "weak"])
    assert _dataset_targets(model, data).tolist() == [3, 0, 1, 2]
    bad = TileDataset.from_arrays(tiles[:2], [0, 1], ["a", "b"], ["strong", "purple"])
    with pytest.raises(ModelError, match="'purple' is not one of the model's classes"):
        evaluate(model, bad)


def test_importing_the_package_and_commands_loads_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, her2_qupath.models, her2_qupath.cli.train, her2_qupath.cli.evaluate; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
