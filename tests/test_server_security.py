"""What the server lets in: image roots, file: URIs, tokens, hosts, limits, headers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from server_support import app_config, make_images, wait_job

from her2_qupath.errors import AccessDenied, SlideNotFound, UserInputError
from her2_qupath.server import create_app
from her2_qupath.server.app import TOKEN_COOKIE
from her2_qupath.server.scorers import PipelineScorer
from her2_qupath.server.security import (
    count_vertices,
    is_loopback,
    load_or_create_token,
    path_from_reference,
    resolve_image,
    token_matches,
    token_required,
)

# ---- file: URIs and plain paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "path"),
    [
        ("file:/data/My%20Slides/case%201.svs", "/data/My Slides/case 1.svs"),
        ("file:///data/My%20Slides/a.svs", "/data/My Slides/a.svs"),
        ("file://localhost/data/a.svs", "/data/a.svs"),
        ("FILE:/data/a.svs", "/data/a.svs"),
        ("file:/data/caf%C3%A9/%E7%97%85%E7%90%86.tif", "/data/café/病理.tif"),
        (
            "file:/data/café/病理.tif",
            "/data/café/病理.tif",
        ),  # Java's URI.toString keeps non-ASCII as is
        ("file:/data/a+b%2Bc.svs", "/data/a+b+c.svs"),  # '+' is not a space in a path
        ("file:/data/100%25%20done.svs", "/data/100% done.svs"),
        ("/data/My Slides/a.svs", "/data/My Slides/a.svs"),
        ("relative/a.svs", "relative/a.svs"),
    ],
)
def test_references_decode(reference: str, path: str) -> None:
    assert path_from_reference(reference) == path


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("file:/C:/Users/me/slide.svs", "Windows"),
        ("file:///C:/Users/me/slide.svs", "Windows"),
        ("C:\\Users\\me\\slide.svs", "Windows"),
        ("\\\\server\\share\\slide.svs", "Windows"),
        ("file://fileserver/share/slide.svs", "host"),
        ("https://example.org/slide.svs", "scheme"),
        ("s3://bucket/slide.svs", "scheme"),
        ("file:/data/%FF.svs", "UTF-8"),
        ("file:/data/a%00b.svs", "NUL"),
        ("/data/a\x00b.svs", "NUL"),
        ("file:", "empty"),
    ],
)
def test_bad_references_refused_with_reason(reference: str, words: str) -> None:
    with pytest.raises(UserInputError, match=words):
        path_from_reference(reference)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "slides root"
    other = tmp_path / "other"
    (root / "sub dir").mkdir(parents=True)
    other.mkdir()
    (root / "sub dir" / "café.png").write_bytes(b"x")
    (other / "secret.png").write_bytes(b"x")
    os.symlink(other / "secret.png", root / "link-out.png")
    os.symlink(root / "sub dir" / "café.png", root / "link-in.png")
    os.symlink(other, root / "dir-out")
    return root, other, tmp_path


def test_resolve_inside_roots(roots: tuple[Path, Path, Path]) -> None:
    root, _, _ = roots
    target = (root / "sub dir" / "café.png").resolve()
    assert resolve_image(str(target), [root]) == target
    assert resolve_image("sub dir/café.png", [root]) == target
    assert resolve_image("sub dir/../sub dir/café.png", [root]) == target
    assert (
        resolve_image("file:" + str(root).replace(" ", "%20") + "/sub%20dir/caf%C3%A9.png", [root])
        == target
    )
    assert resolve_image("link-in.png", [root]) == target  # a link that stays inside is fine
    other_root = roots[1]
    assert resolve_image("secret.png", [root, other_root]) == (other_root / "secret.png").resolve()


@pytest.mark.parametrize(
    "reference",
    [
        "link-out.png",
        "dir-out/secret.png",
        "../other/secret.png",
        "sub dir/../../other/secret.png",
        "{other}/secret.png",
        "file:{other}/secret.png",
        "/etc/hostname",
        "{other}/does-not-exist.png",
    ],
)
def test_resolve_outside_roots_is_403(roots: tuple[Path, Path, Path], reference: str) -> None:
    root, other, _ = roots
    with pytest.raises(AccessDenied):
        resolve_image(reference.format(other=other), [root])


def test_missing_inside_is_404_and_no_roots_is_403(roots: tuple[Path, Path, Path]) -> None:
    root, _, _ = roots
    with pytest.raises(SlideNotFound):
        resolve_image("sub dir/missing.png", [root])
    with pytest.raises(SlideNotFound):
        resolve_image("sub dir", [root])  # a directory is not an image
    with pytest.raises(AccessDenied, match="--image-root"):
        resolve_image(str(root / "sub dir" / "café.png"), [])


# ---- tokens ------------------------------------------------------------------------------------


def test_token_file_is_private_and_kept(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert len(token) >= 40
    path = tmp_path / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token
    os.chmod(path, 0o644)
    assert load_or_create_token(tmp_path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_matches(token, token) and not token_matches(token[:-1] + "x", token)
    assert not token_matches(None, token) and not token_matches("", token)


def test_loopback_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("192.168.1.5")
        and not is_loopback("example.org")
    )
    assert not token_required("127.0.0.1", False)
    assert token_required("127.0.0.1", True) and token_required("0.0.0.0", False)


def test_count_vertices() -> None:
    square = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    assert count_vertices([{"type": "Polygon", "coordinates": square}]) == 5
    assert count_vertices([{"type": "MultiPolygon", "coordinates": [square, square]}]) == 10
    assert (
        count_vertices(
            [
                {
                    "type": "GeometryCollection",
                    "geometries": [{"type": "Polygon", "coordinates": square}],
                }
            ]
        )
        == 5
    )
    assert count_vertices([None, {"type": "Polygon"}]) == 0


# ---- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    return make_images(tmp_path / "slides")


@pytest.fixture
def make_app(tmp_path: Path, images: dict[str, Path]) -> Iterator[Any]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(
            app_config(
                tmp_path / f"data{len(apps)}",
                [images["three"].parent],
                PipelineScorer(),
                **overrides,
            )
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["her2_qupath"].close(timeout_s=10)


def test_token_required_off_loopback(make_app: Any, images: dict[str, Path]) -> None:
    app = make_app(host="0.0.0.0")
    state = app.extensions["her2_qupath"]
    assert state.auth_required and state.token == (state.data_dir / "token").read_text().strip()
    c = app.test_client()
    assert c.get("/api/v1/health").status_code == 200  # health needs no token
    for method, url in [
        ("get", "/api/v1/jobs"),
        ("get", "/api/v1/models"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/"),
        ("post", "/api/v1/jobs"),
        ("post", "/api/v1/score"),
        ("delete", "/api/v1/jobs/" + "0" * 32),
        ("get", "/static/style.css"),
    ]:
        r = getattr(c, method)(url)
        assert r.status_code == 401, (method, url)
        assert r.json["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    bad = {"Authorization": "Bearer " + "x" * len(state.token)}
    assert c.get("/api/v1/jobs", headers=bad).status_code == 401
    good = {"Authorization": f"Bearer {state.token}"}
    assert c.get("/api/v1/jobs", headers=good).status_code == 200
    r = c.post("/api/v1/jobs", json={"ihc": str(images["one"])}, headers=good)
    assert r.status_code == 202
    # Any Host is fine once the token is checked (a server reachable by name).
    assert c.get("/api/v1/jobs", headers={**good, "Host": "scanner-pc.lab:8765"}).status_code == 200


def test_status_page_token_cookie(make_app: Any, images: dict[str, Path]) -> None:
    app = make_app(token="s3cret-token-for-tests", require_token=True)
    c = app.test_client()
    good = {"Authorization": "Bearer s3cret-token-for-tests"}
    job = c.post("/api/v1/jobs", json={"ihc": str(images["one"])}, headers=good).json
    wait_job(lambda url: c.get(url, headers=good).json, job["id"])
    assert c.get("/?token=wrong").status_code == 401
    r = c.get("/?token=s3cret-token-for-tests")
    assert r.status_code == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert TOKEN_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.get("/").status_code == 200  # the cookie now authenticates GETs
    assert c.get(f"/api/v1/jobs/{job['id']}/overlay.png").status_code == 200
    # ...but never a state-changing request (no cross-site request forgery through the cookie)
    assert c.post("/api/v1/jobs", json={"ihc": str(images["one"])}).status_code == 401
    assert c.delete(f"/api/v1/jobs/{job['id']}").status_code == 401


def test_dns_rebinding_host_refused_without_token(make_app: Any) -> None:
    c = make_app().test_client()
    assert c.get("/api/v1/jobs", headers={"Host": "localhost:8765"}).status_code == 200
    assert c.get("/api/v1/jobs", headers={"Host": "127.0.0.1"}).status_code == 200
    assert c.get("/api/v1/jobs", headers={"Host": "[::1]:8765"}).status_code == 200
    r = c.get("/api/v1/jobs", headers={"Host": "evil.example:8765"})
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden_host"
    assert c.get("/api/v1/health", headers={"Host": "evil.example"}).status_code == 200


def test_no_cors_and_safe_headers(make_app: Any) -> None:
    c = make_app().test_client()
    for r in (
        c.get("/api/v1/health", headers={"Origin": "https://evil.example"}),
        c.options(
            "/api/v1/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        ),
        c.get("/"),
    ):
        assert not any(h.lower().startswith("access-control-") for h in r.headers.keys())
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    page = c.get("/")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert c.get("/api/v1/health").headers["Cache-Control"] == "no-store"


def test_size_and_vertex_limits(make_app: Any, images: dict[str, Path]) -> None:
    c = make_app(max_request_bytes=4096, max_roi_vertices=50).test_client()
    big = {"ihc": str(images["one"]), "roi_class": "x" * 200, "options": {}, "he": "y" * 4000}
    r = c.post("/api/v1/jobs", json=big)
    assert r.status_code == 413 and r.json["error"]["code"] == "request_entity_too_large"
    ring = [[i, (i * 7) % 13] for i in range(60)] + [[0, 0]]
    ring[0] = [0, 0]
    roi = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {},
    }
    r = c.post("/api/v1/jobs", json={"ihc": str(images["one"]), "rois": [roi]})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_many_vertices"
    assert "Simplify" in r.json["error"]["message"]
