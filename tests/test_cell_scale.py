"""Cell level at whole-slide scale: cells as columns, streamed output, worker processes.

The regression test compares a cell-level run with what the code gave before
cells became columns (recorded from commit a06c14f on the same synthetic
slide): the same cells (outlines, classes, measurements, in file order), the
same tile objects and the same summary numbers.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box

from her2_qupath.cell_table import CellTable, Outlines
from her2_qupath.config import PRODUCT_MARKER, ScoringConfig, StainConfig
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result
from her2_qupath.pipeline import tiles as pipeline_tiles
from her2_qupath.pipeline import work as pipeline_work
from her2_qupath.qupath.geojson import load_features, read_geojson, to_feature
from her2_qupath.qupath.objects import CELL_NAME, annotation_object, cell_object, tile_object
from her2_qupath.qupath.stream import CellSpill, Detections, write_detections
from her2_qupath.qupath.validate import validate_features
from her2_qupath.slide_writer import write_slide
from her2_qupath.synthetic import synthetic_ihc
from her2_qupath.tissue import TissueMask

REGIONS = ({"0": 20.0, "1+": 10.0, "2+": 20.0, "3+": 50.0},
           {"0": 60.0, "1+": 30.0, "2+": 10.0, "3+": 0.0})

#: What the object-per-cell code (a06c14f) wrote for this slide, these ROIs and options.
BEFORE = {
    "membrane": {
        "n_cells": 1093, "classes": {"HER2 0": 192, "HER2 1+": 326, "HER2 2+": 161, "HER2 3+": 414},
        "her2_score": "3+", "h_score": 172.91857273559012, "percent_positive": 58.894538569431084,
        "class_percentages": {"0": 17.56633119853614, "1+": 29.826166514181153,
                              "2+": 14.730100640439158, "3+": 37.87740164684355},
        "regions": [["R0", "3+", 517], ["R1", "2+", 576]],
        "cells_sha": "a67c8226f4f0f331219bdb80449c0f50cfff034e2062040a8de2d1cdac417f7f",
        "tiles_sha": "4fdba8eb71bf7e709bd9edb440cdffbb0ef654cb822911f513bd2e044fbe6af1",
    },
    "od": {
        "n_cells": 1093, "classes": {"HER2 0": 452, "HER2 1+": 230, "HER2 2+": 159, "HER2 3+": 252},
        "her2_score": "3+", "h_score": 119.30466605672461, "percent_positive": 9.30862914005644,
        "class_percentages": {"0": 41.35407136322049, "1+": 21.043000914913083,
                              "2+": 14.54711802378774, "3+": 23.055809698078683},
        "regions": [["R0", "3+", 517], ["R1", "1+", 576]],
        "cells_sha": "230e423f29b4b40216bc7a42c1bc8b24359e8a119e9fe5ea81e032c03fddab7a",
        "tiles_sha": "e0e9e5c7d8f1fc6faa7ddb585f019d2853dd3594342bdc16aeac18b3cd86625c",
    },
}
OPTIONS = {
    "membrane": ScoreOptions(scoring=ScoringConfig(level="cell")),
    "od": ScoreOptions(stain=StainConfig(intensity="od"), scoring=ScoringConfig(level="cell")),
}


def _digest(features: list) -> tuple[int, str, str, dict[str, int]]:
    """Cells and tiles of a detections file, numbers rounded (1e-6 px, 1e-9); ids, class
    colours (presentation) and the product's name prefix (one naming rule for every path,
    added after the recording) left out."""
    cells, tiles, classes = [], [], {}
    for f in features:
        p = f["properties"]
        name = p.get("name")
        name = None if name == CELL_NAME else (name or "").removeprefix(f"{PRODUCT_MARKER}: ") or None
        item = [p["objectType"], name, (p.get("classification") or {}).get("name"),
                {k: (v if isinstance(v, str) else round(v, 9))
                 for k, v in p.get("measurements", {}).items()},
                f["geometry"]["type"],
                np.round(np.asarray(f["geometry"]["coordinates"], dtype=float), 6).tolist(),
                np.round(np.asarray(f["nucleusGeometry"]["coordinates"], dtype=float), 6).tolist()
                if "nucleusGeometry" in f else None]
        (cells if p["objectType"] == "cell" else tiles).append(json.dumps(item, sort_keys=True))
        if p["objectType"] == "cell":
            name = p["classification"]["name"]
            classes[name] = classes.get(name, 0) + 1

    def sha(xs: list[str]) -> str:
        return hashlib.sha256("\n".join(xs).encode()).hexdigest()

    return len(cells), sha(cells), sha(tiles), classes


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    d = tmp_path_factory.mktemp("cells")
    rgb, _h, _dab, truth = synthetic_ihc((1280, 1280), seed=16, mpp=0.5, regions=REGIONS)
    write_slide(d / "ihc.tif", rgb, mpp=0.5, kind="pyramidal", compression="zlib")
    polys = [TissueMask(truth["region_map"] == r + 1, 1.0).to_geometry() for r in range(2)]
    rois = tuple(annotation_object(p, "Tumor", name=f"R{r}") for r, p in enumerate(polys))
    return d / "ihc.tif", rois


@pytest.mark.parametrize("kind", ["membrane", "od"])
def test_cells_classes_and_summary_are_those_of_the_object_per_cell_code(slide, kind, tmp_path) -> None:
    path, rois = slide
    res = run_score(ScoreRequest(ihc=path, rois=rois, options=OPTIONS[kind]))
    out = write_result(res, tmp_path / "out")
    feats = load_features(out / "detections.geojson")
    assert validate_features(feats) == len(feats)  # the streamed file is QuPath-valid
    n, cells_sha, tiles_sha, classes = _digest(feats)
    want = BEFORE[kind]
    s = res.summary
    assert n == s["n_cells"] == want["n_cells"]
    assert classes == want["classes"]
    assert s["her2_score"] == want["her2_score"]
    assert s["h_score"] == want["h_score"] and s["percent_positive"] == want["percent_positive"]
    assert s["class_percentages"] == want["class_percentages"]
    assert [[r["name"], r["her2_score"], r["n_cells"]] for r in s["regions"]] == want["regions"]
    assert tiles_sha == want["tiles_sha"]
    assert cells_sha == want["cells_sha"]
    # the result still reads as the list of objects it was: tiles, each followed by its cells
    objs = list(res.detections)
    assert len(objs) == len(res.detections) == len(feats)
    assert [o.object_type for o in objs] == [f["properties"]["objectType"] for f in feats]
    assert res.detections[-1].id == feats[-1]["id"]
    assert all(o.geometry.contains(o.nucleus_geometry.centroid) for o in objs[:300]
               if o.object_type == "cell")


def test_worker_processes_that_fail_hand_their_tiles_to_threads(slide, monkeypatch) -> None:
    class Broken(cf.Executor):
        def submit(self, *a, **k):  # type: ignore[override]
            raise cf.process.BrokenProcessPool("no workers")

    path, rois = slide
    monkeypatch.setattr(pipeline_work, "_cell_pool", lambda *a: Broken())
    res = run_score(ScoreRequest(ihc=path, rois=rois, options=OPTIONS["od"]))
    assert res.summary["n_cells"] == BEFORE["od"]["n_cells"]
    assert res.summary["class_percentages"] == BEFORE["od"]["class_percentages"]


def test_a_thread_pool_is_replaced_by_processes_at_the_cell_level() -> None:
    with cf.ThreadPoolExecutor(3) as threads:
        pool = pipeline_work._cell_pool("cell", 5, threads)
        assert isinstance(pool, cf.ProcessPoolExecutor) and pool._max_workers == 3
        pool.shutdown()
        assert pipeline_work._cell_pool("pixel", 5, threads) is None
        assert pipeline_work._cell_pool("cell", 1, threads) is None  # one chunk: no pool to start
    assert pipeline_work._cell_pool("cell", 5, _NotThreads()) is None  # e.g. Dask: used as given


class _NotThreads(cf.Executor):
    pass


def _table(polys: list[Polygon], nuclei: list[Polygon]) -> CellTable:
    n = len(polys)
    meas = np.arange(n * 3, dtype=float).reshape(n, 3) / 7.0
    meas[0, 1] = np.nan  # a compartment without pixels: left out of the measurements
    cents = np.array([[p.centroid.x, p.centroid.y] for p in nuclei])
    return CellTable(cents, np.arange(n, dtype=np.int8) % 4, meas, ("A", "B µm^2", "C"),
                     Outlines.from_polygons(polys), Outlines.from_polygons(nuclei))


def test_cell_table_moves_outlines_as_shapely_does_and_writes_the_object_features() -> None:
    rng = np.random.default_rng(3)
    polys, nuclei = [], []
    for _ in range(7):
        x, y = rng.uniform(0, 90, 2)
        polys.append(Polygon(np.c_[x + 9 * np.cos(np.r_[0:6.28:0.7]), y + 9 * np.sin(np.r_[0:6.28:0.7])]))
        nuclei.append(box(x - 2, y - 2, x + 2.5, y + 2))
    t = _table(polys, nuclei)
    core = t.in_core(10, (70, 70))  # cells whose centroid lies in [10, 80) on both axes
    keep = [i for i, p in enumerate(nuclei) if 0 <= p.centroid.x - 10 < 70 and 0 <= p.centroid.y - 10 < 70]
    assert len(core) == len(keep) > 0
    placed = core.placed((2.0, 2.0), (1000.0, 37.5))
    want = [affinity.translate(affinity.scale(affinity.translate(polys[i], -10, -10), 2.0, 2.0,
                                              origin=(0, 0)), 1000.0, 37.5) for i in keep]
    got = placed.cells.geometries()
    assert all(g.equals_exact(w, 0.0) for g, w in zip(got, want))  # same numbers, bit for bit
    feats = json.loads(f"[{placed.feature_text({'her2-qupath': 'x'})}]")
    assert validate_features(feats) == len(keep)
    for f, i, j in zip(feats, keep, range(len(keep))):
        meas = {k: v for k, v in zip(t.names, t.measurements[i].tolist()) if np.isfinite(v)}
        ref = to_feature(cell_object(want[j], placed.nuclei.geometries()[j],
                                     f"HER2 {['0', '1+', '2+', '3+'][int(t.classes[i])]}", meas,
                                     name=CELL_NAME, metadata={"her2-qupath": "x"}))
        ref["id"] = f["id"]
        assert f == json.loads(json.dumps(ref))
    # a mask selects cells by their centroid pixel
    mask = np.zeros((70, 70), dtype=bool)
    mask[:, :35] = True
    inside = core.inside(mask)
    assert sorted(inside.tolist()) == [k for k, c in enumerate(core.centroids) if int(c[0]) < 35]


def test_cell_text_is_what_json_dumps_writes_for_the_object_features() -> None:
    """Whole-number vertices (cells placed on the slide) take the compiled formatter: the text
    is json.dumps of the object path's features, byte for byte (negative coordinates, holes,
    measurements left out, a second ring)."""
    polys = [box(-3, 4, 5, 12), Polygon([(0, 0), (9, 0), (9, 9), (0, 9)], [[(2, 2), (2, 4), (4, 4), (2, 2)]]),
             box(100, 7, 131, 20)]
    nuclei = [box(-1, 6, 2, 9), box(3, 5, 6, 7), box(110, 10, 115, 13)]
    placed = _table(polys, nuclei).placed((2.0, 2.0), (-40.0, 1024.0))
    text = placed.feature_text({"her2-qupath": "x", "run": "ü"})
    ids = re.findall(r'"id": "([0-9a-f-]{36})"', text)
    refs = []
    for i, (cell, nucleus) in enumerate(zip(placed.cells.geometries(), placed.nuclei.geometries())):
        meas = {k: v for k, v in zip(placed.names, placed.measurements[i].tolist()) if np.isfinite(v)}
        ref = to_feature(cell_object(cell, nucleus, f"HER2 {['0', '1+', '2+', '3+'][i % 4]}", meas,
                                     name=CELL_NAME, metadata={"her2-qupath": "x", "run": "ü"}))
        ref["id"] = ids[i]
        refs.append(json.dumps(ref, allow_nan=False, ensure_ascii=False))
    assert text == ", ".join(refs)
    assert "-46.0" in text  # (-3 * 2) - 40: a negative vertex, written as json.dumps writes it


def test_an_invalid_outline_takes_the_object_path_and_is_repaired() -> None:
    bow = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])  # self-intersecting
    t = _table([bow, box(20, 20, 30, 30)], [box(4, 1, 6, 3), box(24, 24, 26, 26)])
    feats = json.loads(f"[{t.feature_text({'her2-qupath': 'x'})}]")
    assert validate_features(feats) == 2
    assert shapely.is_valid(read_geojson(feats)[0].geometry)


def test_streamed_detections_gzip_and_plain_hold_the_same_features(tmp_path: Path) -> None:
    spill = CellSpill()
    t = _table([box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(4, 4, 6, 6), box(24, 4, 26, 6)])
    tiles = [tile_object(box(0, 0, 50, 50), "HER2 0", {"x": 1.0}, name="t0"),
             tile_object(box(50, 0, 100, 50), "HER2 1+", {"x": 2.0}, name="t1"),
             tile_object(box(100, 0, 150, 50), "Ignore*", {"x": 3.0}, name="t2")]
    det = Detections(tiles, spill, [(spill.add(t.feature_text({})), 2), None,
                                    (spill.add(t.feature_text({})), 2)])
    assert len(det) == 7 and [o.object_type for o in det] == ["tile", "cell", "cell", "tile",
                                                              "tile", "cell", "cell"]
    plain = write_detections(tmp_path / "d.geojson", det)
    packed = write_detections(tmp_path / "d.geojson.gz", det)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    a, b = load_features(plain), load_features(packed)
    assert a == b and validate_features(a) == 7
    assert [f["properties"].get("name") for f in a if f["properties"]["objectType"] == "tile"] == [
        "t0", "t1", "t2"]
    # a plain list of objects is streamed as well
    again = write_detections(tmp_path / "l.geojson", list(det))
    assert [f["id"] for f in load_features(again)] == [f["id"] for f in a]
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_workers_read_with_a_tile_cache_sized_to_their_chunk(slide) -> None:
    from her2_qupath.config import SlideConfig

    mb = pipeline_work._work_cache_mb(512, 30, 8)  # 10 tiles of 572², at up to 2x per axis, RGB
    assert mb == round(10 * 4 * 3 * 572**2 / 2**20) == 37
    assert pipeline_work._work_cache_mb(4096, 0, 8) == SlideConfig().tile_cache_mb  # never above it
    reader = pipeline_tiles._cached_slide(str(slide[0]), None, mb)
    assert reader._cache._max == mb * 2**20
    assert pipeline_tiles._cached_slide(str(slide[0]), None)._cache._max == SlideConfig().tile_cache_mb * 2**20


def test_cell_tiles_are_worked_in_two_row_chunks_and_returned_in_grid_order() -> None:
    """Cell-level chunks are two rows of four tiles (their margins share slide tiles); the
    analyses come back in the order of the tiles given, whatever the work order."""
    from types import SimpleNamespace

    from her2_qupath.pipeline.work import CHUNK_TILES, _chunks, _in_grid_order, _two_row_order

    grid = [SimpleNamespace(row=r, col=c) for r in range(5) for c in range(7) if (r, c) != (1, 2)]
    order = _two_row_order(grid)
    assert sorted(order) == list(range(len(grid)))
    first = [(grid[i].row, grid[i].col) for i in order[:CHUNK_TILES]]
    assert first == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (0, 3), (1, 3), (0, 4)]
    assert {grid[i].row for i in order[-7:]} == {4}  # the odd last row on its own
    worked = [grid[i] for i in order]
    chunks = [list(c) for c in _chunks(worked, CHUNK_TILES)]  # "analyses": the tiles themselves
    assert _in_grid_order(chunks, order) == grid
    assert _in_grid_order(chunks, None) == worked
