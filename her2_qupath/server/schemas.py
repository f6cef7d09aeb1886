"""JSON Schemas (draft 2020-12) of every request and response body of the API.

The same dictionaries validate incoming requests, appear in the OpenAPI
document (``openapi.py``) and check the documented examples in the tests, so
the document cannot drift from what the server accepts. Enumerations come
from :mod:`her2_qupath.config`, the one source of defaults.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..errors import UserInputError
from ..options import MODEL_OPTIONS, OPTIONS, OptionSpec

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
def _option_schema(spec: OptionSpec) -> dict[str, Any]:
    """The JSON Schema of one option of the request model (her2_qupath.options)."""
    lo, hi = spec.bounds or (None, None)
    schema: dict[str, Any]
    if spec.kind == "choice":
        schema = {"enum": list(spec.choices)}
    elif spec.kind in ("int", "float"):
        schema = {"type": "integer" if spec.kind == "int" else "number", "minimum": lo, "maximum": hi}
    elif spec.kind == "flag":
        schema = {"type": "boolean"}
    elif spec.kind in ("thresholds", "rgb"):
        schema = {"type": "array", "items": {"type": "number", "exclusiveMinimum": lo, "maximum": hi},
                  "minItems": 3, "maxItems": 3}
    elif spec.kind == "calibration":
        schema = {"type": "object",
                  "required": ["format", "version", "membrane_thresholds", "membrane_tissue_od_sum"]}
    else:  # the QuPath stain string
        schema = {"type": "string", "maxLength": 4096}
    if spec.default is not None and spec.kind != "flag":
        schema["default"] = spec.default
    return {**schema, "description": spec.help}


_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "description": "Scoring options: the request model of `her2-qupath score` (her2_qupath.options; "
    "docs/options.md). options.mpp is also held to ServerConfig.min_mpp..max_mpp.",
    "properties": {
        **{spec.name: _option_schema(spec) for spec in OPTIONS if spec.kind != "model"},
        "models": {
            "type": "object",
            "additionalProperties": False,
            "description": "Names of models from GET /api/v1/models.",
            "properties": {spec.api_key: {**_NAME, "description": spec.help}
                           for spec in MODEL_OPTIONS if spec.api_key},
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
        # named as the errors of the request model name a field: options.mpp, rois.features[2]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        where = where.lstrip(".") or "(body)"
        message = error.message if len(error.message) < 300 else error.message[:300] + "..."
        raise UserInputError(
            f"request body does not match the {name} schema at {where}: {message}",
            hint="see GET /api/v1/openapi.json",
        )
