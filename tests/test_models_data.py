"""Training data sources and the split by slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2_qupath.errors import UserInputError
from her2_qupath.models.datasets import (
    discover_dataset,
    load_mask_pairs,
    load_qupath_annotations,
    load_tile_folders,
    split_by_group,
)
from her2_qupath.models.synthetic import stain_masks, stain_tiles


def test_split_holds_out_whole_slides() -> None:
    rng = np.random.default_rng(0)
    groups = [f"s{g}" for g in rng.integers(0, 12, 500)]
    labels = rng.integers(0, 3, 500)
    tr, va = split_by_group(groups, labels, 0.2, seed=1)
    assert len(tr) + len(va) == 500 and not set(tr) & set(va)
    g = np.asarray(groups)
    assert not set(g[tr]) & set(g[va])  # no slide on both sides
    assert 0.1 <= len(va) / 500 <= 0.35
    assert set(labels[va]) == set(labels[tr]) == {0, 1, 2}
    tr2, va2 = split_by_group(groups, labels, 0.2, seed=1)
    assert np.array_equal(va, va2)  # deterministic


def test_split_needs_two_slides() -> None:
    with pytest.raises(UserInputError, match="one slide"):
        split_by_group(["a"] * 10, [0, 1] * 5, 0.2)


def _write_tiles(root: Path, names: dict[str, list[str]]) -> None:
    x, _ = stain_tiles(sum(len(v) for v in names.values()), 32, seed=0)
    i = 0
    for cls, files in names.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            Image.fromarray(x[i]).save(root / cls / f)
            i += 1


def test_class_folders_with_slide_prefix(tmp_path: Path) -> None:
    _write_tiles(tmp_path, {"strong": ["A__1.png", "B__1.png"], "faint": ["A__2.png", "C__x_y.png"]})
    ds = load_tile_folders(tmp_path)
    assert ds.label_names == ("faint", "strong")
    assert sorted(zip(ds.groups, ds.labels.tolist())) == [("A", 0), ("A", 1), ("B", 1), ("C", 0)]
    assert ds.image(0).shape == (32, 32, 3) and ds.image(0).dtype == np.uint8
    assert ds.class_counts() == {"faint": 2, "strong": 2}
    fp = ds.fingerprint()
    assert fp == load_tile_folders(tmp_path).fingerprint() and len(fp) == 64


def test_class_folders_with_slides_csv(tmp_path: Path) -> None:
    _write_tiles(tmp_path, {"Tumor": ["t1.png"], "Other": ["o1.png"]})
    (tmp_path / "slides.csv").write_text("file,slide\nTumor/t1.png,S1\nOther/o1.png,S2\n")
    ds = load_tile_folders(tmp_path)
    assert dict(zip(ds.label_names, ds.groups)) == {"Other": "S2", "Tumor": "S1"}


def test_class_folders_without_slide_ids_fail_clearly(tmp_path: Path) -> None:
    _write_tiles(tmp_path, {"a": ["1.png"], "b": ["2.png"]})
    with pytest.raises(UserInputError, match="which slide"):
        load_tile_folders(tmp_path)
    with pytest.raises(UserInputError, match="at least 2"):
        load_tile_folders(tmp_path / "a")


def test_mask_pairs(tmp_path: Path) -> None:
    x, m = stain_masks(3, 32, seed=0)
    for i in range(3):
        Image.fromarray(x[i]).save(tmp_path / f"s{i}__t.png")
        Image.fromarray(m[i]).save(tmp_path / f"s{i}__t_mask.png")
    ds = discover_dataset(tmp_path, task="segmenter", tile_size=32, mpp=0.5)
    assert len(ds) == 3 and sorted(ds.groups) == ["s0", "s1", "s2"]
    k = ds.groups.index("s1")
    assert np.array_equal(ds.target(k), m[1]) and np.array_equal(ds.image(k), x[1])
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(tmp_path / "s9__bad_mask.png")
    Image.fromarray(x[0]).save(tmp_path / "s9__bad.png")
    ds = load_mask_pairs(tmp_path)
    with pytest.raises(UserInputError, match="values above 4"):
        ds.target(ds.groups.index("s9"))


# ---------------------------------------------------------------- source (b), QuPath exports

def _slide_image() -> np.ndarray:
    """A 1024 x 2048 slide: left half strongly DAB-stained tissue, right half unstained."""
    from her2_qupath.models.synthetic import render_od

    rng = np.random.default_rng(0)
    h = np.full((1024, 2048), 0.3)
    d = np.zeros((1024, 2048))
    d[:, :1024] = 0.8
    return render_od(h, d, rng)


def test_qupath_annotations_tiles_classes_and_caps(tmp_path: Path) -> None:
    """Source (b) through the real slide reader and GeoJSON parser: classes, partial regions, caps."""
    from shapely.geometry import Polygon, box

    from her2_qupath.qupath.geojson import write_geojson
    from her2_qupath.qupath.objects import annotation_object, tile_object
    from her2_qupath.slide_writer import write_slide

    write_slide(tmp_path / "case1.tif", _slide_image(), mpp=0.25, kind="pyramidal", compression="zlib")
    write_geojson(tmp_path / "case1.geojson", [
        annotation_object(box(100, 100, 612, 612), "HER2 3+"),
        annotation_object(Polygon([(1200, 100), (1900, 100), (1200, 800)]), "HER2 0"),
        annotation_object(box(0, 0, 2000, 1000), "Tumor"),
        tile_object(box(100, 100, 400, 400), "HER2 3+"),  # detections are not training regions
        annotation_object(box(10, 10, 50, 50)),  # unclassified
    ])
    from her2_qupath.models.io import stain_value

    pairs = [(tmp_path / "case1.tif", tmp_path / "case1.geojson")]
    ds = load_qupath_annotations(pairs, tile_size=64, mpp=0.5,
                                 class_filter=lambda n: stain_value(n) in (1, 2, 3, 4))
    assert ds.label_names == ("HER2 0", "HER2 3+")
    counts = ds.class_counts()
    assert counts["HER2 3+"] == 16  # 512 x 512 px box / 128 px tiles (64 px at 0.5 µm, slide 0.25 µm)
    # triangle of legs 700: tiles with >= 50 % inside; fewer than its 36-tile bounding grid
    assert 10 <= counts["HER2 0"] < 36
    assert set(ds.groups) == {"case1"}
    for i in range(len(ds)):
        tile = ds.image(i)
        assert tile.shape == (64, 64, 3)
        od = -np.log10((tile.astype(float) + 1) / 256).mean()
        assert (od > 0.5) == (ds.label_names[ds.labels[i]] == "HER2 3+")  # the tile shows its class
    ds.close()
    capped = load_qupath_annotations(pairs, tile_size=64, mpp=0.5, classes=["HER2 0", "HER2 3+"],
                                     max_tiles_per_annotation=5)
    assert capped.class_counts() == {"HER2 0": 5, "HER2 3+": 5}
    capped.close()


def test_qupath_annotations_with_a_real_slide_and_geojson(tmp_path: Path) -> None:
    """Source (b) end to end: an SVS written by slide_writer, GeoJSON written by qupath.geojson."""
    from shapely.geometry import box

    from her2_qupath.models.io import stain_value
    from her2_qupath.qupath.geojson import QuPathObject, write_geojson
    from her2_qupath.slide_writer import write_slide

    write_slide(tmp_path / "case2.svs", _slide_image(), mpp=0.25, kind="svs", compression=None)
    write_geojson(tmp_path / "case2.geojson", [
        QuPathObject(box(100, 100, 612, 612), classification="HER2 3+"),
        QuPathObject(box(1200, 200, 1712, 712), classification=("Tumor", "HER2 0")),
        QuPathObject(box(1200, 200, 1712, 712), classification="HER2 0"),
        QuPathObject(box(0, 0, 2000, 1000), classification="Tumor"),
    ])
    ds = discover_dataset(tmp_path, task="classifier", tile_size=64, mpp=0.5,
                          class_filter=lambda n: stain_value(n) in (1, 2, 3, 4))
    try:
        assert ds.label_names == ("HER2 0", "HER2 3+")
        assert ds.class_counts() == {"HER2 0": 16, "HER2 3+": 16}
        for i in range(len(ds)):
            tile = ds.image(i)
            assert tile.shape == (64, 64, 3)
            od = -np.log10((tile.astype(float) + 1) / 256).mean()
            assert (od > 0.5) == (ds.label_names[ds.labels[i]] == "HER2 3+")
    finally:
        ds.close()
