"""Helpers shared by the server tests: IHC images with known classes, the real scorer slowed, app builders.

Every server test scores with the product's pipeline (``PipelineScorer``);
:class:`SlowScorer` only makes its tiles take longer, so a job stays running
long enough to watch, cancel or interrupt it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from her2_qupath.errors import JobCancelled
from her2_qupath.qupath.objects import RUN_KEY
from her2_qupath.server.scorers import JobSpec, PipelineScorer
from her2_qupath.synthetic import render_stains

#: pixel size the test images carry (µm/px), also the pipeline's working resolution
MPP = 0.5

#: Membrane line density (OD·µm) drawn for each class, well inside each band of
#: StainConfig.membrane_thresholds (0.044 / 0.136 / 0.312)
LINE_BY_CLASS = (0.0, 0.08, 0.22, 0.5)
#: membrane blocks (StainConfig.membrane_block_um) in pixels at MPP
BLOCK = 16


def ihc_rgb(tile_classes: Sequence[Sequence[int | None]], tile: int = 128,
            line_scale: float = 1.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """An RGB image of cells drawn from stain concentrations: one HER2 class per tile (None: glass).

    Every 8 µm block of a tile holds a membrane line through its centre (1 µm wide,
    at the tile class's line density), a hematoxylin nucleus on each block corner
    (enough cells to be evaluable) and a 1 µm lumen (glass-white), so the white point
    and each block's class are known by construction and a scorer's class
    percentages can be checked against exact numbers. ``line_scale`` multiplies
    the drawn line densities (a laboratory whose staining is paler or darker);
    ``noise`` adds Gaussian scanner noise (standard deviation in 8-bit levels) before rounding.
    """
    rows, cols = len(tile_classes), len(tile_classes[0])
    yy, xx = np.mgrid[0:tile, 0:tile]
    by, bx = yy % BLOCK, xx % BLOCK
    line = (np.abs(by - BLOCK // 2 + 0.5) < 1.0) | (np.abs(bx - BLOCK // 2 + 0.5) < 1.0)
    corner = np.minimum(by, BLOCK - by) ** 2 + np.minimum(bx, BLOCK - bx) ** 2 <= 9
    lumen = (by >= 3) & (by < 5) & (bx >= 3) & (bx < 5)
    out = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    rng = np.random.default_rng(seed)
    for r, row in enumerate(tile_classes):
        for c, k in enumerate(row):
            if k is None:
                continue
            width_um = 2 * MPP  # the drawn line is two pixels wide
            dab = np.where(line, line_scale * LINE_BY_CLASS[k] / width_um, 0.0)
            hem = np.where(corner, 0.6, 0.15)
            rgb = render_stains(hem, dab, noise=noise, rng=rng)
            rgb[lumen] = 255
            out[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = rgb
    return out


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """A PNG slide that carries its pixel size (:data:`MPP`), as the pipeline needs."""
    from her2_qupath.slide_writer import write_slide

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_slide(path, rgb, mpp=MPP, kind="png")


#: 4x4 tiles: 6 of class 0, 4 of 1+, 4 of 2+, 2 of 3+ -> 37.5 / 25 / 25 / 12.5 % -> breast 3+
LAYOUT_3 = [[0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 2, 2], [2, 2, 3, 3]]
#: 4x4 tiles: 8 of class 0, 6 of 1+, 2 of 2+ -> 50 / 37.5 / 12.5 / 0 % -> breast 2+
LAYOUT_2 = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 2, 2]]
#: 4x4 tiles, glass along the top and left edges: 9 tiles of tissue, all 1+ -> breast 1+
#: (at 128 px and 0.5 µm/px the tissue is 192 x 192 µm, above TissueConfig.min_object_um2)
LAYOUT_1 = [[None] * 4, [None, 1, 1, 1], [None, 1, 1, 1], [None, 1, 1, 1]]


def make_images(root: Path) -> dict[str, Path]:
    """Three small IHC images with known scores 3, 2 and 1 (one with a space and unicode in its name)."""
    return {
        "three": write_png(root / "case three.png", ihc_rgb(LAYOUT_3)),
        "two": write_png(root / "zwei-fälle.png", ihc_rgb(LAYOUT_2)),
        "one": write_png(root / "sub" / "one.png", ihc_rgb(LAYOUT_1)),
    }


def app_config(
    data_dir: Path, roots: Sequence[Path], scorer: Any, **overrides: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "TESTING": True,
        "DATA_DIR": str(data_dir),
        "IMAGE_ROOTS": tuple(str(r) for r in roots),
        "SCORER": scorer,
        "WORKERS": 1,
        "PURGE_INTERVAL_S": 3600.0,
        "PROGRESS_WRITE_INTERVAL_S": 0.0,
    }
    cfg.update({k.upper(): v for k, v in overrides.items()})
    return cfg


@contextlib.contextmanager
def app_factory(tmp_path: Path, roots: Sequence[Path]) -> Iterator[Callable[..., Any]]:
    """``build(scorer=None, *, data=None, **overrides)`` makes apps; all are closed on exit."""
    from her2_qupath.server import create_app

    apps: list[Any] = []

    def build(scorer: Any = None, *, data: Path | None = None, **overrides: Any) -> Any:
        cfg = app_config(data or tmp_path / f"data{len(apps)}", roots,
                         scorer or PipelineScorer(), **overrides)
        app = create_app(cfg)
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            app.extensions["her2_qupath"].close(timeout_s=10)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_job(
    get_json: Callable[[str], Mapping[str, Any]],
    job_id: str,
    timeout: float = 30.0,
    states: Sequence[str] = ("done", "failed", "cancelled"),
) -> Mapping[str, Any]:
    def check() -> Mapping[str, Any] | None:
        job = get_json(f"/api/v1/jobs/{job_id}")
        return job if job["state"] in states else None

    return wait_for(check, timeout)


def comparable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A summary without fields that legitimately differ between runs (timings)."""
    out = dict(summary)
    prov = dict(out.get("provenance") or {})
    for key in ("run_id", "created", "seconds"):
        prov.pop(key, None)
    out["provenance"] = prov
    return out


class SlowScorer(PipelineScorer):
    """The real pipeline, slowed down: each tile it reports costs ``delay_s`` more.

    The pause follows each progress report (the pipeline reports a chunk of
    tiles at a time), so a job is seen part-done for a while; a cancellation
    ends the pause early and stops the run (:class:`JobCancelled`), as the
    pipeline stops at its next tile.
    """

    def __init__(self, delay_s: float = 0.05) -> None:
        super().__init__()
        self.delay_s = delay_s

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        stop = cancel or threading.Event()
        reported = 0

        def slowed(done: int, total: int) -> None:
            nonlocal reported
            if progress is not None:
                progress(done, total)
            pause, reported = self.delay_s * max(0, done - reported), done
            if stop.wait(pause):
                raise JobCancelled("the scoring run was cancelled", hint="nothing was written")

        return super().__call__(spec, outdir, progress=slowed, cancel=cancel, executor=executor)


def strip_ids(fc: Mapping[str, Any]) -> dict[str, Any]:
    """GeoJSON without the object UUIDs and the run id in the metadata (new on every run)."""
    def strip(f: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in f.items() if k != "id"}
        props = dict(out.get("properties") or {})
        if "metadata" in props:
            props["metadata"] = {k: v for k, v in props["metadata"].items() if k != RUN_KEY}
        out["properties"] = props
        return out

    out = dict(fc)
    out["features"] = [strip(f) for f in fc["features"]]
    return out


def result_files(folder: Path) -> dict[str, Any]:
    """A result folder as comparable data: summary without timings, GeoJSON without ids."""
    return {
        "summary": comparable(json.loads((folder / "summary.json").read_text())),
        "detections": strip_ids(json.loads((folder / "detections.geojson").read_text())),
        "annotations": strip_ids(json.loads((folder / "annotations.geojson").read_text())),
    }


def direct(image: Path, options: Mapping[str, Any], outdir: Path) -> dict[str, Any]:
    """What ``run_score`` gives for ``image`` called directly (no server), as :func:`result_files`.

    ``options`` are request options (``tile_size``, ``mpp``, ``guideline``),
    translated here independently of the server's own translation.
    """
    from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score, write_result

    unknown = set(options) - {"tile_size", "mpp", "guideline"}
    assert not unknown, f"direct() does not translate {unknown}"
    base = ScoreOptions()
    tiling = dataclasses.replace(
        base.tiling, **{k: options[k] for k in ("tile_size", "mpp") if k in options}
    )
    scoring = dataclasses.replace(
        base.scoring, **{k: options[k] for k in ("guideline",) if k in options}
    )
    request = ScoreRequest(
        ihc=image, options=dataclasses.replace(base, tiling=tiling, scoring=scoring)
    )
    key = json.dumps(dict(options), sort_keys=True)
    out = outdir / f"direct-{image.stem}-{key}".replace(" ", "_")
    if not out.is_dir():
        write_result(run_score(request), out)
    return result_files(out)


def poll(session: Any, url: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait over HTTP (a ``requests.Session``) until a job has finished; its last state."""

    def check() -> dict[str, Any] | None:
        job = session.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    return wait_for(check, timeout, interval=0.05)  # type: ignore[no-any-return]


def fetch_result(session: Any, url: str, job_id: str) -> dict[str, Any]:
    """A finished job's result over HTTP, as :func:`result_files` gives a folder."""
    base = f"{url}/api/v1/jobs/{job_id}"
    return {
        "summary": comparable(session.get(f"{base}/result", timeout=10).json()),
        "detections": strip_ids(session.get(f"{base}/detections", timeout=10).json()),
        "annotations": strip_ids(session.get(f"{base}/annotations", timeout=10).json()),
    }
