"""The status page in headless Chromium: a finished job's score, percentages and overlay image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from server_support import app_config, make_images, wait_for

from her2_qupath.server import create_app
from her2_qupath.server.scorers import PipelineScorer
from her2_qupath.server.wsgi import BackgroundServer

pytestmark = pytest.mark.browser

def test_status_page_shows_finished_job(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    images = make_images(tmp_path / "slides")
    app = create_app(
        app_config(
            tmp_path / "data",
            [images["three"].parent],
            PipelineScorer(),
            token="browser-test-token",
            require_token=True,
        )
    )
    try:
        with BackgroundServer(app) as srv:
            auth = {"Authorization": "Bearer browser-test-token"}
            r = requests.post(
                f"{srv.url}/api/v1/jobs",
                json={"ihc": str(images["three"]), "options": {"tile_size": 128}},
                headers=auth,
                timeout=10,
            )
            job_id = r.json()["id"]
            wait_for(
                lambda: (
                    requests.get(
                        f"{srv.url}/api/v1/jobs/{job_id}", headers=auth, timeout=10
                    ).json()["state"]
                    == "done"
                ),
                timeout=30,
            )

            browser.get(f"{srv.url}/")  # no token yet: refused
            assert "unauthorized" in browser.page_source

            browser.get(f"{srv.url}/?token=browser-test-token")  # sets the cookie, redirects to /
            assert browser.current_url == f"{srv.url}/"
            article = browser.find_element(By.ID, f"job-{job_id}")
            assert article.find_element(By.CSS_SELECTOR, ".badge").text == "done"
            assert article.find_element(By.CSS_SELECTOR, ".score").text == "HER2 3+"
            rows = {
                tr.find_elements(By.TAG_NAME, "td")[0].text: tr.find_elements(By.TAG_NAME, "td")[
                    1
                ].text
                for tr in article.find_elements(By.CSS_SELECTOR, "table.classes tr")[1:]
            }
            assert rows["HER2 0"] == "37.5" and rows["HER2 3+"] == "12.5"
            img = article.find_element(By.CSS_SELECTOR, "img.overlay")
            wait_for(
                lambda: browser.execute_script("return arguments[0].complete", img), timeout=10
            )
            assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
            # the script ran under the page's CSP: swatches are coloured
            swatch = article.find_element(By.CSS_SELECTOR, ".swatch")
            assert swatch.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)")
            assert "done 1" in browser.find_element(By.ID, "server-state").text
    finally:
        app.extensions["her2_qupath"].close(timeout_s=10)
