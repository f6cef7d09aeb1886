"""End-to-end pipeline tests on synthetic slides whose truth is known by construction."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from her2_qupath.config import ScoringConfig, StainConfig
from her2_qupath.errors import JobCancelled, MPPMissing, UserInputError
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result
from her2_qupath.qupath.geojson import load_features, read_geojson, write_geojson
from her2_qupath.qupath.objects import annotation_object
from her2_qupath.qupath.validate import validate_features
from her2_qupath.slide_writer import write_slide
from her2_qupath.synthetic import synthetic_ihc, synthetic_pair
from her2_qupath.tissue import TissueMask

#: The synthetic slides draw membranes at DAB OD levels between QuPath's 0.2/0.4/0.6: their
#: pixel and cell truths are those of the "od" grading (the membrane grading has its own tests).
OD_OPTS = ScoreOptions(stain=StainConfig(intensity="od"))

REGIONS = ({"0": 20.0, "1+": 10.0, "2+": 20.0, "3+": 50.0}, {"0": 100.0, "1+": 0.0, "2+": 0.0, "3+": 0.0})
SIZE = 1536


def _pixel_percentages(counts: list[int]) -> dict[str, float]:
    c = np.asarray(counts[-4:], dtype=float)
    return dict(zip(("0", "1+", "2+", "3+"), (100 * c / c.sum()).tolist()))


@pytest.fixture(scope="module")
def ihc_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("ihc")
    rgb, _h, _dab, truth = synthetic_ihc((SIZE, SIZE), seed=11, mpp=0.5, regions=REGIONS)
    write_slide(d / "ihc.tif", rgb, mpp=0.5, kind="pyramidal", compression="zlib")
    polys = [TissueMask(truth["region_map"] == r + 1, 1.0).to_geometry() for r in range(2)]
    write_geojson(d / "rois.geojson",
                  [annotation_object(p, "Tumor", name=f"R{r}") for r, p in enumerate(polys)]
                  + [annotation_object(polys[1].buffer(-50), "Stroma", name="other")])
    return {"dir": d, "truth": truth, "rgb": rgb}


@pytest.fixture(scope="module")
def whole_slide(ihc_case: dict) -> object:
    return run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", options=OD_OPTS))


def test_whole_slide_pixel_percentages_match_truth(whole_slide, ihc_case) -> None:
    truth = _pixel_percentages(ihc_case["truth"]["pixel_counts"])
    got = whole_slide.summary["class_percentages"]
    assert sum(got.values()) == pytest.approx(100.0)
    for k in truth:
        assert got[k] == pytest.approx(truth[k], abs=2.0), (k, got, truth)
    h = 1 * truth["1+"] + 2 * truth["2+"] + 3 * truth["3+"]
    assert whole_slide.summary["h_score"] == pytest.approx(h, abs=5.0)


def test_rois_score_each_region_against_its_truth(ihc_case) -> None:
    rois = tuple(read_geojson(ihc_case["dir"] / "rois.geojson"))
    res = run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", rois=rois, roi_class="Tumor",
                                 options=OD_OPTS))
    regions = {r["name"]: r for r in res.summary["regions"]}
    assert set(regions) == {"R0", "R1"}  # the Stroma annotation is not scored
    for r, name in enumerate(("R0", "R1")):
        truth = _pixel_percentages(ihc_case["truth"]["regions"][r]["pixel_counts"])
        for k in truth:
            assert regions[name]["class_percentages"][k] == pytest.approx(truth[k], abs=3.0)
    # region R0 is strongly stained on most pixels: 3+ by the breast rule; R1 has no DAB
    assert regions["R0"]["her2_score"] == "3+"
    assert regions["R1"]["her2_score"] == "0"
    assert len(res.annotations) == 2
    assert all(a.name.startswith("her2-qupath: ") for a in res.annotations)


def test_outputs_are_valid_qupath_geojson(whole_slide, tmp_path: Path) -> None:
    out = write_result(whole_slide, tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["annotations.geojson", "detections.geojson", "overlay.png", "report.pdf",
                     "report.png", "summary.json"]
    for f in ("annotations.geojson", "detections.geojson"):
        n = validate_features(load_features(out / f))
        assert n > 0
    dets = read_geojson(out / "detections.geojson")
    assert len(dets) == whole_slide.summary["n_tiles"]
    assert {d.object_type for d in dets} == {"tile"}
    assert all(d.class_name in {"HER2 0", "HER2 1+", "HER2 2+", "HER2 3+"} for d in dets)
    s = json.loads((out / "summary.json").read_text())
    for key in ("her2_score", "guideline", "level", "class_percentages", "percent_positive",
                "h_score", "n_tiles", "regions", "provenance"):
        assert key in s
    assert len(s["provenance"]["inputs"]["ihc"]["sha256"]) == 64
    from PIL import Image

    assert Image.open(out / "overlay.png").size[0] > 400


def test_cell_level_counts_cells(ihc_case) -> None:
    opts = ScoreOptions(stain=OD_OPTS.stain, scoring=ScoringConfig(level="cell"))
    rois = tuple(read_geojson(ihc_case["dir"] / "rois.geojson"))
    res = run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", rois=rois, roi_class="Tumor",
                                 options=opts))
    regions = {r["name"]: r for r in res.summary["regions"]}
    truth_cells = [sum(r["cell_counts"]) for r in ihc_case["truth"]["regions"]]
    for r, name in enumerate(("R0", "R1")):
        # every true cell inside the region is found, once, also where tiles or regions meet
        assert regions[name]["n_cells"] == pytest.approx(truth_cells[r], rel=0.03)
    assert regions["R1"]["her2_score"] == "0"
    cells = [d for d in res.detections if d.object_type == "cell"]
    assert len(cells) == res.summary["n_cells"]
    assert all(c.nucleus_geometry is not None and c.geometry.contains(c.nucleus_geometry.centroid)
               for c in cells[:200])


def test_process_pool_gives_the_same_result_as_threads(ihc_case, whole_slide) -> None:
    """Tile work is picklable: what a Dask cluster would run gives identical numbers."""
    with cf.ProcessPoolExecutor(max_workers=2) as pool:
        res = run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", options=OD_OPTS), executor=pool)
    assert res.summary["class_percentages"] == whole_slide.summary["class_percentages"]
    assert res.summary["tile_classes"] == whole_slide.summary["tile_classes"]


def test_progress_and_cancel(ihc_case) -> None:
    seen: list[tuple[int, int]] = []
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done > 0:
            cancel.set()

    with pytest.raises(JobCancelled):
        run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif"), progress=progress, cancel=cancel)
    assert seen[0][0] == 0 and seen[0][1] > 0


def test_cancel_stops_a_running_chunk_at_its_next_tile(ihc_case, monkeypatch) -> None:
    """A chunk already running does not finish its tiles once the run is cancelled."""
    import time

    from her2_qupath.pipeline import tiles, work

    done: list[int] = []
    cancel = threading.Event()
    real = tiles.analyse_tile

    def slow(*args, **kwargs):
        done.append(1)
        cancel.set()  # cancelled while the first tile is analysed
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiles, "analyse_tile", slow)
    monkeypatch.setattr(work, "CHUNK_TILES", 1000)  # one chunk holds every tile
    with pytest.raises(JobCancelled):
        run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif"), cancel=cancel)
    analysed = len(done)
    monkeypatch.setattr(tiles, "analyse_tile", real)
    n_tiles = run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif")).summary["n_tiles"]
    assert n_tiles >= 8 and analysed <= 4, (analysed, n_tiles)
    assert not tiles._CANCELLED_RUNS


def test_pair_with_registration_maps_rois_to_the_ihc_slide(tmp_path: Path) -> None:
    he, ihc, matrix, truth = synthetic_pair((SIZE, SIZE), seed=5, mpp=0.5, regions=REGIONS,
                                            rotation_deg=8.0, translation=(30.0, -20.0))
    write_slide(tmp_path / "he.tif", he, mpp=0.5, kind="pyramidal", compression="zlib")
    write_slide(tmp_path / "ihc.tif", ihc, mpp=0.5, kind="pyramidal", compression="zlib")
    polys = [TissueMask(truth["region_map"] == r + 1, 1.0).to_geometry() for r in range(2)]
    rois = tuple(annotation_object(p, "Tumor", name=f"R{r}") for r, p in enumerate(polys))
    res = run_score(ScoreRequest(ihc=tmp_path / "ihc.tif", he=tmp_path / "he.tif", rois=rois,
                                 roi_class="Tumor", options=OD_OPTS))
    s = res.summary
    assert s["reliable"] is True and s["sources"]["mapping"] == "registered"
    regions = {r["name"]: r for r in s["regions"]}
    for r, name in enumerate(("R0", "R1")):
        t = _pixel_percentages(truth["regions"][r]["pixel_counts"])
        for k in t:
            assert regions[name]["class_percentages"][k] == pytest.approx(t[k], abs=4.0)
    # the same regions drawn on the IHC slide (moved by the known affine) give the same result
    from shapely import affinity

    a = matrix
    ihc_rois = tuple(annotation_object(affinity.affine_transform(
        p, [a[0, 0], a[0, 1], a[1, 0], a[1, 1], a[0, 2], a[1, 2]]), "Tumor", name=f"R{r}")
        for r, p in enumerate(polys))
    on_ihc = run_score(ScoreRequest(ihc=tmp_path / "ihc.tif", he=tmp_path / "he.tif",
                                    rois=ihc_rois, roi_class="Tumor", roi_space="ihc",
                                    options=OD_OPTS))
    for r_he, r_ihc in zip(s["regions"], on_ihc.summary["regions"]):
        for k in ("0", "1+", "2+", "3+"):
            assert r_ihc["class_percentages"][k] == pytest.approx(r_he["class_percentages"][k], abs=1.0)
    # the IHC tile polygons are the H&E tiles moved by the known affine
    he_tile = res.he_detections[0].geometry.centroid
    ihc_tile = res.detections[0].geometry.centroid
    expected = matrix @ np.array([he_tile.x, he_tile.y, 1.0])
    assert np.hypot(ihc_tile.x - expected[0], ihc_tile.y - expected[1]) < 6.0
    assert len(res.he_detections) == s["n_tiles"]


def test_bad_inputs_give_clear_errors(tmp_path: Path, ihc_case) -> None:
    rgb = ihc_case["rgb"][:600, :600]
    write_slide(tmp_path / "nompp.tif", rgb, kind="plain", compression=None)
    with pytest.raises(MPPMissing, match="--mpp"):
        run_score(ScoreRequest(ihc=tmp_path / "nompp.tif"))
    rois = tuple(read_geojson(ihc_case["dir"] / "rois.geojson"))
    with pytest.raises(UserInputError, match="Tumor, Stroma|Stroma"):
        run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", rois=rois, roi_class="Nope"))
    with pytest.raises(UserInputError, match="no ROIs"):
        run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", roi_class="Tumor"))



def test_no_tissue_is_not_evaluable_never_zero(tmp_path: Path, ihc_case) -> None:
    """A blank slide, or a region drawn on glass, is "not evaluable" with the reason, not HER2 0."""
    blank = np.full((800, 800, 3), 242, np.uint8)
    write_slide(tmp_path / "blank.tif", blank, mpp=0.5, kind="plain", compression=None)
    res = run_score(ScoreRequest(ihc=tmp_path / "blank.tif"))
    assert res.summary["her2_score"] == "not evaluable"
    assert res.summary["evaluable"] is False
    assert any("no tissue" in w for w in res.summary["warnings"])
    assert "too little tissue" in res.summary["not_evaluable_reasons"][0]
    assert res.annotations[0].class_name == "HER2 not evaluable"
    write_result(res, tmp_path / "out")  # outputs are written all the same
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["her2_score"] == "not evaluable"
    # a region drawn on the glass beside the tissue of a scorable slide
    from shapely.geometry import box

    glass_roi = annotation_object(box(2, 2, 60, 60), "Tumor", name="on glass")
    tissue = tuple(read_geojson(ihc_case["dir"] / "rois.geojson"))
    res = run_score(ScoreRequest(ihc=ihc_case["dir"] / "ihc.tif", rois=(glass_roi, *tissue),
                                 roi_class="Tumor"))
    regions = {r["name"]: r for r in res.summary["regions"]}
    assert regions["on glass"]["her2_score"] == "not evaluable"
    assert regions["R0"]["her2_score"] != "not evaluable"
    assert any("on glass not evaluable" in w for w in res.summary["warnings"])


def test_run_without_models_records_versions_without_importing_torch(tmp_path: Path) -> None:
    """Provenance names the installed torch/transformers versions; a run without models never loads them."""
    import os
    import subprocess
    import sys
    from importlib import metadata

    slide = write_slide(tmp_path / "s.png", synthetic_ihc((512, 512), seed=2)[0], mpp=0.5, kind="png")
    code = (
        "import json, sys\n"
        "from her2_qupath.pipeline import ScoreRequest, run_score\n"
        f"r = run_score(ScoreRequest(ihc={str(slide)!r}))\n"
        "print(json.dumps({'loaded': sorted({'torch', 'transformers'} & set(sys.modules)),\n"
        "                  'versions': r.summary['provenance']['versions']}))\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": repo}, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    for module, dist in (("torch", "torch"), ("transformers", "transformers"), ("skimage", "scikit-image")):
        assert got["versions"][module] == metadata.version(dist)


def test_swapped_slides_are_flagged(tmp_path: Path) -> None:
    he, ihc, _m, _t = synthetic_pair((1024, 1024), seed=2, mpp=0.5)
    write_slide(tmp_path / "he.tif", he, mpp=0.5, kind="pyramidal", compression="zlib")
    write_slide(tmp_path / "ihc.tif", ihc, mpp=0.5, kind="pyramidal", compression="zlib")
    ok = run_score(ScoreRequest(ihc=tmp_path / "ihc.tif"))
    assert ok.summary["warnings"] == []
    swapped = run_score(ScoreRequest(ihc=tmp_path / "he.tif"))
    assert any("looks like an H&E" in w for w in swapped.summary["warnings"])


def test_blend_is_the_rounded_alpha_mix_where_masked() -> None:
    from her2_qupath.render import blend

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    top = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    mask = rng.random((40, 30)) < 0.5
    out = blend(base, top, 0.55, mask=mask)
    want = np.round(0.45 * base.astype(float) + 0.55 * top.astype(float))
    assert np.abs(out[mask].astype(float) - want[mask]).max() <= 1
    assert np.array_equal(out[~mask], base[~mask])
    assert np.abs(blend(base, top, 0.3).astype(float) - np.round(0.7 * base + 0.3 * top.astype(float))).max() <= 1
