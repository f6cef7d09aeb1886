"""One class matcher for --roi-class in score, batch, the server and the scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapely.geometry import box

from her2_qupath.cli import cli
from her2_qupath.qupath.classes import class_matches
from her2_qupath.qupath.geojson import write_geojson
from her2_qupath.qupath.objects import annotation_object, rois_from_objects

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LAYOUT_3, ihc_rgb, write_png  # noqa: E402


@pytest.mark.parametrize(("name", "wanted", "expected"), [
    ("Tumor", "Tumor", True), ("Tumor", "tumor", True), ("Tumor: invasive", "TUMOR", True),
    ("Invasive: Tumor", "tumor", True), (" Tumor ", "tumor", True), ("Tumor: invasive", "invasive", True),
    ("Tumour", "tumor", False), ("Stroma", "tumor", False), ("Peritumoral", "tumor", False),
    (None, "tumor", False), ("", "tumor", False),
])
def test_class_rule(name, wanted, expected) -> None:
    assert class_matches(name, wanted) is expected


def test_roi_class_is_matched_the_same_way_everywhere(tmp_path: Path) -> None:
    """`score --roi-class tumor` finds "Tumor: invasive" annotations (it used to need exact case)."""
    objs = [annotation_object(box(0, 0, 256, 256), ["Tumor", "invasive"], name="T"),
            annotation_object(box(256, 256, 512, 512), "Stroma", name="S")]
    assert [n for _, n in rois_from_objects(objs, roi_class="tumor")] == ["T"]
    from her2_qupath.qupath.batch import _matches_class

    assert [o.name for o in objs if _matches_class(o, "tumor")] == ["T"]
    image = write_png(tmp_path / "ihc.png", ihc_rgb(LAYOUT_3))
    write_geojson(tmp_path / "rois.geojson", objs)
    r = CliRunner().invoke(cli, ["score", "--ihc", str(image), "--roi", str(tmp_path / "rois.geojson"),
                                 "--roi-class", "tumor", "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert [reg["name"] for reg in summary["regions"]] == ["T"]
