"""Durability of the job store: WAL, atomic claims, restarts, shutdown, expiry and the disk bound."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from server_support import SlowScorer, app_config, comparable, make_images, wait_for, wait_job

from her2_qupath.config import ServerConfig
from her2_qupath.errors import UserInputError
from her2_qupath.executors import LocalBackend
from her2_qupath.server import create_app
from her2_qupath.server.jobs import JobManager, JobStore, default_data_dir
from her2_qupath.server.scorers import PipelineScorer

OPTS = {"tile_size": 128}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("slides"))


def _app(data: Path, images: dict[str, Path], scorer: Any = None, **overrides: Any) -> Any:
    return create_app(
        app_config(data, [images["three"].parent], scorer or PipelineScorer(), **overrides)
    )


def _getter(app: Any) -> Any:
    client = app.test_client()
    return lambda url: client.get(url).json


def test_store_uses_wal_and_claims_each_job_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    mode = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    ids = [store.add({"n": i}, max_queue=1000, retry_after_s=1)["id"] for i in range(200)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (job := store.claim()) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 200
    assert store.counts() == {"running": 200}
    store.close()


def test_claims_are_first_in_first_out(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [store.add({"n": i}, max_queue=10, retry_after_s=1)["id"] for i in range(5)]
    assert [store.claim()["id"] for _ in range(5)] == ids  # type: ignore[index]
    assert store.claim() is None
    store.close()


def test_one_server_per_data_dir(tmp_path: Path, images: dict[str, Path]) -> None:
    app = _app(tmp_path / "data", images)
    try:
        with pytest.raises(UserInputError, match="another her2-qupath server"):
            _app(tmp_path / "data", images)
    finally:
        app.extensions["her2_qupath"].close()
    _app(tmp_path / "data", images).extensions["her2_qupath"].close()  # free again after close


@pytest.mark.parametrize("requeue", [True, False])
def test_crash_mid_job_recovers(tmp_path: Path, images: dict[str, Path], requeue: bool) -> None:
    data = tmp_path / "data"
    app = _app(data, images, SlowScorer(0.1), requeue_interrupted=requeue)
    client = app.test_client()
    first = client.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}).json
    wait_job(_getter(app), first["id"], states=("running",))
    # a crash: workers vanish, the row stays 'running'
    app.extensions["her2_qupath"].manager.shutdown(mark_interrupted=False)
    assert JobStore(data / "jobs.sqlite3").get(first["id"])["state"] == "running"  # type: ignore[index]

    app2 = _app(data, images, requeue_interrupted=requeue)
    try:
        job = wait_job(_getter(app2), first["id"])
        if requeue:
            assert job["state"] == "done" and job["attempts"] == 2 and job["her2_score"] == "3+"
        else:
            assert job["state"] == "failed" and "restart" in job["error"]
    finally:
        app2.extensions["her2_qupath"].close()


def test_graceful_shutdown_requeues_running_and_keeps_finished(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    app = _app(data, images, SlowScorer(0.1))
    client = app.test_client()
    quick = client.post(
        "/api/v1/score", json={"ihc": str(images["one"]), "options": {"tile_size": 256}}
    )
    assert quick.status_code == 200
    finished = client.post(
        "/api/v1/jobs", json={"ihc": str(images["one"]), "options": {"tile_size": 256}}
    ).json
    wait_job(_getter(app), finished["id"])
    slow = client.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}).json
    wait_job(_getter(app), slow["id"], states=("running",))
    app.extensions["her2_qupath"].close(timeout_s=10)
    store = JobStore(data / "jobs.sqlite3")
    row = store.get(slow["id"])
    assert row is not None and row["state"] == "queued" and "shutdown" in row["error"]
    assert store.get(finished["id"])["state"] == "done"  # type: ignore[index]
    store.close()

    app2 = _app(data, images)
    try:
        assert wait_job(_getter(app2), slow["id"])["state"] == "done"
        overlay = app2.test_client().get(f"/api/v1/jobs/{finished['id']}/overlay.png")
        assert overlay.status_code == 200  # the finished result survived both restarts
    finally:
        app2.extensions["her2_qupath"].close()


def test_leftover_temporary_and_orphan_results_are_removed(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    (data / "results" / ".abc.123.tmp").mkdir(parents=True)
    orphan = data / "results" / ("e" * 32)
    orphan.mkdir()
    (orphan / "summary.json").write_text("{}")
    app = _app(data, images)
    try:
        assert not (data / "results" / ".abc.123.tmp").exists()
        assert not orphan.exists()
    finally:
        app.extensions["her2_qupath"].close()


def test_results_expire_after_ttl(tmp_path: Path, images: dict[str, Path]) -> None:
    data = tmp_path / "data"
    app = _app(data, images)
    job = app.test_client().post("/api/v1/jobs", json={"ihc": str(images["one"])}).json
    wait_job(_getter(app), job["id"])
    app.extensions["her2_qupath"].close()
    # 1 s old results against a TTL of 0.1 ms
    app2 = _app(data, images, result_ttl_hours=1e-7 / 3.6)
    try:
        c = app2.test_client()
        assert c.get(f"/api/v1/jobs/{job['id']}").status_code == 404
        assert not (data / "results" / job["id"]).exists()
    finally:
        app2.extensions["her2_qupath"].close()


def test_disk_bound_drops_oldest_results(tmp_path: Path, images: dict[str, Path]) -> None:
    data = tmp_path / "data"
    app = _app(data, images)
    c = app.test_client()
    first = c.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}).json
    wait_job(_getter(app), first["id"])
    size = sum(p.stat().st_size for p in (data / "results" / first["id"]).iterdir())
    app.extensions["her2_qupath"].close()

    app2 = _app(data, images, max_results_bytes=int(size * 1.5))
    try:
        c2 = app2.test_client()
        second = c2.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}).json
        wait_job(_getter(app2), second["id"])
        # the bound is enforced right after the second job is marked done
        wait_for(lambda: not (data / "results" / first["id"]).exists(), timeout=10)
        gone = c2.get(f"/api/v1/jobs/{first['id']}/result")
        assert gone.status_code == 410 and gone.json["error"]["code"] == "gone"
        assert c2.get(f"/api/v1/jobs/{first['id']}").json["result_available"] is False
        assert c2.get(f"/api/v1/jobs/{second['id']}/result").status_code == 200
        assert not (data / "results" / first["id"]).exists()
    finally:
        app2.extensions["her2_qupath"].close()


def test_workers_default_to_cpu_count_and_data_dir_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend()
    manager = JobManager(
        dataclasses.replace(ServerConfig(), workers=0), tmp_path, PipelineScorer(), backend
    )
    try:
        assert manager.workers == (os.cpu_count() or 1)
    finally:
        manager.shutdown()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    path = default_data_dir()
    assert path.name == "her2-qupath"


def test_jobs_run_in_parallel_on_workers(tmp_path: Path, images: dict[str, Path]) -> None:
    app = _app(tmp_path / "data", images, SlowScorer(0.05), workers=2)
    try:
        c = app.test_client()
        ids = [
            c.post("/api/v1/jobs", json={"ihc": str(images["three"]), "options": OPTS}).json["id"]
            for _ in range(2)
        ]
        wait_for(lambda: c.get("/api/v1/health").json["running"] == 2, timeout=10)
        for job_id in ids:
            assert wait_job(_getter(app), job_id)["state"] == "done"
        summaries = [comparable(c.get(f"/api/v1/jobs/{i}/result").json) for i in ids]
        assert summaries[0] == summaries[1] and summaries[0]["her2_score"] == "3+"
    finally:
        app.extensions["her2_qupath"].close()
