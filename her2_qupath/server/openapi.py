"""The OpenAPI 3.1 document of the server, served at ``/api/v1/openapi.json``.

Built from the same schemas that validate requests (``schemas.py``). A test
checks that every route of the app is documented here and every path here is
a route, and that every example validates against its schema.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from .schemas import JOB_STATES, SCHEMAS

__all__ = ["openapi_document", "EXAMPLES"]

_JOB_ID = "0123456789abcdef0123456789abcdef"

EXAMPLES: dict[str, Any] = {
    "ScoreRequest": {
        "ihc": "file:/data/slides/My%20Cases/case%2012%20HER2.svs",
        "he": "/data/slides/My Cases/case 12 HE.svs",
        "rois": {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "id": "6f1b0a7e-2a4c-4f0b-9c61-0d3c7b1f5a10",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [
                            [[1000, 1000], [5000, 1000], [5000, 4000], [1000, 4000], [1000, 1000]]
                        ],
                    },
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    },
                }
            ],
        },
        "roi_class": "Tumor",
        "options": {"guideline": "breast", "level": "pixel", "aggregation": "guideline"},
    },
    "Job": {
        "id": _JOB_ID,
        "state": "running",
        "progress": 0.25,
        "tiles_done": 12,
        "tiles_total": 48,
        "created": "2026-01-05T09:30:00.000Z",
        "started": "2026-01-05T09:30:01.250Z",
        "finished": None,
        "error": None,
        "attempts": 1,
        "cancel_requested": False,
        "result_available": False,
        "her2_score": None,
        "links": {"self": f"/api/v1/jobs/{_JOB_ID}"},
    },
    "Summary": {
        "her2_score": "2+",
        "class_percentages": {"0": 40.5, "1+": 31.0, "2+": 22.5, "3+": 6.0},
        "h_score": 94.0,
        "percent_positive": 59.5,
        "n_tiles": 48,
    },
    "Health": {
        "status": "ok",
        "problems": [],
        "version": __version__,
        "models_loaded": 0,
        "models_available": 2,
        "queue_length": 3,
        "running": 1,
        "max_queue": 32,
        "workers": 2,
        "workers_alive": 2,
        "executor": "local",
        "auth_required": False,
    },
    "Models": {
        "models": [{"name": "stain-vit-small", "kind": "vit", "loaded": False}],
        "models_dir_configured": True,
    },
    "Error": {
        "error": {
            "code": "forbidden",
            "message": "IHC image '/etc/passwd' lies outside the server's image roots",
        }
    },
    "FeatureCollection": {"type": "FeatureCollection", "features": []},
}
EXAMPLES["JobList"] = {"jobs": [EXAMPLES["Job"]], "count": 1}
EXAMPLES["PairRequest"] = {
    "ihc": "case12_HER2.svs",
    "images": [{"name": "case12_HER2.svs", "id": "3"}, {"name": "case12_HE.svs", "id": "4"}],
    "pair_pattern": "(?P<case>.+)_(?P<stain>HE|HER2)",
}
EXAMPLES["Pair"] = {"ihc": "case12_HER2.svs", "he": "case12_HE.svs", "case": "case12",
                    "method": "pattern", "reason": None}
EXAMPLES["ScoreResponse"] = {
    "summary": EXAMPLES["Summary"],
    "detections": EXAMPLES["FeatureCollection"],
    "annotations": EXAMPLES["FeatureCollection"],
    "tiles": 4,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(name), "example": EXAMPLES[name]}},
    }
    if headers:
        out["headers"] = headers
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "The request is malformed or breaks the schema.",
        401: "Token missing or wrong.",
        403: "A path lies outside the image roots, or the Host is not loopback.",
        404: "No such job, route or image.",
        405: "Method not allowed on this route.",
        409: "The job is not in a state that allows this.",
        410: "The results expired or were removed to respect the disk limit.",
        413: "Request too large: body, ROI vertices, tiles or pixels to read (work budget).",
        415: "The body is not application/json.",
        429: "Queue full, stored requests at their limit, or too many synchronous requests; "
        "see Retry-After.",
    }
    out = {str(c): _json("Error", text[c]) for c in codes}
    if 429 in codes:
        out["429"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
        }
    return out


_JOB_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
    "example": _JOB_ID,
}
_AUTH = (401,)


def _result_op(
    summary: str, media: str, schema: dict[str, Any] | None, op_id: str
) -> dict[str, Any]:
    content: dict[str, Any] = {media: {"schema": schema or {"type": "string", "format": "binary"}}}
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "parameters": [_JOB_PARAM],
            "responses": {
                "200": {"description": summary, "content": content},
                **_errors(*_AUTH, 404, 409, 410),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (a fresh copy each call)."""
    score_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref("ScoreRequest"),
                "example": EXAMPLES["ScoreRequest"],
            }
        },
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "operationId": "statusPage",
                "summary": "Status page (HTML): server state, jobs, scores and overlays.",
                "description": "With a token, open it once as /?token=TOKEN: the token is checked, kept in an "
                "HttpOnly, SameSite=Strict cookie and the browser is redirected to /.",
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "303": {"description": "Token accepted and stored in a cookie; go to /."},
                    **_errors(*_AUTH),
                },
            }
        },
        "/static/{filename}": {
            "get": {
                "operationId": "staticFile",
                "summary": "Style sheet and script of the status page.",
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(*_AUTH, 404),
                },
            }
        },
        "/api/v1/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, version, models and queue length. Never needs a token.",
                "security": [],
                "responses": {
                    "200": _json(
                        "Health",
                        "The server is up; status degraded, with problems, when a job worker had "
                        "to be restarted, the data directory is not writable or the jobs "
                        "database refuses writes.",
                    )
                },
            }
        },
        "/api/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "Model directories the server can use (names for options.models).",
                "responses": {
                    "200": _json("Models", "Models found under --models-dir."),
                    **_errors(*_AUTH),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(*_AUTH),
                },
            }
        },
        "/api/v1/jobs": {
            "post": {
                "operationId": "createJob",
                "summary": "Queue a scoring job; poll the Location for its state.",
                "requestBody": score_body,
                "responses": {
                    "202": _json(
                        "Job",
                        "Queued.",
                        headers={
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "URL of the job",
                            }
                        },
                    ),
                    **_errors(400, *_AUTH, 403, 404, 413, 415, 429),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first.",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": list(JOB_STATES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                ],
                "responses": {"200": _json("JobList", "The jobs."), **_errors(400, *_AUTH)},
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "State, progress (0-1), tiles done/total and error of a job.",
                "parameters": [_JOB_PARAM],
                "responses": {"200": _json("Job", "The job."), **_errors(*_AUTH, 404)},
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or running job.",
                "parameters": [_JOB_PARAM],
                "responses": {
                    "200": _json("Job", "Cancelled (it was queued)."),
                    "202": _json(
                        "Job", "Cancellation requested; the running job stops at its next tile."
                    ),
                    **_errors(*_AUTH, 404, 409),
                },
            },
        },
        "/api/v1/jobs/{job_id}/result": _result_op(
            "summary.json of a finished job.", "application/json", _ref("Summary"), "jobResult"
        ),
        "/api/v1/jobs/{job_id}/detections": _result_op(
            "Tile/cell detections as QuPath GeoJSON.",
            "application/geo+json",
            _ref("FeatureCollection"),
            "jobDetections",
        ),
        "/api/v1/jobs/{job_id}/annotations": _result_op(
            "Region annotations with scores as QuPath GeoJSON.",
            "application/geo+json",
            _ref("FeatureCollection"),
            "jobAnnotations",
        ),
        "/api/v1/pairing": {
            "post": {
                "operationId": "pairImage",
                "summary": "The H&E partner of an IHC image by batch's pairing rules "
                "(pattern, metadata key), from the project's image names and metadata.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("PairRequest"), "example": EXAMPLES["PairRequest"]}}},
                "responses": {
                    "200": _json("Pair", "The partner (he null, with the reason, when none)."),
                    **_errors(400, *_AUTH, 413, 415),
                },
            }
        },
        "/api/v1/jobs/{job_id}/overlay.png": _result_op(
            "Overlay of the tile classes on the slide.", "image/png", None, "jobOverlay"
        ),
        "/api/v1/jobs/{job_id}/report.png": _result_op(
            "The case report (one A4 landscape page).", "image/png", None, "jobReportPng"
        ),
        "/api/v1/jobs/{job_id}/report.pdf": _result_op(
            "The case report as PDF.", "application/pdf", None, "jobReportPdf"
        ),
        "/api/v1/score": {
            "post": {
                "operationId": "scoreNow",
                "summary": "Score a small ROI synchronously (at most max_sync_tiles tiles and max_sync_pixels "
                "pixels, else 413 with the advice to submit a job).",
                "requestBody": score_body,
                "responses": {
                    "200": _json("ScoreResponse", "Summary, detections and annotations."),
                    **_errors(400, *_AUTH, 403, 404, 413, 415, 429),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "her2-qupath server",
            "version": __version__,
            "description": "HER2 scoring of whole-slide images for QuPath. Errors are always "
            '{"error": {"code", "message"}}.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": copy.deepcopy(paths),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token printed at start (also <data-dir>/token).",
                }
            },
        },
    }
