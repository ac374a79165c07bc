"""The training API and portal on a socket: :func:`make_api_server`, :func:`serve_api`.

The HTTP plumbing (worker pool, body limits, slow-client deadlines, JSON errors) is the prediction
server's (:class:`runtimes.server.ApiServer`); this module adds the portal's static files and hands
every other request to :class:`edgevision.api.app.ApiApp`.
"""

from __future__ import annotations

import ipaddress
import logging
import mimetypes
import re
import urllib.parse
from pathlib import Path
from typing import Any

from edgevision.api.app import ApiApp, Request, Response
from edgevision.errors import UsageError
from runtimes.http_errors import ApiError
from runtimes.server import DEFAULT_THREADS, ApiServer

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_PORT", "TrainingApiServer", "make_api_server", "serve_api"]

DEFAULT_PORT = 5000
#: Uploads carry up to 64 images of up to 6 MB each (the hosted service's batch and image limits).
DEFAULT_MAX_BODY = 64 * 6 * 1024 * 1024 + 1024 * 1024
PORTAL_DIR = Path(__file__).resolve().parent.parent / "portal" / "static"
_ASSET = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,100}$")


class TrainingApiServer(ApiServer):
    """Serves the portal's files at ``/`` and ``/portal/<file>``, and the :class:`ApiApp` routes."""

    def __init__(self, address: tuple[str, int], app: ApiApp, *, max_body: int = DEFAULT_MAX_BODY,
                 threads: int = DEFAULT_THREADS) -> None:
        self.app = app
        super().__init__(address, max_body=max_body, threads=threads)

    def dispatch(self, handler: Any) -> None:
        split = urllib.parse.urlsplit(handler.path)
        path = split.path or "/"
        if handler.command in ("GET", "HEAD") and (path == "/" or path.lower().startswith("/portal/")):
            self._send_asset(handler, "index.html" if path == "/" else path[len("/portal/"):])
            return
        host = handler.headers.get("Host") or f"{self.server_name}:{self.server_port}"
        if self.app.key is None and not _loopback_host(host):
            # No key means loopback only; a page on another site whose name was rebound to 127.0.0.1
            # (DNS rebinding) still sends its own name as Host, so refuse that.
            raise ApiError(403, "Forbidden", f"Host {host[:100]!r} is not a loopback name; without --key this server "
                                             "answers only http://127.0.0.1 / localhost")
        request = Request(
            method=handler.command,
            path=path,
            query={k.lower(): v for k, v in _parse_query(split.query).items()},
            headers=handler.headers,
            params={},
            base_url=f"http://{host}",
            _read_body=handler.read_body,
        )
        response = self.app.dispatch(request)
        if response.body is None:
            handler.send_json(response.status, response.payload, response.headers)
        else:
            handler.send_bytes(response.status, response.body, response.content_type, response.headers)

    def _send_asset(self, handler: Any, name: str) -> None:
        name = urllib.parse.unquote(name)
        path = PORTAL_DIR / name
        if not _ASSET.fullmatch(name) or not path.is_file():
            raise ApiError(404, "NotFound", f"no portal file {name[:100]!r}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "image/svg+xml"):
            content_type += "; charset=utf-8"
        handler.send_bytes(200, path.read_bytes(), content_type, {
            "Cache-Control": "no-cache",
            # The portal is same-origin only: no inline script, no framing by other sites.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                       "frame-ancestors 'none'",
        })


def _loopback_host(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _parse_query(query: str) -> dict[str, list[str]]:
    try:
        return urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"malformed query string ({exc})") from None


def make_api_server(
    *,
    home: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    threads: int = DEFAULT_THREADS,
) -> TrainingApiServer:
    """Build a listening (not yet serving) training API + portal server.

    Args:
        home: the edgevision home whose projects it serves.
        host: the address to bind. Anything but a loopback address needs ``key``.
        port: the TCP port; 0 picks a free one (read it from ``.server_address``).
        key: the Training-Key (and Prediction-Key) clients must send.
        max_body: the largest request body in bytes.
        threads: the most connections served at once.

    Raises:
        UsageError: a non-loopback ``host`` without a ``key``.
        OSError: the address cannot be bound.
    """
    try:
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not key:
        raise UsageError(f"listening on {host} would let anyone on the network change your projects: "
                         "pass --key KEY (clients send it as the Training-Key header), or use --host 127.0.0.1")
    app = ApiApp(home, key=key)
    return TrainingApiServer((host, port), app, max_body=max_body, threads=threads)


def serve_api(server: TrainingApiServer) -> None:
    """Serve until Ctrl-C, then stop cleanly (requests in progress may finish); re-raises KeyboardInterrupt."""
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    log.info("training API and portal on http://%s:%d/", shown, bound_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.app.stop()
