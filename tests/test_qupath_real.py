"""Real QuPath through paquo: the image type and stains write-back sets, and one set of objects.

(a) ``batch`` write-back turns an entry whose image type was "Not set" into Brightfield
(H-DAB) with the stain vectors the run used (the summary's ``provenance.stain_vectors_qupath``);
an entry whose type the user had set keeps its type and its stains.
(b) The objects of ``score`` (its GeoJSON imported with QuPath's own reader), of ``batch``
(written into the project) and of the server (``POST /api/v1/score``'s objects, imported
the same way) for one slide and the same options are the same in QuPath: type, name,
class, measurement names, values.

Skipped without QuPath (set PAQUO_QUPATH_DIR to the QuPath folder).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from her2_qupath.cli import cli
from her2_qupath.config import PRODUCT_MARKER
from her2_qupath.server.scorers import PipelineScorer
from her2_qupath.stain import StainVectors

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LAYOUT_3, MPP, app_factory, ihc_rgb  # noqa: E402

pytestmark = pytest.mark.qupath

#: the options of the three paths in (b), as the server takes them and as command-line flags:
#: 16 tiles scored 3+ by area; by cells the test image is not evaluable (NaN measurements)
OPTION_SETS = {
    "pixel": ({"tile_size": 128}, ["--tile-size", "128"]),
    "cell": ({"tile_size": 128, "level": "cell"}, ["--tile-size", "128", "--level", "cell"]),
}

#: the user's own stains on an entry whose type they set (QuPath's stain string)
USER_STAINS = ('{"Name" : "my H-DAB", "Stain 1" : "Hematoxylin", "Values 1" : "0.60000 0.72000 0.34891", '
               '"Stain 2" : "DAB", "Values 2" : "0.30000 0.60000 0.74162", "Background" : " 250 250 250"}')


@pytest.fixture(scope="module")
def qupath() -> None:
    from her2_qupath.qupath._paquo import qupath_status

    status = qupath_status()
    if not status.available:
        pytest.skip(f"needs QuPath for paquo: {status.message}")


def _slide(folder: Path, name: str = "case1_HER2.tif") -> Path:
    """The breast 3+ test image as a single-resolution TIFF at MPP (QuPath reads it without Bio-Formats)."""
    from her2_qupath.slide_writer import write_slide

    folder.mkdir(parents=True, exist_ok=True)
    return write_slide(folder / name, ihc_rgb(LAYOUT_3), mpp=MPP, kind="plain", compression="zlib")


def _stain_class() -> Any:
    from paquo.jpype_backend import JClass

    return JClass("qupath.lib.color.ColorDeconvolutionStains")


def _stains(entry: Any) -> str | None:
    """QuPath's stain string of an entry (None: no stains)."""
    stains = entry._image_data.getColorDeconvolutionStains()
    return None if stains is None else str(_stain_class().getColorDeconvolutionStainsAsString(stains, 5))


def _same_stains(got: str, want: str) -> None:
    a, b = StainVectors.from_qupath(got), StainVectors.from_qupath(want)
    for part in ("hematoxylin", "dab", "residual", "background"):
        np.testing.assert_allclose(getattr(a, part), getattr(b, part), atol=1e-4, err_msg=part)


def _closed(proj_dir: Path) -> None:
    """As if QuPath had been closed a while ago (batch refuses a project saved a moment ago)."""
    old = time.time() - 120
    for p in proj_dir.rglob("*"):
        os.utime(p, (old, old))


def _batch(proj_dir: Path, *options: str) -> dict[str, Any]:
    _closed(proj_dir)
    res = CliRunner().invoke(cli, ["batch", str(proj_dir), "--backend", "paquo", "--json", *options],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def test_batch_sets_brightfield_and_the_stains_used_only_where_unset(tmp_path, monkeypatch, qupath):
    from paquo.images import QuPathImageType
    from paquo.projects import QuPathProject

    monkeypatch.delenv("HER2_QUPATH_CONFIG", raising=False)
    slides = [_slide(tmp_path / "slides", f"case{i}_HER2.tif") for i in (1, 2)]
    proj_dir = tmp_path / "proj"
    with QuPathProject(proj_dir, mode="x") as qp:
        unset = qp.add_image(slides[0])
        chosen = qp.add_image(slides[1], image_type=QuPathImageType.BRIGHTFIELD_H_DAB)
        chosen._image_data.setColorDeconvolutionStains(_stain_class().parseColorDeconvolutionStainsArg(USER_STAINS))
        assert unset.image_type is QuPathImageType.UNSET and _stains(unset) is None
        ids = {"unset": str(unset.entry_id), "chosen": str(chosen.entry_id)}
    with QuPathProject(proj_dir, mode="r") as qp:
        user_stains = _stains(next(e for e in qp.images if str(e.entry_id) == ids["chosen"]))
    assert user_stains is not None
    _same_stains(user_stains, USER_STAINS)

    for _run in range(2):  # the second run finds the type set (by the first) and leaves it
        report = _batch(proj_dir)
        outcomes = {o["entry_id"]: o for o in report["outcomes"]}
        assert all(o["written_to_project"] for o in outcomes.values()), outcomes
        used = outcomes[ids["unset"]]["summary"]["provenance"]["stain_vectors_qupath"]
        assert used
        with QuPathProject(proj_dir, mode="r") as qp:
            entries = {str(e.entry_id): e for e in qp.images}
            e = entries[ids["unset"]]
            assert e.image_type is QuPathImageType.BRIGHTFIELD_H_DAB
            _same_stains(_stains(e), used)
            assert json.loads(_stains(e))["Name"] == json.loads(used)["Name"]
            e = entries[ids["chosen"]]
            assert e.image_type is QuPathImageType.BRIGHTFIELD_H_DAB
            assert _stains(e) == user_stains  # the user's stains, untouched


# --------------------------------------------------------------------------- one set of objects


def _import_geojson(entry: Any, features: list[dict[str, Any]], folder: Path) -> None:
    """QuPath's own GeoJSON import (File > Import objects): ``PathIO.readObjects`` into the entry."""
    from paquo.java import File, PathIO

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "objects.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    objs = PathIO.readObjects(File(str(path)).toPath())
    assert int(objs.size()) == len(features)
    entry.hierarchy.java_object.addObjects(objs)


def _view(entry: Any) -> list[tuple[tuple, dict[str, float]]]:
    """This product's objects as QuPath holds them: (type, name, class, measurement names,
    where) and the measurements, sorted (tiles share names: their place tells them apart)."""
    out = []
    for o in entry.hierarchy.java_object.getAllObjects(False):
        name = None if o.getName() is None else str(o.getName())
        if not (name or "").startswith(PRODUCT_MARKER):
            continue
        pc = o.getPathClass()
        ml = o.getMeasurementList()
        values = {str(k): float(ml.get(k)) for k in ml.getNames()}
        roi = o.getROI()
        where = (round(float(roi.getCentroidX()), 2), round(float(roi.getCentroidY()), 2))
        out.append(((str(o.getClass().getSimpleName()), name, None if pc is None else str(pc.toString()),
                     tuple(sorted(values)), where), values))
    return sorted(out, key=lambda kv: kv[0])


def _assert_same(a: list[tuple[tuple, dict[str, float]]], b: list[tuple[tuple, dict[str, float]]]) -> None:
    assert [k for k, _ in a] == [k for k, _ in b]
    for (key, va), (_, vb) in zip(a, b):
        for m in va:  # QuPath keeps detection measurements as 32-bit floats
            assert (math.isnan(va[m]) and math.isnan(vb[m])) or va[m] == pytest.approx(vb[m], rel=1e-6, abs=1e-6), \
                (key, m)


@pytest.mark.parametrize("level", sorted(OPTION_SETS))
def test_score_batch_and_server_objects_are_the_same_in_qupath(tmp_path, monkeypatch, qupath, level):
    from paquo.projects import QuPathProject

    options, cli_options = OPTION_SETS[level]
    monkeypatch.delenv("HER2_QUPATH_CONFIG", raising=False)
    slide = _slide(tmp_path / "slides")
    # score: its GeoJSON files
    r = CliRunner().invoke(cli, ["score", "--ihc", str(slide), "-o", str(tmp_path / "score"), *cli_options])
    assert r.exit_code == 0, r.output
    by_score = [f for k in ("detections", "annotations")
                for f in json.loads((tmp_path / "score" / f"{k}.geojson").read_text())["features"]]
    # the server: POST /api/v1/score's objects
    with app_factory(tmp_path, [slide.parent]) as build:
        client = build(PipelineScorer()).test_client()
        res = client.post("/api/v1/score", json={"ihc": str(slide), "options": options})
        assert res.status_code == 200, res.get_data(True)
        by_server = [f for k in ("detections", "annotations") for f in res.json[k]["features"]]
    assert by_score and len(by_score) == len(by_server)
    # batch: written into a project holding the slide
    batch_dir = tmp_path / "batch_proj"
    with QuPathProject(batch_dir, mode="x") as qp:
        qp.add_image(slide)
    report = _batch(batch_dir, *cli_options)
    (outcome,) = report["outcomes"]
    assert outcome["status"] == "scored" and outcome["written_to_project"], outcome
    assert outcome["summary"]["her2_score"] == json.loads((tmp_path / "score" / "summary.json").read_text())[
        "her2_score"] == res.json["summary"]["her2_score"] == {"pixel": "3+", "cell": "not evaluable"}[level]
    # score's and the server's objects imported into the same slide, another project
    import_dir = tmp_path / "import_proj"
    with QuPathProject(import_dir, mode="x") as qp:
        for key, features in (("score", by_score), ("server", by_server)):
            entry = qp.add_image(slide, allow_duplicates=True)
            entry.image_name = key
            _import_geojson(entry, features, tmp_path / f"{key}_import")
    views = {}
    with QuPathProject(batch_dir, mode="r") as qp:
        (entry,) = qp.images
        views["batch"] = _view(entry)
    with QuPathProject(import_dir, mode="r") as qp:
        for entry in qp.images:
            views[str(entry.image_name)] = _view(entry)
    assert len(views["batch"]) == len(by_score)
    kinds = [k[0] for k, _ in views["batch"]]
    assert kinds.count("PathTileObject") == 16 and "PathAnnotationObject" in kinds
    _assert_same(views["score"], views["batch"])
    _assert_same(views["server"], views["batch"])
