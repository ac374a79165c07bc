"""Projects: tags, images (content-addressed files + SQLite rows), regions, iterations; the API the CLI mirrors."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edgevision import config
from edgevision.errors import (
    ImageRejectedError,
    IterationNotFoundError,
    NotEnoughDataError,
    ProjectExistsError,
    ProjectNotFoundError,
    RegionError,
    TagError,
    UsageError,
)
from edgevision.images import ImageInfo, inspect_image
from edgevision.store import db, staging

if TYPE_CHECKING:
    from edgevision.iteration import Iteration

log = logging.getLogger(__name__)

PROJECT_TYPES = ("multiclass", "multilabel", "detection")
DEFAULT_DOMAIN = "general-compact"
_DB_FILE = "project.sqlite"
#: A change to the image files in progress (an import, an image removal): a folder
#: ``.import-in-progress-<hex>`` owned (file-locked) by the process doing it; an import writes its
#: files there before moving them into ``images/``. One whose owner is gone was left by a crash: the
#: next open collects the image files without a row. (A bare ``.import-in-progress`` is the older form.)
_IMPORT_MARKER = ".import-in-progress"
_IMPORT_PATTERN = r"^\.import-in-progress(?:-[0-9a-f]{8})?"
#: Training writes an iteration into ``iterations/.staging-<hex>`` (see :mod:`edgevision.store.staging`).
_ITERATION_STAGING = r"^\.staging-[0-9a-f]{8}"
#: An export to ``exports/<name>`` is written into ``exports/.<name>.staging-<hex>`` (see exporters).
_EXPORT_STAGING = r"^\..+?\.staging-[0-9a-f]{8}"
# '/' and '\\' would make folder-per-tag exports escape their folder; ';' separates tags in CSV files.
_TAG_FORBIDDEN = set('/\\\0;') | {chr(c) for c in range(32)}

#: The hosted service's limit on regions per image.
MAX_REGIONS_PER_IMAGE = 300
#: Detector training needs regions of a tag on at least this many images (the hosted service's minimum).
MIN_DETECTION_IMAGES_PER_TAG = 15
#: Slack for normalised coordinates: float rounding of pixel -> 0..1 conversions, nothing more.
BOX_TOLERANCE = 1e-6

#: Called as ``progress(done, total, what)`` during long operations.
Progress = Callable[[int, int, str], None]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Tag:
    """A tag of a project. ``kind`` is ``regular`` or ``negative`` (the special ``Negative`` tag).

    In a detection project ``image_count`` counts the images with at least one region of the tag
    and ``region_count`` its regions; in a classification project ``region_count`` is 0.
    """

    id: str
    name: str
    kind: str
    image_count: int = 0
    region_count: int = 0


@dataclass(frozen=True)
class Region:
    """A tagged box on an image of a detection project, normalised to 0..1 of the (EXIF-oriented) image."""

    id: str
    image_id: str
    tag: str
    left: float
    top: float
    width: float
    height: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """The box as normalised ``x1, y1, x2, y2`` (the models' and the evaluation's convention)."""
        return (self.left, self.top, self.left + self.width, self.top + self.height)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "image_id": self.image_id, "tag": self.tag, "left": self.left, "top": self.top,
                "width": self.width, "height": self.height}


@dataclass(frozen=True)
class RegionSpec:
    """A region to import with an image: tag and normalised box. ``origin`` names the annotation
    it came from (e.g. ``instances.json: annotation id 7``) so problems can be reported by it."""

    tag: str
    left: float
    top: float
    width: float
    height: float
    origin: str = ""

    def same_as(self, tag: str, left: float, top: float, width: float, height: float) -> bool:
        """Identical region: same tag (case-insensitive) and every coordinate within ``BOX_TOLERANCE``."""
        return tag.lower() == self.tag.lower() and all(
            abs(a - b) <= BOX_TOLERANCE for a, b in zip((left, top, width, height), (self.left, self.top, self.width, self.height))
        )


@dataclass(frozen=True)
class ImageRecord:
    """A stored image: its id, file in the project store, original name, size and tags."""

    id: str
    sha256: str
    path: Path
    original_name: str
    format: str
    width: int
    height: int
    tags: tuple[str, ...]
    created: str = ""


@dataclass(frozen=True)
class ImportItem:
    """One file to import with its tags (classification) or regions (detection); ``origin`` says
    where it came from (e.g. ``list.csv:12``)."""

    path: Path
    tags: tuple[str, ...] = ()
    origin: str = ""
    regions: tuple[RegionSpec, ...] = ()
    #: The file's bytes when they did not come from a file (an upload to the training API); ``path``
    #: then only names it (its ``.name`` becomes the image's original name).
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class ImportReport:
    """What an import did: added image ids, duplicates, skipped files with the reason, new tags."""

    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, existing image id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or origin, reason)
    tags_created: list[str] = field(default_factory=list)
    regions_added: int = 0
    duplicate_regions: int = 0  # identical to a region the image already had (or listed twice)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "duplicates": [{"path": p, "existing_image": i} for p, i in self.duplicates],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "tags_created": self.tags_created,
            "regions_added": self.regions_added,
            "duplicate_regions": self.duplicate_regions,
        }


def check_tag_name(name: str) -> str:
    """Validate a tag name (it may become a folder name on export).

    Raises:
        TagError: empty, longer than 256 characters, padded with spaces, '.'/'..', or containing
            a path separator or a control character.
    """
    if not isinstance(name, str) or not name.strip():
        raise TagError("tag names cannot be empty")
    if name != name.strip():
        raise TagError(f"tag {name!r}: remove the leading/trailing spaces")
    if len(name) > 256 or name in (".", "..") or set(name) & _TAG_FORBIDDEN:
        raise TagError(f"tag {name!r}: use up to 256 characters without '/', '\\', ';' or control characters")
    return name


def check_region_box(left: float, top: float, width: float, height: float, what: str = "region") -> None:
    """Validate a normalised box: finite numbers, width and height > 0, inside 0..1.

    Only ``BOX_TOLERANCE`` (1e-6) of slack is allowed, for float rounding; a box that sticks out
    further is refused, never clipped (clipping would silently change what the user drew).

    Raises:
        RegionError: naming ``what`` (e.g. the image and tag) and the offending values.
    """
    values = (left, top, width, height)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise RegionError(f"{what}: left, top, width and height must be finite numbers, got {values}")
    if width <= 0 or height <= 0:
        raise RegionError(f"{what}: width and height must be > 0 (got width {width:g}, height {height:g})")
    eps = BOX_TOLERANCE
    if left < -eps or top < -eps or left + width > 1 + eps or top + height > 1 + eps:
        raise RegionError(
            f"{what}: box left {left:g}, top {top:g}, width {width:g}, height {height:g} is not inside the image; "
            "coordinates are fractions of the image size (0..1) and left + width, top + height must be <= 1"
        )


class Project:
    """A custom-vision project stored under ``<home>/projects/<name>/``.

    Create one with :meth:`create`, open one with :meth:`open`. Every change is one SQLite
    transaction; image files are content-addressed under ``images/`` so a crash leaves at most
    orphan files, which the next open removes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = db.connect(path / _DB_FILE)
        meta = {row["key"]: row["value"] for row in self._conn.execute("SELECT key, value FROM meta")}
        self.name: str = meta["name"]
        self.type: str = meta["type"]
        self.domain: str = meta["domain"]
        self.description: str = meta.get("description", "")
        self.created: str = meta["created"]
        #: The name the training API shows (any text, as the hosted service allows); the folder name otherwise.
        self.display_name: str = meta.get("display_name") or self.name
        #: When a project setting last changed through the training API (``created`` until then).
        self.modified: str = meta.get("modified") or self.created
        #: The hosted service's targetExportPlatforms setting, kept for clients that read it back.
        self.target_platforms: list[str] = json.loads(meta.get("target_platforms") or "[]")
        #: A UUID that names the project in the training API (the folder name is ``name``).
        #: Projects made before it existed get one the first time they are opened.
        self.id: str = meta.get("id") or self._assign_id()
        self._recover()

    def _assign_id(self) -> str:
        with db.transaction(self._conn):
            self._conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('id', ?)", (str(uuid.uuid4()),))
            return self._conn.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        name: str,
        type: str = "multiclass",
        domain: str | None = None,
        *,
        description: str = "",
        home: str | os.PathLike | None = None,
        display_name: str | None = None,
    ) -> "Project":
        """Create a new, empty project.

        Args:
            name: 1-64 letters, digits, '.', '_' or '-'.
            type: ``multiclass``, ``multilabel`` or ``detection``.
            domain: a domain name from ``edgevision domains`` (default ``general-compact``).
            description: free text shown by ``project show``.
            home: edgevision home (default ``$EDGEVISION_HOME`` or ``~/.edgevision``).
            display_name: the name the training API shows, when it differs from the folder name
                (the hosted service allows any text).

        Raises:
            UsageError: bad name, type or domain. ProjectExistsError: the name is taken.
        """
        from edgevision.domains import get_domain

        config.check_project_name(name)
        if type not in PROJECT_TYPES:
            raise UsageError(f"unknown project type {type!r}; choose one of {', '.join(PROJECT_TYPES)}")
        domain = domain or DEFAULT_DOMAIN
        get_domain(domain)  # raises UsageError with suggestions
        root = config.home(home) / "projects"
        root.mkdir(parents=True, exist_ok=True)
        final = root / name
        if final.exists():
            raise ProjectExistsError(f"project {name!r} already exists at {final}; pick another name or delete it")
        # Build the project in a temporary folder and rename it into place, so a crash never
        # leaves a project folder without its metadata.
        tmp = root / f".creating-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            conn = db.connect(tmp / _DB_FILE)
            with db.transaction(conn):
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [
                        ("name", name),
                        ("type", type),
                        ("domain", domain),
                        ("description", description),
                        ("created", _now()),
                        ("id", str(uuid.uuid4())),
                        ("schema_version", str(db.SCHEMA_VERSION)),
                    ] + ([("display_name", display_name)] if display_name and display_name != name else []),
                )
            conn.close()
            (tmp / "images").mkdir()
            os.rename(tmp, final)
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ProjectExistsError(f"project {name!r} already exists at {final}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("created project %s (%s, %s) at %s", name, type, domain, final)
        return cls(final)

    @classmethod
    def open(cls, name: str, *, home: str | os.PathLike | None = None) -> "Project":
        """Open an existing project by name.

        Raises:
            ProjectNotFoundError: no such project (the message lists the ones that exist).
        """
        config.check_project_name(name)
        path = config.home(home) / "projects" / name
        if not (path / _DB_FILE).is_file():
            known = [p.name for p in cls.list(home=home)]
            hint = f"; existing projects: {', '.join(known)}" if known else "; create one with `edgevision project create`"
            raise ProjectNotFoundError(f"no project named {name!r} under {path.parent}{hint}")
        return cls(path)

    @classmethod
    def list(cls, *, home: str | os.PathLike | None = None) -> list["Project"]:
        """All projects under the home folder, sorted by name."""
        root = config.home(home) / "projects"
        if not root.is_dir():
            return []
        return [cls(p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and (p / _DB_FILE).is_file()]

    def delete(self) -> None:
        """Delete the project folder with its images, iterations and caches."""
        self.close()
        # Rename first: an interrupted delete leaves a hidden folder, never a half-deleted project.
        trash = self.path.parent / f".deleting-{self.path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({self.name!r}, type={self.type!r}, domain={self.domain!r})"

    @property
    def is_classification(self) -> bool:
        return self.type in ("multiclass", "multilabel")

    def summary(self) -> dict[str, Any]:
        """Name, type, domain, counts per tag, untagged count and iterations, as plain data.

        Detection projects also give ``regions`` (total) and per tag ``regions``; their tag
        ``images`` count images with a region of the tag and ``untagged`` counts images with no
        region (background images).
        """
        detection = self.type == "detection"
        tags = []
        for t in self.tags():
            tags.append({"id": t.id, "name": t.name, "kind": t.kind, "images": t.image_count,
                         **({"regions": t.region_count} if detection else {})})
        out = {
            "name": self.name,
            "type": self.type,
            "domain": self.domain,
            "description": self.description,
            "created": self.created,
            "path": str(self.path),
            "images": self.image_count(),
            "untagged": len(self.images(untagged=True)),
            "tags": tags,
            "iterations": [it.number for it in self.iterations()],
        }
        if detection:
            out["regions"] = self._conn.execute("SELECT COUNT(*) FROM regions").fetchone()[0]
        return out

    # ------------------------------------------------------------------ tags
    def tags(self) -> list[Tag]:
        """All tags with their image counts, in name order.

        Detection projects count, per tag, the images with at least one region of it and its regions.
        """
        if self.type == "detection":
            rows = self._conn.execute(
                "SELECT t.id, t.name, t.kind, COUNT(DISTINCT r.image_id) AS n, COUNT(r.id) AS nr FROM tags t "
                "LEFT JOIN regions r ON r.tag_id = t.id GROUP BY t.id ORDER BY t.name COLLATE NOCASE"
            )
            return [Tag(r["id"], r["name"], r["kind"], r["n"], r["nr"]) for r in rows]
        rows = self._conn.execute(
            "SELECT t.id, t.name, t.kind, COUNT(it.image_id) AS n FROM tags t "
            "LEFT JOIN image_tags it ON it.tag_id = t.id GROUP BY t.id ORDER BY t.name COLLATE NOCASE"
        )
        return [Tag(r["id"], r["name"], r["kind"], r["n"]) for r in rows]

    def get_tag(self, name: str) -> Tag:
        """Find a tag by name (case-insensitive). Raises TagError listing known tags."""
        for tag in self.tags():
            if tag.name.lower() == name.lower():
                return tag
        known = ", ".join(t.name for t in self.tags()) or "none yet"
        raise TagError(f"project {self.name!r} has no tag {name!r} (tags: {known})")

    def create_tag(self, name: str) -> Tag:
        """Create a tag. ``Negative`` creates the special negative tag (classification only).

        Raises:
            TagError: invalid or duplicate name, or Negative in a detection project.
        """
        with db.transaction(self._conn):
            return self._create_tag(name)

    def _create_tag(self, name: str) -> Tag:
        check_tag_name(name)
        kind = "negative" if name.lower() == config.NEGATIVE_TAG.lower() else "regular"
        if kind == "negative":
            if not self.is_classification:
                raise TagError("the Negative tag is for classification projects; detection uses images without regions")
            name = config.NEGATIVE_TAG
        try:
            tag_id = str(uuid.uuid4())
            self._conn.execute(
                "INSERT INTO tags(id, name, kind, created) VALUES (?, ?, ?, ?)", (tag_id, name, kind, _now())
            )
        except sqlite3.IntegrityError:
            raise TagError(f"tag {name!r} already exists in project {self.name!r}") from None
        return Tag(tag_id, name, kind)

    def rename_tag(self, old: str, new: str) -> Tag:
        """Rename a tag; its images keep it. The Negative tag cannot be renamed."""
        tag = self.get_tag(old)
        check_tag_name(new)
        if tag.kind == "negative" or new.lower() == config.NEGATIVE_TAG.lower():
            raise TagError(f"'{config.NEGATIVE_TAG}' is a reserved tag: it cannot be renamed or be a rename target")
        try:
            with db.transaction(self._conn):
                self._conn.execute("UPDATE tags SET name = ? WHERE id = ?", (new, tag.id))
        except sqlite3.IntegrityError:
            raise TagError(f"tag {new!r} already exists in project {self.name!r}") from None
        return self.get_tag(new)

    def delete_tag(self, name: str) -> int:
        """Delete a tag and remove it from its images (the images stay). Returns how many it had.

        In a detection project the tag's regions are deleted with it.
        """
        tag = self.get_tag(name)
        with db.transaction(self._conn):
            self._conn.execute("DELETE FROM tags WHERE id = ?", (tag.id,))
        return tag.image_count

    # ------------------------------------------------------------------ images
    def image_count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def images(self, tag: str | None = None, *, untagged: bool = False) -> list[ImageRecord]:
        """List images, all of them, those with ``tag``, or (``untagged=True``) those with no tag.

        In a detection project tags sit on regions: ``tag`` selects images with a region of that
        tag and ``untagged`` the images without any region (background images).
        """
        if tag is not None and untagged:
            raise UsageError("choose either a tag or untagged, not both")
        sql = "SELECT i.* FROM images i"
        args: tuple[Any, ...] = ()
        link = "regions" if self.type == "detection" else "image_tags"
        if tag is not None:
            sql += f" WHERE EXISTS (SELECT 1 FROM {link} x WHERE x.image_id = i.id AND x.tag_id = ?)"
            args = (self.get_tag(tag).id,)
        elif untagged:
            sql += f" WHERE NOT EXISTS (SELECT 1 FROM {link} x WHERE x.image_id = i.id)"
        sql += " ORDER BY i.created, i.id"
        names = self._image_tag_names()
        return [self._record(r, names.get(r["id"], ())) for r in self._conn.execute(sql, args)]

    def get_image(self, image_id: str) -> ImageRecord:
        """Find an image by id (or a unique id prefix of at least 6 characters)."""
        rows = self._conn.execute(
            # substr, not LIKE: an id typed by a user must not act as a wildcard pattern
            "SELECT * FROM images WHERE id = ? OR (length(?) >= 6 AND substr(id, 1, length(?)) = ?)",
            (image_id, image_id, image_id, image_id),
        ).fetchall()
        if len(rows) != 1:
            what = "no image" if not rows else f"{len(rows)} images"
            raise UsageError(f"{what} with id {image_id!r} in project {self.name!r}; see `edgevision images list`")
        return self._record(rows[0], self._image_tag_names().get(rows[0]["id"], ()))

    def _image_tag_names(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for r in self._conn.execute(
            "SELECT it.image_id, t.name FROM image_tags it JOIN tags t ON t.id = it.tag_id ORDER BY t.name COLLATE NOCASE"
        ):
            out.setdefault(r[0], []).append(r[1])
        return {k: tuple(v) for k, v in out.items()}

    def _record(self, row: sqlite3.Row, tags: tuple[str, ...]) -> ImageRecord:
        return ImageRecord(
            id=row["id"],
            sha256=row["sha256"],
            path=self.path / row["file"],
            original_name=row["original_name"],
            format=row["format"],
            width=row["width"],
            height=row["height"],
            tags=tags,
            created=row["created"],
        )

    def add_images(
        self, paths: Iterable[str | os.PathLike], tags: Sequence[str] = (), *, progress: Progress | None = None
    ) -> ImportReport:
        """Add image files (folders are walked recursively), each with the same ``tags``.

        Unreadable or unsupported files are reported in ``ImportReport.skipped`` and the rest goes
        through; an image already in the project is reported as a duplicate and stored once.
        """
        from edgevision.datasets import expand_paths

        items = [ImportItem(p, tuple(tags), str(p)) for p in expand_paths(paths)]
        return self.import_items(items, progress=progress)

    def import_items(self, items: Sequence[ImportItem], *, progress: Progress | None = None) -> ImportReport:
        """Validate and store ``items`` in one transaction: all accepted images land, or none do.

        Ctrl-C or a crash leaves the project as it was before the call (orphan files are removed).

        Regions (detection projects): an invalid region is reported by its ``origin`` and skipped,
        the image and its other regions still come in; an image with more than 300 regions is
        skipped whole. An image that is already in the project (same content) is reported as a
        duplicate and its regions are *merged* into the stored image: a region identical to one
        it already has (same tag, case-insensitive, and box within 1e-6) is not added again
        (counted in ``duplicate_regions``), every other region is added. So importing a corrected
        annotation file again adds the boxes that were missing and never doubles the others.
        """
        report = ImportReport()
        # Only the metadata is kept between the check and the write: holding every file's bytes
        # would need gigabytes for a large import.
        accepted: list[tuple[ImportItem, ImageInfo, list[RegionSpec]]] = []
        for n, item in enumerate(items, 1):
            if progress:
                progress(n - 1, len(items), f"checking {item.path.name}")
            try:
                self._check_item_tags(item)
                regions = self._check_item_regions(item, report)
                accepted.append((item, inspect_image(item.path, item.data), regions))
            except (ImageRejectedError, TagError, RegionError) as exc:
                report.skipped.append((item.origin or str(item.path), str(exc)))
        if progress:
            progress(len(items), len(items), "checked")

        # Copy the new files into this import's own staging folder first, outside the write lock (the
        # slow part: reading, hashing, writing, fsync); then, holding the lock, move them into images/
        # and insert the rows in one transaction. Another process's import or training only waits for
        # the second part; a crash in either leaves the staging folder, so the next open cleans up.
        change = staging.create(self.path, _IMPORT_MARKER + "-")
        staged: dict[str, Path] = {}  # sha256 -> the file in the staging folder
        changed: set[int] = set()  # items whose file changed after it was checked
        moved: list[Path] = []
        state = "staging"
        try:
            for n, (item, info, _) in enumerate(accepted):
                if info.sha256 not in staged and not self._image_id_by_hash(info.sha256):
                    self._stage(change, n, item, info, staged, changed, report)
            with db.transaction(self._conn):
                state = "moving"
                try:
                    self._store_items(accepted, staged, changed, change, moved, report)
                    for folder in {path.parent for path in moved} | ({self.path / "images"} if moved else set()):
                        staging.fsync_dir(folder)  # the renames are on disk before the rows are
                except BaseException:
                    for path in moved:  # still holding the write lock: nobody else uses these names
                        path.unlink(missing_ok=True)
                    state = "rolled back"
                    raise
            state = "done"
        except BaseException:
            report.added.clear()
            report.regions_added = 0
            raise
        finally:
            if state == "moving":  # the COMMIT itself failed: leave the marker, the next open checks the files
                staging.release(change)
            else:
                staging.discard(change)
        return report

    @staticmethod
    def _stage(change: Path, n: int, item: ImportItem, info: ImageInfo, staged: dict[str, Path], changed: set[int],
               report: ImportReport) -> None:
        """Copy one new image into the import's staging folder (flushed to disk), unless it changed."""
        data = item.data if item.data is not None else item.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != info.sha256:
            report.skipped.append((str(item.path), "file changed while it was being imported; import it again"))
            changed.add(n)
            return
        path = change / (info.sha256 + info.extension)
        _write_atomic(path, data)
        staged[info.sha256] = path

    def _store_items(self, accepted: list[tuple[ImportItem, ImageInfo, list[RegionSpec]]], staged: dict[str, Path],
                     changed: set[int], change: Path, moved: list[Path], report: ImportReport) -> None:
        """Inside the import's transaction: move staged files into images/ and insert their rows."""
        tag_ids = {t.name.lower(): t.id for t in self.tags()}
        seen: dict[str, str] = {}
        for n, (item, info, regions) in enumerate(accepted):
            if n in changed:
                continue
            existing = seen.get(info.sha256) or self._image_id_by_hash(info.sha256)
            if existing:
                report.duplicates.append((str(item.path), existing))
                if regions:
                    self._import_regions(existing, regions, tag_ids, report, item.origin or str(item.path))
                continue
            if info.sha256 not in staged:  # stored when staging began and removed since, or its first copy changed
                self._stage(change, n, item, info, staged, changed, report)
                if n in changed:
                    continue
            source = staged.pop(info.sha256)
            for tag in item.tags:
                if tag.lower() not in tag_ids:
                    tag_ids[tag.lower()] = self._create_tag(tag).id
                    report.tags_created.append(tag)
            rel = Path("images") / info.sha256[:2] / (info.sha256 + info.extension)
            final = self.path / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, final)  # over a file a crashed import may have left: it has no row
            moved.append(final)
            image_id = str(uuid.uuid4())
            self._conn.execute(
                "INSERT INTO images(id, sha256, file, original_name, format, width, height, size_bytes, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, info.sha256, rel.as_posix(), item.path.name, info.format, info.width,
                 info.height, info.size_bytes, _now()),
            )
            self._conn.executemany(
                "INSERT INTO image_tags(image_id, tag_id) VALUES (?, ?)",
                [(image_id, tag_ids[t.lower()]) for t in dict.fromkeys(item.tags)],
            )
            if regions:
                self._import_regions(image_id, regions, tag_ids, report, item.origin or str(item.path))
            seen[info.sha256] = image_id
            report.added.append(image_id)

    def _check_item_regions(self, item: ImportItem, report: ImportReport) -> list[RegionSpec]:
        """The item's valid regions, identical ones listed once; bad ones go to ``report.skipped``.

        Raises:
            RegionError: regions in a classification project, or more than 300 on one image.
        """
        if not item.regions:
            return []
        where = str(item.origin or item.path)
        if self.type != "detection":
            raise RegionError(f"{where}: regions are for detection projects; project {self.name!r} is {self.type}")
        kept: list[RegionSpec] = []
        for n, spec in enumerate(item.regions, 1):
            what = spec.origin or f"{where}: region {n} (tag {spec.tag!r})"
            try:
                self._check_region_tag(spec.tag, what)
                check_region_box(spec.left, spec.top, spec.width, spec.height, what)
            except (TagError, RegionError) as exc:
                msg = str(exc)
                report.skipped.append((what, msg[len(what) + 2:] if msg.startswith(what + ": ") else msg))
                continue
            if any(k.same_as(spec.tag, spec.left, spec.top, spec.width, spec.height) for k in kept):
                report.duplicate_regions += 1
                continue
            kept.append(spec)
        if len(kept) > MAX_REGIONS_PER_IMAGE:
            raise RegionError(
                f"{where}: {len(kept)} regions on one image; the limit is {MAX_REGIONS_PER_IMAGE} per image, "
                "remove some boxes (image skipped)"
            )
        return kept

    def _check_region_tag(self, tag: str, what: str) -> None:
        try:
            check_tag_name(tag)
        except TagError as exc:
            raise TagError(f"{what}: {exc}") from None
        if tag.lower() == config.NEGATIVE_TAG.lower():
            raise TagError(
                f"{what}: '{config.NEGATIVE_TAG}' is not a region tag; in a detection project an image with no "
                "regions is a background example"
            )

    def _import_regions(
        self, image_id: str, specs: Sequence[RegionSpec], tag_ids: dict[str, str], report: ImportReport, where: str
    ) -> None:
        """Add ``specs`` to an image inside the import's transaction, skipping identical regions."""
        current = [
            RegionSpec(r.tag, r.left, r.top, r.width, r.height) for r in self._region_rows("WHERE r.image_id = ?", (image_id,))
        ]
        new = [s for s in specs if not any(c.same_as(s.tag, s.left, s.top, s.width, s.height) for c in current)]
        report.duplicate_regions += len(specs) - len(new)
        if len(current) + len(new) > MAX_REGIONS_PER_IMAGE:
            report.skipped.append((
                where,
                f"image {image_id} already has {len(current)} regions; {len(new)} more would pass the limit of "
                f"{MAX_REGIONS_PER_IMAGE} per image, so none of them were added",
            ))
            return
        for spec in new:
            if spec.tag.lower() not in tag_ids:
                tag_ids[spec.tag.lower()] = self._create_tag(spec.tag).id
                report.tags_created.append(spec.tag)
            self._insert_region(image_id, tag_ids[spec.tag.lower()], spec.left, spec.top, spec.width, spec.height)
            report.regions_added += 1

    def _image_id_by_hash(self, sha256: str) -> str | None:
        row = self._conn.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return row[0] if row else None

    def _check_item_tags(self, item: ImportItem) -> None:
        for tag in item.tags:
            check_tag_name(tag)
        self._check_tag_combination(item.tags, str(item.origin or item.path))

    def _check_tag_combination(self, tags: Sequence[str], what: str) -> None:
        if not tags:
            return
        if self.type == "detection":
            raise TagError(f"{what}: detection projects tag regions, not whole images; add it without tags")
        names = {t.lower() for t in tags}
        negative = config.NEGATIVE_TAG.lower() in names
        if negative and len(names) > 1:
            raise TagError(f"{what}: '{config.NEGATIVE_TAG}' means 'none of the tags' and cannot be combined with other tags")
        if self.type == "multiclass" and len(names) > 1:
            raise TagError(
                f"{what}: a multiclass image takes exactly one tag (got {', '.join(tags)}); "
                "use a multilabel project for images with several tags"
            )

    def set_image_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord:
        """Replace an image's tags (re-tag). Tags that do not exist yet are created."""
        record = self.get_image(image_id)
        self._check_tag_combination(tags, f"image {record.id}")
        with db.transaction(self._conn):
            self._conn.execute("DELETE FROM image_tags WHERE image_id = ?", (record.id,))
            known = {t.name.lower(): t.id for t in self.tags()}
            for tag in dict.fromkeys(tags):
                tag_id = known.get(tag.lower()) or self._create_tag(tag).id
                self._conn.execute("INSERT INTO image_tags(image_id, tag_id) VALUES (?, ?)", (record.id, tag_id))
        return self.get_image(record.id)

    def remove_images(self, image_ids: Iterable[str]) -> int:
        """Remove images (rows, then their files). Returns how many were removed."""
        records = [self.get_image(i) for i in image_ids]
        # Rows first (a crash then leaves files without a row, which the marker gets collected), then
        # the files, holding the write lock and only where no row points at them again: an import in
        # another process may have brought the same content back in between.
        change = staging.create(self.path, _IMPORT_MARKER + "-")
        try:
            with db.transaction(self._conn):
                self._conn.executemany("DELETE FROM images WHERE id = ?", [(r.id,) for r in records])
            with db.transaction(self._conn):
                for r in records:
                    rel = r.path.relative_to(self.path).as_posix()
                    if not self._conn.execute("SELECT 1 FROM images WHERE file = ?", (rel,)).fetchone():
                        r.path.unlink(missing_ok=True)
        except BaseException:
            staging.release(change)  # keep the marker: the next open collects what is left
            raise
        staging.discard(change)
        return len(records)

    def _recover(self) -> None:
        """Clean up after processes that crashed: image files without a row, iteration folders
        without a row, staging folders (training, exports under ``exports/``) whose owner is gone.

        Image files and iteration folders are checked holding the write lock, so the work of a live
        import or training in another process is never taken for debris (when another process
        holds the lock for more than a moment, that part waits for a later open); staging folders
        are told from live ones by their owner's file lock (:mod:`edgevision.store.staging`).
        Cheap when there is nothing to do: it lists the project folder, ``iterations/`` and ``exports/``.
        """
        try:
            iterations_dir = self.path / "iterations"
            staging.sweep(iterations_dir, _ITERATION_STAGING)
            staging.sweep(self.path / "exports", _EXPORT_STAGING)
            abandoned_change = any(re.match(_IMPORT_PATTERN, p.name) for p in self.path.iterdir())
            if not abandoned_change and not self._stray_iteration_folders():
                return
            with db.try_transaction(self._conn) as locked:
                if not locked:
                    log.info("%s: another process is writing; crash clean-up left for a later open", self.name)
                    return
                for folder in self._stray_iteration_folders():
                    log.warning("removing iteration folder %s left by an interrupted training", folder)
                    shutil.rmtree(folder, ignore_errors=True)
                if abandoned_change:
                    staging.sweep(self.path, _IMPORT_PATTERN, before_remove=self._collect_garbage)
        except (OSError, sqlite3.Error) as exc:  # e.g. a read-only copy of a project: it still opens
            log.warning("%s: crash clean-up skipped: %s", self.name, exc)

    def _stray_iteration_folders(self) -> list[Path]:
        """Numbered folders under iterations/ without a row (a crash between rename and commit, or
        during delete_iteration)."""
        base = self.path / "iterations"
        if not base.is_dir():
            return []
        numbers = {str(row[0]) for row in self._conn.execute("SELECT number FROM iterations")}
        return [p for p in base.iterdir() if p.is_dir() and p.name.isdigit() and p.name not in numbers]

    def _collect_garbage(self) -> None:
        """Remove image files with no row (left by a crash during an import). Call it holding the write lock."""
        known = {row[0] for row in self._conn.execute("SELECT file FROM images")}
        removed = 0
        for path in (self.path / "images").rglob("*"):
            if path.is_file() and path.relative_to(self.path).as_posix() not in known:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.warning("removed %d image files left by an interrupted import in %s", removed, self.name)

    # ------------------------------------------------------------------ regions (detection)
    def _require_detection(self, what: str) -> None:
        if self.type != "detection":
            raise UsageError(
                f"project {self.name!r} is a {self.type} project; {what} needs a detection project "
                "(edgevision project create NAME --type detection)"
            )

    def add_region(self, image_id: str, tag: str, left: float, top: float, width: float, height: float) -> Region:
        """Add a tagged box to an image of a detection project (the tag is created if new).

        Args:
            image_id: the image's id (or a unique prefix of at least 6 characters).
            tag: the region's tag (not ``Negative``: background images simply have no regions).
            left, top, width, height: the box as fractions (0..1) of the image's width and height.

        Returns:
            The stored :class:`Region` (its ``tag`` spelled as the project's tag is).

        Raises:
            UsageError: not a detection project, or no such image.
            TagError: invalid tag name. RegionError: box not inside the image, width/height <= 0,
                the image already has 300 regions or an identical region.
        """
        self._require_detection("adding regions")
        record = self.get_image(image_id)
        what = f"image {record.id} ({record.original_name}), tag {tag!r}"
        self._check_region_tag(tag, what)
        check_region_box(left, top, width, height, what)
        with db.transaction(self._conn):
            current = self._region_rows("WHERE r.image_id = ?", (record.id,))
            if len(current) >= MAX_REGIONS_PER_IMAGE:
                raise RegionError(f"{what}: the image already has {len(current)} regions, the limit per image")
            spec = RegionSpec(tag, left, top, width, height)
            for r in current:
                if spec.same_as(r.tag, r.left, r.top, r.width, r.height):
                    raise RegionError(f"{what}: the image already has this region ({r.id})")
            known = {t.name.lower(): t for t in self.tags()}
            tag_row = known.get(tag.lower()) or self._create_tag(tag)
            region_id = self._insert_region(record.id, tag_row.id, left, top, width, height)
        return Region(region_id, record.id, tag_row.name, float(left), float(top), float(width), float(height))

    def _insert_region(self, image_id: str, tag_id: str, left: float, top: float, width: float, height: float) -> str:
        region_id = str(uuid.uuid4())
        self._conn.execute(
            "INSERT INTO regions(id, image_id, tag_id, left_, top, width, height) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (region_id, image_id, tag_id, float(left), float(top), float(width), float(height)),
        )
        return region_id

    def _region_rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Region]:
        rows = self._conn.execute(
            "SELECT r.id, r.image_id, t.name, r.left_, r.top, r.width, r.height FROM regions r "
            f"JOIN tags t ON t.id = r.tag_id JOIN images i ON i.id = r.image_id {where} "
            "ORDER BY r.rowid",
            args,
        )
        return [Region(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def regions(self, image_id: str | None = None) -> list[Region]:
        """Regions of one image (id or unique prefix) or of the whole project, in the order they were added.

        Raises:
            UsageError: no such image.
        """
        if image_id is None:
            return self._region_rows()
        return self._region_rows("WHERE r.image_id = ?", (self.get_image(image_id).id,))

    def get_region(self, region_id: str) -> Region:
        """Find a region by id (or a unique id prefix of at least 6 characters).

        Raises:
            UsageError: no such region, or the prefix matches several.
        """
        found = self._region_rows(
            "WHERE r.id = ? OR (length(?) >= 6 AND substr(r.id, 1, length(?)) = ?)", (region_id,) * 4
        )
        if len(found) != 1:
            what = "no region" if not found else f"{len(found)} regions"
            raise UsageError(f"{what} with id {region_id!r} in project {self.name!r}; see `edgevision regions list {self.name}`")
        return found[0]

    def remove_region(self, region_id: str) -> Region:
        """Remove one region (id or unique prefix); its tag stays. Returns the removed region."""
        region = self.get_region(region_id)
        with db.transaction(self._conn):
            self._conn.execute("DELETE FROM regions WHERE id = ?", (region.id,))
        return region

    def image_regions(self) -> dict[str, list[Region]]:
        """Every image of the project mapped to its regions: what a detector trains on.

        Images without regions map to ``[]``: they are background examples. Images come in
        content-hash order and each image's regions in box order (left, top, width, height, tag),
        so the result depends only on the data, not on the order it was imported in.
        """
        out: dict[str, list[Region]] = {
            row[0]: [] for row in self._conn.execute("SELECT id FROM images ORDER BY sha256")
        }
        for region in self._region_rows():
            out[region.image_id].append(region)
        for regions in out.values():
            regions.sort(key=lambda r: (r.left, r.top, r.width, r.height, r.tag.lower()))
        return out

    def check_detection_ready(self) -> list[Tag]:
        """Check the minimum data to train a detector: regions of each tag on 15+ images.

        Tags with no regions at all are ignored (as classification ignores empty tags). One tag
        is enough: images without regions are background examples.

        Returns:
            The tags a detector would learn, in name order.

        Raises:
            UsageError: not a detection project.
            NotEnoughDataError: no regions yet, or tags on fewer than 15 images (each one named
                with its count).
        """
        self._require_detection("detector training")
        tags = [t for t in self.tags() if t.kind == "regular" and t.image_count > 0]
        if not tags:
            raise NotEnoughDataError(
                f"project {self.name!r} has no regions yet; add boxes with `edgevision regions add` or import "
                "annotated images with `edgevision import NAME PATH --format coco|voc|yolo`"
            )
        short = [t for t in tags if t.image_count < MIN_DETECTION_IMAGES_PER_TAG]
        if short:
            detail = ", ".join(f"{t.name!r} is on {t.image_count}" for t in short)
            raise NotEnoughDataError(
                f"each tag needs regions on at least {MIN_DETECTION_IMAGES_PER_TAG} images to train a detector: "
                f"{detail}; add images with regions of these tags or delete the tags"
            )
        return tags

    # ------------------------------------------------------------------ training API helpers
    def update_settings(self, *, display_name: str | None = None, description: str | None = None,
                        domain: str | None = None, type: str | None = None,
                        target_platforms: Sequence[str] | None = None) -> None:
        """Change the settings the training API can change (None leaves one as it is), in one transaction.

        Raises:
            UsageError: an unknown domain or type, classification <-> detection (create a new project
                instead), or multilabel -> multiclass while an image has several tags.
        """
        from edgevision.domains import get_domain

        updates: dict[str, str] = {}
        if display_name is not None:
            updates["display_name"] = display_name
        if description is not None:
            updates["description"] = description
        if domain is not None:
            get_domain(domain)
            updates["domain"] = domain
        if type is not None and type != self.type:
            if type not in PROJECT_TYPES:
                raise UsageError(f"unknown project type {type!r}; choose one of {', '.join(PROJECT_TYPES)}")
            if (type == "detection") != (self.type == "detection"):
                raise UsageError(f"project {self.name!r} is a {self.type} project and cannot become {type}; "
                                 "create a new project of that type and add the images there")
            if type == "multiclass" and self._conn.execute(
                    "SELECT 1 FROM image_tags GROUP BY image_id HAVING COUNT(*) > 1 LIMIT 1").fetchone():
                raise UsageError(f"project {self.name!r} has images with several tags; a multiclass image takes one "
                                 "tag, so remove the extra tags first")
            updates["type"] = type
        if target_platforms is not None:
            updates["target_platforms"] = json.dumps(list(target_platforms))
        updates["modified"] = _now()
        with db.transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(updates.items()))
        self.display_name = updates.get("display_name", self.display_name) or self.name
        self.description = updates.get("description", self.description)
        self.domain = updates.get("domain", self.domain)
        self.type = updates.get("type", self.type)
        self.modified = updates["modified"]
        if target_platforms is not None:
            self.target_platforms = list(target_platforms)

    def tag_by_id(self, tag_id: str) -> Tag | None:
        """The tag with this id (exact, case-insensitive), with its counts; None if there is none."""
        for tag in self.tags():
            if tag.id.lower() == tag_id.lower():
                return tag
        return None

    def tag_descriptions(self) -> dict[str, str]:
        """Tag descriptions by tag id (tags without one are absent)."""
        return {r[0]: r[1] for r in self._conn.execute("SELECT tag_id, description FROM tag_descriptions")}

    def set_tag_description(self, tag_id: str, description: str) -> None:
        """Set (or with ``""`` clear) a tag's description."""
        with db.transaction(self._conn):
            if description:
                self._conn.execute("INSERT OR REPLACE INTO tag_descriptions(tag_id, description) VALUES (?, ?)",
                                   (tag_id, description))
            else:
                self._conn.execute("DELETE FROM tag_descriptions WHERE tag_id = ?", (tag_id,))

    def _image_filter(self, ids: Sequence[str] | None, tag_ids: Sequence[str] | None,
                      tagged: bool | None) -> tuple[str, list[Any]]:
        link = "regions" if self.type == "detection" else "image_tags"
        where: list[str] = []
        args: list[Any] = []
        if ids is not None:
            where.append(f"lower(i.id) IN ({', '.join('?' * len(ids))})" if ids else "0")
            args.extend(i.lower() for i in ids)
        if tag_ids:
            where.append(f"EXISTS (SELECT 1 FROM {link} x WHERE x.image_id = i.id AND lower(x.tag_id) IN "
                         f"({', '.join('?' * len(tag_ids))}))")
            args.extend(t.lower() for t in tag_ids)
        if tagged is True:
            where.append(f"EXISTS (SELECT 1 FROM {link} x WHERE x.image_id = i.id)")
        elif tagged is False:
            where.append(f"NOT EXISTS (SELECT 1 FROM {link} x WHERE x.image_id = i.id)")
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def find_images(self, *, ids: Sequence[str] | None = None, tag_ids: Sequence[str] | None = None,
                    tagged: bool | None = None, newest_first: bool = True, take: int | None = None,
                    skip: int = 0) -> list[ImageRecord]:
        """Images by id, by tag id (any of them) and/or tagged state, newest (or oldest) first, a page at a time.

        In a detection project "tagged" means "has regions" and a tag selects images with a region of it.
        """
        where, args = self._image_filter(ids, tag_ids, tagged)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT i.* FROM images i{where} ORDER BY i.created {order}, i.rowid {order} LIMIT ? OFFSET ?"
        rows = self._conn.execute(sql, [*args, -1 if take is None else take, skip]).fetchall()
        names = self._image_tag_names()
        return [self._record(r, names.get(r["id"], ())) for r in rows]

    def count_images(self, *, tag_ids: Sequence[str] | None = None, tagged: bool | None = None) -> int:
        """How many images :meth:`find_images` would list without paging."""
        where, args = self._image_filter(None, tag_ids, tagged)
        return self._conn.execute(f"SELECT COUNT(*) FROM images i{where}", args).fetchone()[0]

    def image_tag_links(self, image_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """The (tag id, tag name) pairs on each image, by image id: its tags, or in a detection project
        the tags of its regions (once each)."""
        out: dict[str, list[tuple[str, str]]] = {i: [] for i in image_ids}
        if not image_ids:
            return out
        link = "regions" if self.type == "detection" else "image_tags"
        marks = ", ".join("?" * len(image_ids))
        rows = self._conn.execute(
            f"SELECT DISTINCT x.image_id, t.id, t.name FROM {link} x JOIN tags t ON t.id = x.tag_id "
            f"WHERE x.image_id IN ({marks}) ORDER BY t.name COLLATE NOCASE", list(image_ids))
        for r in rows:
            out.setdefault(r[0], []).append((r[1], r[2]))
        return out

    def regions_of(self, image_ids: Sequence[str]) -> dict[str, list[Region]]:
        """Each image's regions (in the order added), by image id."""
        out: dict[str, list[Region]] = {i: [] for i in image_ids}
        if image_ids:
            marks = ", ".join("?" * len(image_ids))
            for region in self._region_rows(f"WHERE r.image_id IN ({marks})", tuple(image_ids)):
                out.setdefault(region.image_id, []).append(region)
        return out

    def image_metadata(self, image_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each image's metadata (string keys and values), by image id."""
        out: dict[str, dict[str, str]] = {i: {} for i in image_ids}
        if image_ids:
            rows = self._conn.execute(
                f"SELECT image_id, key, value FROM image_metadata WHERE image_id IN ({', '.join('?' * len(image_ids))}) "
                "ORDER BY key", list(image_ids))
            for r in rows:
                out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    def update_image_metadata(self, image_ids: Sequence[str], metadata: dict[str, str], *,
                              limit: int | None = None) -> dict[str, dict[str, str] | None]:
        """Add or replace metadata entries on images, in one transaction.

        Returns:
            By image id: its metadata after the change; None for an unknown image; the metadata unchanged
            when the change would give it more than ``limit`` entries (nothing is written for it then).
        """
        out: dict[str, dict[str, str] | None] = {}
        with db.transaction(self._conn):
            for image_id in image_ids:
                row = self._conn.execute("SELECT id FROM images WHERE lower(id) = lower(?)", (image_id,)).fetchone()
                if row is None:
                    out[image_id] = None
                    continue
                current = self.image_metadata([row[0]])[row[0]]
                if limit is not None and len({**current, **metadata}) > limit:
                    out[image_id] = current
                    continue
                self._conn.executemany("INSERT OR REPLACE INTO image_metadata(image_id, key, value) VALUES (?, ?, ?)",
                                       [(row[0], k, v) for k, v in metadata.items()])
                out[image_id] = {**current, **metadata}
        return out

    def tag_images(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """Add tags to images of a classification project, in one transaction.

        Args:
            pairs: (image id, tag id) pairs; both must exist.

        Returns:
            Per pair: ``created``, ``duplicated`` (the image already had it) or ``exceeded`` (a multiclass
            image that already has another tag).

        Raises:
            UsageError: a detection project (its tags sit on regions), or an unknown image or tag id.
            TagError: the Negative tag and another one on the same image (nothing is changed then).
        """
        if self.type == "detection":
            raise UsageError(f"project {self.name!r} is a detection project: tag regions (POST images/regions), "
                             "not whole images")
        tags = {t.id.lower(): t for t in self.tags()}
        statuses: list[str] = []
        with db.transaction(self._conn):
            for image_id, tag_id in pairs:
                tag = tags.get(tag_id.lower())
                if tag is None:
                    raise UsageError(f"project {self.name!r} has no tag with id {tag_id!r}; GET tags lists them")
                row = self._conn.execute("SELECT id FROM images WHERE lower(id) = lower(?)", (image_id,)).fetchone()
                if row is None:
                    raise UsageError(f"project {self.name!r} has no image with id {image_id!r}")
                current = {r[0]: r[1] for r in self._conn.execute(
                    "SELECT t.id, t.kind FROM image_tags it JOIN tags t ON t.id = it.tag_id WHERE it.image_id = ?",
                    (row[0],))}
                if tag.id in current:
                    statuses.append("duplicated")
                elif current and (tag.kind == "negative" or "negative" in current.values()):
                    raise TagError(f"image {row[0]}: '{config.NEGATIVE_TAG}' means 'none of the tags' and cannot be "
                                   "combined with other tags; remove the image's tags first")
                elif current and self.type == "multiclass":
                    statuses.append("exceeded")
                else:
                    self._conn.execute("INSERT INTO image_tags(image_id, tag_id) VALUES (?, ?)", (row[0], tag.id))
                    statuses.append("created")
        return statuses

    def untag_images(self, image_ids: Sequence[str], tag_ids: Sequence[str]) -> int:
        """Remove these tags from these images (pairs that are not there are ignored); returns how many went."""
        if not image_ids or not tag_ids:
            return 0
        with db.transaction(self._conn):
            cursor = self._conn.execute(
                f"DELETE FROM image_tags WHERE lower(image_id) IN ({', '.join('?' * len(image_ids))}) "
                f"AND lower(tag_id) IN ({', '.join('?' * len(tag_ids))})",
                [i.lower() for i in image_ids] + [t.lower() for t in tag_ids])
            return cursor.rowcount

    def add_regions(self, entries: Sequence[tuple[str, str, float, float, float, float]]
                    ) -> list[tuple[str, Region | None]]:
        """Add boxes to images of a detection project, in one transaction.

        Args:
            entries: (image id, tag id, left, top, width, height), boxes as fractions of the image.

        Returns:
            Per entry: (``created``, the region), (``duplicated``, None) for a region identical to one the
            image has, or (``exceeded``, None) when the image has 300 regions already.

        Raises:
            UsageError: not a detection project, an unknown image or tag id.
            RegionError: a box not inside the image. TagError: the Negative tag.
        """
        self._require_detection("adding regions")
        tags = {t.id.lower(): t for t in self.tags()}
        out: list[tuple[str, Region | None]] = []
        with db.transaction(self._conn):
            for n, (image_id, tag_id, left, top, width, height) in enumerate(entries, 1):
                tag = tags.get(str(tag_id).lower())
                if tag is None:
                    raise UsageError(f"region {n}: project {self.name!r} has no tag with id {tag_id!r}")
                row = self._conn.execute("SELECT id FROM images WHERE lower(id) = lower(?)", (image_id,)).fetchone()
                if row is None:
                    raise UsageError(f"region {n}: project {self.name!r} has no image with id {image_id!r}")
                what = f"region {n} (image {row[0]}, tag {tag.name!r})"
                self._check_region_tag(tag.name, what)
                check_region_box(left, top, width, height, what)
                current = self._region_rows("WHERE r.image_id = ?", (row[0],))
                spec = RegionSpec(tag.name, left, top, width, height)
                if any(spec.same_as(r.tag, r.left, r.top, r.width, r.height) for r in current):
                    out.append(("duplicated", None))
                elif len(current) >= MAX_REGIONS_PER_IMAGE:
                    out.append(("exceeded", None))
                else:
                    region_id = self._insert_region(row[0], tag.id, left, top, width, height)
                    out.append(("created", Region(region_id, row[0], tag.name, float(left), float(top),
                                                  float(width), float(height))))
        return out

    def remove_regions(self, region_ids: Sequence[str]) -> int:
        """Remove regions by exact id (unknown ids are ignored); returns how many went."""
        if not region_ids:
            return 0
        with db.transaction(self._conn):
            cursor = self._conn.execute(
                f"DELETE FROM regions WHERE lower(id) IN ({', '.join('?' * len(region_ids))})",
                [r.lower() for r in region_ids])
            return cursor.rowcount

    # ------------------------------------------------------------------ import/export helpers
    def import_folder(self, root: str | os.PathLike, *, progress: Progress | None = None) -> ImportReport:
        """Import a folder-per-tag tree (``root/<tag>/**/<image>``); see :mod:`edgevision.datasets`."""
        from edgevision.datasets import read_folder_per_tag

        items, problems = read_folder_per_tag(Path(root))
        report = self.import_items(items, progress=progress)
        report.skipped[:0] = problems
        return report

    def import_csv(self, csv_path: str | os.PathLike, *, progress: Progress | None = None) -> ImportReport:
        """Import a CSV of ``path,tag[;tag...]`` rows (paths relative to the CSV's folder)."""
        from edgevision.datasets import read_csv

        items, problems = read_csv(Path(csv_path))
        report = self.import_items(items, progress=progress)
        report.skipped[:0] = problems
        return report

    def import_detection(
        self, path: str | os.PathLike, format: str, *, progress: Progress | None = None
    ) -> ImportReport:
        """Import images with their regions from COCO JSON, Pascal VOC XML or YOLO txt, in one transaction.

        See :mod:`edgevision.datasets.detection` for the layouts accepted. Bad annotations are in
        ``ImportReport.skipped`` by file and line or annotation id; the rest goes through.

        Raises:
            UsageError: not a detection project, or an unknown format.
            ImportFormatError: the annotation source is missing or malformed (named in the message).
        """
        from edgevision.datasets.detection import read_detection

        self._require_detection(f"importing {format} annotations")
        items, problems = read_detection(Path(path), format)
        report = self.import_items(items, progress=progress)
        report.skipped[:0] = problems
        return report

    def export_detection(self, dest: str | os.PathLike, format: str) -> Path:
        """Write the images and their regions as COCO, Pascal VOC or YOLO under ``dest`` (re-importable).

        Returns:
            The COCO JSON file, or the VOC/YOLO dataset folder.
        """
        from edgevision.datasets.detection import write_detection

        self._require_detection(f"exporting {format} annotations")
        return write_detection(self, Path(dest), format)

    def export_folder(self, dest: str | os.PathLike) -> Path:
        """Write the images out as folder-per-tag under ``dest`` (multi-tag images go in each folder)."""
        from edgevision.datasets import write_folder_per_tag

        return write_folder_per_tag(self.images(), Path(dest))

    def export_csv(self, dest: str | os.PathLike) -> Path:
        """Write ``dest/labels.csv`` and ``dest/images/`` so :meth:`import_csv` reads it back."""
        from edgevision.datasets import write_csv

        return write_csv(self.images(), Path(dest))

    # ------------------------------------------------------------------ iterations
    def iterations(self) -> list["Iteration"]:
        """Trained iterations, oldest first."""
        from edgevision.iteration import Iteration

        rows = self._conn.execute("SELECT number, id, created, info FROM iterations ORDER BY number")
        return [Iteration(self, r["number"], r["id"], r["created"], json.loads(r["info"])) for r in rows]

    def iteration(self, number: int | None = None) -> "Iteration":
        """One iteration by number; the latest when ``number`` is None.

        Raises:
            IterationNotFoundError: no such iteration (the message lists those that exist).
        """
        its = self.iterations()
        if not its:
            raise IterationNotFoundError(f"project {self.name!r} has no iterations yet; run `edgevision train {self.name}`")
        if number is None:
            return its[-1]
        for it in its:
            if it.number == number:
                return it
        raise IterationNotFoundError(
            f"project {self.name!r} has no iteration {number} (iterations: {', '.join(str(i.number) for i in its)})"
        )

    def delete_iteration(self, number: int) -> None:
        """Delete an iteration's row and folder."""
        it = self.iteration(number)
        with db.transaction(self._conn):
            self._conn.execute("DELETE FROM iterations WHERE number = ?", (it.number,))
        shutil.rmtree(it.path, ignore_errors=True)

    def _next_iteration_number(self) -> int:
        row = self._conn.execute("SELECT MAX(number) FROM iterations").fetchone()
        return (row[0] or 0) + 1

    def _commit_iteration(self, staging_path: Path, info: dict[str, Any]) -> "Iteration":
        """Move a fully written iteration folder into place and record it, as one step.

        The folder's files are flushed to disk before the rename, and the rename before the row is
        committed, so a row always has a complete folder; a crash after the rename and before the
        commit leaves a folder without a row, which the next open (or commit) removes.
        """
        iterations_dir = self.path / "iterations"
        iterations_dir.mkdir(exist_ok=True)
        staging.fsync_tree(staging_path)
        with db.transaction(self._conn):
            number = self._next_iteration_number()
            final = iterations_dir / str(number)
            if final.exists():  # left by a crash between rename and commit: it has no row
                shutil.rmtree(final)
            info = {**info, "number": number}
            (staging_path / "iteration.json").write_text(json.dumps(info, indent=2))
            staging.fsync_file(staging_path / "iteration.json")
            os.rename(staging_path, final)
            try:
                staging.fsync_dir(iterations_dir)
                self._conn.execute(
                    "INSERT INTO iterations(number, id, created, info) VALUES (?, ?, ?, ?)",
                    (number, info["id"], info["created"], json.dumps(info)),
                )
            except BaseException:
                os.rename(final, staging_path)
                raise
        staging.release(staging_path)
        return self.iteration(number)

    def staging_dir(self) -> Path:
        """A fresh folder to write an iteration into before :meth:`_commit_iteration`.

        It is locked by this process until committed or :meth:`discard_staging`: staging folders of
        trainings that crashed are removed here, those of trainings still running elsewhere are not.
        """
        base = self.path / "iterations"
        staging.sweep(base, _ITERATION_STAGING)
        return staging.create(base, ".staging-")

    def discard_staging(self, path: Path) -> None:
        """Remove a staging folder from :meth:`staging_dir` that will not be committed."""
        staging.discard(path)

    def train(self, mode: str = "quick", **options: Any) -> "Iteration":
        """Train a new iteration; see :func:`edgevision.training.train` for the options."""
        from edgevision.training import train

        return train(self, mode=mode, **options)

    def training_images(self) -> list[ImageRecord]:
        """Tagged images (Negative included), the set training uses, in content-hash order.

        Ordering by hash (not import time or random ids) makes folds and splits depend only on
        the images and the seed, so re-importing the same data gives the same iteration.
        """
        return sorted((r for r in self.images() if r.tags), key=lambda r: r.sha256)


def _write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` via a temporary file; False if the file was already there."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before any row can point at it
    os.replace(tmp, path)
    return True
