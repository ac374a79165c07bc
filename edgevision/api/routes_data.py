"""Training API routes for projects, domains, tags, images, regions and stored predictions."""

from __future__ import annotations

from typing import Any

from edgevision.api.app import ApiApp, Request, RouteTable

ROUTES = RouteTable()


@ROUTES.path("GET", "/edgevision/health", locked=False)
def health(app: ApiApp, request: Request) -> dict[str, Any]:
    """Liveness and the home folder served."""
    return {"status": "ok", "home": str(app.home), "keyRequired": app.key is not None}
