"""Real QuPath through paquo: batch write-back into a project, and a published 0.4.0 project read.

Two generated slides in a project made by paquo, the user's own objects on each,
the real pipeline run twice by the CLI, then the project reopened and every
object compared: the user's byte for byte, ours against the GeoJSON the same
run wrote (type, geometry, class, measurements, name), the entry metadata
against the run's summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from shapely.geometry import box

from her2_qupath.cli import cli
from her2_qupath.config import HER2_COLORS, PRODUCT_MARKER
from her2_qupath.qupath.geojson import read_geojson

pytestmark = pytest.mark.qupath


@pytest.fixture(scope="module")
def qupath() -> None:
    from her2_qupath.qupath._paquo import qupath_status

    status = qupath_status()
    if not status.available:
        pytest.skip(f"needs QuPath for paquo: {status.message}")


def _slides(folder: Path) -> list[Path]:
    """Two IHC slides: scikit-image's DAB + hematoxylin sample and its mirror image, 1 µm/px."""
    import numpy as np
    from skimage import data

    from her2_qupath.slide_writer import write_slide

    folder.mkdir()
    rgb = data.immunohistochemistry()
    out = []
    for i, img in enumerate((rgb, np.ascontiguousarray(rgb[:, ::-1]))):
        # a single-resolution strip TIFF: every QuPath reads it, Bio-Formats or not
        out.append(write_slide(folder / f"case{i + 1}_HER2.tif", img, mpp=1.0, kind="plain", compression="zlib"))
    return out


def _java_type(obj: Any) -> str:
    """QuPath's own class of the object (paquo wraps every detection as a detection)."""
    return str(obj.java_object.getClass().getSimpleName())


def _user_view(obj: Any) -> tuple:
    pc = obj.path_class
    return (_java_type(obj), obj.roi.wkb, pc.name if pc else None, obj.name, obj.locked,
            tuple(sorted(obj.measurements.items())))


USER_CLASSES = [("Tumor", (200, 0, 0)), ("Stroma", (150, 200, 150)), ("Positive", (250, 62, 62))]


def _make_project(proj_dir: Path, slides: list[Path]) -> dict[str, list[tuple]]:
    """A project with the slides and the user's objects; returns each entry's user objects."""
    from paquo.classes import QuPathPathClass
    from paquo.projects import QuPathProject

    user: dict[str, list[tuple]] = {}
    with QuPathProject(proj_dir, mode="x") as qp:
        qp.path_classes = [QuPathPathClass(n, color=c) for n, c in USER_CLASSES]
        for slide in slides:
            entry = qp.add_image(slide)
            h = entry.hierarchy
            tumor = h.add_annotation(roi=box(40, 40, 300, 300), path_class=QuPathPathClass("Tumor"))
            tumor.name = "Tumor 1"
            h.add_annotation(roi=box(320, 320, 480, 470), measurements={"Area µm^2": 24000.0})
            det = h.add_detection(roi=box(5, 5, 15, 15), path_class=QuPathPathClass("Positive"),
                                  measurements={"DAB: Mean": 0.3})
            det.name = f"my {PRODUCT_MARKER} cell"  # the marker not at the start: the user's
            locked = h.add_annotation(roi=box(0, 400, 100, 500), path_class=QuPathPathClass("Stroma"))
            locked.locked = True
    with QuPathProject(proj_dir, mode="r") as qp:
        for entry in qp.images:
            objs = [*entry.hierarchy.annotations, *entry.hierarchy.detections]
            user[str(entry.entry_id)] = sorted(_user_view(o) for o in objs)
    # a project QuPath saved a second ago "looks open"; this one was closed a minute ago
    old = time.time() - 120
    for p in proj_dir.rglob("*"):
        os.utime(p, (old, old))
    return user


def _batch(proj_dir: Path) -> dict[str, Any]:
    res = CliRunner().invoke(cli, ["batch", str(proj_dir), "--roi-class", "Tumor", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


KINDS = {"annotation": "PathAnnotationObject", "detection": "PathDetectionObject",
         "tile": "PathTileObject", "cell": "PathCellObject"}


def _check_written(qp_entry: Any, out_dir: Path, run_id: str, summary: dict[str, Any],
                   *, he_of: str | None = None, tol: float = 1e-6) -> int:
    """Every object of this product in the entry matches the GeoJSON written beside it.

    ``he_of``: the entry is the H&E image of a pair with that IHC image. ``tol``: pixels
    (QuPath hands vertices back rounded to 0.01: tiles mapped onto an IHC slide need that)."""
    expected = [*read_geojson(out_dir / "detections.geojson"), *read_geojson(out_dir / "annotations.geojson")]
    assert expected, "the run wrote no objects"
    h = qp_entry.hierarchy
    ours = [o for o in [*h.annotations, *h.detections] if (o.name or "").startswith(PRODUCT_MARKER)]
    assert len(ours) == len(expected)
    remaining = list(ours)
    for exp in expected:
        # QuPath stores a rectangle from its top-left corner: same shape, other vertex order
        want = exp.geometry.normalize()
        match = [o for o in remaining if o.roi.normalize().equals_exact(want, tol) and o.name == exp.name]
        assert len(match) == 1, f"{exp.name}: {len(match)} objects in the project match its geometry"
        got = match[0]
        remaining.remove(got)
        assert _java_type(got) == KINDS[exp.object_type]
        assert (got.path_class.name if got.path_class else None) == (exp.class_name.split(":")[-1].strip()
                                                                     if exp.class_name else None)
        if got.path_class is not None and got.path_class.name in HER2_COLORS:
            assert got.path_class.color.to_rgb() == HER2_COLORS[got.path_class.name]
        if exp.class_name and ":" in exp.class_name:  # derived classes keep their parent
            assert got.path_class.parent is not None
            assert got.path_class.parent.name == exp.class_name.split(":")[0].strip()
        numeric = {k: float(v) for k, v in (exp.measurements or {}).items() if isinstance(v, (int, float))}
        assert set(got.measurements) == set(numeric)
        for key, value in numeric.items():  # QuPath keeps detection measurements as 32-bit floats
            assert got.measurements[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), key
    assert not remaining
    meta = dict(qp_entry.metadata)
    assert meta[f"{PRODUCT_MARKER} run"] == run_id
    if he_of is None:
        assert meta[f"{PRODUCT_MARKER} HER2 score"] == str(summary["her2_score"])
    else:
        assert meta[f"{PRODUCT_MARKER} IHC partner"] == he_of
    return len(ours)


def test_batch_writes_into_a_real_project_twice(tmp_path, monkeypatch, qupath):
    from paquo.projects import QuPathProject

    monkeypatch.delenv("HER2_QUPATH_CONFIG", raising=False)
    slides = _slides(tmp_path / "slides")
    proj_dir = tmp_path / "proj"
    user_before = _make_project(proj_dir, slides)
    assert len(user_before) == 2 and all(len(v) == 4 for v in user_before.values())

    counts = []
    for run in range(2):
        report = _batch(proj_dir)
        assert report["backend"] == "paquo" and report["counts"]["scored"] == 2, report
        assert report["backup_dir"] and Path(report["backup_dir"]).is_dir()
        for o in report["outcomes"]:
            assert o["written_to_project"] and o["roi_source"] == "project" and o["n_rois"] == 1, o
        with QuPathProject(proj_dir, mode="r") as qp:
            entries = {str(e.entry_id): e for e in qp.images}
            assert set(entries) == set(user_before)
            # the class list: the user's classes as they were, then each class written, once
            classes = [(pc.id, pc.color.to_rgb() if pc.color else None) for pc in qp.path_classes]
            assert classes[:len(USER_CLASSES)] == USER_CLASSES
            ids = [c for c, _ in classes]
            assert len(ids) == len(set(ids))
            written = {o.path_class.id for e in entries.values() for o in [*e.hierarchy.annotations,
                       *e.hierarchy.detections] if (o.name or "").startswith(PRODUCT_MARKER) and o.path_class}
            assert written and written <= set(ids)
            assert all(dict(classes)[c] == HER2_COLORS[c] for c in written if c in HER2_COLORS)
            n = {}
            for o in report["outcomes"]:
                e = entries[o["entry_id"]]
                objs = [*e.hierarchy.annotations, *e.hierarchy.detections]
                user_now = sorted(_user_view(x) for x in objs if not (x.name or "").startswith(PRODUCT_MARKER))
                assert user_now == user_before[o["entry_id"]], f"run {run + 1} changed the user's objects"
                out_dir = proj_dir / "her2_qupath" / o["entry_id"]
                n[o["entry_id"]] = _check_written(e, out_dir, report["run_id"], o["summary"])
        counts.append(n)
        time.sleep(0.01)
        old = time.time() - 120  # as if QuPath had been closed since
        for p in proj_dir.rglob("*"):
            os.utime(p, (old, old))
    # the second run replaced the first run's objects instead of adding to them
    assert counts[0] == counts[1]
    assert len(list((proj_dir / "her2_qupath" / "backups").iterdir())) == 2
    assert not (proj_dir / ".her2-qupath.lock").exists()


def test_pair_writes_the_he_entry_of_a_real_project(tmp_path, monkeypatch, qupath):
    """A generated H&E + IHC pair: the tumour drawn on the H&E image is scored; the H&E entry gets the
    tiles and that region (ours, replaced on the second run), the user's objects on both stay as they were."""
    from paquo.classes import QuPathPathClass
    from paquo.projects import QuPathProject
    from shapely.geometry import Polygon

    from her2_qupath.slide_writer import write_slide
    from her2_qupath.synthetic import synthetic_pair

    monkeypatch.delenv("HER2_QUPATH_CONFIG", raising=False)
    he_rgb, ihc_rgb, _matrix, _truth = synthetic_pair((1024, 1024), seed=5, mpp=0.5)
    folder = tmp_path / "slides"
    folder.mkdir()
    slides = [write_slide(folder / f"case1_{stain}.tif", rgb, mpp=0.5, kind="plain", compression="zlib")
              for stain, rgb in (("HER2", ihc_rgb), ("HE", he_rgb))]
    proj_dir = tmp_path / "proj"
    roi = Polygon([(150, 120), (880, 160), (860, 900), (130, 870)])
    with QuPathProject(proj_dir, mode="x") as qp:
        qp.path_classes = [QuPathPathClass(n, color=c) for n, c in USER_CLASSES]
        for slide in slides:
            h = qp.add_image(slide).hierarchy
            if "_HE" in slide.name:
                h.add_annotation(roi=roi, path_class=QuPathPathClass("Tumor")).name = "my tumour"
            h.add_annotation(roi=box(0, 950, 60, 1010), path_class=QuPathPathClass("Stroma")).locked = True
            h.add_detection(roi=box(5, 5, 15, 15), path_class=QuPathPathClass("Positive"))
    with QuPathProject(proj_dir, mode="r") as qp:
        user_before = {str(e.entry_id): sorted(_user_view(o) for o in [*e.hierarchy.annotations,
                                                                       *e.hierarchy.detections])
                       for e in qp.images}
    counts = []
    for _run in range(2):
        old = time.time() - 120  # as if QuPath had been closed a while ago
        for p in proj_dir.rglob("*"):
            os.utime(p, (old, old))
        res = CliRunner().invoke(cli, ["batch", str(proj_dir), "--roi-class", "Tumor", "--json",
                                       "--pair-pattern", r"(?P<case>.+)_(?P<stain>HE|HER2)"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        report = json.loads(res.output[res.output.index("{"):])
        (o,) = report["outcomes"]
        assert o["status"] == "scored" and o["written_to_project"] and o["he_written_to_project"], o
        assert o["roi_source"] == "project" and o["n_rois"] == 1
        backup = Path(report["backup_dir"])
        assert (backup / "data" / o["entry_id"]).is_dir() and (backup / "data" / o["he_entry_id"]).is_dir()
        with QuPathProject(proj_dir, mode="r") as qp:
            entries = {str(e.entry_id): e for e in qp.images}
            for eid, e in entries.items():
                objs = [*e.hierarchy.annotations, *e.hierarchy.detections]
                assert sorted(_user_view(x) for x in objs if not (x.name or "").startswith(PRODUCT_MARKER)) \
                    == user_before[eid], f"the user's objects of entry {eid} changed"
            out = proj_dir / "her2_qupath"
            n_ihc = _check_written(entries[o["entry_id"]], out / o["entry_id"], report["run_id"], o["summary"],
                                   tol=0.011)
            n_he = _check_written(entries[o["he_entry_id"]], out / o["he_entry_id"], report["run_id"], o["summary"],
                                  he_of=o["image"])
            # types were unset: the IHC image becomes H-DAB, its H&E partner H&E
            assert entries[o["entry_id"]].image_type.name == "BRIGHTFIELD_H_DAB"
            assert entries[o["he_entry_id"]].image_type.name == "BRIGHTFIELD_H_E"
            he = entries[o["he_entry_id"]].hierarchy
            (region,) = [a for a in he.annotations if (a.name or "").startswith(PRODUCT_MARKER)]
            assert region.roi.normalize().equals_exact(roi.normalize(), 1e-6)  # the user's region, on the H&E
            tiles = [d for d in he.detections if (d.name or "").startswith(PRODUCT_MARKER)]
            assert len(tiles) == o["summary"]["n_tiles"] > 0
            assert {t.path_class.name for t in tiles} <= {"Tumor", "Non-tumor"}
            classes = [(pc.id, pc.color.to_rgb() if pc.color else None) for pc in qp.path_classes]
            assert classes[:len(USER_CLASSES)] == USER_CLASSES  # the user's Tumor class keeps its colour
        counts.append((n_ihc, n_he))
    assert counts[0] == counts[1]


# --------------------------------------------------------------------------- a real QuPath 0.4.0 project


@pytest.mark.shared_data
def test_real_0_4_project_read_through_paquo(foci_project, qupath):
    """The published 0.4.0 project: paquo and the JSON reader agree; the annotations are QuPath's own count."""
    from collections import Counter

    from her2_qupath.qupath.project import open_project

    proj = foci_project
    before = {q: q.read_bytes() for q in sorted(proj.rglob("*")) if q.is_file()}
    by_json = {e.entry_id: e.describe() for e in open_project(proj, backend="json").images()}
    view = open_project(proj, backend="paquo", mode="r")
    try:
        entries = view.images()
        assert {e.entry_id: e.describe() for e in entries} == by_json
        assert len(entries) == 44 and {e.qupath_version for e in entries} == {"0.4.0"}
        # QuPath wrote data/<id>/summary.json beside each hierarchy: the truth for the counts
        checked = 0
        for e in entries:
            hier = json.loads((proj / "data" / e.entry_id / "summary.json").read_text())["hierarchy"]
            want_n = hier["objectTypeCounts"].get("Annotations", 0)
            if want_n == 0 and checked:
                continue
            anns = view.user_annotations(e)
            assert anns is not None and len(anns) == want_n
            got = Counter(a.class_name or "Unclassified" for a in anns)
            assert got == Counter(hier["annotationClassificationCounts"])
            assert all(a.object_type == "annotation" and a.geometry.is_valid and a.geometry.area > 0 for a in anns)
            checked += 1
            if checked == 3:
                break
        assert checked == 3
    finally:
        view.close()
    assert {q: q.read_bytes() for q in sorted(proj.rglob("*")) if q.is_file()} == before  # read-only
