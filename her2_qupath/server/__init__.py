"""The scoring server: a Flask app with durable jobs, for QuPath scripts and people.

``create_app(config=None)`` builds it; ``her2-qupath serve`` runs it. See
``docs/server.md`` for the API, the security model and scale-out on Dask.
"""

from __future__ import annotations

from .app import ServerState, create_app

__all__ = ["create_app", "ServerState"]
