"""The status page ``GET /``: server state and the job list, rendered on the server."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, render_template

from .. import __version__
from ..config import HER2_CLASSES, HER2_COLORS
from .api import job_json
from .state import server_state

__all__ = ["bp"]

bp = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: jobs shown on the page, newest first
PAGE_JOBS = 50


def _page_job(job: dict[str, Any]) -> dict[str, Any]:
    view = job_json(job)
    summary = json.loads(job["brief"]) if job.get("brief") else {}
    percentages = summary.get("class_percentages") or {}
    view["class_percentages"] = []
    for name in HER2_CLASSES:  # keys "0".."3+" (pipeline) or "HER2 0".."HER2 3+"
        short = name.removeprefix("HER2 ")
        value = percentages.get(short, percentages.get(name))
        if value is not None:
            view["class_percentages"].append(
                {"name": name, "value": value, "color": "rgb({},{},{})".format(*HER2_COLORS[name])}
            )
    view["h_score"] = summary.get("h_score")
    view["n_tiles"] = summary.get("n_tiles")
    view["percent"] = int(round(100 * view["progress"]))
    return view


@bp.get("/")
def index() -> str:
    state = server_state()
    jobs = [_page_job(j) for j in state.manager.store.list(limit=PAGE_JOBS)]
    counts = state.manager.store.counts()
    return render_template(
        "index.html",
        version=__version__,
        executor=state.manager.backend.kind,
        workers=state.manager.workers,
        counts=counts,
        queue_length=counts.get("queued", 0),
        max_queue=state.config.max_queue,
        auth_required=state.auth_required,
        jobs=jobs,
        active=any(j["state"] in ("queued", "running") for j in jobs),
    )
