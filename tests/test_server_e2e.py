"""A real server on a loopback port: end to end, load, a killed and restarted server, a Dask cluster."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from server_support import (
    app_config,
    comparable,
    direct,
    fetch_result,
    make_images,
    poll,
    wait_for,
)

from her2_qupath.pipeline.work import CHUNK_TILES
from her2_qupath.server import create_app
from her2_qupath.server.scorers import PipelineScorer
from her2_qupath.server.wsgi import BackgroundServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("slides"))


@pytest.fixture
def served(tmp_path: Path, images: dict[str, Path]) -> Iterator[Any]:
    started: list[tuple[Any, BackgroundServer]] = []

    def start(**overrides: Any) -> BackgroundServer:
        app = create_app(
            app_config(tmp_path / "data", [images["three"].parent], PipelineScorer(), **overrides)
        )
        srv = BackgroundServer(app).__enter__()
        started.append((app, srv))
        return srv

    yield start
    for app, srv in started:
        srv.stop()
        app.extensions["her2_qupath"].close(timeout_s=10)


def test_end_to_end_on_loopback(served: Any, images: dict[str, Path], tmp_path: Path) -> None:
    srv = served(token="e2e-token", require_token=True)
    s = requests.Session()
    assert srv.host == "127.0.0.1" and srv.port > 0
    assert s.get(f"{srv.url}/api/v1/health", timeout=10).json()["auth_required"] is True
    assert s.get(f"{srv.url}/api/v1/jobs", timeout=10).status_code == 401
    s.headers["Authorization"] = "Bearer e2e-token"
    options = {"tile_size": 128, "guideline": "endometrial"}
    uri = "file:" + str(images["three"]).replace(" ", "%20")
    r = s.post(f"{srv.url}/api/v1/jobs", json={"ihc": uri, "options": options}, timeout=10)
    assert r.status_code == 202
    job = poll(s, srv.url, r.json()["id"])
    assert job["state"] == "done"
    got = fetch_result(s, srv.url, job["id"])
    want = direct(images["three"], options, tmp_path)
    assert got == want
    assert (
        got["summary"]["her2_score"] == "2+"
    )  # endometrial: 12.5 % 3+ is not > 30 %, 37.5 % >= 2+ is > 10 %
    png = s.get(f"{srv.url}/api/v1/jobs/{job['id']}/overlay.png", timeout=10)
    assert png.headers["Content-Type"] == "image/png" and png.content.startswith(b"\x89PNG")
    sync = s.post(
        f"{srv.url}/api/v1/score",
        json={"ihc": "sub/one.png", "options": {"tile_size": 256}},
        timeout=30,
    )
    assert sync.status_code == 200
    assert (
        comparable(sync.json()["summary"])
        == direct(images["one"], {"tile_size": 256}, tmp_path)["summary"]
    )


def test_load_50_jobs_from_10_clients(served: Any, images: dict[str, Path], tmp_path: Path) -> None:
    srv = served(workers=2, max_queue=100)
    variants = [
        (name, {"tile_size": size}) for name in ("three", "two", "one") for size in (128, 256)
    ]
    expected = {i: direct(images[name], opts, tmp_path) for i, (name, opts) in enumerate(variants)}

    def client(k: int) -> list[tuple[str, int]]:
        s = requests.Session()
        submitted = []
        for n in range(5):
            v = (k * 5 + n) % len(variants)
            name, opts = variants[v]
            r = s.post(
                f"{srv.url}/api/v1/jobs",
                json={"ihc": str(images[name]), "options": opts},
                timeout=30,
            )
            assert r.status_code == 202, r.text
            submitted.append((r.json()["id"], v))
        return submitted

    t0 = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        submitted = [item for batch in pool.map(client, range(10)) for item in batch]
    ids = [job_id for job_id, _ in submitted]
    assert len(ids) == len(set(ids)) == 50
    s = requests.Session()
    for job_id, v in submitted:
        job = poll(s, srv.url, job_id, timeout=120)
        assert job["state"] == "done" and job["attempts"] == 1, job
        assert fetch_result(s, srv.url, job_id) == expected[v]
    listing = s.get(f"{srv.url}/api/v1/jobs?limit=1000", timeout=10).json()
    assert sorted(j["id"] for j in listing["jobs"]) == sorted(ids)  # none lost, none duplicated
    assert time.monotonic() - t0 < 120


_LAUNCHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from her2_qupath.server import create_app
    from her2_qupath.server.wsgi import serve
    from server_support import SlowScorer

    data, root, portfile = sys.argv[1:4]
    app = create_app({"DATA_DIR": data, "IMAGE_ROOTS": (root,), "WORKERS": 1, "MAX_QUEUE": 100,
                      "SCORER": SlowScorer(float(sys.argv[4])), "PROGRESS_WRITE_INTERVAL_S": 0.0})
    serve(app, host="127.0.0.1", port=0, threads=4,
          on_ready=lambda h, p: Path(portfile).write_text(str(p)))
    """
)


def _finish(proc: subprocess.Popen[Any], timeout: float = 30.0) -> tuple[Any, Any]:
    """Wait for a stopped server; kill it (and fail) if it does not exit in time."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the server did not exit within {timeout} s: {err!s:.2000}") from None


def _launch(
    tmp_path: Path, data: Path, root: Path, delay: float, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    script = tmp_path / "launch.py"
    script.write_text(_LAUNCHER)
    portfile = tmp_path / f"{name}.port"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), str(root), str(portfile), str(delay)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: portfile.is_file() and portfile.read_text().strip(), timeout=60)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1].decode()[-2000:]) from None
    return proc, f"http://127.0.0.1:{portfile.read_text().strip()}"


def test_killed_server_finishes_all_queued_jobs_after_restart(
    images: dict[str, Path], tmp_path: Path
) -> None:
    data, root = tmp_path / "data", images["three"].parent
    proc, url = _launch(tmp_path, data, root, 0.05, "first")
    s = requests.Session()
    try:
        ids = [
            s.post(
                f"{url}/api/v1/jobs",
                json={"ihc": "case three.png", "options": {"tile_size": 128}},
                timeout=10,
            ).json()["id"]
            for _ in range(10)
        ]
        wait_for(
            lambda: s.get(f"{url}/api/v1/jobs/{ids[0]}", timeout=10).json()["tiles_done"] > 0,
            timeout=30,
        )
        states = [s.get(f"{url}/api/v1/jobs/{i}", timeout=10).json()["state"] for i in ids]
        assert states.count("queued") >= 9 and "done" not in states[1:]
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up at all
        _finish(proc)

    proc2, url2 = _launch(tmp_path, data, root, 0.0, "second")
    try:
        want = direct(images["three"], {"tile_size": 128}, tmp_path)
        for job_id in ids:
            job = poll(s, url2, job_id, timeout=60)
            assert job["state"] == "done", job
            assert fetch_result(s, url2, job_id) == want
        assert s.get(f"{url2}/api/v1/jobs/{ids[0]}", timeout=10).json()["attempts"] == 2
        assert s.get(f"{url2}/api/v1/jobs?limit=1000", timeout=10).json()["count"] == 10
    finally:
        proc2.send_signal(signal.SIGTERM)
        _, err = _finish(proc2)
    assert proc2.returncode == 0, err.decode()[-2000:]


def test_serve_command_token_and_sigterm(tmp_path: Path, images: dict[str, Path]) -> None:
    """``her2-qupath serve``: prints the token, enforces it, stops cleanly on SIGTERM."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-c",
        "from her2_qupath.cli import main; main()",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--image-root",
        str(images["three"].parent),
        "--require-token",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        token_line = proc.stdout.readline()
        assert first.startswith("her2-qupath server on http://127.0.0.1:"), first
        url = first.split()[3].rstrip("/")
        token = token_line.split("token: ", 1)[1].strip()
        assert token == (tmp_path / "data" / "token").read_text().strip()
        assert requests.get(f"{url}/api/v1/health", timeout=10).status_code == 200
        assert requests.get(f"{url}/api/v1/jobs", timeout=10).status_code == 401
        ok = requests.get(
            f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert ok.status_code == 200 and ok.json()["count"] == 0
        assert (
            requests.get(f"{url}/?token={token}", timeout=10).status_code == 200
        )  # redirected with a cookie
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = _finish(proc)
    assert proc.returncode == 0, err
    assert "stopping the server" in err


def test_dask_cluster_gives_the_same_results(tmp_path: Path, images: dict[str, Path]) -> None:
    import distributed  # a dependency (dask[distributed]): never a skip
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        cfg = app_config(
            tmp_path / "data",
            [images["three"].parent],
            None,
            dask_scheduler=cluster.scheduler_address,
            workers=2,
        )
        cfg.pop("SCORER")  # the server's default: the real pipeline
        app = create_app(cfg)
        try:
            with (
                distributed.Client(cluster) as watcher,
                distributed.get_task_stream(watcher) as stream,
                BackgroundServer(app) as srv,
            ):
                s = requests.Session()
                assert s.get(f"{srv.url}/api/v1/health", timeout=10).json()["executor"] == "dask"
                jobs = []
                for name in ("three", "two", "one"):
                    r = s.post(
                        f"{srv.url}/api/v1/jobs",
                        json={"ihc": str(images[name]), "options": {"tile_size": 128}},
                        timeout=10,
                    )
                    jobs.append((r.json()["id"], name))
                chunks = 0
                for job_id, name in jobs:
                    assert poll(s, srv.url, job_id, timeout=120)["state"] == "done"
                    want = direct(images[name], {"tile_size": 128}, tmp_path)
                    assert fetch_result(s, srv.url, job_id) == want
                    chunks += math.ceil(want["summary"]["n_tiles"] / CHUNK_TILES)
            tasks = [t for t in stream.data if "_run_chunk" in str(t["key"])]
            assert len(tasks) == chunks  # every tile of the three images ran on the cluster
            assert len({t["worker"] for t in tasks}) == 2
        finally:
            app.extensions["her2_qupath"].close(timeout_s=10)


def test_local_pool_and_dask_pool_threads_are_released(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    before = threading.active_count()
    app = create_app(
        app_config(tmp_path / "data", [images["three"].parent], PipelineScorer(), workers=2)
    )
    c = app.test_client()
    r = c.post("/api/v1/score", json={"ihc": str(images["one"]), "options": {"tile_size": 256}})
    assert r.status_code == 200
    app.extensions["her2_qupath"].close(timeout_s=10)
    wait_for(lambda: threading.active_count() <= before, timeout=10)


def test_sigterm_mid_job_marks_it_interrupted(images: dict[str, Path], tmp_path: Path) -> None:
    """A graceful stop: the running job is queued again at once, then finishes after a restart."""
    data, root = tmp_path / "data", images["three"].parent
    proc, url = _launch(tmp_path, data, root, 0.2, "first")
    s = requests.Session()
    try:
        job_id = s.post(
            f"{url}/api/v1/jobs",
            json={"ihc": "case three.png", "options": {"tile_size": 128}},
            timeout=10,
        ).json()["id"]
        wait_for(
            lambda: s.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()["tiles_done"] > 0,
            timeout=30,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = _finish(proc)
    assert proc.returncode == 0, err.decode()[-2000:]
    from her2_qupath.server.jobs import JobStore

    store = JobStore(data / "jobs.sqlite3")
    row = store.get(job_id)
    store.close()
    assert row is not None and row["state"] == "queued" and "shutdown" in row["error"]
    assert not (data / "results" / job_id).exists()

    proc2, url2 = _launch(tmp_path, data, root, 0.0, "second")
    try:
        assert poll(s, url2, job_id)["state"] == "done"
    finally:
        proc2.send_signal(signal.SIGTERM)
        _finish(proc2)


def test_unreachable_dask_scheduler_stops_the_start(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    from her2_qupath.errors import UserInputError

    cfg = app_config(
        tmp_path / "data",
        [images["three"].parent],
        PipelineScorer(),
        dask_scheduler="tcp://127.0.0.1:1",
        dask_timeout_s=0.5,
    )
    with pytest.raises(UserInputError, match="cannot reach the Dask scheduler"):
        create_app(cfg)
    with pytest.raises(UserInputError, match="tcp://HOST:PORT"):
        create_app({**cfg, "DASK_SCHEDULER": "10.0.0.5:8786"})
    # the data directory was released: a server can start on it
    create_app({**cfg, "DASK_SCHEDULER": None}).extensions["her2_qupath"].close()
