"""The pipeline with the models C, L and M in place of the weight-free defaults.

Tiny randomly initialised models: what is checked is the wiring — each number
the pipeline reports comes from the model named in ``sources`` and equals what
the model gives when called directly on the same tiles.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result
from her2_qupath.scoring import score_class_map
from her2_qupath.slide import open_slide
from her2_qupath.slide_writer import write_slide
from her2_qupath.synthetic import synthetic_pair


def _model_dir(kind: str, tmp: Path, input_size: int) -> Path:
    import torch

    from her2_qupath.models import LoadedModel, build_network, make_spec, save_model

    torch.manual_seed({"tumor": 1, "stain": 2, "segmenter": 3}[kind])
    labels = ("Other", "Tumor") if kind == "tumor" else None
    spec = make_spec(kind, "tiny", labels, mpp=0.5, tile_size=256, input_size=input_size,  # type: ignore[arg-type]
                     positive_label="Tumor" if kind == "tumor" else None)
    return save_model(LoadedModel(spec=spec, network=build_network(spec).eval()), tmp / kind)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("models")
    he, ihc, _m, _t = synthetic_pair((768, 768), seed=4, mpp=0.5, rotation_deg=0.0,
                                     translation=(0.0, 0.0))
    write_slide(d / "he.tif", he, mpp=0.5, kind="pyramidal", compression="zlib")
    write_slide(d / "ihc.tif", ihc, mpp=0.5, kind="pyramidal", compression="zlib")
    return {"dir": d, "tumor": _model_dir("tumor", d, 64), "stain": _model_dir("stain", d, 64),
            "seg": _model_dir("segmenter", d, 64)}


def _opts(**kw: object) -> ScoreOptions:
    base = ScoreOptions()
    return replace(base, tiling=replace(base.tiling, tile_size=256),
                   model=replace(base.model, precision="fp32"), **kw)


def test_segmenter_replaces_colour_deconvolution(case) -> None:
    from her2_qupath.models import load_model, segment_tiles
    from her2_qupath.tiling import read_tile

    res = run_score(ScoreRequest(ihc=case["dir"] / "ihc.tif", options=_opts(seg_model=case["seg"])))
    assert res.summary["sources"]["stain_map"] == "model M"
    model = load_model(case["seg"], expected_kind="segmenter")
    with open_slide(case["dir"] / "ihc.tif") as slide:
        tiles = [t for t in _grid_tiles(slide)]
        maps = segment_tiles(model, [read_tile(slide, t) for t in tiles], precision="fp32")
    counts = np.sum([score_class_map(m).her2_pixel_counts for m in maps], axis=0)
    pct = 100 * counts / counts.sum()
    got = res.summary["class_percentages"]
    assert [got[k] for k in ("0", "1+", "2+", "3+")] == pytest.approx(pct.tolist(), abs=1e-6)
    assert len(res.summary["provenance"]["models"]["seg_model"]["sha256"]) == 64


def _grid_tiles(slide):  # the same grid the pipeline builds
    from her2_qupath.tiling import tile_grid
    from her2_qupath.tissue import detect_tissue

    opts = _opts()
    return tile_grid(slide.dimensions, slide.mpp, opts.tiling, tissue=detect_tissue(slide, opts.tissue)).tiles


def test_stain_classifier_agreement_is_reported(case) -> None:
    from her2_qupath.models import classify_tiles, load_model, stain_grades
    from her2_qupath.tiling import read_tile

    res = run_score(ScoreRequest(ihc=case["dir"] / "ihc.tif", options=_opts(stain_model=case["stain"])))
    assert res.summary["sources"]["stain_classifier"] == "model L"
    model = load_model(case["stain"], expected_kind="stain")
    with open_slide(case["dir"] / "ihc.tif") as slide:
        tiles = list(_grid_tiles(slide))
        grades = stain_grades(model, classify_tiles(model, [read_tile(slide, t) for t in tiles],
                                                    precision="fp32"))
    tile_objs = [d for d in res.detections if d.object_type == "tile"]
    assert [int(d.measurements["Stain classifier class"]) for d in tile_objs] == grades.tolist()
    majority = [int(d.measurements["HER2 majority stain class"]) for d in tile_objs]
    assert res.summary["classifier_agreement"] == pytest.approx(
        np.mean(np.array(majority) == grades))


def test_tumor_classifier_decides_which_tiles_count(case, tmp_path: Path) -> None:
    opts = _opts(tumor_model=case["tumor"])
    probe = run_score(ScoreRequest(ihc=case["dir"] / "ihc.tif", he=case["dir"] / "he.tif", options=opts))
    probs = np.array([d.measurements["Tumor probability"] for d in probe.he_detections])
    assert probs.size == probe.summary["n_tiles"] and np.all((probs >= 0) & (probs <= 1))
    # a threshold between the tiles' probabilities: exactly the tiles above it count
    threshold = float(np.median(probs)) + 1e-9
    opts = replace(opts, model=replace(opts.model, tumor_threshold=threshold))
    res = run_score(ScoreRequest(ihc=case["dir"] / "ihc.tif", he=case["dir"] / "he.tif", options=opts))
    assert res.summary["sources"]["tumor"] == "model C"
    assert res.summary["n_tiles_counted"] == int(np.sum(probs >= threshold))
    ignored = [d for d in res.detections if d.class_name == "Ignore*"]
    assert len(ignored) >= int(np.sum(probs < threshold))
    assert all("Attention max" in d.measurements for d in res.he_detections)
    out = write_result(res, tmp_path / "out")
    for name in ("probability_heatmap.png", "attention_heatmap.png"):
        picture = np.asarray(Image.open(out / name).convert("RGB"))
        assert min(picture.shape[:2]) >= 100 and picture.std() > 10, name  # drawn, not blank


def test_a_model_is_refused_on_tiles_of_another_field_of_view(case) -> None:
    """Trained on 256-px tiles at 0.5 µm/px (128 µm): 512-px tiles at 0.5 µm/px are refused before
    any work, 128-px tiles at 1 µm/px (the same 128 µm) are accepted."""
    from her2_qupath.errors import ModelError
    from her2_qupath.models.io import check_tiling, validate_model_dir

    base = ScoreOptions()
    wide = replace(base, tiling=replace(base.tiling, tile_size=512), stain_model=case["stain"])
    with pytest.raises(ModelError, match=r"trained on 256-px tiles at 0.5 µm/px \(128 µm across\); "
                                         r"this run cuts 512-px tiles at 0.5 µm/px \(256 µm\)"):
        run_score(ScoreRequest(ihc=case["dir"] / "missing.tif", options=wide))  # refused before reading
    spec = validate_model_dir(case["stain"], expected_kind="stain")
    check_tiling(spec, 128, 1.0)  # same field of view: fine
    check_tiling(spec, 270, 0.5)  # within 10 %
    with pytest.raises(ModelError, match="--tile-size 256 --working-mpp 0.5"):
        check_tiling(spec, 300, 0.5)
