"""`score`, `batch` and the server write the same QuPath objects for the same image."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from her2_qupath import __version__
from her2_qupath.cli import cli
from her2_qupath.qupath.objects import RUN_KEY
from her2_qupath.server.scorers import PipelineScorer

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LAYOUT_3, MPP, app_factory, ihc_rgb, write_png  # noqa: E402
from test_project import make_project  # noqa: E402


def _shape(features: list[dict[str, Any]]) -> list[tuple]:
    """What QuPath shows of each object: type, name, class, measurement names, metadata keys,
    geometry; the run id checked apart (each path has its own run)."""
    out = []
    for f in features:
        p = f["properties"]
        meta = p.get("metadata") or {}
        assert meta.get("her2-qupath") == __version__ and meta.get(RUN_KEY)
        out.append((p["objectType"], p.get("name"), (p.get("classification") or {}).get("name"),
                    tuple(sorted(p.get("measurements") or {})), tuple(sorted(meta)),
                    json.dumps(f["geometry"])))
    return sorted(out)


def test_score_batch_and_server_write_the_same_objects(tmp_path: Path) -> None:
    image = write_png(tmp_path / "slides" / "case1_HER2.png", ihc_rgb(LAYOUT_3))
    # score
    r = CliRunner().invoke(cli, ["score", "--ihc", str(image), "-o", str(tmp_path / "score")])
    assert r.exit_code == 0, r.output
    by_score = {k: json.loads((tmp_path / "score" / f"{k}.geojson").read_text())["features"]
                for k in ("detections", "annotations")}
    # batch over a project holding the image (read without QuPath)
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri(), "mpp": MPP}])
    r = CliRunner().invoke(cli, ["batch", str(proj), "--backend", "json"])
    assert r.exit_code == 0, r.output
    folder = proj / "her2_qupath" / "1"
    by_batch = {k: json.loads((folder / f"{k}.geojson").read_text())["features"]
                for k in ("detections", "annotations")}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["her2_score"] == json.loads((tmp_path / "score" / "summary.json").read_text())[
        "her2_score"] == "3+"  # the same summary layout: score's, batch's additions under "batch"
    assert summary["batch"]["entry"]["name"] == image.name
    # the server
    with app_factory(tmp_path, [image.parent]) as build:
        client = build(PipelineScorer()).test_client()
        res = client.post("/api/v1/score", json={"ihc": str(image)})
        assert res.status_code == 200, res.get_data(True)
        by_server = {k: res.json[k]["features"] for k in ("detections", "annotations")}
    for kind in ("detections", "annotations"):
        assert _shape(by_score[kind]) == _shape(by_batch[kind]) == _shape(by_server[kind])
    names = [f["properties"]["name"] for f in by_score["detections"] + by_score["annotations"]]
    assert all(n.startswith("her2-qupath: ") for n in names)
    assert by_score["annotations"][0]["properties"]["name"] == "her2-qupath: Slide HER2 3+ (HER2-positive)"


def test_clip_tiles_cuts_outlines_to_the_regions_and_keeps_the_numbers(tmp_path: Path) -> None:
    """--clip-tiles: a region smaller than its tiles; the outlines end at its edge, every
    number (tile measurements, region and slide scores) is unchanged."""
    from shapely.geometry import box, shape

    from her2_qupath.qupath.geojson import write_geojson
    from her2_qupath.qupath.objects import annotation_object

    image = write_png(tmp_path / "ihc.png", ihc_rgb(LAYOUT_3))  # 512 x 512 px
    region = box(100, 100, 420, 380)
    write_geojson(tmp_path / "roi.geojson", [annotation_object(region, "Tumor", name="T")])
    out = {}
    for flag in ([], ["--clip-tiles"]):
        folder = tmp_path / ("clipped" if flag else "whole")
        r = CliRunner().invoke(cli, ["score", "--ihc", str(image), "--roi", str(tmp_path / "roi.geojson"),
                                     "--tile-size", "128", "-o", str(folder), *flag])
        assert r.exit_code == 0, r.output
        out[bool(flag)] = (json.loads((folder / "detections.geojson").read_text())["features"],
                           json.loads((folder / "summary.json").read_text()))
    (whole, s_whole), (clipped, s_clip) = out[False], out[True]
    assert len(whole) == len(clipped) > 1
    assert any(not region.contains(shape(f["geometry"]).buffer(-1e-6)) for f in whole)
    for a, b in zip(whole, clipped):
        ga, gb = shape(a["geometry"]), shape(b["geometry"])
        assert region.buffer(1e-6).contains(gb)  # cut to the region
        assert abs(gb.area - ga.intersection(region).area) < 1e-6
        assert a["properties"]["measurements"] == b["properties"]["measurements"]
        assert a["properties"]["classification"] == b["properties"]["classification"]
    for key in ("her2_score", "class_percentages", "h_score", "n_tiles", "n_tiles_counted"):
        assert s_whole[key] == s_clip[key]


def test_summary_carries_the_stain_vectors_as_qupath_reads_them(tmp_path: Path) -> None:
    """provenance.stain_vectors_qupath is QuPath's stain string of the vectors used (the Groovy
    scripts set it on an image whose type was unset): it reads back to the same vectors."""
    import numpy as np

    from her2_qupath.pipeline import ScoreRequest, run_score
    from her2_qupath.stain import StainVectors

    image = write_png(tmp_path / "ihc.png", ihc_rgb(LAYOUT_3))
    prov = run_score(ScoreRequest(ihc=image)).summary["provenance"]
    back = StainVectors.from_qupath(prov["stain_vectors_qupath"])
    used = StainVectors.default()
    np.testing.assert_allclose(back.hematoxylin, np.asarray(used.hematoxylin) / np.linalg.norm(used.hematoxylin),
                               atol=1e-4)
    np.testing.assert_allclose(back.dab, np.asarray(used.dab) / np.linalg.norm(used.dab), atol=1e-4)
    np.testing.assert_allclose(back.background, prov["background_rgb"], atol=0.01)
