"""The JSON API under ``/api/v1`` (documented in ``openapi.py``)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file, url_for

from .. import __version__
from ..errors import JobCancelled
from ..qupath.project import partner_of
from .http import ApiError
from .jobs import TERMINAL_STATES, QueueFull, iso_time
from .openapi import openapi_document
from .schemas import JOB_STATES, parse_json, validate
from .scorers import WorkEstimate, build_spec, check_vertex_limit
from .state import server_state

__all__ = ["bp"]

bp = Blueprint("api", __name__)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_FILES = {
    "result": ("summary.json", "application/json"),
    "detections": ("detections.geojson", "application/geo+json"),
    "annotations": ("annotations.geojson", "application/geo+json"),
    "overlay": ("overlay.png", "image/png"),
    "report_png": ("report.png", "image/png"),
    "report_pdf": ("report.pdf", "application/pdf"),
}


def _json_body(schema: str) -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the request body as application/json")
    body = parse_json(request.get_data(cache=False))
    if isinstance(body, dict):  # before the schema: validating a huge ROI list is the slow part
        check_vertex_limit(body.get("rois"), server_state().config.max_roi_vertices)
    validate(schema, body)
    return dict(body)


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    """The public view of a job row."""
    summary = json.loads(job["brief"]) if job.get("brief") else None
    result = job["state"] == "done" and not job["result_expired"]
    links = {"self": url_for("api.get_job", job_id=job["id"])}
    if result:
        links.update(
            result=url_for("api.job_result", job_id=job["id"]),
            detections=url_for("api.job_detections", job_id=job["id"]),
            annotations=url_for("api.job_annotations", job_id=job["id"]),
            overlay=url_for("api.job_overlay", job_id=job["id"]),
            report_png=url_for("api.job_report_png", job_id=job["id"]),
            report_pdf=url_for("api.job_report_pdf", job_id=job["id"]),
        )
    return {
        "id": job["id"],
        "state": job["state"],
        "progress": round(float(job["progress"]), 4),
        "tiles_done": int(job["tiles_done"]),
        "tiles_total": job["tiles_total"],
        "created": iso_time(job["created"]),
        "started": iso_time(job["started"]),
        "finished": iso_time(job["finished"]),
        "error": job["error"],
        "attempts": int(job["attempts"]),
        "cancel_requested": bool(job["cancel_requested"]),
        "result_available": result,
        "her2_score": summary.get("her2_score") if isinstance(summary, dict) else None,
        "links": links,
    }


def _job_or_404(job_id: str) -> dict[str, Any]:
    job = server_state().manager.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r} (it may have expired)")
    return job


def _estimate(spec: Any) -> WorkEstimate | None:
    scorer = server_state().scorer
    by_work = getattr(scorer, "estimate_work", None)
    if by_work is not None:
        work: WorkEstimate | None = by_work(spec)
        return work
    tiles = scorer.estimate_tiles(spec)
    return None if tiles is None else WorkEstimate(tiles=tiles)


def _check_work(spec: Any, *, sync: bool) -> int | None:
    """Refuse (413) before any pixel is read a request whose tiles or pixels exceed the budget."""
    config = server_state().config
    work = _estimate(spec)
    tile_limit = config.max_sync_tiles if sync else config.max_tiles_per_job
    estimate = _check_tiles(None if work is None else work.tiles, tile_limit, sync=sync)
    pixel_limit = config.max_sync_pixels if sync else config.max_job_pixels
    if work is not None and work.pixels is not None and work.pixels > pixel_limit:
        advice = (
            "submit it as a job with POST /api/v1/jobs and poll GET /api/v1/jobs/<id>"
            if sync
            else "choose a smaller options.tile_size or options.mpp (a finer working resolution), or "
            "draw smaller ROIs"
        )
        raise ApiError(
            413,
            "too_much_work",
            f"{'synchronous scoring' if sync else 'one job'} reads at most {pixel_limit:,} pixels and "
            f"this request needs about {work.pixels:,} ({work.tiles} tile(s) of "
            f"{spec.options.get('tile_size', 'default')} px at "
            f"{spec.options.get('mpp', 'the default')} µm/px); {advice}",
        )
    return estimate


def _check_tiles(estimate: int | None, limit: int, *, sync: bool) -> int | None:
    if sync and (estimate is None or estimate > limit):
        raise ApiError(
            413,
            "too_many_tiles",
            f"synchronous scoring takes at most {limit} tiles and this request covers "
            f"{'an unknown number of' if estimate is None else estimate}; submit it as a job with "
            "POST /api/v1/jobs and poll GET /api/v1/jobs/<id>",
        )
    if not sync and estimate is not None and estimate > limit:
        raise ApiError(
            413,
            "too_many_tiles",
            f"the request covers up to {estimate} tiles, more than one job may score ({limit}); "
            "draw smaller ROIs or split the slide",
        )
    return estimate


@bp.get("/health")
def health() -> Response:
    state = server_state()
    models = state.scorer.models() if hasattr(state.scorer, "models") else []
    problems = state.manager.problems()
    return jsonify(
        status="degraded" if problems else "ok",
        problems=problems,
        version=__version__,
        models_loaded=sum(1 for m in models if m.get("loaded")),
        models_available=len(models),
        queue_length=state.manager.queue_length(),
        running=state.manager.running_count(),
        max_queue=state.config.max_queue,
        workers=state.manager.workers,
        workers_alive=state.manager.workers_alive(),
        executor=state.manager.backend.kind,
        auth_required=state.auth_required,
    )


@bp.get("/models")
def models() -> Response:
    state = server_state()
    found = state.scorer.models() if hasattr(state.scorer, "models") else []
    return jsonify(models=found, models_dir_configured=state.config.models_dir is not None)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@bp.post("/jobs")
def create_job() -> tuple[Response, int, dict[str, str]]:
    state = server_state()
    if state.manager.queue_length() >= state.config.max_queue:  # early: before any file is opened
        raise QueueFull(state.config.max_queue, state.config.retry_after_s)
    body = _json_body("ScoreRequest")
    spec = build_spec(body, state.config)
    _check_work(spec, sync=False)
    job = state.manager.submit(body)
    location = url_for("api.get_job", job_id=job["id"])
    return jsonify(job_json(job)), 202, {"Location": location}


@bp.get("/jobs")
def list_jobs() -> Response:
    state_filter = request.args.get("state")
    if state_filter is not None and state_filter not in JOB_STATES:
        raise ApiError(400, "invalid_request", f"state must be one of {', '.join(JOB_STATES)}")
    raw_limit = request.args.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit) or not 1 <= int(raw_limit) <= 1000:
        raise ApiError(400, "invalid_request", "limit must be an integer from 1 to 1000")
    jobs = server_state().manager.store.list(limit=int(raw_limit), state=state_filter)
    return jsonify(jobs=[job_json(j) for j in jobs], count=len(jobs))


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(job_json(_job_or_404(job_id)))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> tuple[Response, int]:
    job = _job_or_404(job_id)
    if job["state"] in TERMINAL_STATES:
        raise ApiError(
            409, "conflict", f"job {job_id} is already {job['state']}; nothing to cancel"
        )
    after = server_state().manager.cancel(job_id)
    job = _job_or_404(job_id)
    return jsonify(job_json(job)), 200 if after == "cancelled" else 202


def _result_file(job_id: str, kind: str) -> Response:
    job = _job_or_404(job_id)
    if job["state"] != "done":
        detail = f": {job['error']}" if job["error"] and job["state"] in TERMINAL_STATES else ""
        raise ApiError(
            409,
            "not_ready",
            f"job {job_id} is {job['state']}{detail}; results exist only when it is done",
        )
    name, mimetype = RESULT_FILES[kind]
    path = server_state().manager.result_path(job_id) / name
    if job["result_expired"] or not path.is_file():
        raise ApiError(
            410,
            "gone",
            f"the results of job {job_id} were removed (disk limit or expiry); submit it again",
        )
    return send_file(path, mimetype=mimetype, max_age=0, conditional=False, etag=False)


@bp.get("/jobs/<job_id>/result")
def job_result(job_id: str) -> Response:
    return _result_file(job_id, "result")


@bp.get("/jobs/<job_id>/detections")
def job_detections(job_id: str) -> Response:
    return _result_file(job_id, "detections")


@bp.get("/jobs/<job_id>/annotations")
def job_annotations(job_id: str) -> Response:
    return _result_file(job_id, "annotations")


@bp.get("/jobs/<job_id>/overlay.png")
def job_overlay(job_id: str) -> Response:
    return _result_file(job_id, "overlay")


@bp.get("/jobs/<job_id>/report.png")
def job_report_png(job_id: str) -> Response:
    return _result_file(job_id, "report_png")


@bp.get("/jobs/<job_id>/report.pdf")
def job_report_pdf(job_id: str) -> Response:
    return _result_file(job_id, "report_pdf")


@bp.post("/pairing")
def pairing() -> Response:
    """The H&E partner of an IHC image by the pairing rules of ``batch`` (for the scripts)."""
    body = _json_body("PairRequest")
    found = partner_of(body["ihc"], body["images"], pattern=body.get("pair_pattern") or None,
                       metadata_key=body.get("pair_metadata") or None)
    return jsonify(found)


@bp.post("/score")
def score() -> Response:
    state = server_state()
    body = _json_body("ScoreRequest")
    spec = build_spec(body, state.config)
    limit = state.config.max_sync_tiles
    estimate = _check_work(spec, sync=True)
    if not state.sync_slots.acquire(blocking=False):
        raise ApiError(
            429,
            "busy",
            "the server is already scoring as many synchronous requests as it allows; retry shortly or submit a job",
            headers={"Retry-After": "1"},
        )
    try:
        out = _score_now(spec, limit)
    finally:
        state.sync_slots.release()
    return jsonify(
        summary=out["summary"],
        detections=out["detections"],
        annotations=out["annotations"],
        tiles=estimate,
    )


def _score_now(spec: Any, limit: int) -> dict[str, Any]:
    """Score in the request thread; in memory when the scorer can (no files, no overlay).

    A run still going after ``max_sync_seconds`` is stopped (at the pipeline's
    next chunk of tiles) and answered 413 with the advice to submit a job.
    """
    state = server_state()
    seconds = state.config.max_sync_seconds
    cancel = threading.Event()
    deadline = threading.Timer(seconds, cancel.set)
    deadline.daemon = True

    def progress(done: int, total: int) -> None:
        if total > limit:
            raise ApiError(
                413,
                "too_many_tiles",
                f"the request has {total} tiles (> {limit}); submit it as a job",
            )

    deadline.start()
    try:
        return _score_in_request(spec, progress, cancel)
    except JobCancelled:
        if not cancel.is_set():
            raise
        raise ApiError(
            413,
            "too_much_work",
            f"synchronous scoring was stopped after {seconds:g} s (ServerConfig.max_sync_seconds); "
            "submit it as a job with POST /api/v1/jobs and poll GET /api/v1/jobs/<id>",
        ) from None
    finally:
        deadline.cancel()


def _score_in_request(spec: Any, progress: Any, cancel: threading.Event) -> dict[str, Any]:
    state = server_state()
    in_memory = getattr(state.scorer, "score_in_memory", None)
    if in_memory is not None:
        return dict(
            in_memory(
                spec, progress=progress, cancel=cancel, executor=state.manager.backend.executor()
            )
        )
    tmp = Path(tempfile.mkdtemp(dir=_tmp_dir(), prefix="score-"))
    try:
        state.manager.run_spec(spec, tmp, progress=progress, cancel=cancel)
        return {
            name: json.loads((tmp / f"{name}{ext}").read_text(encoding="utf-8"))
            for name, ext in (
                ("summary", ".json"),
                ("detections", ".geojson"),
                ("annotations", ".geojson"),
            )
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_dir() -> Path:
    path = server_state().data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
