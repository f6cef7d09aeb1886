"""The server with its default scorer, over HTTP: the same results as ``run_score`` called directly.

(The same comparison on a Dask cluster is in ``test_server_e2e.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_support import (
    LAYOUT_3,
    MPP,
    app_config,
    comparable,
    direct,
    fetch_result,
    ihc_rgb,
    poll,
    write_png,
)

from her2_qupath.server import create_app
from her2_qupath.server.wsgi import BackgroundServer

OPTIONS = {"tile_size": 256, "mpp": MPP}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 1024 synthetic IHC image (4 x 4 tiles of 256 px with known classes) at 0.5 µm/px."""
    return write_png(
        tmp_path_factory.mktemp("slides") / "synthetic ihc.png", ihc_rgb(LAYOUT_3, tile=256)
    )


@pytest.fixture(scope="module")
def expected(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return direct(slide, OPTIONS, tmp_path_factory.mktemp("direct"))


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
    job = poll(s, url, r.json()["id"], timeout=180)
    assert job["state"] == "done", job
    assert s.get(f"{url}/api/v1/jobs/{job['id']}/overlay.png", timeout=10).content.startswith(
        b"\x89PNG"
    )
    return fetch_result(s, url, job["id"])


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
    assert comparable(sync.json()["summary"]) == expected["summary"]
