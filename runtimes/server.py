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

Error codes (status, code, when): see :data:`ERRORS`.

Concurrency: connections are served by at most ``threads`` worker threads (more wait in the listen
queue); image decoding runs in those threads, but every ``predictor.predict`` call is serialised by
one lock, because an engine (a TFLite interpreter in particular) is not safe to call from several
threads and one inference already uses the engine's own intra-op threads.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
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

from PIL import Image

from runtimes.openapi import build_openapi
from runtimes.preprocess import ImageDecodeError, load_image, open_image

__all__ = [
    "ERRORS",
    "ApiError",
    "FormPart",
    "PredictionServer",
    "PredictorLike",
    "Route",
    "decode_image",
    "fetch_image_url",
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
#: Largest accepted image side and aspect ratio, the hosted service's limits. Checked from the image
#: header before any pixel is decoded, so a small file declaring a huge image (a decompression bomb)
#: costs nothing.
MAX_SIDE = 10_240
MAX_ASPECT = 25.0
DEFAULT_THREADS = 8
DEFAULT_URL_TIMEOUT = 10.0
#: Per-read socket timeout while a request is in progress, and the deadline for the whole request
#: (line, headers and body) on top of it: a client dripping one byte every few seconds never hits a
#: per-read timeout, so a watchdog closes connections whose request has not arrived by then.
REQUEST_TIMEOUT = 15.0
REQUEST_DEADLINE = 60.0
#: How long an idle keep-alive connection may hold a worker before it is closed.
IDLE_TIMEOUT = 5.0
#: After an error answered without reading the body: how long to keep draining it (see _linger).
LINGER_SECONDS = 1.0
MAX_REDIRECTS = 3
_MAX_PARTS = 32
_MAX_URL = 4096
_MAX_PART_HEADER = 16 * 1024

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
    (501, "NotImplemented", "an HTTP method this server does not know"),
    (505, "HttpVersionNotSupported", "an HTTP version other than 1.x"),
)


class PredictorLike(Protocol):
    """What the server needs of a :class:`runtimes.predictor.Predictor`."""

    task: str
    labels: list[str]
    manifest: Any

    def predict(self, image: Any, *, threshold: float = 0.0) -> Any: ...


class ApiError(Exception):
    """An error answered as ``{"code": ..., "message": ...}`` with an HTTP status.

    Args:
        status: the HTTP status.
        code: a Custom Vision-like error code (see :data:`ERRORS`).
        message: what went wrong and what to do, for the person reading the client's output.
        headers: extra response headers (``Allow`` for a 405).
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


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


# ------------------------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body; ``data`` is never decoded as text."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(r';\s*(' + _TOKEN + r')\s*=\s*("(?:[^"\\\r\n]|\\.)*"|[^;\s"]*)\s*')
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=1; b="x;y"`` into the lower-cased main value and its parameters.

    Quoted values may hold ``;`` and backslash escapes; parameter names are lower-cased.

    Raises:
        ApiError: 400 when the parameters do not parse.
    """
    main, _, _ = value.partition(";")
    rest = value[len(main):].rstrip().rstrip(";")  # a trailing ";" is common and harmless
    params: dict[str, str] = {}
    at = 0
    while at < len(rest):
        match = _PARAM.match(rest, at)
        if not match:
            raise ApiError(400, "BadRequest", f"cannot parse header parameters {value[:200]!r}")
        raw = match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
        at = match.end()
    return main.strip().lower(), params


def _boundary_line_end(body: bytes, after: int) -> tuple[int, bool] | None:
    """Where the part after a delimiter ending at ``after`` starts, and whether it was the closing one."""
    if body.startswith(b"--", after):
        return after + 2, True
    # Between the boundary and its CRLF only transport padding (spaces, tabs) may stand.
    eol = body.find(b"\r\n", after, after + 256)
    if eol >= 0 and not body[after:eol].strip(b" \t"):
        return eol + 2, False
    return None


def _find_delimiter(body: bytes, delimiter: bytes, start: int) -> tuple[int, int, bool]:
    """Find the next ``CRLF--boundary`` line at or after ``start``.

    Returns:
        (where the part content ends, where the next part starts, whether it was the closing one).
    """
    marker = b"\r\n" + delimiter
    at = start
    while True:
        found = body.find(marker, at)
        if found < 0:
            raise ApiError(400, "BadRequest", "multipart body is not terminated by its closing boundary")
        tail = _boundary_line_end(body, found + len(marker))
        if tail is not None:
            return found, tail[0], tail[1]
        at = found + 1  # content that merely starts like the boundary: keep looking


def parse_multipart(body: bytes, boundary: str) -> list[FormPart]:
    """Parse a multipart/form-data body strictly (RFC 7578 / 2046): CRLF line ends, preamble and
    epilogue ignored, every part needing a ``Content-Disposition: form-data`` header.

    Args:
        body: the whole request body.
        boundary: the ``boundary`` parameter of the Content-Type, unquoted.

    Returns:
        The parts in order.

    Raises:
        ApiError: 400 ``BadRequest`` naming what is malformed.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ApiError(400, "BadRequest", f"invalid multipart boundary {boundary!r}")
    delimiter = b"--" + boundary.encode("ascii")
    # The first delimiter opens the body, or ends a preamble (and then follows a CRLF).
    tail = _boundary_line_end(body, len(delimiter)) if body.startswith(delimiter) else None
    if tail is None:
        _, pos, closing = _find_delimiter(body, delimiter, 0)
    else:
        pos, closing = tail
    parts: list[FormPart] = []
    while not closing:
        content_end, next_pos, closing = _find_delimiter(body, delimiter, pos)
        parts.append(_parse_part(body[pos:content_end]))
        if len(parts) > _MAX_PARTS:
            raise ApiError(400, "BadRequest", f"multipart body has more than {_MAX_PARTS} parts")
        pos = next_pos
    return parts


def _parse_part(raw: bytes) -> FormPart:
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0 or head_end > _MAX_PART_HEADER:
        raise ApiError(400, "BadRequest", "multipart part has no header block ended by an empty line")
    headers: dict[str, str] = {}
    # Headers only are decoded; browsers put raw UTF-8 in filenames. The content stays bytes.
    for line in raw[:head_end].decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding: continue the last header
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ApiError(400, "BadRequest", f"malformed multipart part header {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = parse_header_params(headers.get("content-disposition", ""))
    if disposition != "form-data":
        raise ApiError(400, "BadRequest", "multipart part without 'Content-Disposition: form-data'")
    return FormPart(params.get("name"), params.get("filename"), headers.get("content-type"), raw[head_end + 4 :])


def image_from_body(body: bytes, content_type: str | None) -> bytes:
    """Pick the image bytes out of an /image request body.

    Args:
        body: the request body.
        content_type: its Content-Type header, or None.

    Returns:
        The ``imageData`` part of a multipart/form-data body (with or without a filename or a part
        Content-Type), or the whole body for application/octet-stream, image/* or no Content-Type.

    Raises:
        ApiError: 400 ``BadRequestImageStream`` when there is no image, 400 ``BadRequest`` for a
            malformed multipart body, 415 ``UnsupportedMediaType`` for other content types.
    """
    mime, params = parse_header_params(content_type or "")
    if mime == "multipart/form-data":
        if "boundary" not in params:
            raise ApiError(400, "BadRequest", "multipart/form-data Content-Type without a boundary")
        parts = parse_multipart(body, params["boundary"])
        images = [p for p in parts if p.name == "imageData"]
        if not images:  # be lenient about the field name's case only
            images = [p for p in parts if (p.name or "").lower() == "imagedata"]
        if len(images) != 1:
            found = ", ".join(repr(p.name) for p in parts) or "none"
            raise ApiError(
                400, "BadRequestImageStream",
                f"expected exactly one multipart part named 'imageData', found {len(images)} (parts: {found})",
            )
        data = images[0].data
    elif mime in ("", "application/octet-stream") or mime.startswith("image/"):
        data = body
    else:
        raise ApiError(
            415, "UnsupportedMediaType",
            f"cannot take an image from a body of type {mime}: send the image bytes as application/octet-stream "
            "(or image/*), or as the multipart/form-data field 'imageData'; for a URL use /url",
        )
    if not data:
        raise ApiError(400, "BadRequestImageStream", "the request carried no image data")
    return data


def url_from_body(body: bytes) -> str:
    """Read ``{"url": ...}`` (or ``"Url"``) from a /url request body.

    Raises:
        ApiError: 400 when the body is not that JSON object or the url is missing.
    """
    try:
        payload = json.loads(body.decode("utf-8-sig")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "BadRequest", 'the body must be JSON like {"url": "https://..."}') from None
    if not isinstance(payload, dict):
        raise ApiError(400, "BadRequest", 'the body must be a JSON object like {"url": "https://..."}')
    # The SDK sends "url", the container's docs "Url": take the key whatever its case.
    url = next((value for key, value in payload.items() if key.lower() == "url"), None)
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "BadRequestImageUrl", 'the JSON body has no "url" string')
    if len(url) > _MAX_URL:
        raise ApiError(400, "BadRequestImageUrl", f"the url is longer than {_MAX_URL} characters")
    return url.strip()


def decode_image(data: bytes) -> Image.Image:
    """Check an image's declared size from its header, then decode it (EXIF-oriented RGB).

    Raises:
        ApiError: 400 ``BadRequestImageDimensions`` for a side over :data:`MAX_SIDE` or an aspect
            over :data:`MAX_ASPECT` (before any pixel is decoded), 400 ``BadRequestImageFormat`` for
            data that is not a readable image.
    """
    try:
        image = open_image(data)
    except ImageDecodeError as exc:
        if isinstance(exc.__cause__, Image.DecompressionBombError):  # Pillow's own, larger, limit
            raise ApiError(400, "BadRequestImageDimensions", f"the image is too large: {exc.__cause__}") from None
        raise ApiError(
            400, "BadRequestImageFormat", "the data is not an image that can be read (JPEG, PNG, BMP, GIF, WebP, ...)"
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError(400, "BadRequestImageDimensions", f"the image declares an empty size {width}x{height}")
    if max(width, height) > MAX_SIDE:
        raise ApiError(
            400, "BadRequestImageDimensions",
            f"the image is {width}x{height} px; sides up to {MAX_SIDE} px are accepted",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ApiError(
            400, "BadRequestImageDimensions",
            f"the image is {width}x{height} px; aspect ratios up to {MAX_ASPECT:g}:1 are accepted",
        )
    try:
        return load_image(image)
    except ImageDecodeError:
        raise ApiError(400, "BadRequestImageFormat", "the image data is corrupt or truncated") from None


# -------------------------------------------------------------------------------- /url fetching


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address: the only kind /url may connect to.

    Loopback, private, shared (CGNAT), link-local (cloud metadata services live there), multicast,
    reserved and unspecified addresses are refused, also when embedded in an IPv6 address
    (IPv4-mapped, 6to4, Teredo).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return is_public_address(address.ipv4_mapped)
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
    )


def _resolve_public(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ApiError(400, "BadRequestImageUrl", f"cannot resolve the URL's host {host!r} ({exc})") from None
    addresses = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        # Every address must pass, not just one: the connection may go to any of them.
        if not is_public_address(address):
            raise ApiError(
                400, "BadRequestImageUrl",
                f"the URL's host {host!r} resolves to {address}, which is not a public address; "
                "/url only fetches from the public internet",
            )
        addresses.append((family, sockaddr))
    if not addresses:
        raise ApiError(400, "BadRequestImageUrl", f"the URL's host {host!r} has no address")
    return addresses


def _connect_pinned(addresses: list[tuple[int, tuple[Any, ...]]], timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    assert error is not None
    raise error


def fetch_image_url(url: str, *, max_bytes: int, timeout: float = DEFAULT_URL_TIMEOUT) -> bytes:
    """Download an image for /url, refusing anything that could reach the device's own network.

    The host name is resolved once and every address checked with :func:`is_public_address`; the
    connection then goes to a checked address (so DNS cannot answer differently a moment later),
    with the original host name kept for the Host header and TLS verification. Redirects are
    followed up to :data:`MAX_REDIRECTS` times, each hop checked the same way.

    Args:
        url: an http or https URL.
        max_bytes: the largest image accepted.
        timeout: the time limit for the whole download, in seconds.

    Returns:
        The response body of the final 200 answer.

    Raises:
        ApiError: 400 ``BadRequestImageUrl`` (refused, failed, timed out) or
            ``BadRequestImageSizeBytes`` (too large).
    """
    deadline = time.monotonic() + timeout
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ApiError(400, "BadRequestImageUrl", f"malformed URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ApiError(400, "BadRequestImageUrl", f"only http and https URLs can be fetched, not {scheme or 'this'!r}")
        if not parts.hostname:
            raise ApiError(400, "BadRequestImageUrl", "the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ApiError(400, "BadRequestImageUrl", "URLs with credentials are not fetched")
        try:  # an internationalised name goes on the wire (Host header, TLS name) as its ASCII form
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise ApiError(400, "BadRequestImageUrl", f"the URL's host {parts.hostname!r} is not a valid name") from None
        port = port or (443 if scheme == "https" else 80)
        addresses = _resolve_public(host, port)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=remaining)
        # http.client would resolve the name again; connect to the address that was checked instead.
        connection._create_connection = (  # type: ignore[attr-defined]
            lambda *_args, _to=addresses, _timeout=remaining, **_kw: _connect_pinned(_to, _timeout)
        )
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            connection.request("GET", target, headers={"User-Agent": "edgevision-runtime", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise ApiError(400, "BadRequestImageUrl", f"the URL redirected (HTTP {response.status}) nowhere")
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise ApiError(400, "BadRequestImageUrl", f"fetching the URL answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ApiError(400, "BadRequestImageSizeBytes", f"the image at the URL is over {max_bytes} bytes")
            return _read_capped(response, connection, max_bytes, deadline)
        except TimeoutError:
            raise ApiError(400, "BadRequestImageUrl", f"fetching the URL took longer than {timeout:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ApiError(400, "BadRequestImageUrl", f"cannot fetch the URL ({type(exc).__name__}: {exc})") from None
        finally:
            connection.close()
    if time.monotonic() >= deadline:
        raise ApiError(400, "BadRequestImageUrl", f"fetching the URL took longer than {timeout:g} s")
    raise ApiError(400, "BadRequestImageUrl", f"the URL redirected more than {MAX_REDIRECTS} times")


def _read_capped(response: http.client.HTTPResponse, connection: http.client.HTTPConnection, cap: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise ApiError(400, "BadRequestImageSizeBytes", f"the image at the URL is over {cap} bytes")
        chunks.append(chunk)


# ----------------------------------------------------------------------------------- the server


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
        return super().parse_request()

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
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self._body_pending or self.close_connection or self.server.closing:
            # Unread body bytes still on the wire mean this connection cannot carry another request.
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_api_error(self, error: ApiError) -> None:
        self._send_json(error.status, {"code": error.code, "message": error.message}, error.headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too large, unknown method), as JSON."""
        self.close_connection = True
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
        route = match_route(urllib.parse.urlsplit(self.path).path)
        if route is None:
            raise ApiError(404, "NotFound", f"no route {urllib.parse.urlsplit(self.path).path[:200]!r}; "
                                            "see GET /openapi.json for the routes")
        allowed = ("GET", "HEAD") if route.action in ("health", "openapi") else ("POST",)
        if self.command not in allowed:
            raise ApiError(405, "MethodNotAllowed", f"{self.command} is not allowed here; use {' or '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})
        server = self.server
        if route.action == "health":
            self._send_json(200, server.health())
            return
        if route.action == "openapi":
            self._send_json(200, server.openapi)
            return
        self._check_key()
        self._check_kind(route)
        if route.action == "url" and not server.allow_url:
            raise ApiError(403, "Forbidden", "prediction from a URL is disabled on this server (start it with "
                                             "allow_url / --allow-url), or POST the image bytes to /image")
        body = self._read_body()
        if route.action == "url":
            data = fetch_image_url(url_from_body(body), max_bytes=server.max_body, timeout=server.url_timeout)
        else:
            data = image_from_body(body, self.headers.get("Content-Type"))
        payload = server.predict(data)
        self._send_json(200, payload)

    def _check_key(self) -> None:
        expected = self.server.api_key
        if expected is None:
            return
        given = self.headers.get("Prediction-Key")  # header names are case-insensitive here
        if given is None:
            raise ApiError(401, "Unauthorized", "this server needs a Prediction-Key header")
        # Constant-time: the comparison must not tell an attacker how much of a guess was right.
        if not hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8")):
            raise ApiError(401, "Unauthorized", "the Prediction-Key header is not this server's key")

    def _check_kind(self, route: Route) -> None:
        task = self.server.predictor.task
        if route.kind == "classify" and task == "detection":
            raise ApiError(400, "BadRequestNotSupported", "this server's model is an object detector: "
                                                          "use the /detect/ route (or /image)")
        if route.kind == "detect" and task != "detection":
            raise ApiError(400, "BadRequestNotSupported", f"this server's model is a {task} classifier: "
                                                          "use the /classify/ route (or /image)")

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
        if values or not value.isdigit():
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


class PredictionServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server around one predictor; see the module docstring for routes and errors.

    Use :func:`make_server` to build one and :func:`serve` to run one until Ctrl-C.
    """

    daemon_threads = True
    request_queue_size = 64

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
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if max_body < 1:
            raise ValueError(f"max_body must be positive, not {max_body}")
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key is empty: pass None for no key check, or a non-empty key")
        self.predictor = predictor
        self.api_key = api_key.strip() if api_key is not None else None
        self.allow_url = allow_url
        self.max_body = max_body
        self.url_timeout = url_timeout
        self.closing = False
        self._predict_lock = threading.Lock()
        self._workers = threading.BoundedSemaphore(threads)
        self._max_workers = threads
        # Decoding more images at once than there are cores gains nothing and multiplies the memory
        # a large image takes (a 10,240 px square is 300 MB as RGB).
        self._decode_slots = threading.BoundedSemaphore(max(1, min(threads, os.cpu_count() or 1)))
        self.watchdog = _Watchdog()
        self._idle_lock = threading.Lock()
        self._idle: set[socket.socket] = set()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        manifest = getattr(predictor, "manifest", None)
        self.project = str(getattr(manifest, "project", "") or "")
        self.iteration = str(getattr(manifest, "iteration", "") or "")
        self.openapi = build_openapi(
            task=predictor.task, project=self.project, iteration=self.iteration,
            key_required=self.api_key is not None, allow_url=allow_url, max_body=max_body, errors=ERRORS,
        )

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

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` answer: status, task, label count, project and iteration."""
        return {
            "status": "ok",
            "task": self.predictor.task,
            "labelCount": len(self.predictor.labels),
            "project": self.project,
            "iteration": self.iteration,
        }

    def predict(self, data: bytes) -> dict[str, Any]:
        """Decode, check and predict one image; returns the ``ImagePrediction`` JSON object.

        Raises:
            ApiError: 400 for an unusable image, 500 when the model fails.
        """
        with self._decode_slots:
            image = decode_image(data)
        try:
            with self._predict_lock:
                result = self.predictor.predict(image)
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

    Returns:
        The :class:`PredictionServer`. Run ``serve_forever()`` (in a thread, for tests), stop with
        ``shutdown()`` and ``server_close()``.

    Raises:
        ValueError: an invalid option.
        OSError: the address cannot be bound (port in use, no such interface).
    """
    server = PredictionServer(
        (host, port), predictor, api_key=api_key, allow_url=allow_url, max_body=max_body,
        threads=threads, url_timeout=url_timeout,
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
) -> None:
    """Serve predictions until interrupted.

    Ctrl-C stops cleanly: no new connections, requests in progress may finish (up to 5 s), idle
    connections are closed; then the ``KeyboardInterrupt`` goes on to the caller, whose business the
    exit status is (the CLI's is 130).

    Args:
        predictor, host, port, api_key, allow_url, max_body, threads, url_timeout: as :func:`make_server`.

    Raises:
        ValueError: an invalid option.
        OSError: the address cannot be bound.
        KeyboardInterrupt: after the clean stop.
    """
    server = make_server(
        predictor, host=host, port=port, api_key=api_key, allow_url=allow_url, max_body=max_body,
        threads=threads, url_timeout=url_timeout,
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
