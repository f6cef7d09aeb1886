"""QuPath GeoJSON: round trips, QuPath's own formats, the validator and repair."""

from __future__ import annotations

import copy
import gzip
import json
import math
import uuid
import zipfile

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from her2_qupath.config import HER2_COLORS, PRODUCT_MARKER
from her2_qupath.errors import GeoJSONError
from her2_qupath.qupath.classes import class_color
from her2_qupath.qupath.geojson import (
    QuPathObject,
    from_feature,
    read_geojson,
    to_feature,
    write_geojson,
)
from her2_qupath.qupath.objects import (
    annotation_object,
    cell_object,
    is_product_object,
    rois_from_objects,
    tile_object,
)
from her2_qupath.qupath.validate import validate_features

SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
BOWTIE = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]


def _sample_objects() -> list[QuPathObject]:
    donut = box(0, 0, 100, 100).difference(box(25, 25, 75, 75))
    multi = MultiPolygon([box(200, 200, 300, 260), box(400.5, 400.25, 450.125, 470)])
    nucleus = Point(520, 520).buffer(6)
    cell = Point(520, 520).buffer(12)
    return [
        annotation_object(donut, "Tumor", {"Area px": donut.area}, name="ROI 1"),
        tile_object(multi, ("Tumor", "HER2 2+"), {"score": 2.0, "missing": math.nan}),
        tile_object(box(0, 0, 512, 512), "HER2 3+", {"inf": math.inf, "neg": -math.inf}),
        cell_object(cell, nucleus, "HER2 1+", {"DAB": 0.31}),
        QuPathObject(LineString([(0, 0), (5, 7)]), "annotation", None, is_locked=True),
        QuPathObject(Point(3, 4), "detection", "Other", object_color=(1, 2, 3)),
    ]


def test_round_trip_file_equal(tmp_path):
    objs = _sample_objects()
    path = write_geojson(tmp_path / "out.geojson", objs)
    back = read_geojson(path)
    assert back == objs
    # NaN is written as the string QuPath expects, and the file is strict JSON
    text = path.read_text()
    assert '"NaN"' in text and "Infinity" in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in output"))
    assert math.isnan(back[1].measurements["missing"])
    assert back[2].measurements["neg"] == -math.inf


def test_round_trip_gzip_and_bare_list(tmp_path):
    objs = _sample_objects()
    gz = write_geojson(tmp_path / "out.geojson.gz", objs, collection=False)
    raw = gz.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    data = json.loads(gzip.decompress(raw))
    assert isinstance(data, list) and len(data) == len(objs)
    assert read_geojson(gz) == objs
    # also from parsed data, JSON text and bytes
    assert read_geojson(data) == objs
    assert read_geojson(json.dumps(data)) == objs
    assert read_geojson(raw) == objs


def test_feature_layout_matches_qupath():
    obj = _sample_objects()[3]
    f = to_feature(obj)
    assert list(f) == ["type", "id", "geometry", "nucleusGeometry", "properties"]
    assert str(uuid.UUID(f["id"])) == f["id"]
    props = f["properties"]
    assert props["objectType"] == "cell"
    assert props["classification"] == {"name": "HER2 1+", "color": list(HER2_COLORS["HER2 1+"])}
    assert "isLocked" not in props  # QuPath writes it only when true
    assert props["metadata"][PRODUCT_MARKER]
    derived = to_feature(_sample_objects()[1])["properties"]["classification"]
    assert derived == {"names": ["Tumor", "HER2 2+"], "color": list(HER2_COLORS["HER2 2+"])}
    assert to_feature(_sample_objects()[4])["properties"]["isLocked"] is True


def test_written_features_validate():
    feats = [to_feature(o) for o in _sample_objects()]
    assert validate_features(feats) == len(feats)
    assert validate_features({"type": "FeatureCollection", "features": feats}) == len(feats)


def test_derived_class_from_string_and_names():
    a = QuPathObject(box(0, 0, 1, 1), classification="Tumor: HER2 2+")
    assert a.classification == ("Tumor", "HER2 2+")
    assert a.class_name == "Tumor: HER2 2+"
    assert a.color == HER2_COLORS["HER2 2+"]
    assert QuPathObject(box(0, 0, 1, 1), classification=("Stroma",)).classification == "Stroma"


def test_class_color_stable_and_distinct():
    assert class_color("Tumor") == class_color("Tumor")
    assert class_color("Tumor") != class_color("Stroma")
    assert all(0 <= c <= 255 for c in class_color("anything"))


# --------------------------------------------------------------- QuPath's own forms

QUPATH_04 = {
    "type": "Feature",
    "id": "d0852662-6941-4506-bc90-cbda1c2fa7b0",
    "geometry": {"type": "Polygon", "coordinates": SQUARE},
    "properties": {
        "objectType": "annotation",
        "name": "Region",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "isLocked": True,
        "measurements": {"Anything": "NaN", "Area": 100.0},
    },
}


def test_reads_qupath_04_feature():
    (obj,) = read_geojson(QUPATH_04)
    assert obj.id == QUPATH_04["id"]
    assert obj.classification == "Tumor" and obj.color == (200, 0, 0)
    assert obj.is_locked and obj.name == "Region"
    assert math.isnan(obj.measurements["Anything"]) and obj.measurements["Area"] == 100.0
    assert obj.geometry.equals(box(0, 0, 10, 10))


def test_reads_bare_nan_as_written_by_qupath_04(tmp_path):
    text = json.dumps(QUPATH_04).replace('"NaN"', "NaN")
    (obj,) = read_geojson(text)
    assert math.isnan(obj.measurements["Anything"])


def test_reads_plain_string_classification():
    f = copy.deepcopy(QUPATH_04)
    f["properties"]["classification"] = "Tumor: Positive"
    (obj,) = read_geojson([f])
    assert obj.classification == ("Tumor", "Positive")
    assert obj.color == class_color(("Tumor", "Positive"))


def test_reads_legacy_02_format():
    """QuPath 0.2/0.3: type in ``id``, classification with packed ``colorRGB``, list measurements."""
    legacy = {
        "type": "Feature",
        "id": "PathDetectionObject",
        "geometry": {"type": "Polygon", "coordinates": SQUARE},
        "properties": {
            "classification": {"name": "Tumor", "colorRGB": -3670016},
            "isLocked": False,
            "measurements": [{"name": "Area", "value": 5.5}, {"name": "x", "value": 1}],
        },
    }
    (obj,) = read_geojson({"type": "FeatureCollection", "features": [legacy]})
    assert obj.object_type == "detection"
    assert obj.color == (200, 0, 0)  # -3670016 == 0xFFC80000
    assert obj.measurements == {"Area": 5.5, "x": 1.0}
    uuid.UUID(obj.id)  # a fresh UUID replaces the type-name id


def test_reads_object_type_aliases_and_default():
    f = copy.deepcopy(QUPATH_04)
    del f["properties"]["objectType"]
    f["properties"]["object_type"] = "tile"
    assert read_geojson(f)[0].object_type == "tile"
    del f["properties"]["object_type"]
    assert read_geojson(f)[0].object_type == "annotation"


def test_reads_four_component_colour_and_cell_nucleus():
    cell = {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]],
        },
        "nucleusGeometry": {
            "type": "Polygon",
            "coordinates": [[[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]],
        },
        "properties": {
            "objectType": "cell",
            "classification": {"name": "HER2 3+", "color": [200, 0, 0, 128]},
        },
    }
    (obj,) = read_geojson(cell)
    assert obj.nucleus_geometry.equals(box(5, 5, 15, 15))
    assert obj.color == (200, 0, 0)


def test_reads_gz_zip_json_files(tmp_path):
    text = json.dumps({"type": "FeatureCollection", "features": [QUPATH_04]})
    (tmp_path / "a.json").write_text(text)
    (tmp_path / "b.geojson.gz").write_bytes(gzip.compress(text.encode()))
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("objects.geojson", text)
    for name in ("a.json", "b.geojson.gz", "c.zip"):
        (obj,) = read_geojson(tmp_path / name)
        assert obj.classification == "Tumor"


# --------------------------------------------------------------- invalid input


def _feature(**props):
    base = copy.deepcopy(QUPATH_04)
    base["properties"].update(props)
    return base


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"type": "Feature", "id": str(uuid.uuid4()), "properties": {}}, "geometry is missing"),
        (
            {"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}},
            "'Circle' is not a GeoJSON geometry type",
        ),
        ({"type": "Feature", "geometry": {"type": "Polygon"}}, "has no coordinates"),
        ({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": BOWTIE}}, "not valid"),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "a"]]]},
            },
            "bad coordinates",
        ),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
            },
            "ring 0 has 3 positions",
        ),
        (_feature(classification={"name": "Tumor"}), "no colour"),
        (_feature(classification={"color": [1, 2, 3]}), "no 'name'"),
        (_feature(classification={"name": "T", "color": [300, 0, 0]}), "integers 0-255"),
        (_feature(measurements={"a": "high"}), "not a number"),
        (_feature(measurements={"a": True}), "not a number"),
        (_feature(objectType="cluster"), "not one of"),
        (_feature(objectType="tmaCore"), "not supported"),
        (_feature(isLocked="yes"), "isLocked"),
        ({"type": "Point", "coordinates": [0, 0]}, "not 'Feature'"),
        (
            _feature(objectType="tile") | {"geometry": {"type": "Point", "coordinates": [1, 2]}},
            "needs an area",
        ),
        (
            _feature(objectType="annotation")
            | {"nucleusGeometry": {"type": "Polygon", "coordinates": SQUARE}},
            "nucleus",
        ),
    ],
)
def test_invalid_feature_names_index(bad, needle):
    good = copy.deepcopy(QUPATH_04)
    with pytest.raises(GeoJSONError) as info:
        read_geojson([good, good, bad])
    msg = str(info.value)
    assert "feature 2:" in msg, msg
    assert needle in msg, msg


def test_not_json_and_wrong_top_level(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text("{not json")
    with pytest.raises(GeoJSONError, match="not valid JSON"):
        read_geojson(path)
    with pytest.raises(GeoJSONError, match="bare Polygon"):
        read_geojson({"type": "Polygon", "coordinates": SQUARE})
    with pytest.raises(GeoJSONError, match="does not exist"):
        read_geojson(tmp_path / "missing.geojson")
    with pytest.raises(GeoJSONError, match="directory"):
        read_geojson(tmp_path)


def test_validator_is_stricter_than_reader():
    """What QuPath reads but this product never writes: the validator refuses it."""
    plain = _feature(classification="Tumor")
    read_geojson(plain)
    with pytest.raises(GeoJSONError, match="feature 0: classification 'Tumor' is a plain string"):
        validate_features([plain])
    no_id = copy.deepcopy(QUPATH_04)
    del no_id["id"]
    with pytest.raises(GeoJSONError, match="has no id"):
        validate_features([no_id])
    with pytest.raises(GeoJSONError, match="not a UUID"):
        validate_features([QUPATH_04 | {"id": "abc"}])
    legacy = _feature(measurements=[{"name": "a", "value": 1}])
    with pytest.raises(GeoJSONError, match="list"):
        validate_features([legacy])
    with pytest.raises(GeoJSONError, match="bare nan"):
        validate_features([_feature(measurements={"a": math.nan})])


def test_write_refuses_invalid_geometry(tmp_path):
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    with pytest.raises(GeoJSONError, match="feature 1: geometry is not valid"):
        write_geojson(
            tmp_path / "x.geojson", [annotation_object(box(0, 0, 1, 1)), QuPathObject(bowtie)]
        )
    assert not (tmp_path / "x.geojson").exists()


def test_repair_keeps_polygonal_parts():
    f = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": BOWTIE},
        "properties": {},
    }
    (obj,) = read_geojson([f], repair=True)
    assert obj.geometry.is_valid
    assert obj.geometry.geom_type == "MultiPolygon"
    assert obj.geometry.area == pytest.approx(50.0)  # two triangles of 25
    # a polygon collapsed to a line has no area left
    flat = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [5, 0], [0, 0]]]},
        "properties": {},
    }
    with pytest.raises(GeoJSONError, match="feature 0: .*no area left"):
        read_geojson([flat], repair=True)


def test_object_rules():
    with pytest.raises(GeoJSONError, match="object type"):
        QuPathObject(box(0, 0, 1, 1), "tmaCore")  # type: ignore[arg-type]
    with pytest.raises(GeoJSONError, match="nucleus"):
        QuPathObject(box(0, 0, 1, 1), "tile", nucleus_geometry=box(0, 0, 1, 1))
    with pytest.raises(GeoJSONError, match="UUID"):
        QuPathObject(box(0, 0, 1, 1), id="not-a-uuid")


def test_rois_from_objects_selects_annotations_by_class():
    objs = [
        annotation_object(box(0, 0, 10, 10), "Tumor", name="T1"),
        annotation_object(box(20, 0, 30, 10), ("Tumor", "HER2 2+")),
        annotation_object(box(40, 0, 50, 10), "Stroma", name="S"),
        annotation_object(LineString([(0, 0), (1, 1)]), "Tumor"),
        tile_object(box(0, 0, 5, 5), "Tumor"),
    ]
    all_rois = rois_from_objects(objs)
    assert [n for _, n in all_rois] == ["T1", None, "S"]
    tumor = rois_from_objects(objs, roi_class="Tumor")
    assert [g.bounds for g, _ in tumor] == [(0, 0, 10, 10), (20, 0, 30, 10)]
    assert len(rois_from_objects(objs, roi_class="Tumor: HER2 2+")) == 1
    assert rois_from_objects(objs, roi_class="Necrosis") == []


def test_helpers_mark_product_objects():
    assert is_product_object(tile_object(box(0, 0, 1, 1), "HER2 0"))
    assert not is_product_object(from_feature(QUPATH_04))


# --------------------------------------------------------------- property tests

_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() == s and s != "")
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**53), 2**53).map(float)
)


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(-1e6, 1e6),
    y=st.floats(-1e6, 1e6),
    w=st.floats(0.01, 1e5),
    h=st.floats(0.01, 1e5),
    cls=st.one_of(st.none(), _names, st.lists(_names, min_size=2, max_size=3).map(tuple)),
    meas=st.dictionaries(st.text(max_size=10), _values, max_size=5),
    name=st.one_of(st.none(), st.text(max_size=20)),
    locked=st.booleans(),
    kind=st.sampled_from(["annotation", "detection", "tile"]),
)
def test_round_trip_property(x, y, w, h, cls, meas, name, locked, kind):
    geom = box(x, y, x + w, y + h)
    if not geom.is_valid or geom.area == 0:
        return
    obj = QuPathObject(geom, kind, cls, name=name, measurements=meas, is_locked=locked)
    feature = to_feature(obj)
    validate_features([feature])
    text = json.dumps(feature, allow_nan=False)
    assert from_feature(json.loads(text)) == obj


def test_written_geometry_is_shapely_exact():
    poly = shapely.Polygon([(0.1, 0.2), (1e6 + 0.3, 0.2), (1e6 + 0.3, 7.77), (0.1, 7.77)])
    obj = annotation_object(poly)
    assert from_feature(json.loads(json.dumps(to_feature(obj)))).geometry.equals_exact(poly, 0)


def test_helpers_repair_invalid_outlines():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    cell = cell_object(bowtie, box(1, 4, 3, 6), "HER2 2+")
    assert cell.geometry.is_valid and cell.geometry.area == pytest.approx(50.0)
    validate_features([to_feature(cell)])
    with pytest.raises(GeoJSONError, match="no area left"):
        tile_object(Polygon([(0, 0), (10, 0), (5, 0)]), "HER2 0")


def test_measurements_must_be_numbers():
    with pytest.raises(GeoJSONError, match="measurements must be numbers"):
        QuPathObject(box(0, 0, 1, 1), measurements={"a": None})  # type: ignore[dict-item]
    assert QuPathObject(box(0, 0, 1, 1), measurements={"n": 3}).measurements == {"n": 3.0}
