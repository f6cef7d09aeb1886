"""Shared fixtures: the real data folder and the skip rules for optional parts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = next(
    (Path(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through Selenium; skip when chromium or its driver is not installed."""
    if CHROMIUM is None or not CHROMEDRIVER.exists():
        pytest.skip(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="her2-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
