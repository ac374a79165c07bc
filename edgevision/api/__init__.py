"""The training REST API (shaped after the hosted service's Training API v3.x) and the local portal.

Start one with ``edgevision serve-api`` (or ``edgevision portal``, which also opens a browser), or
from Python::

    from edgevision.api import make_api_server, serve_api
    serve_api(make_api_server(port=5000))

The hosted service's training SDK then works with ``endpoint="http://127.0.0.1:5000"``. Which routes
exist (and which do not) is in ``docs/training-api.md``.
"""

from edgevision.api.app import ApiApp, Request, Response, RouteTable
from edgevision.api.server import TrainingApiServer, make_api_server, serve_api

__all__ = ["ApiApp", "Request", "Response", "RouteTable", "TrainingApiServer", "make_api_server", "serve_api"]
