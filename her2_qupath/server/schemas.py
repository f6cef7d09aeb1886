"""JSON Schemas (draft 2020-12) of every request and response body of the API.

The same dictionaries validate incoming requests, appear in the OpenAPI
document (``openapi.py``) and check the documented examples in the tests, so
the document cannot drift from what the server accepts. Enumerations come
from :mod:`her2_qupath.config`, the one source of defaults.
"""

from __future__ import annotations

import functools
import json
from typing import Any, get_args

from ..config import TILE_SIZE_RANGE, Aggregation, Guideline, Level
from ..errors import UserInputError

__all__ = [
    "SCHEMAS",
    "JOB_STATES",
    "parse_json",
    "validate",
]

JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
_PATH_OR_URI = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4096,
    "description": "A path below one of the server's image roots (absolute, or relative to a root), "
    "or a file: URI as QuPath stores it (file:/data/My%20Slides/case.svs).",
}
#: level-0 pixel coordinates: far beyond any slide, small enough for any geometry library
_COORDINATE = {"type": "number", "minimum": -1e8, "maximum": 1e8}
_POSITION = {"type": "array", "minItems": 2, "maxItems": 3, "items": _COORDINATE}
_RING = {"type": "array", "minItems": 4, "items": _POSITION}
_POLYGON_COORDS = {"type": "array", "minItems": 1, "items": _RING}
_GEOMETRY = {
    "oneOf": [
        {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {"type": {"const": "Polygon"}, "coordinates": _POLYGON_COORDS},
        },
        {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {
                "type": {"const": "MultiPolygon"},
                "coordinates": {"type": "array", "minItems": 1, "items": _POLYGON_COORDS},
            },
        },
    ]
}
_FEATURE = {
    "type": "object",
    "required": ["type", "geometry"],
    "properties": {
        "type": {"const": "Feature"},
        "id": {"type": ["string", "integer"]},
        "geometry": _GEOMETRY,
        "properties": {"type": ["object", "null"]},
    },
}
_ROIS = {
    "description": "Regions to score as QuPath GeoJSON (a FeatureCollection or a list of Features "
    "with Polygon or MultiPolygon geometries in level-0 pixels of the IHC slide). Null or absent: "
    "the whole slide.",
    "oneOf": [
        {"type": "null"},
        {"type": "array", "maxItems": 10_000, "items": _FEATURE},
        {
            "type": "object",
            "required": ["type", "features"],
            "properties": {
                "type": {"const": "FeatureCollection"},
                "features": {"type": "array", "maxItems": 10_000, "items": _FEATURE},
            },
        },
    ],
}
_MPP = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "maximum": 1000,
    "description": "Pixel size in µm/px; the server accepts ServerConfig.min_mpp to max_mpp "
    "(default 0.05 to 50) and answers 400 outside it.",
}
_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "description": "Scoring options, as the options of `her2-qupath score` (defaults from config.py).",
    "properties": {
        "guideline": {"enum": list(get_args(Guideline))},
        "level": {"enum": list(get_args(Level))},
        "aggregation": {"enum": list(get_args(Aggregation))},
        "tile_size": {"type": "integer", "minimum": TILE_SIZE_RANGE[0], "maximum": TILE_SIZE_RANGE[1]},
        "mpp": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 100,
            "description": "Working resolution in µm/px (ServerConfig.min_mpp to max_mpp, "
            "default 0.05 to 50).",
        },
        "min_tissue_fraction": {"type": "number", "minimum": 0, "maximum": 1},
        "intensity": {
            "enum": ["membrane", "od"],
            "description": "What the stain classes grade: membrane line density (default) or "
            "DAB OD with QuPath's thresholds (docs/stain.md).",
        },
        "thresholds": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "minItems": 3,
            "maxItems": 3,
            "description": "1+, 2+, 3+ thresholds of the chosen intensity, increasing.",
        },
        "background": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 255},
            "minItems": 3,
            "maxItems": 3,
            "description": "White point (RGB of empty glass); estimated from the glass when absent.",
        },
        "clip_tiles": {
            "type": "boolean",
            "description": "Cut the tile outlines to the scored regions (numbers unchanged).",
        },
        "calibration": {
            "type": "object",
            "required": ["format", "version", "membrane_thresholds", "membrane_tissue_od_sum"],
            "description": "A calibration file's content (from `her2-qupath calibrate`): its "
            "membrane grading replaces the server's for this request; not with 'thresholds' "
            "or intensity 'od'.",
        },
        "models": {
            "type": "object",
            "additionalProperties": False,
            "description": "Names of models from GET /api/v1/models.",
            "properties": {"tumor": _NAME, "stain": _NAME, "segmenter": _NAME},
        },
    },
}
_SCORE_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ihc"],
    "properties": {
        "ihc": _PATH_OR_URI,
        "he": {"oneOf": [{"type": "null"}, _PATH_OR_URI]},
        "ihc_mpp": _MPP,
        "he_mpp": _MPP,
        "rois": _ROIS,
        "roi_class": {"type": ["string", "null"], "maxLength": 256},
        "roi_space": {"enum": ["he", "ihc", None],
                      "description": "with an H&E slide: the image the ROIs were drawn on "
                                     "(default he; ihc ROIs are mapped to the H&E slide)"},
        "transform": {"oneOf": [{"type": "null"}, _PATH_OR_URI]},
        "options": _OPTIONS,
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "id": {"type": "string", "description": "500 only: the error's id in the server log"},
            },
        }
    },
}
_JOB = {
    "type": "object",
    "required": ["id", "state", "progress", "tiles_done", "tiles_total", "created", "error"],
    "properties": {
        "id": {"type": "string"},
        "state": {"enum": list(JOB_STATES)},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "tiles_done": {"type": "integer", "minimum": 0},
        "tiles_total": {"type": ["integer", "null"], "minimum": 0},
        "created": {"type": "string", "description": "ISO 8601, UTC"},
        "started": {"type": ["string", "null"]},
        "finished": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "attempts": {"type": "integer", "minimum": 0},
        "cancel_requested": {"type": "boolean"},
        "result_available": {"type": "boolean"},
        "her2_score": {"type": ["string", "null"], "description": "0, 1+, 2+ or 3+ once done"},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_SUMMARY = {
    "type": "object",
    "description": "summary.json of the scoring run: HER2 score, class percentages, H-score, "
    "percent positive, tile count, per-region scores and provenance.",
    "required": ["her2_score"],
    "properties": {
        "her2_score": {"type": ["string", "null"], "description": "0, 1+, 2+ or 3+"},
        "class_percentages": {
            "type": "object",
            "additionalProperties": {"type": ["number", "string"]},
        },
        "h_score": {"type": ["number", "string", "null"]},
        "percent_positive": {"type": ["number", "string", "null"]},
        "n_tiles": {"type": "integer", "minimum": 0},
    },
}
_FEATURE_COLLECTION = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array"}},
}

_PAIR_REQUEST = {
    "type": "object",
    "required": ["ihc", "images"],
    "additionalProperties": False,
    "properties": {
        "ihc": {"type": "string", "minLength": 1, "maxLength": 1000,
                "description": "Name of the IHC image (as in the project)."},
        "images": {
            "type": "array",
            "maxItems": 20000,
            "description": "The project's images: name, optional entry id and metadata.",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "id": {"type": "string", "maxLength": 100},
                    "metadata": {"type": "object", "maxProperties": 200,
                                 "additionalProperties": {"type": "string", "maxLength": 1000}},
                },
            },
        },
        "pair_pattern": {"type": "string", "maxLength": 500,
                         "description": "As `batch --pair-pattern`: named groups case and stain."},
        "pair_metadata": {"type": "string", "maxLength": 200,
                          "description": "As `batch --pair-metadata`: the metadata key naming the case."},
    },
}
_PAIR = {
    "type": "object",
    "required": ["ihc", "he", "method"],
    "properties": {
        "ihc": {"type": "string"},
        "he": {"type": ["string", "null"], "description": "The H&E partner's name; null: none."},
        "case": {"type": ["string", "null"]},
        "method": {"enum": ["pattern", "metadata", "none"]},
        "reason": {"type": ["string", "null"], "description": "Why there is no partner."},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ScoreRequest": _SCORE_REQUEST,
    "PairRequest": _PAIR_REQUEST,
    "Pair": _PAIR,
    "ScoreOptions": _OPTIONS,
    "Error": _ERROR,
    "Job": _JOB,
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _JOB}, "count": {"type": "integer"}},
    },
    "Summary": _SUMMARY,
    "FeatureCollection": _FEATURE_COLLECTION,
    "ScoreResponse": {
        "type": "object",
        "required": ["summary", "detections", "annotations"],
        "properties": {
            "summary": _SUMMARY,
            "detections": _FEATURE_COLLECTION,
            "annotations": _FEATURE_COLLECTION,
            "tiles": {"type": "integer"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "models_loaded", "queue_length"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "description": "why the server is degraded (a job worker restarted, the data "
                "directory not writable, the jobs database refusing writes); empty when ok",
            },
            "workers_alive": {"type": "integer", "minimum": 0},
            "version": {"type": "string"},
            "models_loaded": {"type": "integer", "minimum": 0},
            "models_available": {"type": "integer", "minimum": 0},
            "queue_length": {"type": "integer", "minimum": 0},
            "running": {"type": "integer", "minimum": 0},
            "max_queue": {"type": "integer"},
            "workers": {"type": "integer"},
            "executor": {"enum": ["local", "dask"]},
            "auth_required": {"type": "boolean"},
        },
    },
    "Models": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": ["string", "null"]},
                        "loaded": {"type": "boolean"},
                    },
                },
            },
            "models_dir_configured": {"type": "boolean"},
        },
    },
}


@functools.cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, any error is a :class:`UserInputError`."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserInputError(
            f"request body is not valid JSON: {err}", hint="send UTF-8 JSON"
        ) from err


@functools.cache
def _fast_validator(name: str) -> Any:
    """jsonschema-rs (compiled) when installed: checks a 100 000-vertex ROI list in milliseconds."""
    try:
        import jsonschema_rs
    except ImportError:
        return None
    return jsonschema_rs.validator_for(SCHEMAS[name])


def validate(name: str, instance: Any) -> None:
    """Raise :class:`UserInputError` naming the first problem if ``instance`` breaks schema ``name``.

    Valid bodies are confirmed by jsonschema-rs when it is installed; the
    message for an invalid one always comes from ``jsonschema``.
    """
    from jsonschema.exceptions import best_match

    fast = _fast_validator(name)
    if fast is not None and fast.is_valid(instance):
        return
    error = best_match(_validator(name).iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(body)"
        message = error.message if len(error.message) < 300 else error.message[:300] + "..."
        raise UserInputError(
            f"request body does not match the {name} schema at {where}: {message}",
            hint="see GET /api/v1/openapi.json",
        )
