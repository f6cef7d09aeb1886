"""``batch`` a laboratory can trust (issue 13, finding 5): a pixel size for images without one
(--mpp, per image in the pairs CSV), a cumulative summary kept across --resume and re-runs,
and an image whose file is not the one its project entry records refused with one line."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from shapely.geometry import box
from test_project import make_project, qpdata_bytes
from test_project_batch import (
    fake_score,  # noqa: F401 - the fixture
    invoke,
    project_with_images,
)

from her2_qupath.cli import cli, main
from her2_qupath.qupath.geojson import QuPathObject, write_geojson
from her2_qupath.slide_writer import write_slide


def rows_of(proj: Path) -> dict[str, dict[str, str]]:
    with (proj / "her2_qupath" / "batch_summary.csv").open() as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def record(proj: Path, entry_id: str, **meta: Any) -> None:
    """Change what the project records about an entry (project.qpproj, data/<id>/server.json and
    data.qpdata); a value of None removes the key (``pixelCalibration=None``: no pixel size)."""
    doc = json.loads((proj / "project.qpproj").read_text())
    (item,) = [i for i in doc["images"] if str(i["entryID"]) == entry_id]
    for target in (item["serverBuilder"]["metadata"],):
        for k, v in meta.items():
            target.pop(k, None) if v is None else target.__setitem__(k, v)
    (proj / "project.qpproj").write_text(json.dumps(doc))
    (proj / "data" / entry_id / "server.json").write_text(json.dumps(item["serverBuilder"]))
    header = {"dataVersion": 3, "qupathVersion": "0.5.1", "server": item["serverBuilder"]}
    (proj / "data" / entry_id / "data.qpdata").write_bytes(qpdata_bytes(header))


def rgb_png(path: Path, size: tuple[int, int]) -> Path:
    rgb = np.full((size[1], size[0], 3), 230, np.uint8)
    return write_slide(path, rgb, kind="png")  # no pixel size in the file


# ---------------------------------------------------------------------- pixel sizes


def test_batch_mpp_is_used_for_images_that_carry_none(tmp_path, fake_score):  # noqa: F811
    slides = tmp_path / "slides"
    slides.mkdir()
    image = rgb_png(slides / "c1_HER2.png", (1000, 800))
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri()}])
    record(proj, "1", pixelCalibration=None)
    res = invoke(str(proj))
    assert res.exit_code == 1  # nothing could be scored
    row = rows_of(proj)["c1_HER2.png"]
    # the message tells the user to pass --mpp ... and batch takes it
    assert row["status"] == "refused" and "carries no pixel size" in row["message"] and "--mpp" in row["message"]
    assert fake_score == []
    res = invoke(str(proj), "--mpp", "0.25")
    assert res.exit_code == 0, res.output
    assert [r.ihc_mpp for r in fake_score] == [0.25] and rows_of(proj)["c1_HER2.png"]["mpp"] == "0.25"


def test_recorded_pixel_size_wins_over_batch_mpp(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)  # every entry records 0.25 µm/px
    assert invoke(str(proj), "--images", "c1_HER2.svs", "--mpp", "0.5").exit_code == 0
    assert [r.ihc_mpp for r in fake_score] == [0.25]


def test_pairs_csv_mpp_columns_set_each_image(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ihc,he,mpp,he_mpp\nc1_HER2.svs,c1_HE.svs,0.2527,0.5\nc2_HER2.svs,,,\n")
    res = invoke(str(proj), "--pairs", str(pairs))
    assert res.exit_code == 0, res.output
    got = {r.ihc.name: (r.ihc_mpp, r.he_mpp) for r in fake_score}
    assert got == {"c1_HER2.svs": (0.2527, 0.5), "c2_HER2.svs": (0.25, None)}


@pytest.mark.parametrize("extra", [["--mpp", "1000"], ["--pairs", "PAIRS"]])
def test_implausible_batch_pixel_size_is_refused_before_any_work(tmp_path, fake_score, capsys, extra):  # noqa: F811
    proj = project_with_images(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ihc,he,mpp\nc1_HER2.svs,c1_HE.svs,250\n")
    args = ["batch", str(proj), *[str(pairs) if a == "PAIRS" else a for a in extra]]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "outside the plausible brightfield range" in err and "--force-mpp" in err
    assert fake_score == [] and not (proj / "her2_qupath").exists()
    res = invoke(*args[1:], "--force-mpp")  # forced: accepted (the CSV's value is used for c1)
    assert res.exit_code == 0, res.output
    assert fake_score[0].ihc_mpp == (250.0 if "--pairs" in extra else 0.25)  # --mpp: recorded wins


# ---------------------------------------------------------------------- cumulative summary


def test_summary_keeps_earlier_results_across_resume_and_reruns(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)
    assert invoke(str(proj), "--images", "*HER2*").exit_code == 0
    first = rows_of(proj)
    run1 = first["c1_HER2.svs"]["run_id"]
    assert run1 and first["c1_HER2.svs"]["her2_score"] == "2+"
    # --resume: the scored images are skipped, and keep their score and run id in the summary
    res = invoke(str(proj), "--images", "*HER2*", "--resume")
    assert res.exit_code == 0 and "[    skipped]" in res.output and "2+" in res.output
    resumed = rows_of(proj)
    for name in ("c1_HER2.svs", "c2_HER2.svs"):
        assert resumed[name]["status"] == "scored" and resumed[name]["her2_score"] == "2+"
        assert resumed[name]["run_id"] == run1 and resumed[name]["h_score"] == "150.0"
    report = json.loads((proj / "her2_qupath" / "batch_summary.json").read_text())
    run2 = report["run_id"]
    assert report["counts"]["skipped"] == 2  # this run's outcomes ...
    assert {r["image"]: r["status"] for r in report["images"]}["c1_HER2.svs"] == "scored"  # ... the rows
    # a re-run of one image replaces its row only: one row per image, the latest result
    assert invoke(str(proj), "--images", "c2_HER2.svs").exit_code == 0
    latest = rows_of(proj)
    assert set(latest) == {"c1_HER2.svs", "c2_HER2.svs", "bad_HER2.svs", "c3_HER2.svs"}
    assert latest["c1_HER2.svs"]["run_id"] == run1
    assert latest["c2_HER2.svs"]["run_id"] not in ("", run1) and latest["c2_HER2.svs"]["status"] == "scored"
    # the image that failed was tried again by the resumed run: its latest attempt
    assert latest["bad_HER2.svs"]["status"] == "failed" and latest["bad_HER2.svs"]["run_id"] == run2 != run1


# ---------------------------------------------------------------------- the entry's file


FLUORESCENCE = {"width": 2048, "height": 2048, "pixelType": "UINT16", "isRGB": False,
                "channels": [{"name": n} for n in ("DAPI", "FITC", "TRITC")], "imageType": "FLUORESCENCE"}


def test_file_that_is_not_the_recorded_image_is_refused(tmp_path, fake_score):  # noqa: F811
    """The entry records a 2048 x 2048 16-bit fluorescence image; the file found by name under
    --image-root is an RGB picture of another size."""
    found = tmp_path / "elsewhere"
    found.mkdir()
    rgb_png(found / "c1_HER2.tif", (222, 297))  # a PNG under a .tif name is still read by its header
    proj = make_project(tmp_path / "proj", [{"name": "c1_HER2.tif", "uri": "file:/gone/c1_HER2.tif"}])
    record(proj, "1", **FLUORESCENCE)
    res = invoke(str(proj), "--image-root", str(found))
    assert res.exit_code == 1
    row = rows_of(proj)["c1_HER2.tif"]
    assert row["status"] == "refused" and fake_score == []
    msg = row["message"]
    assert "entry 1 'c1_HER2.tif' records a 2048×2048 16-bit 3 channel(s) fluorescence image" in msg
    assert "is 222×297 8-bit RGB" in msg and "size, bit depth, RGB, image type differ" in msg
    assert "[    refused]" in res.output and "\n" not in msg


def test_size_differs_at_the_recorded_path_warns_moved_file_refused(tmp_path, fake_score):  # noqa: F811
    slides = tmp_path / "slides"
    slides.mkdir()
    image = rgb_png(slides / "a_HER2.png", (300, 200))  # the project records 1000 x 800
    moved = tmp_path / "moved"
    moved.mkdir()
    rgb_png(moved / "b_HER2.png", (300, 200))
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri()},
                                            {"name": "b_HER2.png", "uri": "file:/gone/b_HER2.png"}])
    res = invoke(str(proj), "--image-root", str(moved))
    rows = rows_of(proj)
    # at its recorded path QuPath opens this very file: scored, with a warning
    assert rows["a_HER2.png"]["status"] == "scored" and "size differs" in rows["a_HER2.png"]["message"]
    # found by name elsewhere: a name is all that ties it to the entry, so a size mismatch refuses it
    assert rows["b_HER2.png"]["status"] == "refused" and "size differ" in rows["b_HER2.png"]["message"]
    assert [r.ihc.name for r in fake_score] == ["a_HER2.png"] and res.exit_code == 0


def test_matching_file_is_scored(tmp_path, fake_score):  # noqa: F811
    slides = tmp_path / "slides"
    slides.mkdir()
    image = rgb_png(slides / "a_HER2.png", (1000, 800))
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri()}])
    record(proj, "1", pixelType="UINT8", isRGB=True, channels=[{"name": n} for n in "RGB"])
    assert invoke(str(proj)).exit_code == 0
    assert rows_of(proj)["a_HER2.png"]["status"] == "scored" and rows_of(proj)["a_HER2.png"]["message"] == ""


# ---------------------------------------------------------------------- ROI files


def test_empty_roi_file_refuses_the_image_and_roi_files_are_hashed(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)
    empty = proj / "her2_qupath" / "1" / "rois.geojson"
    empty.parent.mkdir(parents=True)
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    full = proj / "her2_qupath" / "3" / "rois.geojson"
    full.parent.mkdir(parents=True)
    write_geojson(full, [QuPathObject(box(0, 0, 50, 50), classification="Tumor", name="T")])
    res = invoke(str(proj), "--images", "c*_HER2.svs")
    rows = rows_of(proj)
    assert rows["c1_HER2.svs"]["status"] == "refused" and "holds no annotations" in rows["c1_HER2.svs"]["message"]
    assert rows["c2_HER2.svs"]["status"] == "scored" and res.exit_code == 0
    assert [r.ihc.name for r in fake_score] == ["c2_HER2.svs"]  # not c1 with its whole image
    summary = json.loads((proj / "her2_qupath" / "3" / "summary.json").read_text())
    assert summary["batch"]["roi_file"]["sha256"] == hashlib.sha256(full.read_bytes()).hexdigest()


def test_empty_roi_option_file_is_refused_before_any_work(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)
    empty = tmp_path / "none.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    res = CliRunner().invoke(cli, ["batch", str(proj), "--roi", str(empty)])
    assert res.exit_code != 0 and "holds no features" in str(res.exception)
    assert fake_score == [] and not (proj / "her2_qupath").exists()


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, fake_score):  # noqa: F811
    proj = project_with_images(tmp_path)
    (proj / "her2_qupath").write_text("a file where the results folder goes")
    res = CliRunner().invoke(cli, ["batch", str(proj)])
    assert res.exit_code != 0 and "is not a directory" in str(res.exception)
    assert fake_score == []


def test_dry_run_checks_with_the_given_scoring_options(tmp_path, fake_score):  # noqa: F811
    slides = tmp_path / "slides"
    slides.mkdir()
    image = rgb_png(slides / "a_HER2.png", (1000, 800))
    proj = make_project(tmp_path / "proj", [{"name": image.name, "uri": image.as_uri(), "mpp": 1.0}])
    assert invoke(str(proj), "--dry-run").exit_code == 0
    res = invoke(str(proj), "--dry-run", "--json")
    assert json.loads(res.output)["outcomes"][0]["status"] == "would-score"
    # 1 µm pixels read at 0.05 µm/px: enlarged 20 times, refused before anything is read
    res = invoke(str(proj), "--dry-run", "--json", "--working-mpp", "0.05")
    (outcome,) = json.loads(res.output)["outcomes"]
    assert outcome["status"] == "refused" and "20 times the working pixel size" in outcome["message"]
    assert "--force-mpp" in outcome["message"] and fake_score == []
