"""The server as a careless or hostile client finds it (issue 12), one section per finding.

1. a worker never dies silently; 2. relative --data-dir; 3. stored requests
bounded; 4. WSGI limits; 5. work budget; 6. 400 not 500; 7. retries, file
modes, token, error ids, loopback aliases, a damaged database.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import SlowScorer, app_config, app_factory, make_images, wait_for, wait_job

from her2_qupath.server import create_app
from her2_qupath.server.jobs import JobStore
from her2_qupath.server.scorers import JobSpec, PipelineScorer
from her2_qupath.server.wsgi import BackgroundServer

REPO = Path(__file__).resolve().parents[1]
OPTS = {"tile_size": 128}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("slides"))


@pytest.fixture
def make_app(tmp_path: Path, images: dict[str, Path]) -> Iterator[Any]:
    with app_factory(tmp_path, [images["three"].parent]) as build:
        yield build


def _get(client: Any) -> Any:
    return lambda url: client.get(url).json


def _submit(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.json
    return dict(r.json)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from her2_qupath.cli import main; main()", "serve", *args]


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the server did not stop: {err[-2000:]}") from None


# ---- 1. a dead worker is reported as healthy -------------------------------------------------


def test_worker_survives_removed_results_folder(make_app: Any, images: dict[str, Path]) -> None:
    """Removing DATA/results while the server runs used to end the worker in its purge."""
    app = make_app(purge_interval_s=0.05)
    client = app.test_client()
    manager = app.extensions["her2_qupath"].manager
    first = _submit(client, {"ihc": str(images["one"])})
    assert wait_job(_get(client), first["id"])["state"] == "done"
    import shutil

    shutil.rmtree(manager.results_dir)
    wait_for(lambda: manager.results_dir.is_dir(), timeout=20)  # a purge ran and recreated it
    job = _submit(client, {"ihc": str(images["two"]), "options": OPTS})
    done = wait_job(_get(client), job["id"])
    assert done["state"] == "done" and done["result_available"]
    assert client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 200
    health = client.get("/api/v1/health").json
    assert health["status"] == "ok" and health["workers_alive"] == 1, health


class DiskFullScorer(PipelineScorer):
    """The real pipeline; its result files fail to be written while ``full`` is set (ENOSPC)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = threading.Event()

    def __call__(self, spec: JobSpec, outdir: Path, **kwargs: Any) -> dict[str, Any]:
        summary = super().__call__(spec, outdir, **kwargs)
        if self.full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device", str(outdir / "overlay.png"))
        return summary


def test_disk_full_mid_job_fails_it_and_health_says_degraded(
    make_app: Any, images: dict[str, Path]
) -> None:
    """A full disk: the result write fails, then the database refuses to record it.

    The job must end failed with a clear reason (once the database takes writes
    again), health must say degraded meanwhile, and the worker must go on.
    """
    scorer = DiskFullScorer()
    app = make_app(scorer, worker_retry_s=0.05)
    client = app.test_client()
    store = app.extensions["her2_qupath"].manager.store
    real_finish = store.finish
    db_full = threading.Event()

    def finish(*args: Any, **kwargs: Any) -> None:
        if db_full.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        real_finish(*args, **kwargs)

    store.finish = finish  # type: ignore[method-assign]
    scorer.full.set()
    db_full.set()
    job = _submit(client, {"ihc": str(images["one"])})

    def degraded() -> Any:
        h = client.get("/api/v1/health").json
        return h if h["status"] == "degraded" else None

    health = wait_for(degraded, timeout=30)
    text = " ".join(health["problems"])
    assert "disk is full" in text and "database" in text, health
    assert client.get(f"/api/v1/jobs/{job['id']}").json["state"] == "failed"  # shown already

    scorer.full.clear()
    db_full.clear()  # space freed
    failed = wait_job(_get(client), job["id"])
    assert failed["state"] == "failed" and "disk is full" in failed["error"]
    assert "Errno" not in failed["error"] and "error id" in failed["error"]
    # recorded in the database as soon as it takes writes again
    wait_for(lambda: (row := store.get(job["id"])) is not None and row["state"] == "failed")
    assert not (app.extensions["her2_qupath"].manager.result_path(job["id"])).exists()

    nxt = _submit(client, {"ihc": str(images["two"]), "options": OPTS})
    assert wait_job(_get(client), nxt["id"])["state"] == "done"  # the worker went on
    health = wait_for(lambda: (h := client.get("/api/v1/health").json)["status"] == "ok" and h)
    assert health["problems"] == [] and health["workers_alive"] == 1


class OSErrorScorer(PipelineScorer):
    """Fails with an OSError on a file in the job's output folder or elsewhere."""

    def __init__(self, inside: bool) -> None:
        super().__init__()
        self.inside = inside

    def __call__(self, spec: JobSpec, outdir: Path, **kwargs: Any) -> dict[str, Any]:
        where = outdir / "summary.json" if self.inside else Path("/mnt/gone/slide.svs")
        raise OSError(errno.EIO, "Input/output error", str(where))


@pytest.mark.parametrize(
    ("inside", "message"),
    [(True, "could not write the job's result"), (False, "internal error while scoring")],
)
def test_job_error_messages_name_the_problem_not_the_exception(
    make_app: Any, images: dict[str, Path], inside: bool, message: str
) -> None:
    client = make_app(OSErrorScorer(inside)).test_client()
    job = _submit(client, {"ihc": str(images["one"])})
    failed = wait_job(_get(client), job["id"])
    assert failed["state"] == "failed" and message in failed["error"], failed
    assert "Input/output" not in failed["error"] and "/mnt/gone" not in failed["error"]
    assert "error id" in failed["error"]


def test_error_claiming_a_job_does_not_end_the_worker(
    make_app: Any, images: dict[str, Path]
) -> None:
    app = make_app(worker_retry_s=0.05)
    client = app.test_client()
    store = app.extensions["her2_qupath"].manager.store
    real_claim = store.claim
    failures = [sqlite3.OperationalError("disk I/O error")] * 3

    def claim() -> Any:
        if failures:
            raise failures.pop()
        return real_claim()

    store.claim = claim  # type: ignore[method-assign]
    job = _submit(client, {"ihc": str(images["one"])})
    assert wait_job(_get(client), job["id"])["state"] == "done"
    assert not failures


def test_stopped_worker_thread_is_restarted_and_reported(
    make_app: Any, images: dict[str, Path]
) -> None:
    """Even an exception no worker catches (SystemExit) does not leave the queue without workers."""
    app = make_app(worker_retry_s=0.05)
    client = app.test_client()
    manager = app.extensions["her2_qupath"].manager
    real_claim = manager.store.claim
    fired: list[bool] = []

    def claim() -> Any:
        if not fired:
            fired.append(True)
            raise SystemExit("injected")
        return real_claim()

    manager.store.claim = claim  # type: ignore[method-assign]
    wait_for(lambda: fired, timeout=10)
    health = wait_for(
        lambda: (h := client.get("/api/v1/health").json)["status"] == "degraded" and h, timeout=10
    )
    assert any("worker" in p and "restarted" in p for p in health["problems"]), health
    job = _submit(client, {"ihc": str(images["one"])})
    assert wait_job(_get(client), job["id"])["state"] == "done"
    assert client.get("/api/v1/health").json["workers_alive"] == 1


class RaisingScorer(PipelineScorer):
    """Fails at once with ``exc``: a scorer with a bug, one that runs out of memory, one that exits."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def __call__(self, spec: JobSpec, outdir: Path, **kwargs: Any) -> dict[str, Any]:
        raise self.exc


def test_bug_in_the_scorer_fails_the_job_and_the_worker_goes_on(
    make_app: Any, images: dict[str, Path]
) -> None:
    scorer = RaisingScorer(KeyError("no such key in /secret/place"))
    app = make_app(scorer, worker_retry_s=0.05)
    client = app.test_client()
    job = _submit(client, {"ihc": str(images["one"])})
    failed = wait_job(_get(client), job["id"])
    assert failed["state"] == "failed", failed
    assert failed["error"].startswith("internal error while scoring (error id "), failed
    assert "KeyError" not in failed["error"] and "/secret" not in failed["error"]
    health = client.get("/api/v1/health").json
    assert health["status"] == "ok" and health["workers_alive"] == 1, health  # not restarted
    app.extensions["her2_qupath"].manager.scorer = PipelineScorer()
    nxt = _submit(client, {"ihc": str(images["two"]), "options": OPTS})
    assert wait_job(_get(client), nxt["id"])["state"] == "done"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (MemoryError(), "the server ran out of memory while scoring (error id "),
        (SystemExit("injected"), "internal error while scoring (error id "),
    ],
)
def test_fatal_error_in_the_scorer_fails_the_job_and_restarts_the_worker(
    make_app: Any, images: dict[str, Path], exc: BaseException, message: str
) -> None:
    """MemoryError, SystemExit: the job is failed with a clear message, then the worker thread
    ends (reported by health) and a new one takes the next job."""
    app = make_app(RaisingScorer(exc), worker_retry_s=0.05)
    client = app.test_client()
    manager = app.extensions["her2_qupath"].manager
    job = _submit(client, {"ihc": str(images["one"])})
    failed = wait_job(_get(client), job["id"])
    assert failed["state"] == "failed" and failed["error"].startswith(message), failed
    assert manager.store.get(job["id"])["state"] == "failed"  # recorded, not only shown
    health = wait_for(
        lambda: (h := client.get("/api/v1/health").json)["status"] == "degraded" and h, timeout=10
    )
    assert any(f"stopped on {type(exc).__name__}" in p for p in health["problems"]), health
    manager.scorer = PipelineScorer()
    nxt = _submit(client, {"ihc": str(images["two"]), "options": OPTS})
    assert wait_job(_get(client), nxt["id"])["state"] == "done"
    assert client.get("/api/v1/health").json["workers_alive"] == 1


class StoppedByItsPoolScorer(PipelineScorer):
    """Waits for the job's cancellation, then fails as a tile pool shut down under it would:
    with CancelledError, not the product's JobCancelled."""

    def __call__(self, spec: JobSpec, outdir: Path, **kwargs: Any) -> dict[str, Any]:
        cancel = kwargs["cancel"]
        kwargs["progress"](0, 1)
        assert cancel is not None and cancel.wait(30)
        raise CancelledError()


def test_cancelled_job_whose_scorer_fails_otherwise_is_cancelled(
    make_app: Any, images: dict[str, Path]
) -> None:
    client = make_app(StoppedByItsPoolScorer()).test_client()
    job = _submit(client, {"ihc": str(images["one"])})
    wait_job(_get(client), job["id"], states=("running",))
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 202
    cancelled = wait_job(_get(client), job["id"])
    assert cancelled["state"] == "cancelled" and cancelled["error"] == "cancelled while running"
    assert client.get("/api/v1/health").json["status"] == "ok"


def test_cancel_reaches_a_running_job_after_worker_errors(
    make_app: Any, images: dict[str, Path]
) -> None:
    """DELETE used to answer 202 and do nothing once the worker had died."""
    app = make_app(SlowScorer(0.2), purge_interval_s=0.05)
    client = app.test_client()
    manager = app.extensions["her2_qupath"].manager
    real_purge = manager.purge
    calls = []

    def purge() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "results")
        real_purge()

    manager.purge = purge  # type: ignore[method-assign]
    wait_for(lambda: len(calls) > 3, timeout=20)
    job = _submit(client, {"ihc": str(images["three"]), "options": OPTS})
    wait_job(_get(client), job["id"], states=("running",))
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 202
    assert wait_job(_get(client), job["id"])["state"] == "cancelled"


# ---- 2. a relative --data-dir ----------------------------------------------------------------


def test_relative_data_dir_and_image_root(
    tmp_path: Path, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    slides = Path(os.path.relpath(images["three"].parent, tmp_path))
    app = create_app(
        app_config(Path("srvdata"), [slides], PipelineScorer())  # both relative
    )
    try:
        state = app.extensions["her2_qupath"]
        assert state.data_dir == tmp_path.resolve() / "srvdata"
        assert state.config.image_roots == (str(images["three"].parent.resolve()),)
        client = app.test_client()
        job = _submit(client, {"ihc": "case three.png", "options": OPTS})
        assert wait_job(_get(client), job["id"])["state"] == "done"
        monkeypatch.chdir(tmp_path.parent)  # the working directory changes later: no matter
        for kind in ("result", "detections", "annotations", "overlay.png"):
            r = client.get(f"/api/v1/jobs/{job['id']}/{kind}")
            assert r.status_code == 200, (kind, r.data[:300])
        assert "her2_score" in client.get(f"/api/v1/jobs/{job['id']}/result").json
    finally:
        app.extensions["her2_qupath"].close()


def test_serve_relative_paths_shown_and_given_token_not_printed(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    """``serve --data-dir srvdata``: absolute paths in the start-up lines; a --token is not echoed."""
    slides = os.path.relpath(images["three"].parent, tmp_path)
    secret = "given-token-0123456789"
    proc = subprocess.Popen(
        _serve_cmd("--port", "0", "--data-dir", "srvdata", "--image-root", slides,
                   "--token", secret, "--workers", "1"),
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"data: {tmp_path.resolve() / 'srvdata'};" in first, first
        url = first.split()[3].rstrip("/")
        auth = {"Authorization": f"Bearer {secret}"}
        r = requests.post(
            f"{url}/api/v1/jobs",
            json={"ihc": "case three.png", "options": OPTS},
            headers=auth,
            timeout=10,
        )
        assert r.status_code == 202, r.text

        def finished() -> Any:
            job = requests.get(f"{url}/api/v1/jobs/{r.json()['id']}", headers=auth, timeout=10)
            return job.json()["state"] in ("done", "failed") and job.json()

        assert wait_for(finished, timeout=60)["state"] == "done"
        for kind in ("result", "detections", "annotations", "overlay.png"):
            got = requests.get(
                f"{url}/api/v1/jobs/{r.json()['id']}/{kind}", headers=auth, timeout=10
            )
            assert got.status_code == 200, (kind, got.text[:300])
    finally:
        out, err = _stop(proc)
    assert secret not in first + out + err
    assert f"image roots: {images['three'].parent.resolve()}" in err


# ---- 3. stored requests grow without bound ---------------------------------------------------


def _big_roi(megabytes: float) -> dict[str, Any]:
    """One small square, padded to the given size with a property QuPath could have written."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]],
                },
                "properties": {"objectType": "annotation", "note": "x" * int(megabytes * 2**20)},
            }
        ],
    }


def _db_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("jobs.sqlite3*"))


def test_cancelled_requests_are_deleted_and_the_database_stays_small(
    make_app: Any, images: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "bounded"
    app = make_app(data=data, start_workers=False, max_request_bytes=8 * 2**20)
    client = app.test_client()
    store = app.extensions["her2_qupath"].manager.store
    body = {"ihc": str(images["three"]), "rois": _big_roi(3), "options": OPTS}
    for _ in range(12):
        job = _submit(client, body)
        assert store.stored_request_bytes() > 3 * 2**20
        assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 200
        assert store.request(job["id"]) is None  # deleted with the cancel
    assert store.stored_request_bytes() == 0
    # 12 cycles of 3 MiB: without deletion the database would hold 36 MiB
    assert _db_bytes(data) < 16 * 2**20, _db_bytes(data)
    (count,) = (
        sqlite3.connect(data / "jobs.sqlite3").execute("SELECT COUNT(*) FROM payloads").fetchone()
    )
    assert count == 0


def test_requests_of_finished_and_failed_jobs_are_deleted(
    make_app: Any, images: dict[str, Path]
) -> None:
    client = make_app().test_client()
    store = client.application.extensions["her2_qupath"].manager.store
    ok = _submit(client, {"ihc": str(images["one"])})
    bad = _submit(client, {"ihc": str(images["one"]), "options": {"models": {"tumor": "nope"}}})
    assert wait_job(_get(client), ok["id"])["state"] == "done"
    assert wait_job(_get(client), bad["id"])["state"] == "failed"
    assert store.request(ok["id"]) is None and store.request(bad["id"]) is None
    assert store.stored_request_bytes() == 0


def test_stored_request_bytes_limit_is_429(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(start_workers=False, max_stored_request_bytes=5 * 2**20).test_client()
    body = {"ihc": str(images["three"]), "rois": _big_roi(2), "options": OPTS}
    first, second = _submit(client, body), _submit(client, body)
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 429 and r.json["error"]["code"] == "stored_requests_full"
    assert "MiB" in r.json["error"]["message"] and r.headers["Retry-After"]
    assert client.delete(f"/api/v1/jobs/{first['id']}").status_code == 200  # frees its share
    assert client.post("/api/v1/jobs", json=body).status_code == 202
    assert second["id"]


def test_job_list_and_status_page_never_read_stored_requests(
    make_app: Any, images: dict[str, Path]
) -> None:
    app = make_app(start_workers=False)
    client = app.test_client()
    store = app.extensions["her2_qupath"].manager.store
    ids = [
        _submit(client, {"ihc": str(images["three"]), "rois": _big_roi(0.5), "options": OPTS})["id"]
        for _ in range(3)
    ]
    reads: list[str] = []

    def authorizer(action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        # arg1 = table, arg2 = column of a read; refuse any read of a stored request
        if action == sqlite3.SQLITE_READ and (arg1 == "payloads" or arg2 == "request"):
            reads.append(f"{arg1}.{arg2}")
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    with store._lock:
        store._db.set_authorizer(authorizer)
    try:
        page = client.get("/")
        assert page.status_code == 200 and all(i in page.data.decode() for i in ids)
        listing = client.get("/api/v1/jobs?limit=1000")
        assert listing.status_code == 200 and listing.json["count"] == 3
        assert client.get(f"/api/v1/jobs/{ids[0]}").status_code == 200
        assert client.get("/api/v1/health").status_code == 200
    finally:
        with store._lock:
            store._db.set_authorizer(None)
    assert reads == []


# ---- 4. web-server limits --------------------------------------------------------------------


def _raw(port: int, data: bytes, *, timeout: float = 15.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError("no answer: the server waited for the body") from None
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def test_body_over_the_limit_is_refused_before_it_is_read(make_app: Any) -> None:
    app = make_app(max_request_bytes=2**20)
    with BackgroundServer(app) as srv:
        head = (
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = _raw(srv.port, head + b"{" + b" " * 1024)  # 1 KiB of 100 MB sent, then silence
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        ok = requests.post(f"{srv.url}/api/v1/jobs", data=b"x" * (2**20 - 10),
                           headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
        assert ok.status_code == 400  # under the limit: reaches the API (and is not JSON)


def test_half_sent_requests_do_not_block_health(make_app: Any) -> None:
    """More half-sent requests than the connection limit: idle ones are closed, health answers."""
    app = make_app(wsgi_connection_limit=8, wsgi_channel_timeout_s=1)
    with BackgroundServer(app) as srv:
        held = []
        try:
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
                s.sendall(
                    b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n\r\n{"
                )
                held.append(s)
            r = requests.get(f"{srv.url}/api/v1/health", timeout=20)
            assert r.status_code == 200
            for s in held:  # the server hung up on each idle one, once it had taken it
                s.settimeout(20)
                try:
                    answer = s.recv(1024)
                except ConnectionResetError:
                    answer = b""
                assert answer == b""
        finally:
            for s in held:
                s.close()


def test_waitress_limits_come_from_server_config() -> None:
    from her2_qupath.config import ServerConfig
    from her2_qupath.server.wsgi import waitress_limits

    limits = waitress_limits(ServerConfig())
    assert limits["max_request_body_size"] == ServerConfig().max_request_bytes + 1
    assert limits["connection_limit"] == ServerConfig().wsgi_connection_limit
    assert limits["channel_timeout"] == ServerConfig().wsgi_channel_timeout_s
    assert limits["cleanup_interval"] <= limits["channel_timeout"]


# ---- 5. work per request ---------------------------------------------------------------------


class CountingScorer(PipelineScorer):
    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.runs += 1
        return super().__call__(*args, **kwargs)

    def score_in_memory(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.runs += 1
        return super().score_in_memory(*args, **kwargs)


def test_work_budget_is_checked_before_any_work(make_app: Any, images: dict[str, Path]) -> None:
    """One tile of 2048 px at 40 µm/px reads 163 840² pixels of a 0.5 µm/px image: refused at once."""
    scorer = CountingScorer()
    client = make_app(scorer, start_workers=False).test_client()
    one_tile = {"ihc": str(images["three"]), "options": {"tile_size": 2048, "mpp": 40}}
    work = scorer.estimate_work(
        JobSpec(ihc=images["three"], options=one_tile["options"])  # type: ignore[arg-type]
    )
    assert work is not None and work.tiles == 1 and work.pixels == (2048 * 80) ** 2
    r = client.post("/api/v1/score", json=one_tile)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_much_work"
    assert "/api/v1/jobs" in r.json["error"]["message"]  # the advice to submit a job
    huge = {"ihc": str(images["three"]), "options": {"tile_size": 4096, "mpp": 50}}
    r = client.post("/api/v1/jobs", json=huge)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_much_work"
    assert "tile_size" in r.json["error"]["message"]
    assert scorer.runs == 0
    assert client.post("/api/v1/jobs", json=one_tile).status_code == 202  # fine as a job
    small = client.post(
        "/api/v1/score", json={"ihc": str(images["one"]), "options": {"tile_size": 256}}
    )
    assert small.status_code == 200 and scorer.runs == 1


class SlowFilesOnly(SlowScorer):
    """The slowed pipeline without an in-memory path: /score runs it into files."""

    score_in_memory = None


def test_sync_score_is_stopped_at_its_deadline(make_app: Any, images: dict[str, Path]) -> None:
    """A synchronous score that runs long (a slow disk, a busy machine) is stopped, not left running."""
    client = make_app(SlowFilesOnly(2.0), max_sync_seconds=0.5).test_client()
    r = client.post("/api/v1/score", json={"ihc": str(images["three"]), "options": OPTS})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_much_work", r.json
    assert "max_sync_seconds" in r.json["error"]["message"]
    assert "/api/v1/jobs" in r.json["error"]["message"]
    assert not list((client.application.extensions["her2_qupath"].data_dir / "tmp").iterdir())


def test_running_job_stops_at_cancel(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(SlowScorer(0.2)).test_client()
    job = _submit(client, {"ihc": str(images["three"]), "options": OPTS})
    wait_for(lambda: client.get(f"/api/v1/jobs/{job['id']}").json["tiles_done"] > 0)
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 202
    done = wait_job(_get(client), job["id"])
    assert done["state"] == "cancelled" and done["tiles_done"] < 16


# ---- 6. 400, not 500 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"options": {"mpp": 1e-310}}, "options.mpp"),
        ({"options": {"mpp": 60}}, "options.mpp"),
        ({"ihc_mpp": 1e-300}, "ihc_mpp"),
        ({"he_mpp": 0.001}, "he_mpp"),
        ({"ihc": "a" * 300 + ".svs"}, "name"),
        ({"ihc": "/" + "b" * 5000}, "ihc"),
        ({"rois": [{"type": "Feature", "geometry": {"type": "Polygon",
                    "coordinates": [[[0, 0], [1e300, 0], [0, 1], [0, 0]]]}}]}, "rois"),
    ],
)  # fmt: skip
def test_out_of_range_fields_are_400_naming_the_field(
    make_app: Any, images: dict[str, Path], change: dict[str, Any], named: str
) -> None:
    client = make_app(start_workers=False).test_client()
    for route in ("/api/v1/jobs", "/api/v1/score"):
        r = client.post(route, json={"ihc": str(images["three"]), **change})
        assert r.status_code == 400, (route, r.json)
        assert named in r.json["error"]["message"], r.json


def test_lone_surrogate_and_odd_numbers_are_400(make_app: Any, images: dict[str, Path]) -> None:
    client = make_app(start_workers=False).test_client()
    for raw in (
        '{"ihc": "slide\\ud800.svs"}',
        '{"ihc": "file:/x/%ED%A0%80.svs"}',
        '{"ihc": "case three.png", "ihc_mpp": 1e400}',
        '{"ihc": "case three.png", "rois": [{"type": "Feature", "geometry": {"type": "Polygon", '
        '"coordinates": [[[0, 0], [1' + "0" * 400 + ", 0], [0, 1], [0, 0]]]}}]}",
    ):
        for route in ("/api/v1/jobs", "/api/v1/score"):
            r = client.post(route, data=raw.encode(), content_type="application/json")
            assert r.status_code == 400, (raw[:80], r.json)
    # a lone surrogate where any text is allowed (a class name) is stored and answered, not a 500
    odd = '{"ihc": "case three.png", "roi_class": "T\\ud800", "rois": [{"type": "Feature", '
    odd += '"properties": {"classification": {"name": "T\\ud800", "color": [200, 0, 0]}}, '
    odd += '"geometry": {"type": "Polygon", '
    odd += '"coordinates": [[[0, 0], [256, 0], [256, 256], [0, 0]]]}}]}'
    r = client.post("/api/v1/jobs", data=odd.encode(), content_type="application/json")
    assert r.status_code == 202, r.json
    assert client.get("/api/v1/jobs").status_code == 200
    for limit in ("²", "١٢", "1e3", "-1", "99999999999999999999"):
        r = client.get(f"/api/v1/jobs?limit={limit}")
        assert r.status_code == 400 and "limit" in r.json["error"]["message"], limit


_PATHS = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["case three.png", "sub/one.png", "file:/x%ZZ", "file:///%FF", "\ud800"]),
    st.builds(lambda n: "x" * n, st.integers(200, 5000)),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([5e-324, 1e-310, 1e-300, 0.04999, 0.05, 50.0, 50.0001, 1e308]),
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"ihc": draw(_PATHS)}
    for key in ("ihc_mpp", "he_mpp"):
        if draw(st.booleans()):
            body[key] = draw(_NUMBERS)
    if draw(st.booleans()):
        body["he"] = draw(_PATHS)
    if draw(st.booleans()):
        body["transform"] = draw(_PATHS)
    options = {}
    for key in ("mpp", "min_tissue_fraction"):
        if draw(st.booleans()):
            options[key] = draw(_NUMBERS)
    if draw(st.booleans()):
        options["tile_size"] = draw(st.integers(-(10**6), 10**6))
    body["options"] = options
    if draw(st.booleans()):
        x = draw(_NUMBERS)
        name = draw(st.text(max_size=20))  # lone surrogates included
        body["rois"] = [{"type": "Feature", "geometry": {"type": "Polygon",
                         "coordinates": [[[0, 0], [x, 0], [x, x], [0, 0]]]},
                         "properties": {"classification": {"name": name}, "note": name}}]  # fmt: skip
        if draw(st.booleans()):
            body["roi_class"] = name
    return body


def test_generated_requests_never_get_a_server_error(
    make_app: Any, images: dict[str, Path]
) -> None:
    """Property: whatever the numbers and paths, the answer is a 2xx/4xx, never a 5xx."""
    client = make_app(start_workers=False, max_queue=100_000).test_client()
    seen: list[int] = []

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_bodies())
    def run(body: dict[str, Any]) -> None:
        r = client.post("/api/v1/jobs", json=body)
        seen.append(r.status_code)
        assert r.status_code < 500, (body, r.json)

    run()
    assert len(seen) >= 300 and 400 in seen and 202 in seen

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.text(max_size=30), st.text(max_size=30))
    def listing(limit: str, state: str) -> None:
        r = client.get("/api/v1/jobs", query_string={"limit": limit, "state": state})
        assert r.status_code in (200, 400), (limit, state, r.json)

    listing()


# ---- 7. smaller ------------------------------------------------------------------------------


def test_job_crashing_the_server_is_retried_twice_then_failed(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    data = tmp_path / "data"

    def app(**overrides: Any) -> Any:
        return create_app(
            app_config(
                data, [images["three"].parent], PipelineScorer(), start_workers=False, **overrides
            )
        )

    first = app()
    job_id = first.test_client().post("/api/v1/jobs", json={"ihc": str(images["one"])}).json["id"]
    first.extensions["her2_qupath"].close()
    errors = []
    for crash in range(1, 4):  # the job takes the server down while it runs, three times
        store = JobStore(data / "jobs.sqlite3")
        claimed = store.claim()
        assert claimed is not None and claimed["id"] == job_id and claimed["attempts"] == crash
        store.close()
        restarted = app()
        manager = restarted.extensions["her2_qupath"].manager
        manager.recover()
        job = manager.get(job_id)
        assert job is not None
        errors.append((job["state"], job["error"]))
        restarted.extensions["her2_qupath"].close()
    assert [s for s, _ in errors] == ["queued", "queued", "failed"]
    assert "crashed the server 3 times" in errors[-1][1]
    assert JobStore(data / "jobs.sqlite3").request(job_id) is None


def test_files_are_private_from_the_start(
    make_app: Any, images: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token, database and results are 0600 when created, even with a permissive umask."""
    renamed: list[tuple[str, int]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:  # the token's mode as it is moved into place
        if Path(dst).name == "token":
            renamed.append((str(dst), stat.S_IMODE(os.stat(src).st_mode)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0)
    try:
        data = tmp_path / "private"
        app = make_app(data=data, require_token=True)
        client = app.test_client()
        token = app.extensions["her2_qupath"].token
        auth = {"Authorization": f"Bearer {token}"}
        job = client.post("/api/v1/jobs", json={"ihc": str(images["one"])}, headers=auth).json
        wait_job(lambda url: client.get(url, headers=auth).json, job["id"])
    finally:
        os.umask(old)
    assert renamed and all(mode == 0o600 for _, mode in renamed), renamed
    for name in ("token", "jobs.sqlite3", "jobs.sqlite3-wal"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    result = data / "results" / job["id"]
    assert stat.S_IMODE(result.stat().st_mode) == 0o700
    for f in result.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_loose_database_and_results_modes_are_tightened(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    """Files of an earlier version (database 0644, results/ 0755) are made private at start."""
    data = tmp_path / "data"
    (data / "results").mkdir(parents=True)
    os.chmod(data / "results", 0o755)
    JobStore(data / "jobs.sqlite3").close()
    os.chmod(data / "jobs.sqlite3", 0o644)
    app = create_app(app_config(data, [images["three"].parent], PipelineScorer()))
    app.extensions["her2_qupath"].close()
    assert stat.S_IMODE((data / "jobs.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "results").stat().st_mode) == 0o700


def test_any_loopback_address_is_its_own_host(make_app: Any) -> None:
    """``--host 127.0.0.2``: requests to that address are answered; other names still refused."""
    app = make_app(host="127.0.0.2")
    c = app.test_client()
    assert c.get("/api/v1/jobs", headers={"Host": "127.0.0.2:8765"}).status_code == 200
    assert c.get("/api/v1/jobs", headers={"Host": "[::1]:8765"}).status_code == 200
    assert c.get("/api/v1/jobs", headers={"Host": "evil.example:8765"}).status_code == 403
    assert c.get("/api/v1/jobs", headers={"Host": "127.0.0.2.evil.example"}).status_code == 403
    try:
        srv = BackgroundServer(app, host="127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    with srv:
        assert requests.get(f"{srv.url}/api/v1/jobs", timeout=10).status_code == 200


def test_damaged_database_one_line_then_repair(tmp_path: Path, images: dict[str, Path]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs.sqlite3").write_bytes(b"this is not a database at all" * 100)
    os.chmod(data / "jobs.sqlite3", 0o600)  # as the server creates it
    args = ("--port", "0", "--data-dir", str(data), "--image-root", str(images["three"].parent))
    refused = subprocess.run(
        _serve_cmd(*args), env=_env(), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "jobs.sqlite3" in lines[0] and "--repair-db" in lines[0]

    proc = subprocess.Popen(
        _serve_cmd(*args, "--repair-db"), env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("her2-qupath server on http://127.0.0.1:"), first
        url = first.split()[3].rstrip("/")
        assert requests.get(f"{url}/api/v1/jobs", timeout=10).json()["count"] == 0
    finally:
        _, err = _stop(proc)
    assert "moved to" in err
    assert list(data.glob("jobs.sqlite3.damaged-*"))


def test_database_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    """Rows with the request in the jobs table (before this version) keep working."""
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
            state TEXT NOT NULL, request TEXT NOT NULL, created REAL NOT NULL, started REAL,
            finished REAL, progress REAL NOT NULL DEFAULT 0, tiles_done INTEGER NOT NULL DEFAULT 0,
            tiles_total INTEGER, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0, result_bytes INTEGER NOT NULL DEFAULT 0,
            result_expired INTEGER NOT NULL DEFAULT 0, summary TEXT);
        """
    )
    db.execute(
        "INSERT INTO jobs (id, state, request, created) VALUES ('a', 'queued', ?, 1)",
        (json.dumps({"ihc": "x.svs"}),),
    )
    db.execute(
        "INSERT INTO jobs (id, state, request, created, summary) VALUES ('b', 'done', '{}', 2, ?)",
        (json.dumps({"her2_score": "2+", "regions": ["big"] * 100}),),
    )
    db.commit()
    db.close()
    store = JobStore(path)
    try:
        assert store.request("a") == {"ihc": "x.svs"} and store.request("b") is None
        assert json.loads(store.get("b")["brief"]) == {"her2_score": "2+"}  # type: ignore[index]
        assert store.claim()["id"] == "a"  # type: ignore[index]
    finally:
        store.close()


def test_health_reports_unwritable_data_dir(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from her2_qupath.server.jobs import manager as jobs_manager

    app = make_app()
    client = app.test_client()
    manager = app.extensions["her2_qupath"].manager
    h = client.get("/api/v1/health").json
    assert h["status"] == "ok" and h["problems"] == [] and h["workers_alive"] == h["workers"] == 1

    def no_space(folder: Path) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(jobs_manager, "_mkstemp", no_space)
    manager._last_probe = 0.0  # probe now rather than within PROBE_INTERVAL_S
    h = client.get("/api/v1/health").json
    assert h["status"] == "degraded", h
    assert any("not writable" in p and "No space left" in p for p in h["problems"]), h
    monkeypatch.undo()
    manager._last_probe = 0.0
    assert client.get("/api/v1/health").json["status"] == "ok"
