"""`her2-qupath register` and `her2-qupath warp`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from her2_qupath.cli import cli, main
from her2_qupath.registration import DisplacementField, Transform


def _transform(field: bool = False) -> Transform:
    t = math.radians(25.0)
    a = np.array([[1.1 * math.cos(t), -1.1 * math.sin(t), 40.0], [1.1 * math.sin(t), 1.1 * math.cos(t), -12.0],
                  [0, 0, 1]])
    fld = None
    if field:
        yy, xx = np.mgrid[0:10, 0:10]
        fld = DisplacementField((0.0, 0.0), (50.0, 50.0), (3 * np.sin(yy / 2.0)).astype(np.float32),
                                (2 * np.cos(xx / 3.0)).astype(np.float32))
    return Transform(a, (500, 500), (600, 600), field=fld, model="nonrigid" if field else "affine",
                     quality={"dice": 0.95, "ncc": 0.7, "score": 0.95, "reliable": True})


@pytest.fixture()
def transform_file(tmp_path):
    path = tmp_path / "transform.json"
    _transform(field=True).to_json(path)
    return path


def test_warp_points_keeps_columns_and_round_trips(tmp_path, transform_file):
    src = tmp_path / "pts.csv"
    src.write_text(",X,Y\n1,63,309\n2,77.5,441\n3,400,12\n")
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(cli, ["warp", str(transform_file), "--points", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == ",X,Y" and [ln.split(",")[0] for ln in lines[1:]] == ["1", "2", "3"]
    got = np.array([[float(v) for v in ln.split(",")[1:]] for ln in lines[1:]])
    t = Transform.from_json(transform_file)
    assert np.allclose(got, t.apply([[63, 309], [77.5, 441], [400, 12]]), atol=1e-3)
    back = tmp_path / "back.csv"
    res = CliRunner().invoke(cli, ["warp", str(transform_file), "--points", str(out), "-o", str(back), "--inverse"])
    assert res.exit_code == 0, res.output
    again = np.array([[float(v) for v in ln.split(",")[1:]] for ln in back.read_text().splitlines()[1:]])
    assert np.allclose(again, [[63, 309], [77.5, 441], [400, 12]], atol=0.02)


def _qupath_features():
    poly = {"type": "Polygon", "coordinates": [[[10, 10], [200, 10], [200, 150], [10, 150], [10, 10]],
                                               [[50, 50], [60, 50], [60, 60], [50, 50]]]}
    return [
        {"type": "Feature", "id": "a1b2", "geometry": poly,
         "properties": {"objectType": "annotation", "name": "Tumor 1",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]}, "isLocked": False}},
        {"type": "Feature", "id": "c3", "geometry": {"type": "Point", "coordinates": [100, 100]},
         "nucleusGeometry": {"type": "Polygon", "coordinates": [[[95, 95], [105, 95], [105, 105], [95, 95]]]},
         "properties": {"objectType": "cell", "measurements": {"Area": 12.5}}},
        {"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": [
            {"type": "LineString", "coordinates": [[0, 0], [300, 300]]},
            {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [poly["coordinates"]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "MultiLineString", "coordinates": [[[0, 0], [5, 5]]]},
         "properties": {"objectType": "annotation"}},
    ]


@pytest.mark.parametrize("wrap", ["collection", "list", "feature"])
def test_warp_geojson_keeps_structure_and_properties(tmp_path, transform_file, wrap):
    feats = _qupath_features()
    data = {"type": "FeatureCollection", "features": feats} if wrap == "collection" else (
        feats if wrap == "list" else feats[1])
    src = tmp_path / "in.geojson"
    src.write_text(json.dumps(data))
    out = tmp_path / "out.geojson"
    res = CliRunner().invoke(cli, ["warp", str(transform_file), "--geojson", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    t = Transform.from_json(transform_file)
    want_feats = feats if wrap != "feature" else [feats[1]]
    got_feats = got["features"] if wrap == "collection" else (got if wrap == "list" else [got])
    assert type(got) is type(data) and len(got_feats) == len(want_feats)
    for g, w in zip(got_feats, want_feats, strict=True):
        assert g["properties"] == w["properties"] and g.get("id") == w.get("id")
        assert g["geometry"]["type"] == w["geometry"]["type"]
    cell = next(f for f in got_feats if f["properties"].get("objectType") == "cell")
    assert np.allclose(cell["geometry"]["coordinates"], t.apply([[100, 100]])[0], atol=1e-3)
    assert np.allclose(cell["nucleusGeometry"]["coordinates"][0][0], t.apply([[95, 95]])[0], atol=1e-3)
    # --inverse brings the geometries back
    back = tmp_path / "back.geojson"
    res = CliRunner().invoke(cli, ["warp", str(transform_file), "--geojson", str(out), "-o", str(back), "--inverse"])
    assert res.exit_code == 0, res.output
    from shapely.geometry import shape

    b = json.loads(back.read_text())
    b_feats = b["features"] if wrap == "collection" else (b if wrap == "list" else [b])
    for g, w in zip(b_feats, want_feats, strict=True):
        assert shape(g["geometry"]).hausdorff_distance(shape(w["geometry"])) < 0.05


def test_warp_user_errors_exit_2(tmp_path, transform_file, capsys):
    src = tmp_path / "pts.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit) as exc:
        main(["warp", str(transform_file), "--points", str(src), "-o", str(tmp_path / "o.csv")])
    assert exc.value.code == 2
    assert "X and Y" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["warp", str(transform_file), "-o", str(tmp_path / "o.csv")])
    assert exc.value.code == 2
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.shared_data
def test_register_command_on_rat_kidney(tmp_path, shared_data):
    d = shared_data / "pairs" / "rat-kidney"
    out, png = tmp_path / "t.json", tmp_path / "overview.png"
    res = CliRunner().invoke(cli, [
        "register", "--fixed", str(d / "HE.jpg"), "--moving", str(d / "IHC-PanCytokeratin.jpg"),
        "-o", str(out), "--overview", str(png),
        "--fixed-landmarks", str(d / "HE.landmarks.csv"), "--moving-landmarks", str(d / "IHC-PanCytokeratin.landmarks.csv"),
        "--truncate-landmarks",  # 71 H&E rows, 69 IHC rows: the first 69 correspond
    ])
    assert res.exit_code == 0, res.output
    t = Transform.from_json(out)
    assert t.fixed_sha256 and len(t.fixed_sha256) == 64 and t.fixed_name == "HE.jpg"
    assert t.quality["reliable"] and t.quality["landmarks"]["median_rtre"] <= 0.0030
    assert t.quality["unit"] == "px" and t.fixed_mpp is None
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > im.size[1] > 100
    # warp the landmarks with the written transform: the same errors
    mapped = tmp_path / "mapped.csv"
    res = CliRunner().invoke(cli, ["warp", str(out), "--points", str(d / "HE.landmarks.csv"), "-o", str(mapped)])
    assert res.exit_code == 0, res.output
    got = np.loadtxt(mapped, delimiter=",", skiprows=1)[:69, 1:3]
    truth = np.loadtxt(d / "IHC-PanCytokeratin.landmarks.csv", delimiter=",", skiprows=1)[:69, 1:3]
    err = np.median(np.hypot(*(got - truth).T))
    assert err == pytest.approx(t.quality["landmarks"]["median_px"], abs=0.01)


def test_warp_keeps_qupath_exports_valid(tmp_path, transform_file):
    """A QuPath export (annotation + cell) stays valid for QuPath after warping both ways."""
    from shapely.geometry import Polygon

    from her2_qupath.qupath.geojson import load_features, write_geojson
    from her2_qupath.qupath.objects import annotation_object, cell_object
    from her2_qupath.qupath.validate import validate_features

    src = tmp_path / "export.geojson"
    write_geojson(src, [
        annotation_object(Polygon([(10, 10), (300, 20), (280, 240), (15, 200)]), "Tumor", name="T1"),
        cell_object(Polygon([(90, 90), (120, 92), (118, 121), (91, 119)]),
                    Polygon([(100, 100), (108, 101), (107, 109), (101, 108)]), "HER2 2+",
                    {"Membrane: DAB OD mean": 0.45}),
    ])
    out = tmp_path / "warped.geojson"
    back = tmp_path / "back.geojson"
    for args, dst in (([], out), (["--inverse"], back)):
        source = src if dst is out else out
        res = CliRunner().invoke(cli, ["warp", str(transform_file), "--geojson", str(source),
                                       "-o", str(dst), *args])
        assert res.exit_code == 0, res.output
        assert validate_features(load_features(dst)) == 2


@pytest.mark.shared_data
def test_landmark_files_of_different_lengths_are_refused(tmp_path, shared_data):
    """71 H&E rows against 69 IHC rows: refused (naming both counts) unless --truncate-landmarks."""
    d = shared_data / "pairs" / "rat-kidney"
    res = CliRunner().invoke(cli, [
        "register", "--fixed", str(d / "HE.jpg"), "--moving", str(d / "IHC-PanCytokeratin.jpg"),
        "-o", str(tmp_path / "t.json"),
        "--fixed-landmarks", str(d / "HE.landmarks.csv"), "--moving-landmarks", str(d / "IHC-PanCytokeratin.landmarks.csv"),
    ])
    assert res.exit_code != 0
    assert "71 and 69 rows" in str(res.exception) and "--truncate-landmarks" in str(res.exception)
    assert not (tmp_path / "t.json").exists()  # refused before the registration ran


def test_warp_refuses_a_self_intersecting_polygon_as_score_does(tmp_path, transform_file):
    bowtie = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon",
                                        "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]},
        "properties": {"objectType": "annotation", "name": "bow"}}]}
    src = tmp_path / "bow.geojson"
    src.write_text(json.dumps(bowtie))
    res = CliRunner().invoke(cli, ["warp", str(transform_file), "--geojson", str(src),
                                   "-o", str(tmp_path / "out.geojson")])
    assert res.exit_code != 0 and "Self-intersection" in str(res.exception)
    assert not (tmp_path / "out.geojson").exists()
    from her2_qupath.errors import GeoJSONError
    from her2_qupath.qupath.geojson import read_geojson

    with pytest.raises(GeoJSONError, match="Self-intersection"):  # what score reads it with
        read_geojson(src)
