"""The OpenAPI document stays true: routes, examples, live responses, and a bounded fuzz run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_support import app_config, make_images, wait_job

from her2_qupath.server import create_app
from her2_qupath.server.openapi import openapi_document
from her2_qupath.server.scorers import PipelineScorer

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    root = tmp_path_factory.mktemp("slides")
    make_images(root)
    application = create_app(
        app_config(tmp_path_factory.mktemp("data"), [root], PipelineScorer(), max_queue=1000)
    )
    application.config["IMAGES"] = root
    yield application
    application.extensions["her2_qupath"].close(timeout_s=10)


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": doc["components"]})


def _routes(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IGNORED_METHODS:
            out.add((path, method.lower()))
    return out


def test_every_route_documented_and_vice_versa(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").json
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == _routes(app)


def test_document_is_valid_openapi_and_examples_validate() -> None:
    import schemathesis

    doc = openapi_document()
    schemathesis.openapi.from_dict(doc)  # parses as OpenAPI 3.1
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert schema, name
    examples = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            bodies = [body] if body else []
            bodies += [
                r["content"]["application/json"]
                for r in op["responses"].values()
                if "application/json" in r.get("content", {})
            ]
            for media in bodies:
                if "example" in media:
                    _validator(doc, media["schema"]).validate(media["example"])
                    examples += 1
            for status in op["responses"]:
                assert re.fullmatch(r"[1-5]\d\d", status), (path, method, status)
    assert examples >= 20


def test_live_responses_match_documented_schemas(app: Flask) -> None:
    doc = openapi_document()
    c = app.test_client()
    root = app.config["IMAGES"]

    def check(path: str, method: str, response: Any) -> None:
        spec = doc["paths"][path][method]["responses"][str(response.status_code)]
        media = spec["content"][response.mimetype]
        if response.mimetype.endswith("json"):
            _validator(doc, media["schema"]).validate(response.json)

    job_path = "/api/v1/jobs/{job_id}"
    r = c.post("/api/v1/jobs", json={"ihc": "case three.png", "options": {"tile_size": 128}})
    check("/api/v1/jobs", "post", r)
    job_id = r.json["id"]
    wait_job(lambda url: c.get(url).json, job_id)
    check(job_path, "get", c.get(f"/api/v1/jobs/{job_id}"))
    check("/api/v1/jobs", "get", c.get("/api/v1/jobs"))
    check("/api/v1/health", "get", c.get("/api/v1/health"))
    check("/api/v1/models", "get", c.get("/api/v1/models"))
    for kind in ("result", "detections", "annotations", "overlay.png"):
        check(job_path + "/" + kind, "get", c.get(f"/api/v1/jobs/{job_id}/{kind}"))
    check(job_path, "delete", c.delete(f"/api/v1/jobs/{job_id}"))  # 409
    check(
        "/api/v1/score",
        "post",
        c.post(
            "/api/v1/score",
            json={"ihc": str(root / "sub" / "one.png"), "options": {"tile_size": 256}},
        ),
    )
    check("/api/v1/score", "post", c.post("/api/v1/score", json={"ihc": "/etc/hostname"}))  # 403


def test_fuzz_no_server_errors(app: Flask) -> None:
    """schemathesis against the document: no 5xx; status codes, media types and bodies as documented.

    Every operation gets a bounded number of generated requests (derandomized, so a run is
    repeatable); the failures of all operations are collected before the test fails.
    """
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {
        f"{m.upper()} {path}" for path, ops in openapi_document()["paths"].items() for m in ops
    }
    # schemathesis leaves out the route it loaded the document from
    assert {o.label for o in operations} == documented - {"GET /api/v1/openapi.json"}
    for operation in operations:

        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(operation.as_strategy())
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(checks=checks)

        try:
            run()
        except Exception as err:  # noqa: BLE001 - collected and reported below
            failures.append(f"{operation.label}: {type(err).__name__}: {str(err)[:800]}")
    assert calls >= 5 * len(operations)
    assert not failures, "\n\n".join(failures)
