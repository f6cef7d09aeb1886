"""QuPath projects without QuPath: qpproj JSON, data.qpdata headers, URIs, pairing, safety."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from her2_qupath.config import ProjectConfig
from her2_qupath.errors import ProjectError, ProjectLocked, QuPathUnavailable, UserInputError
from her2_qupath.qupath.project import (
    ImageEntry,
    JsonProject,
    backup_project,
    ensure_project_closed,
    filter_entries,
    find_roi_file,
    is_product_object,
    looks_open,
    mark_product_object,
    open_project,
    pair_images,
    pixel_size_from_metadata,
    project_write_lock,
    server_builder_uri,
    uri_to_path,
)
from her2_qupath.qupath.qpdata import parse_qpdata_header, read_qpdata_header

# --------------------------------------------------------------------------- data.qpdata


def qpdata_bytes(header: dict, *, long_string: bool = False, version: int = 3) -> bytes:
    """A stream shaped like QuPath's: writeUTF("Data file version N") then writeObject(json)."""
    head = f"Data file version {version}".encode()
    utf = struct.pack(">H", len(head)) + head
    js = json.dumps(header, ensure_ascii=False).encode("utf-8")
    out = b"\xac\xed\x00\x05" + bytes([0x77, len(utf)]) + utf
    if long_string:
        out += b"\x7c" + struct.pack(">Q", len(js)) + js
    else:
        out += b"\x74" + struct.pack(">H", len(js)) + js
    return out + b"sr\x00\x10java.util.Locale"  # what follows in a real file: objects


def test_qpdata_header_parsed_from_constructed_stream():
    header = {"dataVersion": 3, "qupathVersion": "0.5.1",
              "server": {"uri": "file:/d/caf%C3%A9.svs", "metadata": {"pixelCalibration": {
                  "pixelWidth": {"value": 0.25, "unit": "µm"}, "pixelHeight": {"value": 0.25, "unit": "µm"}}}},
              "name": "Gewebe äöü 組織"}
    h = parse_qpdata_header(qpdata_bytes(header))
    assert (h.file_version, h.data_version, h.qupath_version) == ("Data file version 3", 3, "0.5.1")
    assert h.raw["name"] == "Gewebe äöü 組織"
    assert h.image_uri == "file:/d/caf%C3%A9.svs"
    assert h.mpp == pytest.approx(0.25)
    assert parse_qpdata_header(qpdata_bytes(header, long_string=True)).qupath_version == "0.5.1"


def test_qpdata_rejects_non_java_streams(tmp_path):
    with pytest.raises(ProjectError, match="AC ED 00 05"):
        parse_qpdata_header(b"PK\x03\x04 not java")
    bad = qpdata_bytes({"qupathVersion": "0.4.0"})[:40]
    with pytest.raises(ProjectError, match="truncated"):
        parse_qpdata_header(bad)
    with pytest.raises(ProjectError, match="cannot read"):
        read_qpdata_header(tmp_path / "absent.qpdata")


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/home/me/My%20Slides/caf%C3%A9%20HER2.svs", "/home/me/My Slides/café HER2.svs"),
        ("file:///data/a%23b.tif", "/data/a#b.tif"),
        ("file:/data/%E7%B5%84%E7%B9%94.ndpi", "/data/組織.ndpi"),
        ("/plain/path.svs", "/plain/path.svs"),
    ],
)
def test_uri_to_path_decodes_qupath_uris(uri, expected):
    assert uri_to_path(uri) == Path(expected)


def test_uri_to_path_windows_and_remote():
    assert str(uri_to_path("file:/C:/Slides/a%20b.svs")).replace("\\", "/").endswith("C:/Slides/a b.svs")
    assert uri_to_path("file://server/share/x.svs") == Path("//server/share/x.svs")
    assert uri_to_path("https://omero.example.org/webclient/?show=image-1") is None
    assert uri_to_path("") is None


def test_server_builder_uri_follows_nested_builders():
    rotated = {"builderType": "rotated", "rotation": "ROTATE_180",
               "builder": {"builderType": "uri", "uri": "file:/x/inner.svs"}}
    sparse = {"builderType": "sparse", "regions": [{"region": {}, "builder": {"uri": "file:/x/part1.tif"}}]}
    assert server_builder_uri(rotated) == "file:/x/inner.svs"
    assert server_builder_uri(sparse) == "file:/x/part1.tif"
    assert server_builder_uri({"builderType": "uri"}) is None


def test_pixel_size_units():
    def cal(v, unit):
        return {"pixelCalibration": {"pixelWidth": {"value": v, "unit": unit},
                                     "pixelHeight": {"value": v, "unit": unit}}}

    assert pixel_size_from_metadata(cal(0.5, "µm")) == pytest.approx(0.5)
    assert pixel_size_from_metadata(cal(250, "nm")) == pytest.approx(0.25)
    assert pixel_size_from_metadata(cal(1.0, "px")) is None
    assert pixel_size_from_metadata({}) is None


# --------------------------------------------------------------------------- synthetic project


def make_project(root: Path, images: list[dict], *, project_uri: str | None = None) -> Path:
    """A minimal project.qpproj + data/<id>/ folders like QuPath 0.5 writes."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, img in enumerate(images, start=1):
        meta = {"width": 1000, "height": 800, "pixelCalibration": {
            "pixelWidth": {"value": img.get("mpp", 0.5), "unit": "µm"},
            "pixelHeight": {"value": img.get("mpp", 0.5), "unit": "µm"}}}
        builder = {"builderType": "uri", "uri": img["uri"], "metadata": meta}
        entries.append({"entryID": i, "imageName": img["name"], "serverBuilder": builder,
                        "metadata": img.get("metadata", {})})
        d = root / "data" / str(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / "data.qpdata").write_bytes(qpdata_bytes({"dataVersion": 3, "qupathVersion": "0.5.1",
                                                      "server": builder}))
        (d / "server.json").write_text(json.dumps(builder))
    doc = {"version": "0.5.1", "uri": project_uri or (root / "project.qpproj").as_uri(),
           "lastID": len(images), "images": entries}
    (root / "project.qpproj").write_text(json.dumps(doc))
    old = time.time() - 3600  # saved an hour ago: not open in QuPath
    for p in [root / "project.qpproj", *root.glob("data/*/data.qpdata")]:
        os.utime(p, (old, old))
    return root


def test_json_project_lists_entries_paths_and_versions(tmp_path):
    slides = tmp_path / "my slides"
    slides.mkdir()
    (slides / "café HER2.svs").write_bytes(b"x")
    proj = make_project(tmp_path / "proj", [
        {"name": "café HER2.svs", "uri": (slides / "café HER2.svs").as_uri(), "mpp": 0.2527,
         "metadata": {"case": "A"}},
        {"name": "gone.svs", "uri": "file:/nowhere/gone.svs"},
    ])
    p = open_project(proj, backend="json")
    assert isinstance(p, JsonProject) and p.version == "0.5.1"
    a, b = p.images()
    assert a.exists and a.path == slides / "café HER2.svs"
    assert a.mpp == pytest.approx(0.2527) and (a.width, a.height) == (1000, 800)
    assert a.qupath_version == "0.5.1" and a.data_version == 3 and a.metadata == {"case": "A"}
    assert not b.exists and "image file not found: /nowhere/gone.svs" in b.problem and "--image-root" in b.problem
    assert p.user_annotations(a) is None
    with pytest.raises(QuPathUnavailable, match="PAQUO_QUPATH_DIR"):
        p.write_objects(a, [])


def test_moved_project_and_image_root(tmp_path):
    # project and images moved together: relative path from the old location still works
    old_root = "/old/place/proj"
    proj = make_project(tmp_path / "proj", [
        {"name": "a.svs", "uri": "file:/old/place/proj/images/a.svs"},
        {"name": "b.svs", "uri": "file:/elsewhere/b.svs"},
        {"name": "c.svs", "uri": "file:/elsewhere/c.svs"},
    ], project_uri=f"file:{old_root}/project.qpproj")
    (proj / "images").mkdir()
    (proj / "images" / "a.svs").write_bytes(b"a")
    store = tmp_path / "store"
    (store / "x").mkdir(parents=True)
    (store / "x" / "b.svs").write_bytes(b"b")
    (store / "x" / "c.svs").write_bytes(b"c")
    (store / "y").mkdir()
    (store / "y" / "c.svs").write_bytes(b"c2")
    a, b, c = JsonProject(proj, image_roots=[store]).images()
    assert a.path == proj / "images" / "a.svs"
    assert b.path == store / "x" / "b.svs"
    assert not c.exists and "found 2 times" in c.problem


def test_project_file_errors(tmp_path):
    with pytest.raises(ProjectError, match="no QuPath project"):
        open_project(tmp_path)
    (tmp_path / "project.qpproj").write_text("{not json")
    with pytest.raises(ProjectError, match="project.qpproj.backup"):
        open_project(tmp_path, backend="json")
    with pytest.raises(UserInputError):
        open_project(tmp_path / "x.txt")


def test_paquo_backend_without_qupath_says_how_and_starts_no_jvm(tmp_path, monkeypatch):
    monkeypatch.setenv("PAQUO_QUPATH_DIR", str(tmp_path / "no-qupath-here"))
    proj = make_project(tmp_path / "proj", [{"name": "a.svs", "uri": "file:/a.svs"}])
    with pytest.raises(QuPathUnavailable, match="PAQUO_QUPATH_DIR"):
        open_project(proj, backend="paquo")
    assert open_project(proj).backend == "json"  # auto degrades
    # the same calls in a fresh interpreter (a test with QuPath may have started this one's JVM)
    code = (
        "import sys, jpype\n"
        "from her2_qupath.errors import QuPathUnavailable\n"
        "from her2_qupath.qupath.project import open_project\n"
        "try:\n"
        "    open_project(sys.argv[1], backend='paquo')\n"
        "except QuPathUnavailable:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('opened without QuPath')\n"
        "assert open_project(sys.argv[1]).backend == 'json'\n"
        "print('JVM started:', jpype.isJVMStarted())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, str(proj)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "JVM started: False"


def test_filter_entries_by_glob_and_id():
    es = [ImageEntry(str(i), n, None, None, False) for i, n in enumerate(["A_HER2.svs", "A_HE.svs", "B_HER2.ndpi"])]
    assert [e.name for e in filter_entries(es, ["*her2*"])] == ["A_HER2.svs", "B_HER2.ndpi"]
    assert [e.name for e in filter_entries(es, ["1"])] == ["A_HE.svs"]
    assert filter_entries(es, []) == es


# --------------------------------------------------------------------------- pairing


def entries(*names: str, meta: dict[str, dict] | None = None) -> list[ImageEntry]:
    return [ImageEntry(str(i + 1), n, None, None, False, metadata=(meta or {}).get(n, {}))
            for i, n in enumerate(names)]


def test_pair_by_pattern():
    es = entries("c1_HE.svs", "c1_HER2.svs", "c2_HER2.svs", "c3_HE.svs", "overview.png")
    got = pair_images(es, pattern=r"(?P<case>.+)_(?P<stain>HE|HER2)")
    pairs = {(p.case, p.ihc.name, p.he.name if p.he else None) for p in got.pairs}
    assert pairs == {("c1", "c1_HER2.svs", "c1_HE.svs"), ("c2", "c2_HER2.svs", None)}
    reasons = {e.name: r for e, r in got.unpaired}
    assert "does not match" in reasons["overview.png"]
    assert "no IHC image" in reasons["c3_HE.svs"]
    assert "no H&E image" in reasons["c2_HER2.svs"]


def test_pair_pattern_needs_named_groups():
    with pytest.raises(UserInputError, match="named groups"):
        pair_images(entries("a"), pattern=r"(.+)_(HE)")
    with pytest.raises(UserInputError, match="regular expression"):
        pair_images(entries("a"), pattern=r"(?P<case>")


def test_pair_by_csv(tmp_path):
    es = entries("s1.svs", "s2.svs", "s3.svs")
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("case,ihc,he\nP1,s2.svs,s1\n")
    got = pair_images(es, pairs_csv=csv_file)
    assert [(p.case, p.ihc.name, p.he.name) for p in got.pairs] == [("P1", "s2.svs", "s1.svs")]
    assert [(e.name, r) for e, r in got.unpaired] == [("s3.svs", "not listed in the pairs CSV")]
    csv_file.write_text("ihc,he\nmissing.svs,s1.svs\n")
    with pytest.raises(UserInputError, match="missing.svs"):
        pair_images(es, pairs_csv=csv_file)
    csv_file.write_text("a,b\n1,2\n")
    with pytest.raises(UserInputError, match="'ihc' and 'he'"):
        pair_images(es, pairs_csv=csv_file)


def test_pair_by_metadata_and_default():
    meta = {"x.svs": {"case": "7", "stain": "H&E"}, "y.svs": {"case": "7", "stain": "HER2"}, "z.svs": {}}
    es = entries("x.svs", "y.svs", "z.svs", meta=meta)
    got = pair_images(es, metadata_key="case")
    assert [(p.ihc.name, p.he.name) for p in got.pairs] == [("y.svs", "x.svs")]
    assert [e.name for e, _ in got.unpaired] == ["z.svs"]
    plain = pair_images(es)  # no pairing: every non-H&E image on its own
    assert [p.ihc.name for p in plain.pairs] == ["y.svs", "z.svs"]
    with pytest.raises(UserInputError, match="only one"):
        pair_images(es, pattern="(?P<case>.)(?P<stain>.)", metadata_key="case")


# --------------------------------------------------------------------------- ROIs, markers


def test_find_roi_file_order(tmp_path):
    img = tmp_path / "slides" / "A1.svs"
    img.parent.mkdir()
    img.write_bytes(b"x")
    e = ImageEntry("5", "A1.svs", img.as_uri(), img, True)
    proj = tmp_path / "proj"
    assert find_roi_file(e, project_dir=proj) is None
    beside = img.with_name("A1.geojson")
    beside.write_text("{}")
    assert find_roi_file(e, project_dir=proj) == beside
    exported = proj / "her2_qupath" / "5" / "rois.geojson"
    exported.parent.mkdir(parents=True)
    exported.write_text("{}")
    assert find_roi_file(e, project_dir=proj) == exported
    roi_dir = tmp_path / "rois"
    roi_dir.mkdir()
    (roi_dir / "A1.svs.geojson").write_text("{}")
    assert find_roi_file(e, project_dir=proj, roi=roi_dir) == roi_dir / "A1.svs.geojson"
    with pytest.raises(UserInputError, match="does not exist"):
        find_roi_file(e, project_dir=proj, roi=tmp_path / "nope")


def test_product_marker_roundtrip():
    from shapely.geometry import box

    from her2_qupath.qupath.geojson import QuPathObject

    user = QuPathObject(box(0, 0, 10, 10), classification="Tumor", name="T1")
    assert not is_product_object(user)
    ours = mark_product_object(QuPathObject(box(0, 0, 1, 1), "tile", "HER2 2+", name="NFW/2+"), run_id="r1")
    from her2_qupath import __version__

    assert ours.name == "her2-qupath: NFW/2+"
    assert ours.metadata == {"her2-qupath": __version__, "her2-qupath run": "r1"}
    assert is_product_object(ours)
    assert is_product_object({"name": "her2-qupath: x"}) and not is_product_object({"name": "mine"})


# --------------------------------------------------------------------------- safety


def test_recently_saved_project_looks_open(tmp_path):
    proj = make_project(tmp_path / "proj", [{"name": "a.svs", "uri": "file:/a.svs"}])
    assert looks_open(proj) == []
    ensure_project_closed(proj)
    now = time.time()
    os.utime(proj / "data" / "1" / "data.qpdata", (now - 5, now - 5))
    reasons = looks_open(proj)
    assert len(reasons) == 1 and "data/1/data.qpdata was saved" in reasons[0]
    with pytest.raises(ProjectLocked, match="--force") as info:
        ensure_project_closed(proj)
    assert "close the project in QuPath" in str(info.value)
    ensure_project_closed(proj, force=True)  # the user says it is closed
    short = ProjectConfig(recent_write_seconds=1.0)
    assert looks_open(proj, config=short) == []


def test_write_lock_excludes_a_second_writer(tmp_path):
    proj = make_project(tmp_path / "proj", [{"name": "a.svs", "uri": "file:/a.svs"}])
    with project_write_lock(proj):
        assert any("another her2-qupath run" in r for r in looks_open(proj))
        with pytest.raises(ProjectLocked, match="another her2-qupath run"):
            with project_write_lock(proj):
                pass
    assert looks_open(proj) == []


def test_backup_copies_qpproj_and_touched_entries(tmp_path):
    proj = make_project(tmp_path / "proj", [{"name": "a.svs", "uri": "file:/a.svs"},
                                            {"name": "b.svs", "uri": "file:/b.svs"}])
    dest = backup_project(proj, ["2"], stamp="T1")
    assert dest == proj / "her2_qupath" / "backups" / "T1"
    assert (dest / "project.qpproj").read_bytes() == (proj / "project.qpproj").read_bytes()
    assert (dest / "data" / "2" / "data.qpdata").read_bytes() == (proj / "data" / "2" / "data.qpdata").read_bytes()
    assert not (dest / "data" / "1").exists()
    assert backup_project(proj, ["2"], stamp="T1").name == "T1-1"  # never overwrites a backup


# --------------------------------------------------------------------------- the real QuPath 0.4.0 project


@pytest.mark.shared_data
def test_real_foci_project_entries_and_versions(foci_project):
    proj = foci_project
    p = open_project(proj, backend="json")
    imgs = p.images()
    assert len(imgs) == 44 and p.version == "0.4.0"
    assert {e.qupath_version for e in imgs} == {"0.4.0"} and {e.data_version for e in imgs} == {3}
    assert all(not e.exists and "image file not found" in e.problem for e in imgs)
    ids = [int(e.entry_id) for e in imgs]
    assert ids == list(range(242, 286))
    assert all(e.uri.startswith("file:/home/phm/") for e in imgs)
    h = read_qpdata_header(proj / "data" / "242" / "data.qpdata")
    assert h.file_version == "Data file version 3" and h.qupath_version == "0.4.0"
    assert h.image_uri == imgs[0].uri
