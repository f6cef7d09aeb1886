"""The server with the real pipeline: same results as ``run_score`` called directly, local and on Dask."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_support import LAYOUT_3, app_config, comparable, ihc_rgb, wait_for, write_png

from her2_qupath.server import create_app
from her2_qupath.server.wsgi import BackgroundServer

PIPELINE_MODULES = (
    "pipeline",
    "slide",
    "tiling",
    "tissue",
    "stain",
    "scoring",
    "render",
    "qupath.geojson",
)
MPP = 0.5
OPTIONS = {"tile_size": 256, "mpp": MPP}


def _missing() -> list[str]:
    missing = []
    for name in PIPELINE_MODULES:
        try:
            importlib.import_module(f"her2_qupath.{name}")
        except (ImportError, AttributeError) as err:  # absent, or built against a newer config.py
            missing.append(f"{name} ({type(err).__name__}: {err})")
    return missing


pytestmark = pytest.mark.skipif(
    bool(_missing()), reason=f"pipeline modules not installed: {_missing()}"
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 1024 synthetic IHC image (4 x 4 tiles of 256 px with known classes) at 0.5 µm/px."""
    return write_png(
        tmp_path_factory.mktemp("slides") / "synthetic ihc.png", ihc_rgb(LAYOUT_3, tile=256)
    )


def _strip_ids(fc: dict[str, Any]) -> dict[str, Any]:
    """GeoJSON without the random object UUIDs (new on every run)."""
    out = dict(fc)
    out["features"] = [{k: v for k, v in f.items() if k != "id"} for f in fc["features"]]
    return out


def _direct(slide: Path, tmp: Path) -> dict[str, Any]:
    from her2_qupath.pipeline import ScoreRequest, run_score, write_result
    from her2_qupath.server.scorers import PipelineScorer

    options = PipelineScorer().score_options(OPTIONS)
    result = run_score(ScoreRequest(ihc=slide, ihc_mpp=MPP, options=options))
    out = write_result(result, tmp / "direct")
    return _files(out)


def _files(folder: Path) -> dict[str, Any]:
    return {
        "summary": _summary(json.loads((folder / "summary.json").read_text())),
        "detections": _strip_ids(json.loads((folder / "detections.geojson").read_text())),
        "annotations": _strip_ids(json.loads((folder / "annotations.geojson").read_text())),
    }


def _summary(summary: dict[str, Any]) -> dict[str, Any]:
    return comparable(summary)


@pytest.fixture(scope="module")
def expected(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _direct(slide, tmp_path_factory.mktemp("direct"))


@pytest.fixture
def serve(tmp_path: Path, slide: Path) -> Iterator[Any]:
    opened: list[tuple[Any, BackgroundServer]] = []

    def start(**overrides: Any) -> BackgroundServer:
        cfg = app_config(tmp_path / f"data{len(opened)}", [slide.parent], None, **overrides)
        cfg.pop("SCORER")  # the default: the real pipeline
        app = create_app(cfg)
        srv = BackgroundServer(app).__enter__()
        opened.append((app, srv))
        return srv

    yield start
    for app, srv in opened:
        srv.stop()
        app.extensions["her2_qupath"].close(timeout_s=30)


def _run_job(url: str, slide: Path) -> dict[str, Any]:
    s = requests.Session()
    r = s.post(
        f"{url}/api/v1/jobs",
        json={"ihc": str(slide), "ihc_mpp": MPP, "options": OPTIONS},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_for(
        lambda: (
            (j := s.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json())["state"]
            in ("done", "failed", "cancelled")
            and j
        ),
        timeout=180,
        interval=0.1,
    )
    assert job["state"] == "done", job
    base = f"{url}/api/v1/jobs/{job_id}"
    assert s.get(f"{base}/overlay.png", timeout=10).content.startswith(b"\x89PNG")
    return {
        "summary": _summary(s.get(f"{base}/result", timeout=10).json()),
        "detections": _strip_ids(s.get(f"{base}/detections", timeout=10).json()),
        "annotations": _strip_ids(s.get(f"{base}/annotations", timeout=10).json()),
    }


def test_job_matches_run_score(serve: Any, slide: Path, expected: dict[str, Any]) -> None:
    srv = serve()
    got = _run_job(srv.url, slide)
    assert got == expected
    assert got["summary"]["her2_score"] == "3+"  # LAYOUT_3: 12.5 % of the tissue at 3+
    sync = requests.post(
        f"{srv.url}/api/v1/score",
        json={"ihc": str(slide), "ihc_mpp": MPP, "options": OPTIONS},
        timeout=120,
    )
    assert sync.status_code == 200, sync.text
    assert _summary(sync.json()["summary"]) == expected["summary"]


def test_dask_cluster_matches_local(serve: Any, slide: Path, expected: dict[str, Any]) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        srv = serve(dask_scheduler=cluster.scheduler_address)
        with distributed.Client(cluster) as watcher, distributed.get_task_stream(watcher) as stream:
            assert _run_job(srv.url, slide) == expected
        assert stream.data, "no tile work reached the Dask workers"
