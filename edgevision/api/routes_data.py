"""Training API routes for projects, domains, tags, images, regions and stored predictions.

JSON field names are the hosted Training API v3.x's (its SDK's ``models``); fields only edgevision
has are prefixed ``edgevision``. Image files are served at ``/edgevision/projects/{projectId}/
images/{imageId}/original|resized|thumbnail`` (and ``predictions/{predictionId}/...`` for stored
predictions); those routes need the key too when the server has one (header or the portal's cookie).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
import unicodedata
import uuid
from typing import Any

from edgevision import config
from edgevision.api.app import ApiApp, Request, Response, RouteTable
from edgevision.api.domains import api_domains, domain_by_id, domain_id
from edgevision.api.images import (
    MAX_BATCH,
    MAX_TAGS_PER_IMAGE,
    PREVIEW_SIDES,
    MAX_METADATA,
    Upload,
    check_metadata,
    content_type,
    image_json,
    import_uploads,
    preview,
    remove_previews,
    safe_name,
)
from edgevision.errors import ProjectExistsError, RegionError, TagError, UsageError
from edgevision.store import predictions as stored
from edgevision.store.project import Project, Tag
from runtimes.http_errors import ApiError

ROUTES = RouteTable()

#: The hosted export platforms edgevision has exporters for (Domain.exportablePlatforms, targetExportPlatforms).


def export_platforms(task: str | None = None) -> list[str]:
    """The hosted export platform names the registered exporters declare (for ``task``, or any)."""
    from exporters import list_exporters

    return sorted({platform for cls in list_exporters() if task is None or task in cls.tasks
                   for platform, _ in cls.hosted_exports})
#: The hosted service's paging limit for image listings.
MAX_TAKE = 256
DEFAULT_TAKE = 50
MAX_NAME = 256
MAX_DESCRIPTION = 4096
#: The hosted service's limit on ids in one delete / regions / tags call.
MAX_IDS = 256
MAX_BATCH_ENTRIES = 64
#: Whether Request.form can raise the multipart parser's part limit (32, the prediction server's) to
#: the 64 images of a hosted upload batch (+1, so that 65 get the batch-size error, not a parser one).


@ROUTES.path("GET", "/edgevision/health", locked=False)
def health(app: ApiApp, request: Request) -> dict[str, Any]:
    """Liveness and the home folder served."""
    # The home folder (it names the user) only when no key guards the server, i.e. on loopback.
    if app.key is not None:
        return {"status": "ok", "keyRequired": True}
    return {"status": "ok", "home": str(app.home), "keyRequired": False}


# ---------------------------------------------------------------------------- helpers
def _uuid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ApiError(400, "BadRequestInvalidIds", f"{what} {str(value)[:100]!r} is not an id (a UUID)") from None


def _ids(request: Request, name: str, *, limit: int = MAX_IDS) -> list[str]:
    values = request.args(name)
    if len(values) > limit:
        raise ApiError(400, "BadRequestInvalidIds", f"{len(values)} {name}; send at most {limit} per call")
    return list(dict.fromkeys(_uuid(v, name) for v in values))


def _body_object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object")
    return body


def _text(value: Any, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, "BadRequest", f"{what} must be a string")
    if len(value) > limit:
        raise ApiError(400, "BadRequest", f"{what} is {len(value)} characters long; at most {limit}")
    return value


def _take_skip(request: Request) -> tuple[int, int]:
    take = int(request.number("take", DEFAULT_TAKE, low=0, high=MAX_TAKE))
    skip = int(request.number("skip", 0, low=0, high=2**31))
    return take, skip


def _newest_first(request: Request) -> bool:
    order = (request.arg("orderBy") or "Newest").lower()
    if order not in ("newest", "oldest"):
        raise ApiError(400, "BadRequest", f"orderBy={request.arg('orderBy')!r}: use Newest or Oldest")
    return order == "newest"


def _check_iteration_arg(request: Request) -> None:
    if request.arg("iterationId"):
        raise ApiError(400, "BadRequestNotSupported", "iterationId is not supported on image and tag listings here: "
                                                      "they always show the project's current images and tags")


def _bound(item: dict[str, Any], name: str, default: float) -> float:
    value = item.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ApiError(400, "BadRequestPredictionInvalidQueryParameters", f"tags: {name} must be a number") from None


# ---------------------------------------------------------------------------- domains
@ROUTES.training("GET", "domains", locked=False)
def get_domains(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return [d.to_json(export_platforms(_domain_task(d))) for d in api_domains()]


@ROUTES.training("GET", "domains/{domainId}", locked=False)
def get_domain(app: ApiApp, request: Request) -> dict[str, Any]:
    try:
        domain = domain_by_id(request.params["domainId"])
        return domain.to_json(export_platforms(_domain_task(domain)))
    except ApiError:
        raise ApiError(404, "NotFoundDomain", f"no domain with id {request.params['domainId'][:100]!r}; "
                                              "GET domains lists them") from None


# ---------------------------------------------------------------------------- projects
def project_json(project: Project) -> dict[str, Any]:
    """The hosted ``Project`` JSON (plus ``edgevisionName``, the folder name, and ``edgevisionType``)."""
    try:
        dom: str | None = domain_id(project.domain, project.type)
    except KeyError:  # a domain no longer registered
        dom = None
    return {
        "id": project.id,
        "name": project.display_name,
        "description": project.description,
        "settings": {
            "domainId": dom,
            "classificationType": {"multiclass": "Multiclass", "multilabel": "Multilabel"}.get(project.type),
            "targetExportPlatforms": project.target_platforms,
            "useNegativeSet": project.type != "detection",
            "detectionParameters": None,
            "imageProcessingSettings": None,
            "exportModelContainerUri": None,
            "notificationQueueUri": None,
        },
        "created": project.created,
        "lastModified": project.modified,
        "thumbnailUri": None,
        "drModeEnabled": False,
        "status": "Succeeded",
        "edgevisionName": project.name,
        "edgevisionType": project.type,
    }


def folder_name(display: str, taken: set[str]) -> str:
    """A valid, unused project folder name derived from a display name ("My cats!" -> "My-cats")."""
    ascii_text = unicodedata.normalize("NFKD", display).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text).strip("-._")[:56].rstrip("-._") or "project"
    taken_lower = {t.lower() for t in taken}
    name, n = base, 2
    while name.lower() in taken_lower:
        name, n = f"{base}-{n}", n + 1
    config.check_project_name(name)
    return name


def _display_name(value: Any) -> str:
    name = _text(value, "the project name", MAX_NAME).strip()
    if not name or any(not c.isprintable() for c in name):
        raise ApiError(400, "BadRequestProjectName", f"project name {str(value)[:100]!r}: give 1-{MAX_NAME} "
                                                     "printable characters")
    return name


def _check_unique(app: ApiApp, name: str, exclude: Project | None = None) -> None:
    for other in app.projects():
        if other is not exclude and other.display_name.lower() == name.lower():
            raise ApiError(400, "BadRequestProjectNameNotUnique",
                           f"a project named {name!r} already exists (id {other.id}); pick another name")


def _domain_task(domain: Any) -> str:
    return "detection" if domain.type == "ObjectDetection" else "multiclass"


def _platforms(values: list[str]) -> list[str]:
    known = export_platforms()
    out = []
    for value in values:
        match = next((p for p in known if p.lower() == value.lower()), None)
        if match is None:
            raise ApiError(400, "BadRequestProjectUnsupportedExportPlatform",
                           f"export platform {value!r} is not available here; use {', '.join(known)}")
        out.append(match)
    return list(dict.fromkeys(out))


def _project_type(classification: str | None, domain_type: str) -> str:
    if domain_type == "ObjectDetection":
        return "detection"
    kind = (classification or "Multiclass").lower()
    if kind not in ("multiclass", "multilabel"):
        raise ApiError(400, "BadRequestProjectUnknownClassification",
                       f"classificationType={classification!r}: use Multiclass or Multilabel")
    return kind


@ROUTES.training("GET", "projects")
def get_projects(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return [project_json(p) for p in app.projects()]


@ROUTES.training("POST", "projects")
def create_project(app: ApiApp, request: Request) -> dict[str, Any]:
    name = _display_name(request.arg("name"))
    description = _text(request.arg("description"), "description", MAX_DESCRIPTION)
    dom = domain_by_id(request.arg("domainId")) if request.arg("domainId") else \
        next(d for d in api_domains() if d.domain == "general-compact" and d.type == "Classification")
    kind = _project_type(request.arg("classificationType"), dom.type)
    platforms = _platforms(request.args("targetExportPlatforms"))
    _check_unique(app, name)
    root = app.home / "projects"
    taken = {p.name for p in root.iterdir()} if root.is_dir() else set()
    folder = folder_name(name, taken)
    try:
        project = Project.create(folder, kind, dom.domain, description=description, home=app.home, display_name=name)
    except ProjectExistsError:  # made by another process since we looked
        raise ApiError(409, "Conflict", f"a project folder {folder!r} appeared meanwhile; send the request again") from None
    if platforms:
        project.update_settings(target_platforms=platforms)
    project.close()
    return project_json(app.project(project.id))


@ROUTES.training("GET", "projects/{projectId}")
def get_project(app: ApiApp, request: Request) -> dict[str, Any]:
    return project_json(app.project(request.params["projectId"]))


@ROUTES.training("DELETE", "projects/{projectId}")
def delete_project(app: ApiApp, request: Request) -> None:
    from edgevision.api.routes_training import training_in_progress

    project = app.project(request.params["projectId"])
    if training_in_progress(app, project.id):
        raise ApiError(400, "BadRequestProjectTrainingInProgress",
                       f"project {project.display_name!r} has a training or export queued or running; "
                       "wait for it to finish (GET its iterations and exports), then delete the project")
    try:
        project.delete()
    finally:
        app.forget_project(project)


@ROUTES.training("PATCH", "projects/{projectId}")
def update_project(app: ApiApp, request: Request) -> dict[str, Any]:
    project = app.project(request.params["projectId"])
    body = _body_object(request)
    changes: dict[str, Any] = {}
    if body.get("name") is not None:
        name = _display_name(body["name"])
        if name.lower() != project.display_name.lower():
            _check_unique(app, name, exclude=project)
        changes["display_name"] = name
    if body.get("description") is not None:
        changes["description"] = _text(body["description"], "description", MAX_DESCRIPTION)
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise ApiError(400, "BadRequest", "settings must be an object")
    domain_type = "ObjectDetection" if project.type == "detection" else "Classification"
    if settings.get("domainId"):
        dom = domain_by_id(str(settings["domainId"]))
        if dom.type != domain_type:
            raise ApiError(400, "BadRequestProjectUnsupportedDomainTypeChange",
                           f"this is a{'n' if domain_type[0] == 'O' else ''} {domain_type} project and domain "
                           f"{dom.name!r} is {dom.type}; create a new project for that")
        changes["domain"] = dom.domain
    if settings.get("classificationType") and project.type != "detection":
        changes["type"] = _project_type(str(settings["classificationType"]), domain_type)
    if settings.get("targetExportPlatforms") is not None:
        if not isinstance(settings["targetExportPlatforms"], list):
            raise ApiError(400, "BadRequest", "settings.targetExportPlatforms must be a list")
        changes["target_platforms"] = _platforms([str(v) for v in settings["targetExportPlatforms"]])
    project.update_settings(**changes)  # its UsageErrors (multilabel -> multiclass refused) become 400s
    return project_json(project)


# ---------------------------------------------------------------------------- tags
def tag_json(tag: Tag, descriptions: dict[str, str]) -> dict[str, Any]:
    return {"id": tag.id, "name": tag.name, "description": descriptions.get(tag.id, ""),
            "type": "Negative" if tag.kind == "negative" else "Regular", "imageCount": tag.image_count}


def _tag(project: Project, tag_id: str) -> Tag:
    tag = project.tag_by_id(tag_id)
    if tag is None:
        raise ApiError(404, "NotFoundTag", f"project has no tag with id {tag_id[:100]!r}; GET tags lists them")
    return tag


def _tag_error(exc: TagError) -> ApiError:
    text = str(exc)
    if "already exists" in text:
        return ApiError(400, "BadRequestTagNameNotUnique", text)
    if "Negative" in text:
        return ApiError(400, "BadRequestTagType", text)
    return ApiError(400, "BadRequestTagName", text)


@ROUTES.training("GET", "projects/{projectId}/tags")
def get_tags(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    descriptions = project.tag_descriptions()
    return [tag_json(t, descriptions) for t in project.tags()]


@ROUTES.training("POST", "projects/{projectId}/tags")
def create_tag(app: ApiApp, request: Request) -> dict[str, Any]:
    project = app.project(request.params["projectId"])
    name = _text(request.arg("name"), "the tag name", MAX_NAME)
    description = _text(request.arg("description"), "description", MAX_DESCRIPTION)
    kind = (request.arg("type") or "Regular").lower()
    if kind not in ("regular", "negative"):
        raise ApiError(400, "BadRequestTagType", f"type={request.arg('type')!r}: use Regular or Negative "
                                                 "(GeneralProduct is not available here)")
    negative = name.lower() == config.NEGATIVE_TAG.lower()
    if kind == "negative" and not negative:
        raise ApiError(400, "BadRequestTagType", f"the negative tag is named {config.NEGATIVE_TAG!r} here; "
                                                 f"send name={config.NEGATIVE_TAG}&type=Negative")
    if kind == "regular" and negative:
        raise ApiError(400, "BadRequestTagName", f"{config.NEGATIVE_TAG!r} is reserved for the negative tag; "
                                                 "send type=Negative, or pick another name")
    try:
        tag = project.create_tag(name)
    except TagError as exc:
        raise _tag_error(exc) from None
    if description:
        project.set_tag_description(tag.id, description)
    return tag_json(tag, {tag.id: description})


@ROUTES.training("GET", "projects/{projectId}/tags/{tagId}")
def get_tag(app: ApiApp, request: Request) -> dict[str, Any]:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    return tag_json(_tag(project, request.params["tagId"]), project.tag_descriptions())


@ROUTES.training("DELETE", "projects/{projectId}/tags/{tagId}")
def delete_tag(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    project.delete_tag(_tag(project, request.params["tagId"]).name)


@ROUTES.training("PATCH", "projects/{projectId}/tags/{tagId}")
def update_tag(app: ApiApp, request: Request) -> dict[str, Any]:
    project = app.project(request.params["projectId"])
    tag = _tag(project, request.params["tagId"])
    body = _body_object(request)
    if body.get("type") is not None and str(body["type"]).lower() != ("negative" if tag.kind == "negative" else "regular"):
        raise ApiError(400, "BadRequestTagType", "a tag's type cannot change here; create a new tag of the other type")
    if body.get("name") is not None and body["name"] != tag.name:
        try:
            tag = project.rename_tag(tag.name, _text(body["name"], "the tag name", MAX_NAME))
        except TagError as exc:
            raise _tag_error(exc) from None
    if body.get("description") is not None:
        project.set_tag_description(tag.id, _text(body["description"], "description", MAX_DESCRIPTION))
    return tag_json(tag, project.tag_descriptions())


# ---------------------------------------------------------------------------- images: upload
def _tag_ids_arg(request: Request) -> list[str]:
    return _ids(request, "tagIds", limit=MAX_TAGS_PER_IMAGE)


@ROUTES.training("POST", "projects/{projectId}/images")
def create_images_from_data(app: ApiApp, request: Request) -> Response:
    """Multipart ``imageData`` parts (any part counts as an image) or one raw image body."""
    project = app.project(request.params["projectId"])
    tag_ids = _tag_ids_arg(request)
    mime = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if mime.startswith("multipart/"):
        form = request.form(max_parts=MAX_BATCH + 1)
        parts = [p for p in form if p.filename is not None or p.data]
        uploads = [Upload(safe_name(p.filename or p.name, n), p.data, list(tag_ids),
                          source_url=p.filename or p.name) for n, p in enumerate(parts, 1)]
    elif mime in ("application/octet-stream", "") or mime.startswith("image/"):
        uploads = [Upload("image-1", request.body(), list(tag_ids))]
    else:
        raise ApiError(415, "UnsupportedMediaType", f"Content-Type {mime!r}: send multipart/form-data with "
                                                    "imageData parts, or one image as application/octet-stream")
    status, summary = import_uploads(project, uploads, request.base_url)
    return Response.json(summary, status)


def _entry_uploads(body: dict[str, Any], key: str = "images") -> tuple[list[dict[str, Any]], list[str]]:
    entries = body.get(key)
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, "BadRequestImageBatch", f"the body needs a non-empty {key!r} list")
    if len(entries) > MAX_BATCH:
        raise ApiError(400, "BadRequestImageBatch", f"{len(entries)} images in one call; send at most {MAX_BATCH}")
    common = body.get("tagIds") or []
    if not isinstance(common, list) or len(common) > MAX_TAGS_PER_IMAGE:
        raise ApiError(400, "BadRequestImageTags", f"tagIds must be a list of at most {MAX_TAGS_PER_IMAGE} ids")
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ApiError(400, "BadRequestImageBatch", f"image {n}: expected an object")
        for field in ("tagIds", "regions"):
            if entry.get(field) is not None and not isinstance(entry[field], list):
                raise ApiError(400, "BadRequestImageBatch", f"image {n}: {field} must be a list")
    return entries, [str(t) for t in common]


@ROUTES.training("POST", "projects/{projectId}/images/files")
def create_images_from_files(app: ApiApp, request: Request) -> Response:
    """ImageFileCreateBatch: base64 ``contents`` with per-image tagIds and regions."""
    project = app.project(request.params["projectId"])
    body = _body_object(request)
    entries, common = _entry_uploads(body)
    metadata = check_metadata(body.get("metadata"))
    uploads = []
    for n, entry in enumerate(entries, 1):
        name = safe_name(entry.get("name") if isinstance(entry.get("name"), str) else None, n)
        upload = Upload(name, b"", common + [str(t) for t in entry.get("tagIds") or []], list(entry.get("regions") or []),
                        source_url=entry.get("name") if isinstance(entry.get("name"), str) else name)
        contents = entry.get("contents")
        try:
            if not isinstance(contents, str):
                raise ValueError("missing")
            # Whitespace (line-wrapped base64) is allowed, as .NET's decoder (the hosted service's) allows it.
            upload.data = base64.b64decode(re.sub(r"\s+", "", contents), validate=True)
        except (ValueError, binascii.Error):
            upload.status, upload.message = "ErrorSource", f"{name}: contents must be the image bytes in base64"
        uploads.append(upload)
    status, summary = import_uploads(project, uploads, request.base_url, metadata)
    return Response.json(summary, status)


@ROUTES.training("POST", "projects/{projectId}/images/predictions")
def create_images_from_predictions(app: ApiApp, request: Request) -> Response:
    """ImageIdCreateBatch: copy stored prediction images into the training set, with tags or regions."""
    project = app.project(request.params["projectId"])
    body = _body_object(request)
    entries, common = _entry_uploads(body)
    metadata = check_metadata(body.get("metadata"))
    uploads = []
    for n, entry in enumerate(entries, 1):
        tags = common + [str(t) for t in entry.get("tagIds") or []]
        found = stored.get_prediction(project, str(entry.get("id", ""))) if entry.get("id") else None
        uri = f"{request.base_url}/edgevision/projects/{project.id}/predictions/{entry.get('id')}/original"
        if found is None:
            uploads.append(Upload(f"prediction-{n}", b"", tags, source_url=str(entry.get("id")), status="ErrorSource",
                                  message=f"no stored prediction with id {str(entry.get('id'))[:100]!r}"))
            continue
        try:
            data = found.path.read_bytes()
        except OSError as exc:
            uploads.append(Upload(f"prediction-{n}", b"", tags, source_url=uri, status="ErrorSource",
                                  message=f"the prediction's image cannot be read ({exc.strerror or exc})"))
            continue
        uploads.append(Upload(f"prediction-{found.id}{found.path.suffix}", data, tags,
                              list(entry.get("regions") or []), source_url=uri))
    status, summary = import_uploads(project, uploads, request.base_url, metadata)
    return Response.json(summary, status)


# ---------------------------------------------------------------------------- images: listing
def _listing(app: ApiApp, request: Request, tagged: bool | None, *, allow_tags: bool = True) -> list[dict[str, Any]]:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    tag_ids = _tag_ids_arg(request) if allow_tags else []
    take, skip = _take_skip(request)
    records = project.find_images(tag_ids=tag_ids, tagged=tagged, newest_first=_newest_first(request),
                                  take=take, skip=skip)
    return image_json(project, records, request.base_url)


def _tagging_status(request: Request) -> bool | None:
    raw = (request.arg("taggingStatus") or "All").lower()
    if raw not in ("all", "tagged", "untagged"):
        raise ApiError(400, "BadRequest", f"taggingStatus={request.arg('taggingStatus')!r}: use All, Tagged or Untagged")
    if request.arg("$filter"):
        raise ApiError(400, "BadRequestNotSupported", "$filter (image metadata) is not supported here")
    return {"all": None, "tagged": True, "untagged": False}[raw]


@ROUTES.training("GET", "projects/{projectId}/images")
def get_images(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return _listing(app, request, _tagging_status(request))


@ROUTES.training("GET", "projects/{projectId}/images/count")
def get_image_count(app: ApiApp, request: Request) -> int:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    return project.count_images(tag_ids=_tag_ids_arg(request), tagged=_tagging_status(request))


@ROUTES.training("GET", "projects/{projectId}/images/tagged")
def get_tagged_images(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return _listing(app, request, True)


@ROUTES.training("GET", "projects/{projectId}/images/untagged")
def get_untagged_images(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    return _listing(app, request, False, allow_tags=False)


@ROUTES.training("GET", "projects/{projectId}/images/tagged/count")
def get_tagged_image_count(app: ApiApp, request: Request) -> int:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    return project.count_images(tag_ids=_tag_ids_arg(request), tagged=True)


@ROUTES.training("GET", "projects/{projectId}/images/untagged/count")
def get_untagged_image_count(app: ApiApp, request: Request) -> int:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    return project.count_images(tagged=False)


@ROUTES.training("GET", "projects/{projectId}/images/id")
def get_images_by_ids(app: ApiApp, request: Request) -> list[dict[str, Any]]:
    project = app.project(request.params["projectId"])
    _check_iteration_arg(request)
    ids = _ids(request, "imageIds")
    records = {r.id: r for r in project.find_images(ids=ids)} if ids else {}
    return image_json(project, [records[i] for i in ids if i in records], request.base_url)


@ROUTES.training("DELETE", "projects/{projectId}/images")
def delete_images(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    ids = _ids(request, "imageIds")
    everything = request.flag("allImages")
    if not ids and not everything:
        raise ApiError(400, "BadRequestRequiredParamIsNull", "pass imageIds=ID,ID,... or allImages=true")
    records = project.find_images() if everything else project.find_images(ids=ids)
    if records:
        project.remove_images([r.id for r in records])
        remove_previews(project.path, [r.sha256 for r in records])


@ROUTES.training("POST", "projects/{projectId}/images/metadata")
def update_image_metadata(app: ApiApp, request: Request) -> Response:
    """Add or replace metadata entries on images -> ImageMetadataUpdateSummary (200, or 207 when some failed)."""
    project = app.project(request.params["projectId"])
    ids = _ids(request, "imageIds")
    if not ids:
        raise ApiError(400, "BadRequestRequiredParamIsNull", "pass imageIds=ID,ID,...")
    metadata = check_metadata(_body_object(request))
    results = project.update_image_metadata(ids, metadata, limit=MAX_METADATA)
    out = []
    for image_id in ids:
        after = results[image_id]
        status = "ErrorImageNotFound" if after is None else (
            "ErrorLimitExceed" if any(after.get(k) != v for k, v in metadata.items()) else "OK")
        out.append({"imageId": image_id, "status": status, "metadata": after})
    ok = all(e["status"] == "OK" for e in out)
    return Response.json({"isBatchSuccessful": ok, "images": out}, 200 if ok else 207)


# ---------------------------------------------------------------------------- image tags and regions
def _batch(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = body.get(key)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ApiError(400, "BadRequest", f"the body needs a non-empty {key!r} list of objects")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise ApiError(400, "BadRequestExceededBatchSize", f"{len(entries)} {key} in one call; send at most "
                                                           f"{MAX_BATCH_ENTRIES}")
    return entries


@ROUTES.training("POST", "projects/{projectId}/images/tags")
def create_image_tags(app: ApiApp, request: Request) -> dict[str, Any]:
    """ImageTagCreateBatch -> ImageTagCreateSummary (created, duplicated, exceeded)."""
    project = app.project(request.params["projectId"])
    entries = _batch(_body_object(request), "tags")
    pairs = [(_uuid(e.get("imageId"), "imageId"), _uuid(e.get("tagId"), "tagId")) for e in entries]
    try:
        statuses = project.tag_images(pairs)
    except UsageError as exc:
        code = "BadRequestImageTags" if "detection" in str(exc) else "BadRequestInvalidIds"
        raise ApiError(400, code, str(exc)) from None
    except TagError as exc:
        raise ApiError(400, "BadRequestNegativeAndRegularTagOnSameImage", str(exc)) from None
    out: dict[str, list[dict[str, str]]] = {"created": [], "duplicated": [], "exceeded": []}
    for (image_id, tag_id), status in zip(pairs, statuses):
        out[status].append({"imageId": image_id, "tagId": tag_id})
    return out


@ROUTES.training("DELETE", "projects/{projectId}/images/tags")
def delete_image_tags(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    image_ids, tag_ids = _ids(request, "imageIds", limit=MAX_BATCH), _ids(request, "tagIds", limit=MAX_TAGS_PER_IMAGE)
    if not image_ids or not tag_ids:
        raise ApiError(400, "BadRequestRequiredParamIsNull", "pass both imageIds and tagIds")
    if project.type == "detection":
        raise ApiError(400, "BadRequestImageTags", "a detection project's tags sit on regions: delete the regions "
                                                   "(DELETE images/regions?regionIds=...)")
    project.untag_images(image_ids, tag_ids)


@ROUTES.training("POST", "projects/{projectId}/images/regions")
def create_image_regions(app: ApiApp, request: Request) -> dict[str, Any]:
    """ImageRegionCreateBatch -> ImageRegionCreateSummary (created, duplicated, exceeded)."""
    project = app.project(request.params["projectId"])
    entries = _batch(_body_object(request), "regions")
    rows = []
    for n, e in enumerate(entries, 1):
        box = [e.get(k) for k in ("left", "top", "width", "height")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise ApiError(400, "BadRequestImageRegions", f"region {n}: left, top, width and height must be numbers "
                                                          "(fractions 0..1 of the image size)")
        rows.append((_uuid(e.get("imageId"), "imageId"), _uuid(e.get("tagId"), "tagId"), *box))
    if project.type != "detection":
        raise ApiError(400, "BadRequestImageRegions", "regions are for object detection projects; this project "
                                                      "classifies whole images (POST images/tags)")
    try:
        results = project.add_regions(rows)
    except UsageError as exc:
        raise ApiError(400, "BadRequestInvalidIds", str(exc)) from None
    except (TagError, RegionError) as exc:
        raise ApiError(400, "BadRequestImageRegions", str(exc)) from None
    out: dict[str, list[dict[str, Any]]] = {"created": [], "duplicated": [], "exceeded": []}
    for entry, (status, region) in zip(rows, results):
        image_id, tag_id, left, top, width, height = entry
        if region is None:
            out[status].append({"imageId": image_id, "tagId": tag_id, "left": left, "top": top, "width": width,
                                "height": height})
        else:
            out["created"].append({"imageId": image_id, "regionId": region.id, "tagName": region.tag,
                                   "created": _now(), "tagId": tag_id, "left": region.left, "top": region.top,
                                   "width": region.width, "height": region.height})
    return out


@ROUTES.training("DELETE", "projects/{projectId}/images/regions")
def delete_image_regions(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    ids = _ids(request, "regionIds", limit=MAX_BATCH_ENTRIES)
    if not ids:
        raise ApiError(400, "BadRequestRequiredParamIsNull", "pass regionIds=ID,ID,...")
    project.remove_regions(ids)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- image files
def _file_response(app: ApiApp, request: Request, data: bytes, ctype: str, etag: str) -> Response:
    headers = {"Cache-Control": "private, max-age=86400", "ETag": f'"{etag}"', "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == f'"{etag}"':
        return Response(304, b"", "text/plain", headers)
    return Response(200, data, ctype, headers)


def _serve_file(app: ApiApp, request: Request, project: Project, kind: str, path: Any, sha: str, fmt: str) -> Response:
    if kind == "original":
        try:
            data = path.read_bytes()
        except OSError:
            raise ApiError(404, "NotFoundImage", "the image file is missing from the project folder") from None
        return _file_response(app, request, data, content_type(fmt), sha)
    if kind not in PREVIEW_SIDES:
        raise ApiError(404, "NotFound", f"no image variant {kind[:40]!r}; use original, resized or thumbnail")
    return _file_response(app, request, preview(project.path, sha, path, kind), "image/jpeg",
                          f"{sha}-{kind}")


@ROUTES.path("GET", "/edgevision/projects/{projectId}/images/{imageId}/{kind}", locked=False)
def image_file(app: ApiApp, request: Request) -> Response:
    """The stored file (original), or a JPEG preview (resized <= 1024 px, thumbnail <= 320 px)."""
    app.check_key(request, "Training-Key")
    with app.lock:
        project = app.project(request.params["projectId"])
        found = project.find_images(ids=[request.params["imageId"]])
    if not found:
        raise ApiError(404, "NotFoundImage", f"no image with id {request.params['imageId'][:100]!r} in this project")
    record = found[0]
    return _serve_file(app, request, project, request.params["kind"].lower(), record.path, record.sha256, record.format)


@ROUTES.path("GET", "/edgevision/projects/{projectId}/predictions/{predictionId}/{kind}", locked=False)
def prediction_file(app: ApiApp, request: Request) -> Response:
    """A stored prediction's image (original), or a JPEG preview of it."""
    app.check_key(request, "Training-Key")
    with app.lock:
        project = app.project(request.params["projectId"])
        found = stored.get_prediction(project, request.params["predictionId"])
    if found is None:
        raise ApiError(404, "NotFound", f"no stored prediction with id {request.params['predictionId'][:100]!r}")
    return _serve_file(app, request, project, request.params["kind"].lower(), found.path, found.sha256, found.format)


# ---------------------------------------------------------------------------- stored predictions
def _prediction_json(project: Project, p: stored.StoredPrediction, base_url: str, domain: str | None) -> dict[str, Any]:
    base = f"{base_url}/edgevision/projects/{project.id}/predictions/{p.id}"
    results = []
    for r in p.results:
        results.append({"probability": r.get("probability"), "tagId": r.get("tagId"), "tagName": r.get("tagName"),
                        "boundingBox": r.get("boundingBox"), "tagType": r.get("tagType") or "Regular"})
    return {"resizedImageUri": f"{base}/resized", "thumbnailUri": f"{base}/thumbnail",
            "originalImageUri": f"{base}/original", "domain": domain, "id": p.id, "project": project.id,
            "iteration": p.iteration_id, "created": p.created, "predictions": results,
            "edgevisionUncertainty": round(p.uncertainty, 6)}


def _utc_time(token: dict[str, Any], key: str) -> _dt.datetime | None:
    """``token[key]`` (an ISO 8601 time, ``Z`` or any offset; no offset = UTC) as a UTC datetime; None when absent.

    Raises:
        ApiError: 400 when the value is not an ISO 8601 date-time.
    """
    value = token.get(key)
    if value in (None, ""):
        return None
    try:
        when = _dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        if when is not None:
            when = when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
            return when.astimezone(_dt.timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: year 1 with a positive offset is before year 1 in UTC
        pass
    raise ApiError(400, "BadRequestPredictionInvalidQueryParameters",
                   f"{key}={value!r}: expected an ISO 8601 date-time such as 2026-12-02T20:00:00Z")


@ROUTES.training("POST", "projects/{projectId}/predictions/query")
def query_predictions(app: ApiApp, request: Request) -> dict[str, Any]:
    """PredictionQueryToken -> PredictionQueryResult; ``continuation`` pages on (``Suggested``: most unsure first)."""
    project = app.project(request.params["projectId"])
    token = request.json(required=False) or {}
    if not isinstance(token, dict):
        raise ApiError(400, "BadRequest", "the body must be a PredictionQueryToken object")
    order = str(token.get("orderBy") or "Newest")
    if order.lower() not in ("newest", "oldest", "suggested"):
        raise ApiError(400, "BadRequestPredictionInvalidQueryParameters",
                       f"orderBy={order!r}: use Newest, Oldest or Suggested")
    max_count = token.get("maxCount") or DEFAULT_TAKE
    if not isinstance(max_count, int) or isinstance(max_count, bool) or not 1 <= max_count <= MAX_TAKE:
        raise ApiError(400, "BadRequestPredictionResultsExceededCount", f"maxCount must be 1..{MAX_TAKE}")
    continuation = token.get("continuation") or "0"
    if not isinstance(continuation, str) or not continuation.isdigit():
        raise ApiError(400, "BadRequestPredictionInvalidQueryParameters",
                       "continuation must be the value a previous answer gave")
    filters = token.get("tags") or []
    if not isinstance(filters, list) or not all(isinstance(f, dict) for f in filters):
        raise ApiError(400, "BadRequestPredictionInvalidQueryParameters", "tags must be a list of {id, minThreshold, "
                                                                          "maxThreshold} objects")
    if len(filters) > 20:
        raise ApiError(400, "BadRequestPredictionTagsExceededCount", "at most 20 tags per query")
    iteration = token.get("iterationId")
    rows = stored.list_predictions(project, order_by=order, iteration_id=str(iteration) if iteration else None,
                                   start=_utc_time(token, "startTime"), end=_utc_time(token, "endTime"))
    if filters:
        def keep(p: stored.StoredPrediction) -> bool:
            for f in filters:
                value = p.probability(str(f.get("id", "")))
                if _bound(f, "minThreshold", 0.0) <= value <= _bound(f, "maxThreshold", 1.0) and value > 0:
                    return True
            return False
        rows = [p for p in rows if keep(p)]
    offset = int(continuation)
    page = rows[offset:offset + max_count]
    try:
        domain: str | None = domain_id(project.domain, project.type)
    except KeyError:
        domain = None
    next_token = dict(token)
    next_token.update({"orderBy": order, "maxCount": max_count,
                       "continuation": str(offset + max_count) if offset + max_count < len(rows) else None})
    return {"token": next_token, "results": [_prediction_json(project, p, request.base_url, domain) for p in page]}


@ROUTES.training("DELETE", "projects/{projectId}/predictions")
def delete_predictions(app: ApiApp, request: Request) -> None:
    project = app.project(request.params["projectId"])
    ids = _ids(request, "ids", limit=MAX_BATCH_ENTRIES)
    if not ids:
        raise ApiError(400, "BadRequestPredictionIdsMissing", "pass ids=ID,ID,... (at most 64)")
    contents = [p.sha256 for p in (stored.get_prediction(project, i) for i in ids) if p is not None]
    stored.delete_predictions(project, ids)
    remove_previews(project.path, stored.unused_contents(project, contents))
