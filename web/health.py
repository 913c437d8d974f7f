"""`GET /healthz` and `GET /readyz` on the worker's web server."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from streams.app import Matchstream

__all__ = ["register"]


def register(stream: Matchstream) -> None:
    """Add the liveness and readiness routes to the worker's web server."""
    app = stream.app

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        # The event loop answered: the process is alive.
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        body: dict[str, Any] = {
            "rebalancing": bool(app.rebalancing),
            "recovering": bool(app.in_recovery),
            "pools": len(stream.engine.pools),
        }
        ready = not (body["rebalancing"] or body["recovering"])
        body["status"] = "ready" if ready else "not ready"
        return web.json(body, status=200 if ready else 503)
