"""The QuPath scripts in groovy_scripts/, run by Debian's groovy against stand-in QuPath classes.

The stand-ins (tests/groovy_stubs) hold an image, its hierarchy and the
project; they record every object a script adds, removes or exports. The
scoring scripts talk HTTP to a server on a loopback port (a stand-in speaking
the server's API here; the real server in test_groovy_server.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "groovy_scripts"
STUBS = REPO / "tests" / "groovy_stubs"

pytestmark = pytest.mark.groovy


def _java_home() -> str | None:
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    for cand in sorted(Path("/usr/lib/jvm").glob("java-*-openjdk*")) if Path("/usr/lib/jvm").is_dir() else []:
        if (cand / "bin" / "java").exists():
            return str(cand)
    return None


@pytest.fixture(scope="session")
def groovy() -> str:
    exe = shutil.which("groovy")
    if exe is None:
        pytest.skip("groovy is not installed (apt-get install groovy)")
    if _java_home() is None:
        pytest.skip("no JDK found for groovy (set JAVA_HOME)")
    return exe


def feature(geom: list[list[float]], *, kind: str = "annotation", name: str | None = None,
            cls: Any = None, fid: str | None = None, measurements: dict | None = None) -> dict:
    props: dict[str, Any] = {"objectType": kind}
    if name is not None:
        props["name"] = name
    if cls is not None:
        props["classification"] = cls
    if measurements:
        props["measurements"] = measurements
    f = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [geom]}, "properties": props}
    if fid:
        f["id"] = fid
    return f


def square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def run_script(groovy: str, name: str, state: dict, tmp_path: Path, settings: dict[str, str] | None = None,
               env: dict[str, str] | None = None, shared: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    """Run groovy_scripts/<name> with its settings lines changed as a user would edit them."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    for key, value in (settings or {}).items():
        text, n = re.subn(rf"(@Field \w+ {key} = ).*", lambda m, v=value: m.group(1) + v, text, count=1)
        assert n == 1, f"setting {key} not found in {name}"
    folder = tmp_path / "scripts"  # QuPath's scripts folder; the script runs from elsewhere (cwd)
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(text, encoding="utf-8")
    common = SCRIPTS / "her2_qupath_common.groovy"  # installed beside the scripts, as docs/qupath.md says
    if shared:
        (folder / common.name).write_text(common.read_text(encoding="utf-8"), encoding="utf-8")
    state_file = tmp_path / f"{name}.state.json"
    state_file.write_text(json.dumps(state), encoding="utf-8")
    out = tmp_path / f"{name}.out.json"
    prefs = tmp_path / "java-prefs"  # the user's Java preferences live here, not in $HOME
    env = {**{k: v for k, v in os.environ.items() if k != "HER2_QUPATH_TOKEN"},
           "JAVA_HOME": _java_home() or "", "JAVA_OPTS": f"-Djava.util.prefs.userRoot={prefs}",
           **(env or {})}
    proc = subprocess.run(
        [groovy, "-cp", str(STUBS), str(STUBS / "run_with_stub.groovy"), str(state_file), str(script), str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    record = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    return proc, record


# --------------------------------------------------------------------------- stand-in server

HER2_2 = {"name": "HER2 2+", "color": [255, 128, 0]}
#: the stain string a run's summary carries (StainVectors.to_qupath)
STAINS = ('{"Name" : "H-DAB", "Stain 1" : "Hematoxylin", "Values 1" : "0.65 0.704 0.286", '
          '"Stain 2" : "DAB", "Values 2" : "0.268 0.57 0.776", "Background" : " 241 240 243"}')


class StandIn:
    """A server speaking the /api/v1 job API with canned results; records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.polls = 0
        self.token: str | None = None
        self.fail_submit: tuple[int, dict] | None = None
        self.job_error: str | None = None
        self.never_finish = False
        self.polled_flag: Path | None = None
        self.detections = {"type": "FeatureCollection", "features": [
            feature(square(110, 110, 20), kind="tile", name="NFW/2+", cls=HER2_2,
                    measurements={"HER2: 2+ %": 61.0}),
            feature(square(140, 140, 20), kind="tile", name="NF/1+",
                    cls={"name": "HER2 1+", "color": [255, 215, 0]}),
            # touches the region, centre outside it (the server returns every tile touching it)
            feature(square(195, 150, 20), kind="tile", name="N/0",
                    cls={"name": "HER2 0", "color": [0, 114, 178]}),
        ]}
        self.annotations = {"type": "FeatureCollection", "features": [
            feature(square(100, 100, 100), name="her2-qupath: Region 1 HER2 2+", cls=HER2_2,
                    measurements={"H-score": 140.0}),
        ]}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _auth(self) -> bool:
                outer.requests.append({"method": self.command, "path": self.path,
                                       "auth": self.headers.get("Authorization")})
                if outer.token and self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self._send(401, {"error": {"code": "unauthorized", "message": "a valid token is required"}})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._auth():
                    return
                outer.requests[-1]["body"] = body
                if self.path == "/api/v1/pairing":  # the server's pairing rules, for real
                    from her2_qupath.qupath.project import partner_of

                    self._send(200, partner_of(body["ihc"], body["images"],
                                               pattern=body.get("pair_pattern"),
                                               metadata_key=body.get("pair_metadata")))
                    return
                if outer.fail_submit:
                    self._send(*outer.fail_submit)
                    return
                self._send(202, {"id": "job-1"})

            def do_GET(self) -> None:  # noqa: N802
                if not self._auth():
                    return
                if self.path == "/api/v1/jobs/job-1":
                    outer.polls += 1
                    if outer.polled_flag is not None:
                        outer.polled_flag.touch()  # the job is running: now the user stops the script
                    if outer.polls < 2 or outer.never_finish:
                        self._send(200, {"id": "job-1", "state": "running", "progress": 0.5,
                                         "tiles_done": 2, "tiles_total": 4, "error": None})
                    elif outer.job_error:
                        self._send(200, {"id": "job-1", "state": "failed", "progress": 0.5,
                                         "tiles_done": 2, "tiles_total": 4, "error": outer.job_error})
                    else:
                        self._send(200, {"id": "job-1", "state": "done", "progress": 1.0,
                                         "tiles_done": 4, "tiles_total": 4, "error": None})
                elif self.path == "/api/v1/jobs/job-1/detections":
                    self._send(200, outer.detections)
                elif self.path == "/api/v1/jobs/job-1/annotations":
                    self._send(200, outer.annotations)
                elif self.path == "/api/v1/jobs/job-1/result":
                    self._send(200, {"her2_score": "2+", "h_score": 140.0,
                                     "provenance": {"stain_vectors_qupath": STAINS}})
                else:
                    self._send(404, {"error": {"code": "not_found", "message": f"no route {self.path}"}})

            def do_DELETE(self) -> None:  # noqa: N802
                self._auth()
                self._send(200, {"id": "job-1", "state": "cancelled"})

        return H


@pytest.fixture()
def standin():
    s = StandIn()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), s.handler())
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    s.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield s
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def image_state(tmp_path: Path, *, selected: bool = True) -> dict:
    tumor = feature(square(100, 100, 100), name="T1", cls={"name": "Tumor", "color": [200, 0, 0]}, fid="user-tumor")
    other = feature(square(500, 500, 50), name="stroma", cls="Stroma", fid="user-stroma")
    user_det = feature(square(120, 160, 5), kind="detection", name="my cell", fid="user-det")
    old_inside = feature(square(150, 150, 20), kind="tile", name="her2-qupath: NF/1+", fid="old-in")
    old_outside = feature(square(800, 800, 20), kind="tile", name="her2-qupath: N/0", fid="old-out")
    return {
        "image_uri": "file:/slides/case%201/HER2%20caf%C3%A9.svs",
        "image_name": "case1_HER2.svs",
        "pixel_size": 0.2527,
        "entry_id": "7",
        "project_dir": str(tmp_path / "proj"),
        "project_images": [
            {"id": "7", "name": "case1_HER2.svs", "uri": "file:/slides/case%201/HER2%20caf%C3%A9.svs"},
            {"id": "8", "name": "case1_HE.svs", "uri": "file:/slides/case%201/HE.svs"},
        ],
        "objects": [tumor, other, user_det, old_inside, old_outside],
        "selected_ids": ["user-tumor"] if selected else [],
    }


def _user(objs: list[dict]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objs if not str(o["properties"].get("name", "")).startswith("her2-qupath"))


# --------------------------------------------------------------------------- scoring scripts


def test_score_selected_sends_image_rois_and_adds_results(groovy, standin, tmp_path):
    state = image_state(tmp_path)
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05", "GUIDELINE": "'gastric'"})
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stdout, proc.stdout
    post = next(r for r in standin.requests if r["method"] == "POST")
    assert post["path"] == "/api/v1/jobs"
    body = post["body"]
    assert body["ihc"] == state["image_uri"]
    assert body["ihc_mpp"] == pytest.approx(0.2527)
    assert body["options"] == {"guideline": "gastric", "level": "pixel", "aggregation": "guideline"}
    feats = body["rois"]["features"]
    assert [f["properties"]["name"] for f in feats] == ["T1"]
    assert feats[0]["geometry"]["coordinates"][0] == square(100, 100, 100)
    # progress reached the log
    assert "running 50% (2/4 tiles)" in proc.stdout and "HER2 2+" in proc.stdout
    # added: 3 tiles + 1 annotation, each named with the marker and the region's tag, classes kept
    added = rec["added"]
    assert len(added) == 4
    assert all(a["properties"]["name"].startswith("her2-qupath") for a in added)
    assert all(a["properties"]["name"].endswith(" #usertumo") for a in added)  # id "user-tumor"
    assert sorted(a["properties"]["objectType"] for a in added) == ["annotation", "tile", "tile", "tile"]
    assert {a["properties"]["classification"]["name"] for a in added} == {"HER2 0", "HER2 1+", "HER2 2+"}
    # removed: only the earlier product object inside the scored region
    assert [r["id"] for r in rec["removed"]] == ["old-in"]
    assert _user(rec["hierarchy"]) == _user(state["objects"])
    assert rec["updates"] == 1


def test_score_whole_image_when_nothing_selected(groovy, standin, tmp_path):
    state = image_state(tmp_path, selected=False)
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert proc.returncode == 0, proc.stderr
    body = next(r for r in standin.requests if r["method"] == "POST")["body"]
    assert body["rois"] is None
    assert sorted(r["id"] for r in rec["removed"]) == ["old-in", "old-out"]
    assert _user(rec["hierarchy"]) == _user(state["objects"])


def test_server_error_is_one_clear_message(groovy, standin, tmp_path):
    standin.fail_submit = (403, {"error": {"code": "forbidden", "message": "image outside the allowed roots"}})
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", image_state(tmp_path), tmp_path,
                           {"SERVER_URL": f"'{standin.url}'"})
    assert proc.returncode == 0
    assert "ERROR: her2-qupath:" in proc.stdout
    assert "image outside the allowed roots" in proc.stdout and "TOKEN" in proc.stdout
    assert "Exception" not in proc.stdout + proc.stderr
    assert rec["added"] == [] and rec["removed"] == []


def test_failed_job_and_token(groovy, standin, tmp_path):
    standin.token = "s3cret"
    standin.job_error = "slide has no pixel size; pass mpp"
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", image_state(tmp_path), tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"},
                           env={"HER2_QUPATH_TOKEN": "s3cret"})
    assert all(r["auth"] == "Bearer s3cret" for r in standin.requests)
    assert "scoring failed on the server: slide has no pixel size; pass mpp" in proc.stdout
    assert rec["added"] == []


@pytest.mark.parametrize("name", ["score_selected_annotations.groovy", "score_pair.groovy"])
def test_without_the_shared_part_beside_it_a_script_says_so(groovy, tmp_path, name):
    """The scripts load her2_qupath_common.groovy from their own folder; without it: one clear
    message naming the file, and nothing sent or changed."""
    proc, rec = run_script(groovy, name, image_state(tmp_path), tmp_path,
                           {"SERVER_URL": "'http://127.0.0.1:9'"}, shared=False)
    assert proc.returncode != 0
    assert f"{tmp_path / 'scripts' / 'her2_qupath_common.groovy'} not found" in proc.stderr
    assert "beside it" in proc.stderr and rec["added"] == [] and rec["removed"] == []


def test_unreachable_server(groovy, tmp_path):
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", image_state(tmp_path), tmp_path,
                           {"SERVER_URL": "'http://127.0.0.1:9'"})
    assert proc.returncode == 0
    assert "cannot reach the HER2 server at http://127.0.0.1:9" in proc.stdout
    assert "her2-qupath serve" in proc.stdout
    assert rec["added"] == []


def test_score_pair_finds_he_partner_by_name(groovy, standin, tmp_path):
    state = image_state(tmp_path)
    proc, rec = run_script(groovy, "score_pair.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stdout, proc.stdout
    pairing = next(r for r in standin.requests if r["path"] == "/api/v1/pairing")["body"]
    assert pairing["ihc"] == "case1_HER2.svs" and pairing["pair_pattern"] == "(?P<case>.+)_(?P<stain>HE|HER2)"
    assert [i["name"] for i in pairing["images"]] == ["case1_HER2.svs", "case1_HE.svs"]
    body = next(r for r in standin.requests if r["path"] == "/api/v1/jobs")["body"]
    assert body["ihc"] == state["image_uri"]
    assert body["he"] == "file:/slides/case%201/HE.svs"
    assert body["roi_space"] == "ihc"  # the selected region was drawn on the IHC image
    assert len(rec["added"]) == 4


def test_score_pair_missing_partner(groovy, standin, tmp_path):
    state = image_state(tmp_path)
    state["project_images"] = state["project_images"][:1]
    proc, rec = run_script(groovy, "score_pair.groovy", state, tmp_path, {"SERVER_URL": f"'{standin.url}'"})
    assert "no H&E partner for 'case1_HER2.svs': case 'case1' has no H&E image" in proc.stdout
    assert not [r for r in standin.requests if r["path"] == "/api/v1/jobs"]
    assert rec["added"] == []


# --------------------------------------------------------------------------- import / export


def test_import_results_replaces_only_product_objects(groovy, standin, tmp_path):
    state = image_state(tmp_path)
    out = tmp_path / "proj" / "her2_qupath" / "7"
    out.mkdir(parents=True)
    (out / "detections.geojson").write_text(json.dumps(standin.detections))
    (out / "annotations.geojson").write_text(json.dumps(standin.annotations))
    proc, rec = run_script(groovy, "import_results.groovy", state, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "added 4 objects, replaced 2 earlier ones" in proc.stdout
    assert sorted(r["id"] for r in rec["removed"]) == ["old-in", "old-out"]
    assert _user(rec["hierarchy"]) == _user(state["objects"])
    # a second import leaves the same hierarchy (idempotent)
    state2 = dict(state, objects=rec["hierarchy"], selected_ids=[])
    proc2, rec2 = run_script(groovy, "import_results.groovy", state2, tmp_path)
    assert len(rec2["hierarchy"]) == len(rec["hierarchy"])
    assert _user(rec2["hierarchy"]) == _user(state["objects"])


def test_import_results_without_results_is_a_note(groovy, tmp_path):
    proc, rec = run_script(groovy, "import_results.groovy", image_state(tmp_path), tmp_path)
    assert proc.returncode == 0
    assert "no results for 'case1_HER2.svs'" in proc.stdout and "her2-qupath batch" in proc.stdout
    assert rec["added"] == [] and rec["removed"] == []


def test_export_annotations_where_batch_finds_them(groovy, tmp_path):
    from her2_qupath.qupath.project import ImageEntry, find_roi_file

    state = image_state(tmp_path)
    proc, rec = run_script(groovy, "export_annotations.groovy", state, tmp_path, {"ONLY_CLASS": "'Tumor'"})
    assert proc.returncode == 0, proc.stderr
    entry = ImageEntry(entry_id="7", name="case1_HER2.svs", uri=state["image_uri"], path=None, exists=False)
    found = find_roi_file(entry, project_dir=tmp_path / "proj")
    assert found == tmp_path / "proj" / "her2_qupath" / "7" / "rois.geojson"
    data = json.loads(found.read_text())
    assert data["type"] == "FeatureCollection"
    assert [f["properties"]["name"] for f in data["features"]] == ["T1"]
    # all classes, still never the product's own objects
    proc, rec = run_script(groovy, "export_annotations.groovy", state, tmp_path)
    names = sorted(f["properties"].get("name") for f in json.loads(found.read_text())["features"])
    assert names == ["T1", "stroma"]


def test_selecting_only_earlier_results_is_refused(groovy, standin, tmp_path):
    state = image_state(tmp_path)
    state["objects"].append(feature(square(100, 100, 100), name="her2-qupath: Region 1 HER2 1+", fid="old-region"))
    state["selected_ids"] = ["old-region"]
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'"})
    assert "results of an earlier run" in proc.stdout
    assert not [r for r in standin.requests if r["method"] == "POST"] and rec["added"] == []


# --------------------------------------------------------------------------- re-runs, H&E tumour, interrupts


def _rerun(groovy: str, name: str, state: dict, tmp_path: Path, settings: dict) -> tuple[dict, dict]:
    """Run a script, then again on the hierarchy it left, with the same selection."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    proc, rec = run_script(groovy, name, state, first_dir, settings)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    again = dict(state, objects=rec["hierarchy"])
    proc2, rec2 = run_script(groovy, name, again, second_dir, settings)
    assert proc2.returncode == 0 and "ERROR" not in proc2.stdout, proc2.stdout + proc2.stderr
    return rec, rec2


@pytest.mark.parametrize("script", ["score_selected_annotations.groovy", "score_pair.groovy"])
def test_rerun_replaces_its_results_and_never_duplicates(groovy, standin, tmp_path, script):
    """The server returns every tile touching the region (one with its centre outside): a second
    run on the same selection leaves exactly as many objects as the first."""
    state = image_state(tmp_path)
    settings = {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"}
    rec, rec2 = _rerun(groovy, script, state, tmp_path, settings)
    assert len(rec2["hierarchy"]) == len(rec["hierarchy"])
    ours = sorted(o["properties"]["name"] for o in rec["hierarchy"]
                  if o["properties"].get("name", "").startswith("her2-qupath"))
    assert ours == sorted(o["properties"]["name"] for o in rec2["hierarchy"]
                          if o["properties"].get("name", "").startswith("her2-qupath"))
    assert len(rec2["removed"]) == 4 and len(rec2["added"]) == 4
    assert _user(rec2["hierarchy"]) == _user(state["objects"])
    # a whole-image run next replaces every result of the product, region results included
    whole = dict(state, objects=rec2["hierarchy"], selected_ids=[])
    (tmp_path / "whole").mkdir()
    proc3, rec3 = run_script(groovy, script, whole, tmp_path / "whole", settings)
    assert all(o["properties"]["name"].endswith(" #image") for o in rec3["added"])
    assert not [o for o in rec3["hierarchy"] if o["properties"].get("name", "").endswith("#usertumo")]


def test_score_pair_scores_inside_the_he_tumour_annotations(groovy, standin, tmp_path):
    """Nothing selected on the IHC image: the H&E image's Tumor annotations are the regions."""
    state = image_state(tmp_path, selected=False)
    he_tumour = feature(square(300, 300, 200), name="HE tumour",
                        cls={"name": "tumor: invasive", "color": [200, 0, 0]}, fid="he-t")
    he_stroma = feature(square(0, 0, 50), name="HE stroma", cls="Stroma", fid="he-s")
    he_ours = feature(square(300, 300, 10), name="her2-qupath: NF/1+", fid="he-old",
                      cls={"name": "Tumor", "color": [200, 0, 0]})
    state["project_images"][1]["objects"] = [he_tumour, he_stroma, he_ours]
    proc, rec = run_script(groovy, "score_pair.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    body = next(r for r in standin.requests if r["path"] == "/api/v1/jobs")["body"]
    assert [f["properties"]["name"] for f in body["rois"]["features"]] == ["HE tumour"]
    assert body["roi_space"] == "he"
    assert "the 1 'Tumor' annotation(s) of the H&E image" in proc.stdout


def test_interrupting_a_script_cancels_its_job(groovy, standin, tmp_path):
    standin.never_finish = True
    standin.polled_flag = tmp_path / "polled"
    state = dict(image_state(tmp_path), interrupt_when=str(standin.polled_flag))
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", state, tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in standin.requests if r["method"] == "DELETE"] == ["/api/v1/jobs/job-1"]
    assert "interrupted: job job-1 was cancelled on the server" in proc.stdout
    assert rec["added"] == [] and rec["removed"] == []


def test_token_from_the_user_preferences_and_image_type(groovy, standin, tmp_path):
    """set_server_token.groovy keeps the token in the user's preferences; the scripts read it."""
    standin.token = "pref-t0ken"
    proc, _ = run_script(groovy, "set_server_token.groovy", image_state(tmp_path), tmp_path,
                         env={"HER2_QUPATH_TOKEN": "pref-t0ken"})
    assert proc.returncode == 0 and "token stored" in proc.stdout, proc.stdout + proc.stderr
    assert "pref-t0ken" not in (SCRIPTS / "score_selected_annotations.groovy").read_text()
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", image_state(tmp_path), tmp_path,
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    assert {r["auth"] for r in standin.requests} == {"Bearer pref-t0ken"}
    assert rec["image_type"] == "BRIGHTFIELD_H_DAB"  # it was "Not set" ...
    assert rec["stains"] == STAINS  # ... with the stain vectors the server used
    standin.token = None
    typed = dict(image_state(tmp_path), image_type="BRIGHTFIELD_H_E")
    (tmp_path / "typed").mkdir()
    proc, rec = run_script(groovy, "score_selected_annotations.groovy", typed, tmp_path / "typed",
                           {"SERVER_URL": f"'{standin.url}'", "POLL_SECONDS": "0.05"})
    assert "ERROR" not in proc.stdout and len(rec["added"]) == 4, proc.stdout
    assert rec["image_type"] is None and rec["stains"] is None  # a type the user chose is left alone
