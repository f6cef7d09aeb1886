"""Helpers shared by the server tests: synthetic IHC images with known classes, app builders."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2_qupath.config import StainConfig

#: DAB concentrations well inside each class of StainConfig's thresholds 0.2/0.4/0.6
DAB_BY_CLASS = (0.05, 0.3, 0.5, 0.8)
HEMATOXYLIN = 0.5


def ihc_rgb(tile_classes: Sequence[Sequence[int | None]], tile: int = 128) -> np.ndarray:
    """An RGB image built from stain concentrations: one HER2 class per tile (None: glass).

    The pixel classes are known by construction, so a scorer's class percentages
    can be checked against exact numbers.
    """
    stain = StainConfig()
    h = np.asarray(stain.hematoxylin, float)
    d = np.asarray(stain.dab, float)
    h, d = h / np.linalg.norm(h), d / np.linalg.norm(d)
    rows, cols = len(tile_classes), len(tile_classes[0])
    out = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for r, row in enumerate(tile_classes):
        for c, k in enumerate(row):
            if k is None:
                continue
            od = HEMATOXYLIN * h + DAB_BY_CLASS[k] * d
            rgb = np.clip(np.round(256.0 * 10.0 ** (-od) - 1.0), 0, 255).astype(np.uint8)
            out[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = rgb
    return out


def write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


#: 4x4 tiles: 6 of class 0, 4 of 1+, 4 of 2+, 2 of 3+ -> 37.5 / 25 / 25 / 12.5 % -> breast 3+
LAYOUT_3 = [[0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 2, 2], [2, 2, 3, 3]]
#: 4x4 tiles: 8 of class 0, 6 of 1+, 2 of 2+ -> 50 / 37.5 / 12.5 / 0 % -> breast 2+
LAYOUT_2 = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 2, 2]]
#: 4x4 tiles, a glass border: only the 4 centre tiles are tissue, all 1+ -> breast 1+
LAYOUT_1 = [[None] * 4, [None, 1, 1, None], [None, 1, 1, None], [None] * 4]


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
