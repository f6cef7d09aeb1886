"""Shared fixtures: the real data folder and the skip rules for optional parts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HER2_QUPATH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or $HER2_QUPATH_SHARED_DATA); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set HER2_QUPATH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def foci_project(shared_data: Path, tmp_path: Path) -> Path:
    """A writable copy of the real QuPath 0.4.0 project (the shared data stays untouched)."""
    import shutil

    src = shared_data / "qupath" / "foci-0.4.0"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    proj = tmp_path / "foci"
    shutil.copytree(src, proj)
    for p in proj.rglob("*"):  # CI's copy of shared/ is read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    return proj
