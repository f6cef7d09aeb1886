"""``her2-qupath batch`` on projects, without QuPath (GeoJSON out) and with a stand-in paquo project."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from shapely.geometry import box
from test_project import make_project
from test_project_writeback import FakeHierarchy, make_class, user_objects

from her2_qupath.cli import cli
from her2_qupath.qupath import batch as batch_mod
from her2_qupath.qupath.geojson import QuPathObject, read_geojson, write_geojson
from her2_qupath.qupath.project import JsonProject, WriteReport


class FakeResult:
    def __init__(self, request: Any) -> None:
        n = len(request.rois or []) or 1
        self.summary = {"her2_score": "2+", "h_score": 150.0, "percent_positive": 30.0, "n_tiles": 4 * n,
                        "class_percentages": {"0": 40.0, "1+": 30.0, "2+": 20.0, "3+": 10.0}, "regions": []}
        self.detections = [QuPathObject(box(x, 0, x + 10, 10), "tile", "HER2 2+", name="NFW/2+")
                           for x in range(0, 40, 10)]
        self.annotations = [QuPathObject(box(0, 0, 100, 100), "annotation", "HER2 2+",
                                         name="her2-qupath: Region 1 HER2 2+", measurements={"H-score": 150.0})]
        # the H&E side of a pair: the same tiles (H&E coordinates) and the ROI as drawn there
        self.he_detections = [QuPathObject(box(x, 0, x + 10, 10), "tile", "Tumor", name="NFW/2+")
                              for x in range(0, 40, 10)] if request.he else []
        self.he_annotations = [QuPathObject(box(0, 0, 50, 50), "annotation", "HER2 2+",
                                            name="her2-qupath: T HER2 2+")] if request.he else []


class Calls(list):
    """The requests run_score received, and the executor of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.executors: list[Any] = []


@pytest.fixture()
def fake_score(monkeypatch):
    """Stand in for pipeline.run_score: records requests, fails for images named *bad*."""
    calls = Calls()

    def run_score(request, *, progress=None, cancel=None, executor=None):
        calls.append(request)
        calls.executors.append(executor)
        if progress:
            progress(1, 2)
            progress(2, 2)
        if "bad" in request.ihc.name:
            raise ValueError(f"cannot decode {request.ihc.name}")
        return FakeResult(request)

    import her2_qupath.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_score", run_score)
    monkeypatch.setenv("PAQUO_QUPATH_DIR", "/nonexistent/QuPath")
    return calls


def project_with_images(tmp_path: Path) -> Path:
    slides = tmp_path / "slides"
    slides.mkdir()
    for n in ("c1_HER2.svs", "c1_HE.svs", "c2_HER2.svs", "bad_HER2.svs"):
        (slides / n).write_bytes(b"not read by the stand-in")
    images = [{"name": n, "uri": (slides / n).as_uri(), "mpp": 0.25}
              for n in ("c1_HER2.svs", "c1_HE.svs", "c2_HER2.svs", "bad_HER2.svs")]
    images.append({"name": "c3_HER2.svs", "uri": "file:/gone/c3_HER2.svs"})
    return make_project(tmp_path / "proj", images)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["batch", *args], catch_exceptions=False)


def test_batch_without_qupath_writes_geojson_and_summaries(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    # as export_annotations.groovy writes it, for the H&E image (entry 2): pairs use its ROIs
    rois = proj / "her2_qupath" / "2" / "rois.geojson"
    rois.parent.mkdir(parents=True)
    write_geojson(rois, [QuPathObject(box(0, 0, 50, 50), classification="Tumor", name="T"),
                         QuPathObject(box(60, 0, 90, 50), classification="Stroma")])
    res = invoke(str(proj), "--pair-pattern", r"(?P<case>.+)_(?P<stain>HE|HER2)", "--roi-class", "Tumor")
    assert res.exit_code == 0, res.output
    assert "direct write-back" in res.output and "PAQUO_QUPATH_DIR" in res.output
    out = proj / "her2_qupath"
    rows = {r["image"]: r for r in csv.DictReader((out / "batch_summary.csv").open())}
    assert rows["c1_HER2.svs"]["status"] == "scored" and rows["c1_HER2.svs"]["he_image"] == "c1_HE.svs"
    assert rows["c1_HER2.svs"]["her2_score"] == "2+" and rows["c1_HER2.svs"]["pct 3+"] == "10.0"
    # c2 and bad have no Tumor ROI: reported, not scored with the whole image
    assert rows["c2_HER2.svs"]["status"] == "failed" and "no annotation of class 'Tumor'" in rows["c2_HER2.svs"]["message"]
    assert rows["c3_HER2.svs"]["status"] == "missing" and "/gone/c3_HER2.svs" in rows["c3_HER2.svs"]["message"]
    # the request: IHC + paired H&E, pixel sizes from the project, only the Tumor ROI
    (req,) = fake_score
    assert req.ihc.name == "c1_HER2.svs" and req.he.name == "c1_HE.svs"
    assert req.ihc_mpp == pytest.approx(0.25) and [r.name for r in req.rois] == ["T"]
    dets = read_geojson(out / "1" / "detections.geojson")
    anns = read_geojson(out / "1" / "annotations.geojson")
    assert len(dets) == 4 and all(d.name.startswith("her2-qupath: ") and d.metadata.get("her2-qupath") for d in dets)
    assert [a.name for a in anns] == ["her2-qupath: Region 1 HER2 2+"]
    summary = json.loads((out / "1" / "summary.json").read_text())
    assert summary["her2_score"] == "2+" and summary["batch"]["entry"]["qupath_version"] == "0.5.1"
    assert rows["c1_HER2.svs"]["roi_source"] == str(rois)
    # the H&E entry gets its side of the pair, each object tagged with the IHC entry
    he_dets = read_geojson(out / "2" / "detections.geojson")
    he_anns = read_geojson(out / "2" / "annotations.geojson")
    assert len(he_dets) == 4 and {d.class_name for d in he_dets} == {"Tumor"}
    assert all(o.name.startswith("her2-qupath") and o.metadata["her2-qupath IHC entry"] == "1"
               for o in he_dets + he_anns)
    assert [a.geometry.bounds for a in he_anns] == [(0.0, 0.0, 50.0, 50.0)]
    assert rois.is_file()  # the exported ROIs stay beside the results
    report = json.loads((out / "batch_summary.json").read_text())
    assert report["counts"]["scored"] == 1 and report["qupath_versions"] == {"0.5.1": 5}
    (c1,) = [o for o in report["outcomes"] if o["status"] == "scored"]
    assert c1["he_outputs"] == [str(out / "2" / "detections.geojson"), str(out / "2" / "annotations.geojson")]
    text = (out / "IMPORT.txt").read_text()
    assert "import_results" in text and "c1_HE.svs  (H&E partner of c1_HER2.svs)" in text
    assert str(out / "2" / "detections.geojson") in text


def test_one_bad_image_does_not_stop_the_others(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--images", "*HER2*")
    assert res.exit_code == 0, res.output
    statuses = {r["image"]: r["status"] for r in csv.DictReader((proj / "her2_qupath" / "batch_summary.csv").open())}
    assert statuses == {"c1_HER2.svs": "scored", "c2_HER2.svs": "scored", "bad_HER2.svs": "failed",
                        "c3_HER2.svs": "missing"}
    assert "ValueError: cannot decode bad_HER2.svs" in res.output
    assert [r.rois for r in fake_score] == [None, None, None]  # no ROIs found: whole images


def test_failed_run_exits_nonzero(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--images", "bad*")
    assert res.exit_code == 1
    assert "failed 1" in res.output


def test_dry_run_writes_nothing(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    before = snapshot(tmp_path)
    res = invoke(str(proj), "--dry-run", "--pair-pattern", r"(?P<case>.+)_(?P<stain>HE|HER2)")
    assert res.exit_code == 0, res.output
    assert snapshot(tmp_path) == before and fake_score == []
    assert "would-score" in res.output and "unpaired" in res.output
    assert "on H&E c1_HE.svs (results to entries 1 and 2)" in res.output


def test_resume_skips_scored_images(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    assert invoke(str(proj), "--images", "c*").exit_code == 0
    n = len(fake_score)
    res = invoke(str(proj), "--images", "c*", "--resume")
    assert res.exit_code == 0 and len(fake_score) == n
    assert res.output.count("skipped") >= 3


def _pairs_csv(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text("ihc,he\n" + "".join(f"{i},{h}\n" for i, h in rows))
    return path


def _tags(path: Path) -> list[str]:
    return sorted(o.metadata["her2-qupath IHC entry"] for o in read_geojson(path))


def test_he_shared_by_two_ihc_images_keeps_both_results(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    both = _pairs_csv(tmp_path, [("c1_HER2.svs", "c1_HE.svs"), ("c2_HER2.svs", "c1_HE.svs")])
    assert invoke(str(proj), "--pairs", str(both)).exit_code == 0
    he = proj / "her2_qupath" / "2"
    assert _tags(he / "detections.geojson") == ["1"] * 4 + ["3"] * 4
    assert _tags(he / "annotations.geojson") == ["1", "3"]
    # run again, then with only one of the pairs: each run replaces only its own objects
    assert invoke(str(proj), "--pairs", str(both)).exit_code == 0
    assert _tags(he / "detections.geojson") == ["1"] * 4 + ["3"] * 4
    one = _pairs_csv(tmp_path, [("c1_HER2.svs", "c1_HE.svs")])
    assert invoke(str(proj), "--pairs", str(one)).exit_code == 0
    assert _tags(he / "detections.geojson") == ["1"] * 4 + ["3"] * 4
    # --resume leaves the H&E results as they are and scores nothing
    before, n = snapshot(he), len(fake_score)
    assert invoke(str(proj), "--pairs", str(both), "--resume").exit_code == 0
    assert snapshot(he) == before and len(fake_score) == n


def test_missing_he_partner_writes_nothing_for_the_pair(tmp_path, fake_score):
    proj = project_with_images(tmp_path)
    pairs = _pairs_csv(tmp_path, [("c1_HER2.svs", "c3_HER2.svs")])  # c3 is gone
    res = invoke(str(proj), "--pairs", str(pairs))
    assert res.exit_code == 1 and "H&E partner c3_HER2.svs" in res.output
    assert not (proj / "her2_qupath" / "1").exists() and not (proj / "her2_qupath" / "5").exists()


# --------------------------------------------------------------------------- write-back path


class FakePaquoProject(JsonProject):
    """A JSON project that pretends to be paquo: user annotations and hierarchies in memory."""

    backend = "paquo"
    hierarchies: dict[str, FakeHierarchy] = {}
    saves = 0

    def user_annotations(self, entry):
        return [QuPathObject(box(0, 0, 50, 50), classification="Tumor", name="T")]

    metadata: dict[str, dict] = {}

    def write_objects(self, entry, objects, *, metadata=None, stains=None, stain_type="H-DAB"):
        from her2_qupath.qupath._paquo import replace_product_objects

        self.metadata[entry.entry_id] = dict(metadata or {})
        h = self.hierarchies.setdefault(entry.entry_id, _seeded())
        return replace_product_objects(h, objects, make_path_class=make_class, entry_id=entry.entry_id)

    def save(self):
        FakePaquoProject.saves += 1


def _seeded() -> FakeHierarchy:
    from test_project_writeback import seeded

    return seeded()


@pytest.fixture()
def fake_paquo(monkeypatch, fake_score):
    from her2_qupath.qupath import _paquo

    monkeypatch.setattr(_paquo, "qupath_status", lambda: _paquo.QuPathStatus(True, "stand-in"))
    FakePaquoProject.hierarchies = {}
    monkeypatch.setattr(batch_mod, "open_project",
                        lambda path, backend, mode, image_roots: FakePaquoProject(path, image_roots=image_roots))
    return FakePaquoProject


def test_write_back_backs_up_and_replaces_only_ours(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--roi-class", "Tumor")
    assert res.exit_code == 0, res.output
    h = fake_paquo.hierarchies["1"]
    first_user = user_objects(h)
    assert len(first_user) == 3 and len(h.annotations) + len(h.detections) == 3 + 5
    assert fake_paquo.metadata["1"]["her2-qupath HER2 score"] == "2+"
    backups = sorted((proj / "her2_qupath" / "backups").iterdir())
    assert len(backups) == 1 and (backups[0] / "data" / "1" / "data.qpdata").is_file()
    assert not (proj / "her2_qupath" / "IMPORT.txt").exists()
    time.sleep(0.01)
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--roi-class", "Tumor")
    assert res.exit_code == 0, res.output
    assert user_objects(h) == first_user and len(h.annotations) + len(h.detections) == 3 + 5
    assert len(list((proj / "her2_qupath" / "backups").iterdir())) == 2
    assert not (proj / ".her2-qupath.lock").exists()


def test_write_back_of_a_pair_writes_the_he_entry_too(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    pattern = r"(?P<case>c1)_(?P<stain>HE|HER2)"
    res = invoke(str(proj), "--pair-pattern", pattern, "--roi-class", "Tumor")
    assert res.exit_code == 0, res.output
    he = fake_paquo.hierarchies["2"]
    first_user = user_objects(he)
    assert len(first_user) == 3  # the user's objects of the H&E image, untouched
    ours = [o for o in list(he.annotations) + list(he.detections) if (o.name or "").startswith("her2-qupath")]
    assert len(ours) == 4 + 1 and sum(o.path_class[0] == "Tumor" for o in ours) == 4
    assert fake_paquo.metadata["2"] == {"her2-qupath run": fake_paquo.metadata["1"]["her2-qupath run"],
                                        "her2-qupath IHC partner": "c1_HER2.svs"}
    (backup,) = (proj / "her2_qupath" / "backups").iterdir()
    assert (backup / "data" / "1" / "data.qpdata").is_file() and (backup / "data" / "2" / "data.qpdata").is_file()
    rows = {r["image"]: r for r in csv.DictReader((proj / "her2_qupath" / "batch_summary.csv").open())}
    assert rows["c1_HER2.svs"]["he_written_to_project"] == "True"
    time.sleep(0.01)
    assert invoke(str(proj), "--pair-pattern", pattern, "--roi-class", "Tumor").exit_code == 0
    assert user_objects(he) == first_user and len(he.annotations) + len(he.detections) == 3 + 5


def test_write_back_refused_when_project_looks_open(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    os.utime(proj / "project.qpproj")  # just saved by QuPath
    res = CliRunner().invoke(cli, ["batch", str(proj), "--images", "c1_HER2.svs"])
    assert res.exit_code != 0
    assert "looks open" in str(res.exception) and "--force" in str(res.exception)
    assert fake_paquo.hierarchies == {}
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--force")
    assert res.exit_code == 0 and "1" in fake_paquo.hierarchies


def test_no_write_back_flag_keeps_geojson_only(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--no-write-back")
    assert res.exit_code == 0
    assert fake_paquo.hierarchies == {} and (proj / "her2_qupath" / "1" / "detections.geojson").is_file()


# --------------------------------------------------------------------------- the real QuPath 0.4.0 project


@pytest.mark.shared_data
def test_real_foci_project_batch(foci_project, tmp_path, fake_score):
    proj = foci_project
    before = snapshot(proj)
    dry = invoke(str(proj), "--dry-run", "--json")
    assert dry.exit_code == 0
    report = json.loads(dry.output)
    assert len(report["entries"]) == 44 and report["qupath_versions"] == {"0.4.0": 44}
    assert report["counts"]["missing"] == 44 and report["backend"] == "json"
    assert all("image file not found: /home/phm/" in o["message"] for o in report["outcomes"])
    assert snapshot(proj) == before
    # one image found below --image-root: it is scored, the 43 others are reported missing
    name = report["outcomes"][5]["image"]
    root = tmp_path / "found"
    root.mkdir()
    (root / name).write_bytes(b"x")
    res = invoke(str(proj), "--image-root", str(root))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((proj / "her2_qupath" / "batch_summary.csv").open()))
    assert len(rows) == 44
    assert [r["image"] for r in rows if r["status"] == "scored"] == [name]
    assert sum(r["status"] == "missing" for r in rows) == 43
    assert {r["qupath_version"] for r in rows} == {"0.4.0"}
    eid = report["outcomes"][5]["entry_id"]
    assert (proj / "her2_qupath" / eid / "detections.geojson").is_file()
    assert {k: v for k, v in snapshot(proj).items() if not k.startswith("her2_qupath")} == before
    _ = WriteReport  # the write-back type is exercised in test_project_writeback


# --------------------------------------------------------------------------- the real pipeline


def _pipeline_or_skip() -> None:
    import importlib

    for mod in ("her2_qupath.slide", "her2_qupath.tiling", "her2_qupath.stain", "her2_qupath.scoring"):
        try:
            importlib.import_module(mod)
        except ImportError as err:
            pytest.skip(f"{mod} cannot be imported ({err}): the real pipeline cannot run")


def test_batch_with_the_real_pipeline(tmp_path, monkeypatch):
    """A drawn IHC picture of known classes (server_support.LAYOUT_3: 37.5 / 25 / 25 / 12.5 % of
    tiles at 0 / 1+ / 2+ / 3+, breast 3+) in a project, scored end to end."""
    _pipeline_or_skip()
    from server_support import LAYOUT_3, MPP, ihc_rgb
    from skimage.io import imsave

    monkeypatch.setenv("PAQUO_QUPATH_DIR", "/nonexistent/QuPath")
    slides = tmp_path / "slides"
    slides.mkdir()
    image = slides / "IHC sample é.png"
    imsave(image, ihc_rgb(LAYOUT_3), check_contrast=False)
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri(), "mpp": MPP}])
    res = invoke(str(proj))
    assert res.exit_code == 0, res.output
    out = proj / "her2_qupath" / "1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["her2_score"] == "3+"
    from her2_qupath.qupath.geojson import load_features
    from her2_qupath.qupath.validate import validate_features

    for name in ("detections.geojson", "annotations.geojson"):
        assert validate_features(load_features(out / name)) > 0
    dets = read_geojson(out / "detections.geojson")
    tiles = [d for d in dets if d.object_type == "tile"]
    assert len(tiles) == summary["n_tiles"] > 0
    assert all(t.name.startswith("her2-qupath") for t in dets)
    assert {t.class_name for t in tiles} <= {"HER2 0", "HER2 1+", "HER2 2+", "HER2 3+", "Ignore*"}
    pct = summary["class_percentages"]
    assert [pct[k] for k in ("0", "1+", "2+", "3+")] == pytest.approx([37.5, 25, 25, 12.5], abs=3)


def test_pair_with_the_real_pipeline_writes_the_he_side(tmp_path, monkeypatch):
    """Two generated slides related by a known affine: the H&E entry gets the tiles and the region
    as drawn on the H&E slide; the IHC entry the same tiles and region mapped onto the IHC slide."""
    _pipeline_or_skip()
    import numpy as np
    from shapely.geometry import Polygon

    from her2_qupath.qupath.geojson import load_features
    from her2_qupath.qupath.validate import validate_features
    from her2_qupath.slide_writer import write_slide
    from her2_qupath.synthetic import synthetic_pair

    monkeypatch.setenv("PAQUO_QUPATH_DIR", "/nonexistent/QuPath")
    he_rgb, ihc_rgb, matrix, _truth = synthetic_pair((1024, 1024), seed=3, mpp=0.5)
    slides = tmp_path / "slides"
    slides.mkdir()
    he_path = write_slide(slides / "case1_HE.tif", he_rgb, mpp=0.5)
    ihc_path = write_slide(slides / "case1_HER2.tif", ihc_rgb, mpp=0.5)
    proj = make_project(tmp_path / "proj", [
        {"name": "case1_HER2.tif", "uri": Path(ihc_path).as_uri(), "mpp": 0.5},
        {"name": "case1_HE.tif", "uri": Path(he_path).as_uri(), "mpp": 0.5},
    ])
    roi = Polygon([(150, 120), (880, 160), (860, 900), (130, 870)])  # drawn on the H&E slide
    write_geojson(proj / "her2_qupath" / "2" / "rois.geojson",
                  [QuPathObject(roi, classification="Tumor", name="my tumour")])

    def user_files() -> dict[str, bytes]:
        return snapshot(slides) | {k: v for k, v in snapshot(proj).items()
                                   if not k.startswith("her2_qupath/") or k.endswith("rois.geojson")}

    user_before = user_files()
    for _ in range(2):  # the second run replaces the first run's results, it does not add to them
        res = invoke(str(proj), "--pair-pattern", r"(?P<case>.+)_(?P<stain>HE|HER2)", "--roi-class", "Tumor")
        assert res.exit_code == 0, res.output
    out = proj / "her2_qupath"
    summary = json.loads((out / "1" / "summary.json").read_text())
    assert summary["registration"]["reliable"]
    for eid in ("1", "2"):
        for name in ("detections.geojson", "annotations.geojson"):
            assert validate_features(load_features(out / eid / name)) > 0
    ihc_tiles = [d for d in read_geojson(out / "1" / "detections.geojson") if d.object_type == "tile"]
    he_tiles = read_geojson(out / "2" / "detections.geojson")
    assert len(he_tiles) == len(ihc_tiles) == summary["n_tiles"] > 0
    assert {t.class_name for t in he_tiles} <= {"Tumor", "Non-tumor"}
    assert all(t.metadata["her2-qupath IHC entry"] == "1" and t.name.startswith("her2-qupath") for t in he_tiles)
    # the scored region: exactly the user's ROI on the H&E slide, the ROI mapped by the known affine on the IHC
    (he_region,) = read_geojson(out / "2" / "annotations.geojson")
    (ihc_region,) = read_geojson(out / "1" / "annotations.geojson")
    assert he_region.geometry.equals(roi) and he_region.class_name == ihc_region.class_name
    assert he_region.measurements == ihc_region.measurements
    expected = (matrix @ np.array([roi.centroid.x, roi.centroid.y, 1.0]))[:2]
    got = np.array([ihc_region.geometry.centroid.x, ihc_region.geometry.centroid.y])
    assert np.linalg.norm(got - expected) < 10.0  # pixels, after registration
    # the user's files (slides, project, exported ROIs) are untouched; IMPORT.txt lists the H&E files
    assert user_files() == user_before and "her2_qupath/2/rois.geojson" in user_before
    assert str(out / "2" / "detections.geojson") in (out / "IMPORT.txt").read_text()


def test_dask_scheduler_executor_reaches_the_pipeline(tmp_path, fake_score, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import her2_qupath.executors as executors_mod

    pool = ThreadPoolExecutor(1)
    seen: dict[str, Any] = {}

    class FakeDask:
        def __init__(self, address: str) -> None:
            seen["address"] = address

        def executor(self):
            return pool

        def close(self) -> None:
            seen["closed"] = True

    monkeypatch.setattr(executors_mod, "DaskBackend", FakeDask)
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--dask-scheduler", "tcp://10.0.0.5:8786")
    pool.shutdown()
    assert res.exit_code == 0, res.output
    assert seen == {"address": "tcp://10.0.0.5:8786", "closed": True}
    assert fake_score.executors == [pool]


def test_write_back_skips_relocated_images(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    moved = tmp_path / "moved"
    (tmp_path / "slides").rename(moved)
    res = invoke(str(proj), "--images", "c1_HER2.svs", "--image-root", str(moved))
    assert res.exit_code == 0, res.output
    assert fake_paquo.hierarchies == {}  # nothing written into the project
    assert "update the image paths" in res.output
    assert (proj / "her2_qupath" / "1" / "detections.geojson").is_file()


def test_write_back_skips_a_pair_whose_he_image_moved(tmp_path, fake_paquo):
    proj = project_with_images(tmp_path)
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "slides" / "c1_HE.svs").rename(moved / "c1_HE.svs")  # only the H&E image moved
    res = invoke(str(proj), "--pair-pattern", r"(?P<case>c1)_(?P<stain>HE|HER2)", "--image-root", str(moved))
    assert res.exit_code == 0, res.output
    assert fake_paquo.hierarchies == {}  # neither entry of the pair written into the project
    assert "it records c1_HE.svs at" in res.output and "it records c1_HER2.svs" not in res.output
    assert (proj / "her2_qupath" / "2" / "detections.geojson").is_file()
