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


#: Tests that take more than ~8 s on a busy 2-core machine (pytest --durations), or whose module
#: fixture does: marked ``slow`` so that ``make test-fast`` leaves them out (``make test`` runs all).
SLOW_TESTS = (
    "test_calibration.py::test_calibrate_recovers_a_known_staining_factor",
    "test_calibration.py::test_calibrate_then_validate_with_the_calibration",
    "test_server_e2e.py::test_load_50_jobs_from_10_clients",
    "test_server_e2e.py::test_killed_server_finishes_all_queued_jobs_after_restart",
    "test_server_e2e.py::test_dask_cluster_gives_the_same_results",
    "test_validation.py::test_validate_reproduces_the_benchmark_on_real_ihc",
    "test_real_her2.py::",
    "test_models_training.py::",
    "test_models_cli.py::test_train_and_evaluate_classifier",
    "test_models_cli.py::test_train_segmenter_cli",
    "test_models_realdata.py::",
    "test_demo_and_score_cli.py::test_demo_",
    "test_project_batch.py::test_pair_with_the_real_pipeline_writes_the_he_side",
    "test_pipeline.py::test_pair_with_registration_maps_rois_to_the_ihc_slide",
    "test_pipeline_models.py::",
    "test_registration.py::test_unrelated_tissue_is_flagged_unreliable",
    "test_registration.py::test_mirrored_section_without_allow_mirror_is_flagged",
    "test_registration.py::test_nonrigid_follows_a_synthetic_bend",
    "test_case_report.py::test_report_of_a_pair",
    "test_cell_scale.py::test_cells_classes_and_summary_are_those_of_the_object_per_cell_code",
    "test_validation.py::test_html_report_renders_the_numbers_of_report_json",
    "test_validation.py::test_validate_cli_scores_known_cases_and_resumes",
    "test_registration_acceptance.py::test_kidney_without_pixel_size",
    "test_typing.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(s in item.nodeid for s in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
