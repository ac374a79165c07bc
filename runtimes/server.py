"""HTTP prediction server speaking the hosted Custom Vision container's and Prediction API v3.x routes.

Standard library only (``http.server``), so a device needs nothing beyond the runtime itself. Clients
of the hosted service keep working with a new base URL: the routes, the multipart field name
(``imageData``), the ``Prediction-Key`` header, the ``ImagePrediction`` JSON and the top-level
``{"code", "message"}`` error body are the hosted ones.

Routes (POST unless noted; words match case-insensitively, segments are percent-decoded, the
query string such as ``?application=`` is ignored; ``{project}`` and ``{name}`` are accepted and
ignored, since a device serves exactly one model):

=====================================================================  ==============================
``/image`` · ``/url``                                                  container export
``/{project}/image[/nostore]`` · ``/{project}/url[/nostore]``          container export
``/{project}/classify|detect/iterations/{name}/image|url[/nostore]``   container export, API paths
``/customvision/v3.N/prediction/`` + either of the two lines above     Prediction API v3.x
``GET /`` · ``GET /health``                                            status, task, label count
``GET /openapi.json``                                                  OpenAPI 3 description
=====================================================================  ==============================

A ``classify`` route on a detector (or ``detect`` on a classifier) answers 400
``BadRequestNotSupported`` rather than guessing: the hosted service keeps the two apart, and a
client that mixes them up has the wrong model. The bare routes serve whatever the model is.

An object-detection export answers with one prediction per box, each with a ``boundingBox``
(``left, top, width, height``) normalised to the original image. The hosted API takes no
threshold in its requests, so the server's own options set them for every request:
``threshold`` (leave out predictions below it; a detector's padding rows, score 0, are always
left out) and ``max_detections`` (detectors only: at most this many boxes per image).

Error codes (status, code, when): see :data:`ERRORS`.

Concurrency: connections are served by at most ``threads`` worker threads (more wait in the listen
queue); image decoding runs in those threads, but every ``predictor.predict`` call is serialised by
one lock, because an engine (a TFLite interpreter in particular) is not safe to call from several
threads and one inference already uses the engine's own intra-op threads.

Request bodies are read by :mod:`runtimes.http_body`, /url images fetched by :mod:`runtimes.url_fetch`,
and both raise :class:`runtimes.http_errors.ApiError`; all their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

# Request bodies and /url fetching live in their own modules; their public names are re-exported
# here, where callers and tests have always imported them from.
from runtimes.http_body import (
    MAX_ASPECT,
    MAX_SIDE,
    FormPart,
    decode_image,
    image_from_body,
    parse_header_params,
    parse_multipart,
    url_from_body,
)
from runtimes.http_errors import ApiError
from runtimes.openapi import build_openapi
from runtimes.predictor import check_max_detections, check_threshold
from runtimes.preprocess import ImageDecodeError
from runtimes.url_fetch import DEFAULT_URL_TIMEOUT, MAX_REDIRECTS, fetch_image_url, is_public_address

__all__ = [
    "ERRORS",
    "ApiError",
    "ApiServer",
    "FormPart",
    "PredictionServer",
    "PredictorLike",
    "Route",
    "decode_image",
    "fetch_image_url",
    "check_key",
    "image_from_body",
    "is_public_address",
    "make_server",
    "match_route",
    "parse_header_params",
    "parse_multipart",
    "serve",
    "url_from_body",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_THREADS = 8
#: Per-read socket timeout while a request is in progress, and the deadline for the whole request
#: (line, headers and body) on top of it: a client dripping one byte every few seconds never hits a
#: per-read timeout, so a watchdog closes connections whose request has not arrived by then.
REQUEST_TIMEOUT = 15.0
REQUEST_DEADLINE = 60.0
#: How long an idle keep-alive connection may hold a worker before it is closed.
IDLE_TIMEOUT = 5.0
#: After an error answered without reading the body: how long to keep draining it (see _linger).
LINGER_SECONDS = 1.0

#: Every error this server answers: (status, code, when). Also listed in the OpenAPI document.
ERRORS: tuple[tuple[int, str, str], ...] = (
    (400, "BadRequest", "malformed request: Content-Length, chunked framing, multipart body or JSON"),
    (400, "BadRequestImageStream", "no image in the request (empty body, no or several 'imageData' parts)"),
    (400, "BadRequestImageFormat", "the bytes are not an image that can be decoded (or are truncated)"),
    (400, "BadRequestImageDimensions", f"a side over {MAX_SIDE} px or an aspect ratio over {MAX_ASPECT:g}:1"),
    (400, "BadRequestImageUrl", "/url: missing or malformed url, not http(s), a non-public address, "
                                "the fetch failed, timed out or answered other than 200"),
    (400, "BadRequestImageSizeBytes", "/url: the fetched image is larger than the body limit"),
    (400, "BadRequestNotSupported", "a classify route on a detection model, or detect on a classifier"),
    (401, "Unauthorized", "a key is configured and Prediction-Key is missing or wrong"),
    (403, "Forbidden", "/url while the server was started without allow_url"),
    (404, "NotFound", "no such route"),
    (405, "MethodNotAllowed", "the route exists but not for this method (see the Allow header)"),
    (408, "RequestTimeout", "the request body did not arrive in time"),
    (413, "BadRequestImageSizeBytes", "the request body is larger than the limit (refused before reading it)"),
    (415, "UnsupportedMediaType", "/image with a body that is neither multipart/form-data, "
                                  "application/octet-stream nor image/*"),
    (414, "RequestUriTooLong", "a request line over 64 KB (http.server's limit)"),
    (431, "RequestHeaderFieldsTooLarge", "more than 100 headers or a header line over 64 KB (http.server's limits)"),
    (500, "ErrorPrediction", "the model failed on a valid image (the stack trace goes to the log, never the answer)"),
    (500, "ErrorUnknown", "any other server fault (likewise logged)"),
    (501, "NotImplemented", "an HTTP method this server does not know (TRACE and CONNECT included)"),
    (505, "HttpVersionNotSupported", "an HTTP version other than 1.x, or none (an HTTP/0.9 request line)"),
)


class PredictorLike(Protocol):
    """What the server needs of a :class:`runtimes.predictor.Predictor`."""

    task: str
    labels: list[str]
    manifest: Any

    def predict(self, image: Any, *, threshold: float = 0.0) -> Any: ...  # detectors: also max_detections=


# --------------------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Route:
    """A matched path: ``action`` is image, url, health or openapi; ``kind`` classify, detect or None."""

    action: str
    kind: str | None = None
    project: str | None = None
    published_name: str | None = None


_API_VERSION = re.compile(r"v3\.\d+", re.IGNORECASE)


def match_route(path: str) -> Route | None:
    """Match a request path (without its query string) against the route table.

    Args:
        path: the raw, percent-encoded path.

    Returns:
        The :class:`Route`, or ``None`` when no route has that shape.
    """
    # Split before decoding, so a project name holding an encoded "/" stays one segment; empty
    # segments (a trailing or doubled slash) are ignored, as most web servers do.
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    words = [s.lower() for s in segments]
    if not segments or words == ["health"]:
        return Route("health")
    if words == ["openapi.json"]:
        return Route("openapi")
    if words in (["image"], ["url"]):
        return Route(words[0])
    if len(words) > 3 and words[0] == "customvision" and _API_VERSION.fullmatch(words[1]) and words[2] == "prediction":
        segments, words = segments[3:], words[3:]
    if words and words[-1] == "nostore":
        segments, words = segments[:-1], words[:-1]
    if len(words) == 2 and words[1] in ("image", "url"):
        return Route(words[1], project=segments[0])
    if (
        len(words) == 5
        and words[1] in ("classify", "detect")
        and words[2] == "iterations"
        and words[4] in ("image", "url")
    ):
        return Route(words[4], kind=words[1], project=segments[0], published_name=segments[3])
    return None


# ----------------------------------------------------------------------------------- the server


def check_key(given: str | None, expected: str | None, header: str) -> None:
    """Refuse a request whose key header does not match the server's key (None: no key is needed).

    Raises:
        ApiError: 401 ``Unauthorized`` naming ``header`` when the key is missing or wrong.
    """
    if expected is None:
        return
    if given is None:
        raise ApiError(401, "Unauthorized", f"this server needs a {header} header")
    # Constant-time: the comparison must not tell an attacker how much of a guess was right.
    if not hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(401, "Unauthorized", f"the {header} header is not this server's key")



class _Watchdog:
    """Shuts down connections still receiving their request after its deadline (one thread per server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._deadlines[sock] = deadline
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="edgevision-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
            for sock in late:
                log.info("closing a connection whose request did not arrive within %g s", REQUEST_DEADLINE)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the worker's blocked read with end-of-file


_CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)})


def _code_for_status(status: int) -> str:
    """``NotFound`` for 404 and so on: the code http.server's own errors get."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return "".join(word.capitalize() for word in re.split(r"[^A-Za-z]+", phrase))


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection; requests on it are handled in turn (HTTP/1.1 keep-alive)."""

    server: PredictionServer
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (~40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server_version = "edgevision"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._body_pending = False

    # -- per-request bookkeeping and logging

    def handle_one_request(self) -> None:
        self._started = time.monotonic()
        self._status: int | None = None
        self._body_pending = False
        self.command = ""
        self.path = ""
        # Waiting for a request (the first, or the next on a kept-alive connection) may take this
        # long between bytes; the whole request must have arrived by the deadline.
        if self.server.closing:
            self.close_connection = True
            return
        self.server.idle(self.connection, True)  # so that shutting down need not wait for its next request
        self.connection.settimeout(IDLE_TIMEOUT)
        self._deadline = self._started + IDLE_TIMEOUT + REQUEST_DEADLINE
        # A second of grace, so that a slow body usually gets the handler's own 408 first.
        self.server.watchdog.watch(self.connection, self._deadline + 1.0)
        try:
            super().handle_one_request()
        finally:
            self.server.idle(self.connection, False)
            self.server.watchdog.unwatch(self.connection)
            if self._status is not None:
                path = urllib.parse.urlsplit(self.path).path[:200].translate(_CONTROL)
                log.info("%s %s %d %.1f ms", self.command or "-", path or "-", self._status,
                         (time.monotonic() - self._started) * 1000.0)

    def parse_request(self) -> bool:
        self.server.idle(self.connection, False)  # the request line has arrived: busy now
        if len(self.raw_requestline.split()) == 2:
            # "GET /" without a version is HTTP/0.9, which has no headers and no status line:
            # http.server would wait for headers that never come, then answer a bare body.
            self.command, self.request_version = "", self.protocol_version
            self.send_error(505, "a request line without an HTTP version (HTTP/0.9) is not supported; use HTTP/1.1")
            return False
        return super().parse_request()

    def version_string(self) -> str:
        return self.server_version  # not "edgevision " with http.server's empty sys_version after a space

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = int(code) if str(code).isdigit() else None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), (format % args).translate(_CONTROL))

    def finish(self) -> None:
        try:
            if self._body_pending and self.close_connection:
                self._linger()
        finally:
            super().finish()

    def _linger(self) -> None:
        """Drain what the client still sends after an early answer, then let the socket close.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy the
        answer just written before the client reads it (the client sees "connection reset" instead
        of the 413). So: flush, half-close, and read and discard for a short, bounded while.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            budget = self.server.max_body
            while budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    # -- responses

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self.send_bytes(status, body, "application/json", {"Cache-Control": "no-store", **(headers or {})})

    def _send_api_error(self, error: ApiError) -> None:
        self._send_json(error.status, {"code": error.code, "message": error.message}, error.headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too large, unknown method), as JSON."""
        self.close_connection = True
        # The rest of an over-long line, the headers or the body may still be on the wire: drain it
        # (see _linger) so that closing does not reset the connection before the client reads this.
        self._body_pending = True
        if self.request_version == "HTTP/0.9":
            # An unparsable request line leaves http.server assuming HTTP/0.9, which has no status
            # line or headers; nobody speaks 0.9 any more, so answer in the server's own version.
            self.request_version = self.protocol_version
        text = message or HTTPStatus(code).phrase
        try:
            self._send_json(code, {"code": _code_for_status(code), "message": text})
        except OSError:
            pass

    # -- dispatch

    def do_GET(self) -> None:
        """Every method lands here; the route table decides (405 with Allow when it does not fit)."""
        self.connection.settimeout(REQUEST_TIMEOUT)
        self._body_pending = self._has_body()
        try:
            self._handle()
        except ApiError as error:
            self._send_api_error(error)
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            log.info("%s %s: client connection lost (%s)", self.command, self.path[:200].translate(_CONTROL), exc)
        except Exception:  # a server fault: log the trace, never send it
            log.exception("error while handling %s %s", self.command, self.path[:200].translate(_CONTROL))
            self.close_connection = True
            self._send_api_error(ApiError(500, "ErrorUnknown", "the server failed on this request; see its log"))

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        """Refuse an over-long body before the client sends it, instead of saying "100 Continue"."""
        self._body_pending = self._has_body()
        try:
            self._declared_length()
        except ApiError as error:
            self._send_api_error(error)
            return False
        return super().handle_expect_100()

    def _handle(self) -> None:
        self.server.dispatch(self)

    # -- for servers' dispatch methods

    def read_body(self) -> bytes:
        """The request body (Content-Length or chunked), within the server's size and time limits.

        Raises:
            ApiError: 400 malformed framing, 408 too slow, 413 over ``server.max_body``.
        """
        return self._read_body()

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Answer ``payload`` as JSON (strict: NaN is refused) with ``status``."""
        self._send_json(status, payload, headers)

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Answer raw bytes (a page, an image, a zip file) with ``status``."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self._body_pending or self.close_connection or self.server.closing:
            # Unread body bytes still on the wire mean this connection cannot carry another request.
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- request bodies

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return self.headers.get("Transfer-Encoding") is not None or length not in ("", "0")

    def _declared_length(self) -> int | None:
        """The Content-Length (None when chunked), refusing conflicting or over-limit values."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            if lengths:  # both: the classic request-smuggling ambiguity
                raise ApiError(400, "BadRequest", "a request may not carry both Content-Length and Transfer-Encoding")
            if self.headers["Transfer-Encoding"].strip().lower() != "chunked":
                raise ApiError(400, "BadRequest", "only Transfer-Encoding: chunked is supported")
            return None
        values = {v.strip() for v in lengths}
        if not values:
            return 0
        value = values.pop()
        if values or not (value.isascii() and value.isdigit()):  # "²".isdigit() is True, int("²") fails
            raise ApiError(400, "BadRequest", f"invalid Content-Length {', '.join(lengths)!r}")
        length = int(value)
        if length > self.server.max_body:
            raise ApiError(413, "BadRequestImageSizeBytes",
                           f"the request body is {length} bytes; at most {self.server.max_body} bytes are accepted")
        return length

    def _read_body(self) -> bytes:
        length = self._declared_length()
        try:
            body = self._read_chunked(self._deadline) if length is None else self._read_exact(length, self._deadline)
        except TimeoutError:
            raise ApiError(408, "RequestTimeout", "the request body did not arrive in time") from None
        self._body_pending = False
        # The client's part is done: what follows (a URL fetch, waiting for the model) has its own limits.
        self.server.watchdog.unwatch(self.connection)
        return body

    def _read_exact(self, length: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        remaining = length
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError
            self.connection.settimeout(max(0.01, min(REQUEST_TIMEOUT, deadline - time.monotonic())))
            chunk = self.rfile.read1(min(remaining, 65536))
            if not chunk:
                raise ApiError(400, "BadRequest", f"the body ended {remaining} bytes short of its Content-Length")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _read_chunked(self, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\r\n"):
                raise ApiError(400, "BadRequest", "malformed chunked body (chunk-size line)")
            digits = line[:-2].split(b";", 1)[0].strip()
            if not digits or not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", digits):
                raise ApiError(400, "BadRequest", "malformed chunked body (chunk size)")
            chunk_size = int(digits, 16)
            if chunk_size == 0:
                for _ in range(64):  # trailer fields, ignored, up to the empty line
                    if self.rfile.readline(1024) in (b"\r\n", b""):
                        return b"".join(chunks)
                raise ApiError(400, "BadRequest", "malformed chunked body (trailer)")
            size += chunk_size
            if size > self.server.max_body:
                raise ApiError(413, "BadRequestImageSizeBytes",
                               f"the request body is over {self.server.max_body} bytes, the limit")
            chunks.append(self._read_exact(chunk_size, deadline))
            if self.rfile.read(2) != b"\r\n":
                raise ApiError(400, "BadRequest", "malformed chunked body (no CRLF after a chunk)")


class ApiServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP/1.1 server with this module's protections, answering through :meth:`dispatch`.

    It bounds the worker threads, the request body (``max_body``) and the time a request may take to
    arrive, closes idle keep-alive connections on shutdown, and answers every error as
    ``{"code", "message"}`` JSON. Subclasses implement :meth:`dispatch`, which reads the request from
    the handler (``command``, ``path``, ``headers``, ``read_body()``) and answers with its
    ``send_json`` / ``send_bytes`` or by raising :class:`ApiError`. :class:`PredictionServer` is one;
    edgevision's training API server is another.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], *, max_body: int = DEFAULT_MAX_BODY,
                 threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if max_body < 1:
            raise ValueError(f"max_body must be positive, not {max_body}")
        self.max_body = max_body
        self.closing = False
        self._workers = threading.BoundedSemaphore(threads)
        self._max_workers = threads
        self.watchdog = _Watchdog()
        self._idle_lock = threading.Lock()
        self._idle: set[socket.socket] = set()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def dispatch(self, handler: "_Handler") -> None:
        """Answer one request (see the class docstring)."""
        raise NotImplementedError

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds on a device
        # without DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # A bounded pool rather than a thread per connection: wait for a free worker, so a flood of
        # connections queues in the kernel instead of exhausting the device's memory.
        while not self._workers.acquire(timeout=0.5):
            if self.closing:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._workers.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._workers.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback to stderr. A client resetting its connection is
        # routine; anything else is a bug worth the log's attention.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended with an error", client_address, exc_info=True)
        else:
            log.exception("unexpected error on the connection from %s", client_address)

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread); requests in progress may finish."""
        self.closing = True
        super().shutdown()

    def idle(self, connection: socket.socket, waiting: bool) -> None:
        """Note whether a kept-alive connection is waiting for its next request (see server_close)."""
        with self._idle_lock:
            if waiting:
                self._idle.add(connection)
            else:
                self._idle.discard(connection)

    def server_close(self, grace: float = 5.0) -> None:
        """Close the listening socket and wait up to ``grace`` seconds for requests in progress.

        Connections waiting idle for a next request are closed at once; they carry no work.
        """
        self.closing = True
        super().server_close()
        self.watchdog.stop()
        with self._idle_lock:
            idle, self._idle = list(self._idle), set()
        for connection in idle:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + grace
        taken = 0
        while taken < self._max_workers and self._workers.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        for _ in range(taken):
            self._workers.release()

class PredictionServer(ApiServer):
    """A threaded HTTP server around one predictor; see the module docstring for routes and errors.

    Use :func:`make_server` to build one and :func:`serve` to run one until Ctrl-C.
    """

    def __init__(
        self,
        address: tuple[str, int],
        predictor: PredictorLike,
        *,
        api_key: str | None = None,
        allow_url: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        threads: int = DEFAULT_THREADS,
        url_timeout: float = DEFAULT_URL_TIMEOUT,
        threshold: float = 0.0,
        max_detections: int | None = None,
    ) -> None:
        self.threshold = check_threshold(threshold)
        self.max_detections = check_max_detections(max_detections, predictor.task)
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key is empty: pass None for no key check, or a non-empty key")
        self.predictor = predictor
        self.api_key = api_key.strip() if api_key is not None else None
        self.allow_url = allow_url
        self.url_timeout = url_timeout
        self._predict_lock = threading.Lock()
        # Decoding more images at once than there are cores gains nothing and multiplies the memory
        # a large image takes (a 10,240 px square is 300 MB as RGB).
        self._decode_slots = threading.BoundedSemaphore(max(1, min(threads, os.cpu_count() or 1)))
        super().__init__(address, max_body=max_body, threads=threads)
        manifest = getattr(predictor, "manifest", None)
        self.project = str(getattr(manifest, "project", "") or "")
        self.iteration = str(getattr(manifest, "iteration", "") or "")
        self.openapi = build_openapi(
            task=predictor.task, project=self.project, iteration=self.iteration,
            key_required=self.api_key is not None, allow_url=allow_url, max_body=max_body, errors=ERRORS,
            threshold=self.threshold, max_detections=self.max_detections,
        )

    def dispatch(self, handler: "_Handler") -> None:
        """Route a prediction request: health, OpenAPI, or an image / URL to predict."""
        route = match_route(urllib.parse.urlsplit(handler.path).path)
        if route is None:
            raise ApiError(404, "NotFound", f"no route {urllib.parse.urlsplit(handler.path).path[:200]!r}; "
                                            "see GET /openapi.json for the routes")
        allowed = ("GET", "HEAD") if route.action in ("health", "openapi") else ("POST",)
        if handler.command not in allowed:
            raise ApiError(405, "MethodNotAllowed", f"{handler.command} is not allowed here; use {' or '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})
        if route.action == "health":
            handler.send_json(200, self.health())
            return
        if route.action == "openapi":
            handler.send_json(200, self.openapi)
            return
        check_key(handler.headers.get("Prediction-Key"), self.api_key, "Prediction-Key")
        self._check_kind(route)
        if route.action == "url" and not self.allow_url:
            raise ApiError(403, "Forbidden", "prediction from a URL is disabled on this server (start it with "
                                             "allow_url / --allow-url), or POST the image bytes to /image")
        body = handler.read_body()
        if route.action == "url":
            # Passed from this module's namespace, so that replacing runtimes.server.is_public_address
            # (tests do, to fetch from a local site) still governs the fetch.
            data = fetch_image_url(url_from_body(body), max_bytes=self.max_body, timeout=self.url_timeout,
                                   address_check=is_public_address)
        else:
            data = image_from_body(body, handler.headers.get("Content-Type"))
        handler.send_json(200, self.predict(data))

    def _check_kind(self, route: Route) -> None:
        task = self.predictor.task
        if route.kind == "classify" and task == "detection":
            raise ApiError(400, "BadRequestNotSupported", "this server's model is an object detector: "
                                                          "use the /detect/ route (or /image)")
        if route.kind == "detect" and task != "detection":
            raise ApiError(400, "BadRequestNotSupported", f"this server's model is a {task} classifier: "
                                                          "use the /classify/ route (or /image)")

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` answer: status, task, label count, project, iteration and the options."""
        return {
            "status": "ok",
            "task": self.predictor.task,
            "labelCount": len(self.predictor.labels),
            "project": self.project,
            "iteration": self.iteration,
            "threshold": self.threshold,
            "maxDetections": self.max_detections,
        }

    def predict(self, data: bytes) -> dict[str, Any]:
        """Decode, check and predict one image; returns the ``ImagePrediction`` JSON object.

        Raises:
            ApiError: 400 for an unusable image, 500 when the model fails.
        """
        with self._decode_slots:
            image = decode_image(data)
        try:
            # max_detections is passed only when set: a classifier's predict need not know it.
            options: dict[str, Any] = {"threshold": self.threshold}
            if self.max_detections is not None:
                options["max_detections"] = self.max_detections
            with self._predict_lock:
                result = self.predictor.predict(image, **options)
            payload = result.to_dict()
            json.dumps(payload, allow_nan=False)  # a NaN from a broken model is a server fault, not JSON
        except ImageDecodeError as exc:
            raise ApiError(400, "BadRequestImageFormat", f"the image cannot be used ({exc})") from None
        except Exception:
            log.exception("the model failed on a %dx%d image", *image.size)
            raise ApiError(500, "ErrorPrediction", "the model failed on this image; see the server's log") from None
        return payload


def make_server(
    predictor: PredictorLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    allow_url: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    threads: int = DEFAULT_THREADS,
    url_timeout: float = DEFAULT_URL_TIMEOUT,
    threshold: float = 0.0,
    max_detections: int | None = None,
) -> PredictionServer:
    """Build a listening (not yet serving) prediction server.

    Args:
        predictor: a loaded model (``runtimes.load(...)``); its ``predict`` is called under a lock.
        host: the address to bind; the default answers this machine only. ``0.0.0.0`` or ``::``
            exposes the server to the network (then set ``api_key``).
        port: the TCP port; 0 picks a free one (read it from ``.server_address``).
        api_key: when set, POST routes need a ``Prediction-Key`` header equal to it.
        allow_url: enable the /url routes (fetching images from public http(s) URLs).
        max_body: the largest request body, and the largest image fetched from a URL, in bytes.
        threads: the most connections served at once (others wait in the listen queue).
        url_timeout: the time limit for one /url download, in seconds.
        threshold: predictions below this probability are left out of every answer (0..1).
        max_detections: object detectors only: at most this many boxes per answer (None: all the
            export gives).

    Returns:
        The :class:`PredictionServer`. Run ``serve_forever()`` (in a thread, for tests), stop with
        ``shutdown()`` and ``server_close()``.

    Raises:
        ValueError: an invalid option.
        OSError: the address cannot be bound (port in use, no such interface).
    """
    server = PredictionServer(
        (host, port), predictor, api_key=api_key, allow_url=allow_url, max_body=max_body,
        threads=threads, url_timeout=url_timeout, threshold=threshold, max_detections=max_detections,
    )
    bound_host = str(server.server_address[0])
    try:
        loopback = ipaddress.ip_address(bound_host.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    if api_key is None and not loopback:
        log.warning("serving on %s without a Prediction-Key: anyone who can reach this port can use the model",
                    bound_host)
    return server


def serve(
    predictor: PredictorLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    allow_url: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    threads: int = DEFAULT_THREADS,
    url_timeout: float = DEFAULT_URL_TIMEOUT,
    threshold: float = 0.0,
    max_detections: int | None = None,
) -> None:
    """Serve predictions until interrupted.

    Ctrl-C stops cleanly: no new connections, requests in progress may finish (up to 5 s), idle
    connections are closed; then the ``KeyboardInterrupt`` goes on to the caller, whose business the
    exit status is (the CLI's is 130).

    Args:
        predictor, host, port, api_key, allow_url, max_body, threads, url_timeout, threshold,
            max_detections: as :func:`make_server`.

    Raises:
        ValueError: an invalid option.
        OSError: the address cannot be bound.
        KeyboardInterrupt: after the clean stop.
    """
    server = make_server(
        predictor, host=host, port=port, api_key=api_key, allow_url=allow_url, max_body=max_body,
        threads=threads, url_timeout=url_timeout, threshold=threshold, max_detections=max_detections,
    )
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    log.info("serving %s model (%d tags) on http://%s:%d (POST /image; routes at /openapi.json)",
             predictor.task, len(predictor.labels), shown, bound_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("interrupted; stopping")
        raise
    finally:
        server.server_close()
        log.info("stopped")
