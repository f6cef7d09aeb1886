"""Every route and error of the API through Flask's test client (the real pipeline)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from server_support import (
    SlowScorer,
    app_config,
    app_factory,
    comparable,
    direct,
    make_images,
    strip_ids,
    wait_for,
    wait_job,
)

from her2_qupath.errors import Her2Error, JobCancelled
from her2_qupath.server import create_app
from her2_qupath.server.scorers import JobSpec, PipelineScorer

OPTS = {"tile_size": 128}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("slides"))


@pytest.fixture
def make_app(tmp_path: Path, images: dict[str, Path]) -> Iterator[Any]:
    with app_factory(tmp_path, [images["three"].parent]) as build:
        yield build


@pytest.fixture
def client(make_app: Any) -> FlaskClient:
    return make_app().test_client()


def _job(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.json
    assert r.headers["Location"] == f"/api/v1/jobs/{r.json['id']}"
    return dict(r.json)


def _get(client: FlaskClient) -> Any:
    return lambda url: client.get(url).json


def _error(r: Any, status: int, code: str | None = None) -> str:
    assert r.status_code == status, (r.status_code, r.data[:300])
    assert r.mimetype == "application/json"
    assert set(r.json) == {"error"}
    # an id ties a 500 to its details in the server log; other errors say what to fix
    assert set(r.json["error"]) == (
        {"code", "message", "id"} if status == 500 else {"code", "message"}
    )
    if code is not None:
        assert r.json["error"]["code"] == code
    return str(r.json["error"]["message"])


class BrokenScorer(PipelineScorer):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise self.exc

    def score_in_memory(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise self.exc


class FilesOnlyScorer:
    """A scorer with only the required interface (files in a folder, a tile estimate)."""

    def __init__(self) -> None:
        self.inner = PipelineScorer()

    def estimate_tiles(self, spec: JobSpec) -> int | None:
        return self.inner.estimate_tiles(spec)

    def __call__(self, spec: JobSpec, outdir: Path, **kwargs: Any) -> dict[str, Any]:
        return self.inner(spec, outdir, **kwargs)


# --------------------------------------------------------------------------------------------


def test_health_models_openapi(make_app: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "stain-vit").mkdir(parents=True)
    (models / "stain-vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (models / "seg").mkdir()
    (models / "seg" / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    (models / "seg" / "her2_qupath.json").write_text(json.dumps({"kind": "segmenter"}))
    (models / "not-a-model").mkdir()
    client = make_app(PipelineScorer(models), models_dir=str(models)).test_client()
    h = client.get("/api/v1/health")
    assert h.status_code == 200
    assert (
        h.json["status"] == "ok" and h.json["queue_length"] == 0 and h.json["executor"] == "local"
    )
    assert h.json["models_available"] == 2 and h.json["models_loaded"] == 0
    m = client.get("/api/v1/models").json
    assert m["models"] == [
        {"name": "seg", "kind": "segmenter", "loaded": False},
        {"name": "stain-vit", "kind": "vit", "loaded": False},
    ]
    doc = client.get("/api/v1/openapi.json")
    assert doc.status_code == 200 and doc.json["openapi"].startswith("3.1")


def test_job_lifecycle_and_results_match_direct_call(
    client: FlaskClient, images: dict[str, Path], tmp_path: Path
) -> None:
    job = _job(client, {"ihc": "file:" + str(images["three"]).replace(" ", "%20"), "options": OPTS})
    assert job["state"] == "queued" and job["progress"] == 0
    done = wait_job(_get(client), job["id"])
    assert done["state"] == "done", done
    assert done["progress"] == 1 and done["tiles_done"] == done["tiles_total"] == 16
    assert done["her2_score"] == "3+" and done["result_available"]

    result = client.get(f"/api/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.mimetype == "application/json"
    want = direct(images["three"], OPTS, tmp_path)
    assert comparable(result.json) == want["summary"]
    # LAYOUT_3 by construction: 6, 4, 4 and 2 of the 16 tiles at 0, 1+, 2+, 3+
    assert result.json["class_percentages"] == {"0": 37.5, "1+": 25.0, "2+": 25.0, "3+": 12.5}

    for kind, n in (("detections", 16), ("annotations", 1)):
        r = client.get(f"/api/v1/jobs/{job['id']}/{kind}")
        assert r.status_code == 200 and r.mimetype == "application/geo+json"
        assert r.json["type"] == "FeatureCollection" and len(r.json["features"]) == n
        assert strip_ids(r.json) == want[kind]
    png = client.get(f"/api/v1/jobs/{job['id']}/overlay.png")
    assert (
        png.status_code == 200
        and png.mimetype == "image/png"
        and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    )
    report = client.get(f"/api/v1/jobs/{job['id']}/report.png")
    assert report.status_code == 200 and report.data[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = client.get(f"/api/v1/jobs/{job['id']}/report.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data[:5] == b"%PDF-"
    links = client.get(f"/api/v1/jobs/{job['id']}").json["links"]
    assert links["report_pdf"] == f"/api/v1/jobs/{job['id']}/report.pdf"

    listing = client.get("/api/v1/jobs").json
    assert listing["count"] == 1 and listing["jobs"][0]["id"] == job["id"]
    assert client.get("/api/v1/jobs?state=done").json["count"] == 1
    assert client.get("/api/v1/jobs?state=queued").json["count"] == 0
    _error(client.delete(f"/api/v1/jobs/{job['id']}"), 409, "conflict")


def test_rois_and_roi_class(client: FlaskClient, images: dict[str, Path]) -> None:
    def roi(x0: int, y0: int, x1: int, y1: int, cls: str) -> dict[str, Any]:
        return {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {
                "objectType": "annotation",
                "classification": {"name": cls, "color": [200, 0, 0]},
            },
        }

    # bottom-right 2x2 tiles of LAYOUT_3 are 2+, 2+, 3+, 3+ -> 50 % 3+
    rois = {
        "type": "FeatureCollection",
        "features": [roi(256, 256, 512, 512, "Tumor"), roi(0, 0, 256, 256, "Stroma")],
    }
    r = client.post(
        "/api/v1/score",
        json={"ihc": str(images["three"]), "rois": rois, "roi_class": "Tumor", "options": OPTS},
    )
    assert r.status_code == 200, r.json
    assert r.json["summary"]["n_tiles"] == 4
    assert r.json["summary"]["class_percentages"]["3+"] == 50.0
    assert len(r.json["annotations"]["features"]) == 1
    # the one class rule of the command line (qupath.classes.class_matches): case and a derived
    # class's parts do not matter
    rois["features"][0]["properties"]["classification"]["name"] = "Tumor: invasive"
    lower = client.post("/api/v1/score",
                        json={"ihc": str(images["three"]), "rois": rois, "roi_class": "tumor", "options": OPTS})
    assert lower.status_code == 200, lower.json
    assert lower.json["summary"]["class_percentages"] == r.json["summary"]["class_percentages"]
    msg = _error(
        client.post(
            "/api/v1/score",
            json={"ihc": str(images["three"]), "rois": rois, "roi_class": "Necrosis"},
        ),
        400,
        "invalid_request",
    )
    assert "Necrosis" in msg


def test_sync_score_limits(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(max_sync_tiles=4).test_client()
    ok = client.post(
        "/api/v1/score", json={"ihc": str(images["one"]), "options": {"tile_size": 256}}
    )
    assert (
        ok.status_code == 200 and ok.json["tiles"] == 4 and ok.json["summary"]["her2_score"] == "1+"
    )
    msg = _error(
        client.post("/api/v1/score", json={"ihc": str(images["three"]), "options": OPTS}),
        413,
        "too_many_tiles",
    )
    assert "/api/v1/jobs" in msg  # the hint to use jobs

    state = client.application.extensions["her2_qupath"]
    held = [
        state.sync_slots.acquire(blocking=False) for _ in range(state.config.max_sync_concurrency)
    ]
    try:
        r = client.post(
            "/api/v1/score", json={"ihc": str(images["one"]), "options": {"tile_size": 256}}
        )
        _error(r, 429, "busy")
        assert r.headers["Retry-After"] == "1"
    finally:
        for ok_ in held:
            if ok_:
                state.sync_slots.release()


def test_job_tile_limit_413(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(max_tiles_per_job=8).test_client()
    msg = _error(
        client.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}),
        413,
        "too_many_tiles",
    )
    assert "16" in msg


def test_runtime_tile_limit_fails_job(make_app: Any, images: dict[str, Path]) -> None:
    class NoEstimate(PipelineScorer):
        def estimate_tiles(self, spec: JobSpec) -> None:
            return None

        def estimate_work(self, spec: JobSpec) -> None:
            return None

    client = make_app(NoEstimate(), max_tiles_per_job=8).test_client()
    job = _job(client, {"ihc": str(images["three"]), "options": OPTS})
    done = wait_job(_get(client), job["id"])
    assert done["state"] == "failed" and "16 tiles" in done["error"]
    _error(client.get(f"/api/v1/jobs/{job['id']}/result"), 409, "not_ready")


def test_queue_full_429(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(start_workers=False, max_queue=2, retry_after_s=7).test_client()
    body = {"ihc": str(images["one"])}
    _job(client, body)
    _job(client, body)
    r = client.post("/api/v1/jobs", json=body)
    _error(r, 429, "queue_full")
    assert r.headers["Retry-After"] == "7"
    assert client.get("/api/v1/health").json["queue_length"] == 2


def test_cancel_queued_and_running(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(SlowScorer(0.2)).test_client()
    running = _job(client, {"ihc": str(images["three"]), "options": OPTS})
    queued = _job(client, {"ihc": str(images["two"]), "options": OPTS})
    wait_job(_get(client), running["id"], states=("running",))
    _error(client.get(f"/api/v1/jobs/{running['id']}/overlay.png"), 409, "not_ready")
    r = client.delete(f"/api/v1/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    r = client.delete(f"/api/v1/jobs/{running['id']}")
    assert r.status_code == 202 and r.json["cancel_requested"]
    job = wait_job(_get(client), running["id"])
    assert job["state"] == "cancelled" and job["tiles_done"] < 16
    assert not (
        client.application.extensions["her2_qupath"].manager.result_path(running["id"])
    ).exists()
    _error(client.delete(f"/api/v1/jobs/{running['id']}"), 409)
    _error(client.delete("/api/v1/jobs/" + "0" * 32), 404, "not_found")


def test_progress_is_reported_while_running(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(SlowScorer(0.05)).test_client()
    job = _job(client, {"ihc": str(images["three"]), "options": OPTS})
    seen = wait_for(
        lambda: (
            (j := client.get(f"/api/v1/jobs/{job['id']}").json)["state"] == "running"
            and 0 < j["progress"] < 1
            and j
        )
    )
    assert seen["tiles_total"] == 16 and 0 < seen["tiles_done"] < 16
    assert abs(seen["progress"] - seen["tiles_done"] / 16) < 1e-3
    assert wait_job(_get(client), job["id"])["state"] == "done"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Her2Error("the stain is odd", hint="check it"), "the stain is odd (check it)"),
        (RuntimeError("boom /secret/path"), "internal error while scoring (error id "),
    ],
)
def test_failing_scorer_fails_job(
    make_app: Any,
    images: dict[str, Path],
    exc: Exception,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Product errors are shown as they are; unexpected ones as a message and an id, never their text."""
    client = make_app(BrokenScorer(exc)).test_client()
    job = _job(client, {"ihc": str(images["one"])})
    done = wait_job(_get(client), job["id"])
    assert done["state"] == "failed" and done["error"].startswith(expected)
    msg = _error(client.get(f"/api/v1/jobs/{job['id']}/result"), 409, "not_ready")
    assert expected in msg
    if isinstance(exc, RuntimeError):
        assert "boom" not in done["error"] and "RuntimeError" not in done["error"]
        eid = done["error"].split("error id ", 1)[1].split(")", 1)[0]
        logged = [r for r in caplog.records if eid in r.getMessage()]
        assert logged and "boom /secret/path" in str(logged[0].exc_info[1])  # details: the log only


def test_unreadable_image_is_400(make_app: Any, images: dict[str, Path]) -> None:
    bad = images["three"].parent / "not-an-image.png"
    bad.write_bytes(b"this is text")
    client = make_app().test_client()
    _error(client.post("/api/v1/jobs", json={"ihc": str(bad)}), 400, "invalid_request")


def test_internal_error_is_json_500(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(BrokenScorer(RuntimeError("secret detail"))).test_client()
    r = client.post("/api/v1/score", json={"ihc": str(images["one"])})
    msg = _error(r, 500, "internal_error")
    assert "secret detail" not in msg and "Traceback" not in msg and "RuntimeError" not in msg
    assert r.json["error"]["id"] in msg


def test_request_errors(client: FlaskClient, images: dict[str, Path]) -> None:
    _error(client.get("/api/v1/nothing"), 404, "not_found")
    r = client.put("/api/v1/jobs", json={})
    _error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    _error(
        client.post("/api/v1/jobs", data="ihc=x", content_type="application/x-www-form-urlencoded"),
        415,
    )
    _error(client.post("/api/v1/jobs", data="{not json", content_type="application/json"), 400)
    _error(
        client.post(
            "/api/v1/jobs", data='{"ihc": "a.png", "ihc_mpp": NaN}', content_type="application/json"
        ),
        400,
    )
    _error(
        client.post("/api/v1/jobs", data=b'{"ihc": "\xff"}', content_type="application/json"), 400
    )
    msg = _error(
        client.post("/api/v1/jobs", json={"ihc": "a.png", "pickle": "x"}), 400, "invalid_request"
    )
    assert "pickle" in msg
    msg = _error(
        client.post("/api/v1/jobs", json={"ihc": "a.png", "options": {"guideline": "lung"}}), 400
    )
    assert "guideline" in msg
    _error(client.post("/api/v1/jobs", json=[1, 2]), 400)
    _error(
        client.post("/api/v1/jobs", json={"ihc": str(images["three"]) + ".missing"}),
        404,
        "not_found",
    )
    _error(client.post("/api/v1/jobs", json={"ihc": "/etc/hostname"}), 403, "forbidden")
    _error(client.post("/api/v1/jobs", json={"ihc": "../../etc/hostname"}), 403, "forbidden")
    _error(client.post("/api/v1/jobs", json={"ihc": "file:/C:/slides/a.svs"}), 400)
    _error(client.post("/api/v1/jobs", json={"ihc": "https://example.org/a.svs"}), 400)
    _error(client.get("/api/v1/jobs?state=weird"), 400)
    _error(client.get("/api/v1/jobs?limit=0"), 400)
    _error(client.get("/api/v1/jobs?limit=abc"), 400)
    _error(client.get("/api/v1/jobs/../../etc"), 404)
    _error(client.get("/api/v1/jobs/" + "f" * 32 + "/result"), 404)
    for kind in ("detections", "annotations", "overlay.png"):
        _error(client.get("/api/v1/jobs/nope/" + kind), 404)


def test_concurrent_submissions_unique_ids(make_app: Any, images: dict[str, Path]) -> None:
    client_app = make_app(start_workers=False, max_queue=1000)
    ids: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        c = client_app.test_client()
        for _ in range(10):
            r = c.post("/api/v1/jobs", json={"ihc": str(images["one"])})
            with lock:
                ids.append(r.json["id"])

    threads = [threading.Thread(target=submit) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 50
    assert client_app.test_client().get("/api/v1/health").json["queue_length"] == 50


def test_status_page_shows_jobs(client: FlaskClient, images: dict[str, Path]) -> None:
    empty = client.get("/")
    assert empty.status_code == 200 and b"No jobs yet" in empty.data
    job = _job(client, {"ihc": str(images["two"]), "options": OPTS})
    wait_job(_get(client), job["id"])
    page = client.get("/").data.decode()
    assert f'id="job-{job["id"]}"' in page
    assert 'data-score="2+"' in page and "HER2 2+" in page
    assert f"/api/v1/jobs/{job['id']}/overlay.png" in page
    assert "37.5" in page  # the 1+ percentage of LAYOUT_2
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert client.get("/static/status.js").status_code == 200


def test_cancel_during_scoring_event(tmp_path: Path, images: dict[str, Path]) -> None:
    """The scorer itself stops at a set cancel event (no job machinery)."""
    ev = threading.Event()
    ev.set()
    with pytest.raises(JobCancelled):
        PipelineScorer()(JobSpec(ihc=images["three"], options=OPTS), tmp_path, cancel=ev)


def test_sync_score_with_a_files_only_scorer(make_app: Any, images: dict[str, Path]) -> None:
    """/score falls back to the result files when a scorer has no in-memory path; same answer."""
    body = {"ihc": str(images["two"]), "options": {"tile_size": 256}}
    plain = make_app(FilesOnlyScorer()).test_client().post("/api/v1/score", json=body)
    fast = make_app().test_client().post("/api/v1/score", json=body)
    assert plain.status_code == fast.status_code == 200

    def same(r: Any) -> dict[str, Any]:  # without the run's id, time and object UUIDs
        return {
            "tiles": r.json["tiles"],
            "summary": comparable(r.json["summary"]),
            "detections": strip_ids(r.json["detections"]),
            "annotations": strip_ids(r.json["annotations"]),
        }

    assert set(plain.json) == set(fast.json) and same(plain) == same(fast)
    assert (
        plain.json["summary"]["her2_score"] == "2+"
        and len(plain.json["detections"]["features"]) == 4
    )
    health = make_app(FilesOnlyScorer()).test_client().get("/api/v1/health").json
    assert health["models_available"] == 0


def test_qupath_file_uris_with_unicode_and_spaces(
    client: FlaskClient, images: dict[str, Path]
) -> None:
    """URIs as QuPath stores them: percent-encoded UTF-8 (zwei-f%C3%A4lle.png), file:/ and file:///."""
    from urllib.parse import quote

    body = {"options": {"tile_size": 256}}
    encoded = quote(str(images["two"]))
    assert "%C3%A4" in encoded
    for uri in ("file:" + encoded, "file://" + encoded, "file://localhost" + encoded):
        r = client.post("/api/v1/score", json={"ihc": uri, **body})
        assert r.status_code == 200, (uri, r.json)
        assert r.json["summary"]["her2_score"] == "2+"
    spaced = "file:" + quote(str(images["three"]))
    assert "%20" in spaced
    assert (
        client.post("/api/v1/score", json={"ihc": spaced, **body}).json["summary"]["her2_score"]
        == "3+"
    )


def test_status_page_escapes_job_errors(make_app: Any, images: dict[str, Path]) -> None:
    hostile = "<script>alert(1)</script>"
    client = make_app(BrokenScorer(Her2Error(f"bad stain {hostile}"))).test_client()
    job = _job(client, {"ihc": str(images["one"])})
    assert wait_job(_get(client), job["id"])["state"] == "failed"
    page = client.get("/").data.decode()
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_image_roots_given_as_a_list_or_string(tmp_path: Path, images: dict[str, Path]) -> None:
    for n, roots in enumerate(([str(images["three"].parent)], str(images["three"].parent))):
        cfg = app_config(tmp_path / f"data{n}", [], PipelineScorer(), start_workers=False)
        cfg["IMAGE_ROOTS"] = roots
        app = create_app(cfg)
        try:
            assert app.extensions["her2_qupath"].config.image_roots == (
                str(images["three"].parent),
            )
            r = app.test_client().post("/api/v1/jobs", json={"ihc": "case three.png"})
            assert r.status_code == 202
        finally:
            app.extensions["her2_qupath"].close()


def test_grading_and_white_point_options(make_app: Any, images: dict[str, Path]) -> None:
    """options.intensity / thresholds / background reach the scoring, as --intensity etc. do."""
    client = make_app().test_client()
    url = "/api/v1/score"
    base = {"ihc": str(images["one"]), "options": {"tile_size": 256}}
    default = client.post(url, json=base).json["summary"]
    assert default["intensity"] == "membrane" and default["her2_score"] == "1+"
    assert default["white_point"]["source"] == "glass"
    given = client.post(url, json={**base, "options": {"tile_size": 256, "background": [250, 250, 250],
                                                       "thresholds": [0.09, 0.15, 0.4]}}).json["summary"]
    assert given["white_point"]["source"] == "user" and given["white_point"]["rgb"] == [250, 250, 250]
    assert given["thresholds"] == [0.09, 0.15, 0.4] and given["her2_score"] == "0"  # 0.08 < 0.09
    od = client.post(url, json={**base, "options": {"tile_size": 256, "intensity": "od"}}).json
    assert od["summary"]["intensity"] == "od" and od["summary"]["thresholds"] == [0.2, 0.4, 0.6]
    bad = client.post(url, json={**base, "options": {"thresholds": [0.3, 0.1, 0.2]}})
    assert bad.status_code == 400 and "increase" in bad.json["error"]["message"]
    bad = client.post(url, json={**base, "options": {"background": [0, 10, 10]}})
    assert bad.status_code == 400 and "background" in json.dumps(bad.json)


def test_server_wide_calibration(make_app: Any, images: dict[str, Path], tmp_path: Path) -> None:
    """serve --calibration: every request is graded with the laboratory's calibration."""
    from her2_qupath.calibration import write_calibration

    cal = write_calibration(tmp_path / "lab.json", (0.04, 0.09, 0.15, 0.4), n_cases=8)
    client = make_app(PipelineScorer(calibration=cal)).test_client()
    s = client.post("/api/v1/score", json={"ihc": str(images["one"]),
                                           "options": {"tile_size": 256}}).json["summary"]
    assert s["thresholds"] == [0.09, 0.15, 0.4] and s["her2_score"] == "0"  # drawn 1+ at 0.08
    assert s["calibration"].startswith(str(cal))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(Her2Error, match="calibration"):
        PipelineScorer(calibration=bad)


def test_calibration_per_request(make_app: Any, images: dict[str, Path], tmp_path: Path) -> None:
    """options.calibration (a calibration file's content) grades that request only."""
    from her2_qupath.calibration import write_calibration

    server_cal = write_calibration(tmp_path / "server.json", (0.04, 0.09, 0.15, 0.4), n_cases=8)
    client = make_app(PipelineScorer(calibration=server_cal)).test_client()
    darker_lab = json.loads(write_calibration(tmp_path / "req.json", (0.04, 0.02, 0.05, 0.07),
                                              n_cases=8).read_text())

    def score(options: dict) -> Any:
        return client.post("/api/v1/score", json={"ihc": str(images["one"]),
                                                  "options": {"tile_size": 256, **options}})

    s = score({"calibration": darker_lab}).json["summary"]
    assert s["thresholds"] == [0.02, 0.05, 0.07] and s["her2_score"] == "3+"  # drawn 1+ at 0.08
    assert s["calibration"].startswith("options.calibration (sha256 ")
    s = score({}).json["summary"]  # the next request is graded by the server's again
    assert s["thresholds"] == [0.09, 0.15, 0.4] and s["her2_score"] == "0"
    r = score({"calibration": {**darker_lab, "membrane_thresholds": [0.3, 0.2, 0.1]}})
    assert r.status_code == 400 and "options.calibration holds no valid grading" in r.get_data(True)
    r = score({"calibration": darker_lab, "thresholds": [0.1, 0.2, 0.3]})
    assert r.status_code == 400 and "options.calibration sets the membrane thresholds" in r.get_data(True)
    r = score({"calibration": {"format": "x"}})
    assert r.status_code == 400 and "calibration" in r.get_data(True)


def test_pairing_follows_the_batch_rules(make_app: Any) -> None:
    """POST /api/v1/pairing: the scripts find the H&E partner as `batch` pairs images."""
    client = make_app(PipelineScorer()).test_client()
    images = [{"name": "c1_HER2.svs", "id": "1"}, {"name": "c1_HE.svs", "id": "2"},
              {"name": "c2_HER2.svs", "id": "3"},
              {"name": "slide A.svs", "metadata": {"case": "A", "stain": "IHC"}},
              {"name": "slide B.svs", "metadata": {"case": "A", "stain": "H&E"}}]
    pattern = "(?P<case>.+)_(?P<stain>HE|HER2)"

    def pair(**body: Any) -> Any:
        return client.post("/api/v1/pairing", json={"images": images, **body})

    r = pair(ihc="c1_HER2.svs", pair_pattern=pattern)
    assert r.status_code == 200 and r.json == {"ihc": "c1_HER2.svs", "he": "c1_HE.svs", "case": "c1",
                                               "method": "pattern", "reason": None}
    r = pair(ihc="c2_HER2.svs", pair_pattern=pattern).json
    assert r["he"] is None and "has no H&E image" in r["reason"]
    assert pair(ihc="slide A.svs", pair_metadata="case").json["he"] == "slide B.svs"
    assert "no pairing rule" in pair(ihc="c1_HER2.svs").json["reason"]
    r = pair(ihc="c1_HER2.svs", pair_pattern="(?P<case>.+)")
    assert r.status_code == 400 and "named groups 'case' and 'stain'" in r.get_data(True)
    r = pair(ihc="nope.svs", pair_pattern=pattern)
    assert r.status_code == 400 and "'nope.svs' is not among the images sent" in r.get_data(True)
