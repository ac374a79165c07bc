"""Images for the training API: uploads with per-image statuses, the hosted ``Image`` JSON, previews.

Uploads (multipart, base64 JSON batches, stored predictions) all go through :func:`import_uploads`:
each image is checked on its own and gets the hosted service's ``ImageCreateResult`` status
(``OK``, ``OKDuplicate``, ``ErrorImageSize``, ...) instead of one bad image failing the batch; the
accepted ones are stored by :meth:`Project.import_items` in one transaction.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from edgevision import config
from edgevision.errors import RegionError
from edgevision.store.project import (
    MAX_REGIONS_PER_IMAGE,
    ImageRecord,
    ImportItem,
    Project,
    RegionSpec,
    _write_atomic,
    check_region_box,
)
from runtimes.http_errors import ApiError
from runtimes.preprocess import ImageDecodeError, load_image

__all__ = ["MAX_BATCH", "PREVIEW_SIDES", "Upload", "image_json", "import_uploads", "preview", "safe_name"]

#: The hosted service's limit on images per upload call.
MAX_BATCH = 64
#: The longest side of the ``thumbnail`` and ``resized`` previews, in pixels.
PREVIEW_SIDES = {"thumbnail": 320, "resized": 1024}
#: The hosted service's limit on tags per image (and on tagIds per call).
MAX_TAGS_PER_IMAGE = 20
#: The hosted service's image metadata limits: entries per image, key and value lengths.
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 10, 128, 256
_CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass
class Upload:
    """One image of an upload call: its name, bytes, tags (ids) and regions (RegionSpec by tag id).

    ``status`` set beforehand (e.g. ``ErrorSource`` for undecodable base64) skips every check.
    """

    name: str
    data: bytes
    tag_ids: list[str] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    source_url: str | None = None
    status: str | None = None
    message: str | None = None


def safe_name(name: str | None, n: int) -> str:
    """A file name to record for an upload: the last path component, printable, at most 200 characters."""
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(c for c in text if c.isprintable()).strip().strip(".")
    return text[:200] or f"image-{n}"


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES.get(fmt.upper(), "application/octet-stream")


def _check_image(upload: Upload) -> tuple[str, str] | None:
    """(status, message) when the image cannot be stored, else None."""
    data = upload.data
    if not data:
        return "ErrorSource", f"{upload.name}: the image is empty"
    if len(data) > config.MAX_TRAIN_IMAGE_BYTES:
        return "ErrorImageSize", (f"{upload.name}: {len(data) / 2**20:.1f} MB is over the "
                                  f"{config.MAX_TRAIN_IMAGE_BYTES // 2**20} MB limit for training images; "
                                  "resize or recompress it")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        return "ErrorImageDimensions", f"{upload.name}: too many pixels; sides up to {config.MAX_SIDE} px are accepted"
    except (OSError, ValueError, SyntaxError) as exc:
        return "ErrorImageFormat", f"{upload.name}: not a readable image ({exc}); send JPEG, PNG, BMP, GIF or WEBP"
    if max(width, height) > config.MAX_SIDE or min(width, height) < 1 \
            or max(width, height) / min(width, height) > config.MAX_ASPECT:
        return "ErrorImageDimensions", (f"{upload.name}: {width}x{height} px; sides must be at most "
                                        f"{config.MAX_SIDE} px and the aspect ratio at most {config.MAX_ASPECT:g}:1")
    # The full decode (truncated or corrupt data) is Project.import_items's: its refusals come back
    # as ErrorImageFormat, and each image is decoded once.
    return None


def _check_tags(project: Project, upload: Upload, tags: dict[str, Any]) -> tuple[str, str] | None:
    ids = list(dict.fromkeys(t.lower() for t in upload.tag_ids))
    unknown = [t for t in ids if t not in tags]
    if unknown:
        return "ErrorInvalidTag", f"{upload.name}: project has no tag with id {unknown[0]!r}; GET tags lists them"
    if len(ids) > MAX_TAGS_PER_IMAGE:
        return "ErrorTagLimitExceed", f"{upload.name}: {len(ids)} tags; at most {MAX_TAGS_PER_IMAGE} per image"
    if ids and project.type == "detection":
        return "ErrorInvalidTag", (f"{upload.name}: a detection project tags regions, not whole images; "
                                   "send regions instead of tagIds")
    kinds = [tags[t].kind for t in ids]
    if "negative" in kinds and len(ids) > 1:
        return "ErrorNegativeAndRegularTagOnSameImage", \
            f"{upload.name}: the Negative tag cannot be combined with other tags"
    if project.type == "multiclass" and len(ids) > 1:
        return "ErrorTagLimitExceed", (f"{upload.name}: a multiclass image takes one tag (got {len(ids)}); "
                                       "use a Multilabel project for several tags per image")
    if len(upload.regions) > MAX_REGIONS_PER_IMAGE:
        return "ErrorRegionLimitExceed", (f"{upload.name}: {len(upload.regions)} regions; at most "
                                          f"{MAX_REGIONS_PER_IMAGE} per image")
    return None


def _region_specs(project: Project, upload: Upload, tags: dict[str, Any], n: int) -> list[RegionSpec]:
    """The upload's regions as RegionSpecs; a bad one fails the whole call (400), naming it."""
    if upload.regions and project.type != "detection":
        raise ApiError(400, "BadRequestImageRegions", f"image {n} ({upload.name}): regions are for object "
                                                      "detection projects; this project classifies whole images")
    specs = []
    for k, region in enumerate(upload.regions, 1):
        what = f"image {n} ({upload.name}) region {k}"
        if not isinstance(region, dict):
            raise ApiError(400, "BadRequestImageRegions", f"{what}: expected an object with tagId, left, top, width, height")
        tag = tags.get(str(region.get("tagId", "")).lower())
        if tag is None:
            raise ApiError(400, "BadRequestImageRegions", f"{what}: no tag with id {region.get('tagId')!r}; "
                                                          "GET tags lists them")
        if tag.kind == "negative":
            raise ApiError(400, "BadRequestImageRegions", f"{what}: the Negative tag cannot be a region's tag")
        box = [region.get(k2) for k2 in ("left", "top", "width", "height")]
        try:
            check_region_box(*box, what=what)  # type: ignore[arg-type]
        except RegionError as exc:
            raise ApiError(400, "BadRequestImageRegions", str(exc)) from None
        specs.append(RegionSpec(tag.name, *[float(v) for v in box], origin=what))  # type: ignore[arg-type]
    return specs


def check_metadata(value: Any) -> dict[str, str]:
    """Validate image metadata: an object of at most 10 string keys (<= 128 chars) and string values (<= 256).

    Raises:
        ApiError: 400 ``BadRequestImageMetadataKey`` / ``BadRequestImageMetadataValue`` naming the entry.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "BadRequestImageMetadataKey", "metadata must be an object of string keys and values")
    if len(value) > MAX_METADATA:
        raise ApiError(400, "BadRequestImageMetadataKey", f"{len(value)} metadata entries; at most {MAX_METADATA}")
    for key, item in value.items():
        if not key or len(key) > MAX_METADATA_KEY or any(not c.isprintable() for c in key):
            raise ApiError(400, "BadRequestImageMetadataKey",
                           f"metadata key {key[:50]!r}: use 1-{MAX_METADATA_KEY} printable characters")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise ApiError(400, "BadRequestImageMetadataValue",
                           f"metadata {key!r}: the value must be a string of at most {MAX_METADATA_VALUE} characters")
    return dict(value)


def import_uploads(project: Project, uploads: Sequence[Upload], base_url: str,
                   metadata: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Check and store uploaded images; returns (HTTP status, ImageCreateSummary JSON).

    ``metadata`` (checked by :func:`check_metadata`) is given to each newly stored image.

    The status is 200 when every image is ``OK``, else 207 (Multi-Status), as the hosted service answers.

    Raises:
        ApiError: 400 for more than 64 images or a malformed region (nothing is stored then).
    """
    if not uploads:
        raise ApiError(400, "BadRequestImageBatch", "no images in the request; send 1 to 64 images")
    if len(uploads) > MAX_BATCH:
        raise ApiError(400, "BadRequestImageBatch", f"{len(uploads)} images in one call; send at most {MAX_BATCH} "
                                                    "per call and split larger sets over several calls")
    tags = {t.id.lower(): t for t in project.tags()}
    results: list[dict[str, Any]] = []
    items: list[tuple[int, ImportItem, str]] = []
    first_by_hash: dict[str, int] = {}
    for n, upload in enumerate(uploads, 1):
        specs = _region_specs(project, upload, tags, n) if upload.status is None else []
        problem = (upload.status, upload.message or "") if upload.status else (
            _check_image(upload) or _check_tags(project, upload, tags))
        result: dict[str, Any] = {"sourceUrl": upload.source_url or upload.name, "status": "OK", "image": None}
        results.append(result)
        if problem:
            result["status"], result["edgevisionMessage"] = problem
            continue
        sha = hashlib.sha256(upload.data).hexdigest()
        if sha in first_by_hash or project._image_id_by_hash(sha):
            result["status"] = "OKDuplicate"
        first_by_hash.setdefault(sha, n)
        names = tuple(tags[t.lower()].name for t in dict.fromkeys(x.lower() for x in upload.tag_ids))
        item = ImportItem(Path(f"upload-{n}") / upload.name, names, f"image {n} ({upload.name})", tuple(specs),
                          data=upload.data)
        items.append((n, item, sha))
    if items:
        report = project.import_items([item for _, item, _ in items])
        skipped = dict(report.skipped)
        for n, item, sha in items:
            result = results[n - 1]
            if item.origin in skipped:  # tags and regions were checked above: the image itself did not decode
                result["status"], result["edgevisionMessage"] = "ErrorImageFormat", skipped[item.origin]
                continue
            image_id = project._image_id_by_hash(sha)
            if image_id is None:
                result["status"], result["edgevisionMessage"] = "ErrorStorage", "the image was not stored; send it again"
                continue
            result["image"] = image_id
            if metadata and result["status"] == "OK":
                project.update_image_metadata([image_id], metadata)
        records = {r.id: r for r in project.find_images(ids=[r["image"] for r in results if r["image"]])}
        rendered = {j["id"]: j for j in image_json(project, list(records.values()), base_url)}
        for result in results:
            if result["image"]:
                result["image"] = rendered.get(result["image"])
    ok = all(r["status"] == "OK" for r in results)
    return (200 if ok else 207), {"isBatchSuccessful": ok, "images": results}


def image_json(project: Project, records: Sequence[ImageRecord], base_url: str) -> list[dict[str, Any]]:
    """The hosted ``Image`` JSON of each record (tags, regions, absolute file URLs)."""
    ids = [r.id for r in records]
    links = project.image_tag_links(ids)
    regions = project.regions_of(ids) if project.type == "detection" else {}
    tag_ids = {t.name.lower(): t.id for t in project.tags()} if regions else {}
    metadata = project.image_metadata(ids)
    out = []
    for r in records:
        base = f"{base_url}/edgevision/projects/{project.id}/images/{r.id}"
        out.append({
            "id": r.id,
            "created": r.created,
            "width": r.width,
            "height": r.height,
            "resizedImageUri": f"{base}/resized",
            "thumbnailUri": f"{base}/thumbnail",
            "originalImageUri": f"{base}/original",
            "tags": [{"tagId": tid, "tagName": name, "created": r.created} for tid, name in links.get(r.id, [])],
            "regions": [{"regionId": g.id, "tagName": g.tag, "created": r.created, "tagId": tag_ids.get(g.tag.lower(), ""),
                         "left": g.left, "top": g.top, "width": g.width, "height": g.height}
                        for g in regions.get(r.id, [])],
            "metadata": metadata.get(r.id, {}),
            "edgevisionName": r.original_name,
        })
    return out


def preview(project_path: Path, sha256: str, source: Path, kind: str) -> bytes:
    """A JPEG at most ``PREVIEW_SIDES[kind]`` px on its longest side, EXIF orientation applied.

    Cached under ``<project>/previews/`` by content hash, so each is made once.

    Raises:
        ApiError: 500 when the stored file cannot be decoded any more.
    """
    side = PREVIEW_SIDES[kind]
    cached = project_path / "previews" / sha256[:2] / f"{sha256}-{side}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    try:
        image = load_image(source)
    except ImageDecodeError as exc:
        raise ApiError(500, "ErrorUnknown", f"the stored image cannot be decoded ({exc})") from None
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    try:
        _write_atomic(cached, data)
    except OSError:  # a read-only project still shows its previews
        pass
    return data


def remove_previews(project_path: Path, sha256s: Sequence[str]) -> None:
    """Delete the cached previews of these image contents."""
    for sha in sha256s:
        for side in PREVIEW_SIDES.values():
            (project_path / "previews" / sha[:2] / f"{sha}-{side}.jpg").unlink(missing_ok=True)
