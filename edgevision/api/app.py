"""The training API's request model, route tables and dispatcher (no sockets here; see :mod:`.server`).

A route is a method and a path pattern such as ``projects/{projectId}/tags/{tagId}``. Patterns made
with :meth:`RouteTable.training` live under the hosted Training API's prefix,
``/customvision/v3.N[-preview]/training/`` (any minor version: the hosted service's SDKs pin one);
patterns made with :meth:`RouteTable.path` are absolute (``/edgevision/...``, the prediction routes).
Literal segments match case-insensitively, as the hosted service's do; ``{name}`` matches one
percent-decoded segment.

A handler is ``handler(app, request) -> value``: a :class:`Response`, ``None`` (204 No Content, what
the hosted service answers to a DELETE) or anything JSON can write (200). Errors are raised as
:class:`runtimes.http_errors.ApiError` and reach the client as the hosted ``{"code", "message"}``
body; edgevision's own errors are mapped by :func:`api_error_from`.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Iterable

from edgevision import config
from edgevision.errors import (
    EdgevisionError,
    ImageRejectedError,
    IterationNotFoundError,
    NotEnoughDataError,
    ProjectExistsError,
    ProjectNotFoundError,
    RegionError,
    TagError,
    UsageError,
)
from edgevision.store.project import Project
from runtimes.http_body import FormPart, parse_header_params, parse_multipart
from runtimes.http_errors import ApiError

log = logging.getLogger(__name__)

__all__ = ["ApiApp", "ApiError", "Request", "Response", "RouteTable", "api_error_from", "DEFAULT_ROUTE_MODULES"]

#: ``/customvision/v3.4-preview/training`` and its siblings; the rest of the path is a training route.
TRAINING_PREFIX = re.compile(r"^/customvision/v3\.\d+(?:-preview)?/training(?=/|$)", re.IGNORECASE)
#: Modules whose ``ROUTES`` table the app serves, in order (the first match wins).
DEFAULT_ROUTE_MODULES = (
    "edgevision.api.routes_data",
    "edgevision.api.routes_training",
)

Handler = Callable[["ApiApp", "Request"], Any]


@dataclass
class Response:
    """A non-JSON answer (or JSON with a status other than 200)."""

    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    payload: Any = None  # JSON written when body is None

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        return cls(status=status, payload=payload, headers=headers or {})


@dataclass
class Request:
    """One request as a handler sees it.

    Attributes:
        method: upper-case HTTP method.
        path: the percent-encoded path, without the query string.
        query: query parameters by lower-cased name (the hosted service binds them case-insensitively).
        headers: the request headers (case-insensitive lookups).
        params: the ``{name}`` segments the route captured, percent-decoded.
        base_url: ``http://host:port`` as the client addressed the server, for absolute URLs in answers.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    params: dict[str, str]
    base_url: str
    _read_body: Callable[[], bytes] = field(repr=False, default=lambda: b"")
    _body: bytes | None = field(repr=False, default=None)

    def body(self) -> bytes:
        """The request body, read once (within the server's size and time limits)."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def json(self, *, required: bool = True) -> Any:
        """The body as JSON; None when it is empty and not ``required``.

        Raises:
            ApiError: 400 ``BadRequest`` for a missing or malformed body.
        """
        body = self.body()
        if not body.strip():
            if required:
                raise ApiError(400, "BadRequest", "this request needs a JSON body")
            return None
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "BadRequest", f"the body is not valid JSON ({exc})") from None

    def form(self, *, max_parts: int = 32) -> list[FormPart]:
        """The parts of a multipart/form-data body (at most ``max_parts`` of them).

        Raises:
            ApiError: 415 for another Content-Type, 400 for a malformed body.
        """
        mime, params = parse_header_params(self.headers.get("Content-Type") or "")
        if mime != "multipart/form-data" or "boundary" not in params:
            raise ApiError(415, "UnsupportedMediaType",
                           "send the images as multipart/form-data (field 'imageData'), with a boundary")
        return parse_multipart(self.body(), params["boundary"], max_parts=max_parts)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """One query parameter (the last if repeated), or ``default``."""
        values = self.query.get(name.lower())
        return values[-1] if values else default

    def args(self, name: str) -> list[str]:
        """A list parameter: repeated (``?tagIds=a&tagIds=b``) and/or comma-separated (``?tagIds=a,b``)."""
        out: list[str] = []
        for value in self.query.get(name.lower(), []):
            out.extend(v.strip() for v in value.split(",") if v.strip())
        return out

    def number(self, name: str, default: float, *, low: float | None = None, high: float | None = None) -> float:
        """A numeric query parameter, checked against ``low``/``high`` (400 ``BadRequest`` naming it)."""
        raw = self.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", f"query parameter {name}={raw!r} is not a number") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            raise ApiError(400, "BadRequest", f"query parameter {name}={raw!r} must lie in [{low}, {high}]")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter (``true``/``false``, any case)."""
        raw = self.arg(name)
        if raw is None or raw == "":
            return default
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise ApiError(400, "BadRequest", f"query parameter {name}={raw!r} must be true or false")


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    names: tuple[str, ...]
    training: bool
    handler: Handler
    locked: bool


class RouteTable:
    """Routes one module serves; decorate handlers with :meth:`training` or :meth:`path`."""

    def __init__(self) -> None:
        self.routes: list[_Route] = []

    def _add(self, method: str, pattern: str, training: bool, locked: bool) -> Callable[[Handler], Handler]:
        names: list[str] = []
        parts = []
        for segment in pattern.strip("/").split("/"):
            found = re.fullmatch(r"\{(\w+)\}", segment)
            if found:
                names.append(found.group(1))
                parts.append("([^/]+)")
            else:
                parts.append(re.escape(segment))
        regex = re.compile("^/" + "/".join(parts) + "/?$", re.IGNORECASE)

        def decorate(fn: Handler) -> Handler:
            self.routes.append(_Route(method.upper(), pattern, regex, tuple(names), training, fn, locked))
            return fn

        return decorate

    def training(self, method: str, pattern: str, *, locked: bool = True) -> Callable[[Handler], Handler]:
        """A route under ``/customvision/v3.N/training/``; ``locked``: run under the app's store lock."""
        return self._add(method, pattern, True, locked)

    def path(self, method: str, pattern: str, *, locked: bool = True) -> Callable[[Handler], Handler]:
        """A route at an absolute path (``/edgevision/...``)."""
        return self._add(method, pattern, False, locked)


def api_error_from(exc: EdgevisionError) -> ApiError:
    """The hosted-style error for one of edgevision's own (a 400 unless it is a missing thing)."""
    if isinstance(exc, (ProjectNotFoundError, IterationNotFoundError)):
        return ApiError(404, "NotFound", str(exc))
    if isinstance(exc, ProjectExistsError):
        return ApiError(400, "BadRequestProjectNameNotUnique", str(exc))
    if isinstance(exc, TagError):
        return ApiError(400, "BadRequestTag", str(exc))
    if isinstance(exc, RegionError):
        return ApiError(400, "BadRequestRegion", str(exc))
    if isinstance(exc, ImageRejectedError):
        return ApiError(400, "BadRequestImageFormat", str(exc))
    if isinstance(exc, NotEnoughDataError):
        return ApiError(400, "BadRequestNotEnoughImagesPerTag", str(exc))
    if isinstance(exc, UsageError):
        return ApiError(400, "BadRequest", str(exc))
    return ApiError(400, "BadRequest", str(exc))


class ApiApp:
    """The training API over one edgevision home folder; :mod:`.server` puts it on a socket.

    Args:
        home: the edgevision home (default ``$EDGEVISION_HOME`` or ``~/.edgevision``).
        key: when set, training routes need ``Training-Key`` and prediction routes ``Prediction-Key``
            equal to it (the portal sends it as the ``edgevision-key`` cookie).
        route_modules: modules whose ``ROUTES`` (a :class:`RouteTable`) are served.

    Store access is serialised by :attr:`lock` (one SQLite connection per project, shared by the
    request threads); long work (training, exports) runs in background threads with their own
    connections and must not hold it.
    """

    def __init__(self, home: str | Path | None = None, *, key: str | None = None,
                 route_modules: Iterable[str] = DEFAULT_ROUTE_MODULES) -> None:
        self.home = config.home(home)
        self.key = key.strip() if key is not None else None
        if key is not None and not self.key:
            raise UsageError("the API key is empty: leave --key out for no key, or give a non-empty one")
        self.lock = threading.RLock()
        self.routes: list[_Route] = []
        for name in route_modules:
            module = importlib.import_module(name)
            self.routes.extend(module.ROUTES.routes)
        self._projects: dict[str, Project] = {}  # by project id
        #: Shared state that route modules keep (jobs, caches), by module-chosen key.
        self.state: dict[str, Any] = {}
        #: Called by :meth:`stop` (route modules add theirs: stop background jobs and the like).
        self.on_stop: list[Callable[[], None]] = []

    def stop(self) -> None:
        """Stop background work (see :attr:`on_stop`) and close the projects; the server calls it last."""
        for callback in self.on_stop:
            try:
                callback()
            except Exception:
                log.exception("error while stopping")
        with self.lock:
            for project in self._projects.values():
                project.close()
            self._projects = {}

    # ------------------------------------------------------------------ projects by id
    def project(self, project_id: str) -> Project:
        """The open project with this UUID.

        Raises:
            ApiError: 404 ``NotFound`` when no project has it.
        """
        with self.lock:
            cached = self._projects.get(project_id.lower())
            if cached is not None and cached.path.is_dir():
                return cached
            self._refresh_projects()
            found = self._projects.get(project_id.lower())
        if found is None:
            raise ApiError(404, "NotFound", f"no project with id {project_id!r}; GET /projects lists them")
        return found

    def projects(self) -> list[Project]:
        """Every project under the home folder, by name."""
        with self.lock:
            self._refresh_projects()
            return sorted(self._projects.values(), key=lambda p: p.name)

    def forget_project(self, project: Project) -> None:
        """Drop a project from the cache (after deleting it)."""
        with self.lock:
            self._projects.pop(project.id.lower(), None)

    def _refresh_projects(self) -> None:
        root = self.home / "projects"
        known = {p.path.name: p for p in self._projects.values()}
        fresh: dict[str, Project] = {}
        if root.is_dir():
            for path in sorted(root.iterdir()):
                if path.name.startswith(".") or not (path / "project.sqlite").is_file():
                    continue
                project = known.get(path.name)
                if project is None or not project.path.is_dir():
                    try:
                        project = Project(path)
                    except Exception:  # a broken project folder must not take the API down
                        log.warning("skipping unreadable project folder %s", path, exc_info=True)
                        continue
                fresh[project.id.lower()] = project
        for stale in set(known.values()) - set(fresh.values()):
            stale.close()
        self._projects = fresh

    # ------------------------------------------------------------------ dispatch
    def check_key(self, request: Request, header: str) -> None:
        """Refuse the request unless it carries the key (header, or the portal's cookie)."""
        from runtimes.server import check_key

        given = request.headers.get(header)
        if given is None:
            given = _cookie(request.headers, "edgevision-key")
        check_key(given, self.key, header)

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        """The route for ``method`` and the percent-encoded ``path``, with its captured parameters.

        Raises:
            ApiError: 405 with ``Allow`` when the path exists for other methods only.
        """
        prefix = TRAINING_PREFIX.match(path)
        rest = (path[prefix.end():] or "/") if prefix else path
        allowed: list[str] = []
        for route in self.routes:
            if route.training != bool(prefix):
                continue
            found = route.regex.match(rest)
            if not found:
                continue
            if route.method != method and not (method == "HEAD" and route.method == "GET"):
                allowed.append(route.method)
                continue
            params = {n: urllib.parse.unquote(v) for n, v in zip(route.names, found.groups())}
            return route, params
        if allowed:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path[:200]}; use {', '.join(allowed)}",
                           {"Allow": ", ".join(sorted(set(allowed)))})
        return None

    def dispatch(self, request: Request) -> Response:
        """Answer one request (raises :class:`ApiError` for the error answers)."""
        found = self.match(request.method, request.path)
        if found is None:
            raise ApiError(404, "NotFound", f"no route {request.method} {request.path[:200]}; "
                                            "see docs/training-api.md for the routes this server has")
        route, params = found
        request.params = params
        if route.training:
            self.check_key(request, "Training-Key")
        if route.locked and request.method in ("POST", "PUT", "PATCH"):
            request.body()  # read the upload before taking the store lock: a slow client must not block others
        try:
            if route.locked:
                with self.lock:
                    value = route.handler(self, request)
            else:
                value = route.handler(self, request)
        except EdgevisionError as exc:
            raise api_error_from(exc) from None
        if isinstance(value, Response):
            return value
        if value is None:
            return Response(status=204, body=b"", content_type="text/plain")
        return Response.json(value)


def _cookie(headers: Message, name: str) -> str | None:
    for header in headers.get_all("Cookie") or []:
        for item in header.split(";"):
            key, _, value = item.strip().partition("=")
            if key == name:
                return urllib.parse.unquote(value)
    return None
