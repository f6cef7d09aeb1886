"""The Flask application factory: configuration, authentication, errors, headers.

:func:`create_app` builds the :class:`~.state.ServerState` and registers the
blueprints (:mod:`.api`, :mod:`.pages`); they read the state through
:func:`~.state.server_state` and never import this module.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, jsonify, redirect, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import ServerConfig
from ..errors import AccessDenied, Her2Error, SlideNotFound
from ..executors import make_backend
from .api import bp as api_bp
from .http import ApiError
from .jobs import JobManager, default_data_dir, error_id
from .pages import bp as pages_bp
from .scorers import Scorer, default_scorer
from .security import TOKEN_FILE, load_or_create_token, token_matches, token_required
from .state import EXTENSION, ServerState, server_state

__all__ = ["create_app", "ServerState", "server_state", "TOKEN_COOKIE"]

log = logging.getLogger(__name__)

TOKEN_COOKIE = "her2_qupath_token"
#: endpoints anyone may call, token or not
PUBLIC_ENDPOINTS = frozenset({"api.health"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _server_config(
    config: ServerConfig | Mapping[str, Any] | None,
) -> tuple[ServerConfig, dict[str, Any]]:
    if config is None:
        return ServerConfig(), {}
    if isinstance(config, ServerConfig):
        return config, {}
    extra = dict(config)
    server = extra.pop("SERVER_CONFIG", None) or ServerConfig()
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    overrides = {
        k.lower(): extra.pop(k) for k in list(extra) if k.lower() in fields and k.isupper()
    }
    roots = overrides.get("image_roots")
    if isinstance(roots, (list, str)):
        overrides["image_roots"] = (roots,) if isinstance(roots, str) else tuple(roots)
    if overrides:
        server = dataclasses.replace(server, **overrides)
    return server, extra


def create_app(config: ServerConfig | Mapping[str, Any] | None = None) -> Flask:
    """Build the server.

    ``config`` is a :class:`ServerConfig`, or a mapping of Flask settings that
    may hold ``SERVER_CONFIG`` (a ServerConfig), upper-case ServerConfig field
    names as overrides (``DATA_DIR``, ``IMAGE_ROOTS``, ...), ``SCORER`` (any
    scorer, see :mod:`.scorers`; default: the real pipeline) and
    ``START_WORKERS`` (default true). The job workers start here; call
    ``app.extensions["her2_qupath"].close()`` (the ``serve`` command does, on
    SIGTERM/SIGINT) to stop them.
    """
    server, extra = _server_config(config)
    server = _absolute_paths(server)
    scorer: Scorer = extra.pop("SCORER", None) or default_scorer(server)
    start_workers = bool(extra.pop("START_WORKERS", True))
    data_dir = Path(server.data_dir) if server.data_dir else default_data_dir().absolute()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.info(
        "data directory %s; image roots %s",
        data_dir,
        ", ".join(server.image_roots) or "(none: every image is refused)",
    )
    token = server.token
    token_source = "option" if token is not None else None
    if token is None and token_required(server.host, server.require_token):
        existed = (data_dir / TOKEN_FILE).is_file()
        token = load_or_create_token(data_dir)
        token_source = "file" if existed else "created"

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=server.max_request_bytes,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
    )
    app.config.update(extra)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    manager = JobManager(server, data_dir, scorer, make_backend(server))
    state = ServerState(
        config=server,
        data_dir=data_dir,
        token=token,
        manager=manager,
        scorer=scorer,
        sync_slots=threading.BoundedSemaphore(max(1, server.max_sync_concurrency)),
        token_source=token_source,
    )
    app.extensions[EXTENSION] = state

    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(pages_bp)
    app.before_request(_authenticate)
    app.after_request(_headers)
    app.register_error_handler(Exception, _error_response)
    if start_workers:
        try:
            manager.start()
        except BaseException:
            manager.shutdown(timeout_s=0)  # release the data directory
            raise
    return app


def _absolute_paths(server: ServerConfig) -> ServerConfig:
    """The data directory, image roots and models directory resolved against the working directory.

    Done once at start, so that nothing later (result files sent by Flask, which
    would resolve a relative path against the package folder) depends on it.
    """

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    return dataclasses.replace(
        server,
        data_dir=absolute(server.data_dir) if server.data_dir else None,
        image_roots=tuple(absolute(r) for r in server.image_roots),
        models_dir=absolute(server.models_dir) if server.models_dir else None,
    )


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    match = re.match(r"^\s*Bearer\s+(\S+)\s*$", header, re.IGNORECASE)
    return match.group(1) if match else None


def _authenticate() -> Response | None:
    state = server_state()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if state.token is None:
        # No token on loopback: refuse other Host names so a web page cannot reach
        # the server through DNS rebinding.
        try:
            host = urlsplit("//" + (request.host or "")).hostname or ""
        except ValueError:
            host = ""
        if host.lower() not in _LOOPBACK_HOSTS and not _loopback_address(host):
            raise ApiError(
                403,
                "forbidden_host",
                f"requests for host {host!r} are refused; use 127.0.0.1 or localhost",
            )
        return None
    query_token = request.args.get("token")
    if request.endpoint == "pages.index" and query_token is not None:
        if not token_matches(query_token, state.token):
            raise ApiError(
                401,
                "unauthorized",
                "wrong token in ?token=; use the one the server printed at start",
            )
        response = redirect("/", code=303)
        response.set_cookie(TOKEN_COOKIE, query_token, httponly=True, samesite="Strict", path="/")
        return response
    given = _bearer()
    if given is None and request.method in ("GET", "HEAD"):
        given = request.cookies.get(TOKEN_COOKIE)
    if not token_matches(given, state.token):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong token: send 'Authorization: Bearer <token>' (the token the server printed at "
            "start, also in <data-dir>/token), or open the status page once as /?token=<token>",
            headers={"WWW-Authenticate": 'Bearer realm="her2-qupath"'},
        )
    g.authenticated = True
    return None


def _loopback_address(host: str) -> bool:
    """An IP literal of this machine (127.0.0.0/8, ::1): a DNS-rebinding page cannot send one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    response.headers["Server"] = f"her2-qupath/{__version__}"
    return response


def _error_json(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    eid: str | None = None,
) -> Response:
    body: dict[str, str] = {"code": code, "message": message}
    if eid is not None:
        body["id"] = eid
    response = jsonify({"error": body})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _error_response(err: Exception) -> Response:
    if isinstance(err, ApiError):
        return _error_json(err.status, err.code, err.message, err.headers)
    if isinstance(err, AccessDenied):
        return _error_json(403, "forbidden", str(err))
    if isinstance(err, SlideNotFound):
        return _error_json(404, "not_found", str(err))
    if isinstance(err, Her2Error):
        return _error_json(400, "invalid_request", str(err))
    if isinstance(err, HTTPException):
        status = err.code or 500
        message = err.description or err.name
        if status == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            message = (
                f"request body too large (limit {limit} bytes); send ROIs in parts or simplify them"
            )
        headers = {}
        if status == 405 and getattr(err, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(err.valid_methods))  # type: ignore[attr-defined]
        return _error_json(status, _snake(err.name), message, headers)
    eid = error_id()
    log.error(
        "unexpected error answering %s %s (error id %s)",
        request.method,
        request.path,
        eid,
        exc_info=err,
    )
    return _error_json(
        500,
        "internal_error",
        f"internal error (error id {eid}); the details are in the server log. Retry; if it "
        "happens again, report the error id to the server's operator",
        eid=eid,
    )
