"""Training API routes for training, iterations, performance, publishing, quick tests, exports and prediction."""

from __future__ import annotations

from edgevision.api.app import RouteTable

ROUTES = RouteTable()
