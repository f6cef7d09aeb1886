"""The scoring scripts against the real server (create_app) on a loopback port.

The image is a real IHC picture (scikit-image's immunohistochemistry sample,
DAB + hematoxylin) saved under a name with a space and a non-ASCII letter, so
the ``file:`` URI QuPath would send must be decoded by the server.
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid
from pathlib import Path

import pytest
from test_groovy_scripts import feature, groovy, run_script, square  # noqa: F401 (groovy is a fixture)

pytestmark = pytest.mark.groovy

MARKER = "her2-qupath"
TUMOR_ID, OTHER_ID, OLD_ID = (str(uuid.UUID(int=i)) for i in (1, 2, 3))  # QuPath ids are UUIDs


@pytest.fixture()
def real_server(tmp_path):
    from skimage import data
    from skimage.io import imsave
    from werkzeug.serving import make_server

    from her2_qupath.server.app import create_app

    slides = tmp_path / "slides"
    slides.mkdir()
    image = slides / "IHC café 1.png"
    imsave(image, data.immunohistochemistry(), check_contrast=False)
    config = {"DATA_DIR": str(tmp_path / "data"), "IMAGE_ROOTS": [str(slides)], "TESTING": True}
    app = create_app(config)  # the default scorer: the real pipeline
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", image
    finally:
        httpd.shutdown()
        thread.join(5)
        state = app.extensions.get("her2_qupath")
        if state is not None and hasattr(state, "close"):
            state.close()


def qupath_uri(path: Path) -> str:
    """The form QuPath writes: ``file:/`` + percent-encoded UTF-8 path."""
    return "file:" + urllib.parse.quote(str(path))


def test_score_selected_against_real_server(groovy, real_server, tmp_path):  # noqa: F811
    url, image = real_server
    tumor = feature(square(0, 0, 200), name="T1", cls={"name": "Tumor", "color": [200, 0, 0]}, fid=TUMOR_ID)
    mine = feature(square(400, 400, 50), name="mine", cls="Stroma", fid=OTHER_ID)
    old = feature(square(10, 10, 20), kind="tile", name=f"{MARKER}: N/0", fid=OLD_ID)
    # at 1 µm/px the 512-px image holds 2 x 2 tiles of the default grid (512 px at 0.5 µm/px)
    state = {"image_uri": qupath_uri(image), "image_name": image.name, "pixel_size": 1.0, "entry_id": "1",
             "project_dir": str(tmp_path / "proj"), "objects": [tumor, mine, old], "selected_ids": [TUMOR_ID]}
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{url}'", "POLL_SECONDS": "0.2", "MAX_WAIT_MINUTES": "3"})
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stdout, proc.stdout
    added = rec["added"]
    tiles = [a for a in added if a["properties"]["objectType"] in ("tile", "detection", "cell")]
    regions = [a for a in added if a["properties"]["objectType"] == "annotation"]
    assert tiles and regions
    classes = {t["properties"]["classification"]["name"] for t in tiles}
    assert classes <= {"HER2 0", "HER2 1+", "HER2 2+", "HER2 3+", "Ignore*"}
    assert all(len(t["properties"]["classification"]["color"]) == 3 for t in tiles)
    assert all(a["properties"]["name"].startswith(MARKER) for a in added)
    # the ROI lies inside the first of the 2 x 2 tiles (256 px each): only that one is scored
    for t in tiles:
        xs = [p[0] for p in t["geometry"]["coordinates"][0]]
        ys = [p[1] for p in t["geometry"]["coordinates"][0]]
        assert max(xs) <= 256 and max(ys) <= 256
    assert all(r["properties"].get("measurements") for r in regions)
    # a 200 µm square holds ~200 nuclei: "not evaluable" (too few cells) is a valid result
    assert {r["properties"]["classification"]["name"] for r in regions} <= {
        "HER2 0", "HER2 1+", "HER2 2+", "HER2 3+", "HER2 not evaluable"}
    assert [r["id"] for r in rec["removed"]] == [OLD_ID]
    kept = {f["id"] for f in rec["hierarchy"]}
    assert {TUMOR_ID, OTHER_ID} <= kept
    assert "HER2 " in proc.stdout
    # the same selection again: the first run's results are replaced, never duplicated
    (tmp_path / "again").mkdir()
    proc2, rec2 = run_script(groovy, "score_selected_annotations.groovy", dict(state, objects=rec["hierarchy"]),
                             tmp_path / "again",
                             {"SERVER_URL": f"'{url}'", "POLL_SECONDS": "0.2", "MAX_WAIT_MINUTES": "3"})
    assert proc2.returncode == 0 and "ERROR" not in proc2.stdout, proc2.stdout
    assert len(rec2["hierarchy"]) == len(rec["hierarchy"])
    assert len(rec2["removed"]) == len(rec2["added"]) == len(added)


def test_image_outside_roots_is_refused_clearly(groovy, real_server, tmp_path):  # noqa: F811
    url, _ = real_server
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    state = {"image_uri": qupath_uri(outside), "image_name": "elsewhere.png", "pixel_size": 0.5,
             "entry_id": "1", "project_dir": str(tmp_path / "proj"), "objects": [], "selected_ids": []}
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path, {"SERVER_URL": f"'{url}'"})
    assert proc.returncode == 0
    assert "ERROR: her2-qupath:" in proc.stdout and "403" in proc.stdout
    assert rec["added"] == []
