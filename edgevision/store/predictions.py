"""Stored predictions: images sent to a prediction route with storing on, kept for review and retraining.

A prediction route (``.../classify/iterations/{name}/image`` without ``/nostore``) calls
:func:`store_prediction`; the training API's ``predictions/query`` lists them (``Suggested`` order =
most unsure first) and ``images/predictions`` copies them into the training set with tags or
regions. Files are content-addressed under ``<project>/predictions/`` (the same image predicted
twice is stored once) and rows live in the project database's ``predictions`` table.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from edgevision import config
from edgevision.errors import ImageRejectedError
from edgevision.store import db

__all__ = ["StoredPrediction", "delete_predictions", "get_prediction", "list_predictions", "store_prediction",
           "uncertainty"]

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
_DB_FILE = "project.sqlite"
_FOLDER = "predictions"


@dataclass(frozen=True)
class StoredPrediction:
    """One stored prediction: the image file and what the model said about it."""

    id: str
    sha256: str
    path: Path
    format: str
    width: int
    height: int
    iteration_id: str
    created: str
    uncertainty: float
    results: list[dict[str, Any]]

    def probability(self, tag_id: str) -> float:
        """The highest probability the model gave ``tag_id`` on this image (0 when absent)."""
        values = [float(p.get("probability", 0.0)) for p in self.results
                  if str(p.get("tagId", "")).lower() == tag_id.lower()]
        return max(values, default=0.0)


def uncertainty(project_type: str, predictions: Sequence[dict[str, Any]]) -> float:
    """How unsure the model was, 0 (sure) .. 1 (a coin toss).

    Multiclass: 1 - (p1 - p2), the margin between the two most likely tags. Multilabel and detection:
    the largest 1 - |2p - 1| over the predictions (each tag or box is its own yes/no decision). No
    predictions at all count as sure (0).
    """
    probs = [min(1.0, max(0.0, float(p.get("probability", 0.0)))) for p in predictions]
    if not probs:
        return 0.0
    if project_type == "multiclass":
        top = sorted(probs, reverse=True) + [0.0]
        return 1.0 - (top[0] - top[1])
    return max(1.0 - abs(2.0 * p - 1.0) for p in probs)


def store_prediction(project: Any, data: bytes, *, iteration_id: str, predictions: list[dict]) -> str:
    """Store an image sent for prediction and the model's answer; returns the new prediction's UUID.

    Safe to call from any thread, without the training API's lock: it opens its own short-lived
    database connection (SQLite serialises the write with the others).

    Args:
        project: the :class:`edgevision.store.project.Project` the prediction was made for.
        data: the image bytes as received.
        iteration_id: the id of the iteration that answered.
        predictions: the ImagePrediction JSON's ``predictions`` list (probability, tagId, tagName,
            boundingBox for detectors).

    Raises:
        ImageRejectedError: ``data`` is not an image in an accepted format.
    """
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt = (header.format or "").upper()
            width, height = header.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageRejectedError(f"the image sent for prediction cannot be read ({exc})") from None
    if fmt not in _EXTENSIONS or fmt not in config.ACCEPTED_FORMATS:
        raise ImageRejectedError(f"{fmt or 'unknown'} images are not stored; use one of {', '.join(config.ACCEPTED_FORMATS)}")
    from edgevision.store.project import _write_atomic

    sha = hashlib.sha256(data).hexdigest()
    rel = Path(_FOLDER) / sha[:2] / (sha + _EXTENSIONS[fmt])
    prediction_id = str(uuid.uuid4())
    created = _stamp(_dt.datetime.now(_dt.timezone.utc))
    score = uncertainty(project.type, predictions)
    conn = db.connect(project.path / _DB_FILE)
    try:
        with db.transaction(conn):
            # The file first, inside the write transaction: a delete of the same content cannot run in
            # between, and a row never points at a missing file.
            _write_atomic(project.path / rel, data)
            conn.execute(
                "INSERT INTO predictions(id, sha256, file, format, width, height, iteration_id, created, uncertainty,"
                " results) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (prediction_id, sha, rel.as_posix(), fmt, width, height, str(iteration_id), created, score,
                 json.dumps(list(predictions))),
            )
    finally:
        conn.close()
    return prediction_id


def _record(project: Any, row: Any) -> StoredPrediction:
    return StoredPrediction(
        id=row["id"], sha256=row["sha256"], path=project.path / row["file"], format=row["format"],
        width=row["width"], height=row["height"], iteration_id=row["iteration_id"], created=row["created"],
        uncertainty=row["uncertainty"], results=json.loads(row["results"]),
    )


def _stamp(when: _dt.datetime) -> str:
    """The stored form of a time (``created``): UTC, milliseconds, ISO 8601, so that text order is time order."""
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


def list_predictions(project: Any, *, order_by: str = "Newest", iteration_id: str | None = None,
                     start: _dt.datetime | None = None, end: _dt.datetime | None = None) -> list[StoredPrediction]:
    """Stored predictions of a project.

    Args:
        order_by: ``Newest``, ``Oldest`` or ``Suggested`` (most unsure first, then newest).
        iteration_id: only those made by this iteration.
        start, end: only those created in ``[start, end]`` (timezone-aware; compared at millisecond precision).
    """
    where, args = [], []
    if iteration_id:
        where.append("lower(iteration_id) = lower(?)")
        args.append(iteration_id)
    if start:
        where.append("created >= ?")
        args.append(_stamp(start))
    if end:
        where.append("created <= ?")
        args.append(_stamp(end))
    order = {"newest": "created DESC, rowid DESC", "oldest": "created ASC, rowid ASC",
             "suggested": "uncertainty DESC, created DESC, rowid DESC"}[order_by.lower()]
    sql = "SELECT * FROM predictions" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
    return [_record(project, r) for r in project._conn.execute(sql, args)]


def get_prediction(project: Any, prediction_id: str) -> StoredPrediction | None:
    """One stored prediction by id, or None."""
    row = project._conn.execute("SELECT * FROM predictions WHERE lower(id) = lower(?)", (prediction_id,)).fetchone()
    return _record(project, row) if row else None


def unused_contents(project: Any, sha256s: Iterable[str]) -> list[str]:
    """Those of ``sha256s`` that neither a stored prediction nor a project image has (their previews can go)."""
    conn = project._conn
    return [sha for sha in dict.fromkeys(sha256s)
            if not conn.execute("SELECT 1 FROM predictions WHERE sha256 = ?", (sha,)).fetchone()
            and not conn.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone()]


def delete_predictions(project: Any, ids: Iterable[str]) -> int:
    """Delete stored predictions (rows, then files no other row uses); unknown ids are ignored.

    Returns:
        How many were deleted.
    """
    wanted = [i.lower() for i in ids]
    conn = project._conn
    with db.transaction(conn):
        rows = [r for i in wanted for r in conn.execute("SELECT id, file FROM predictions WHERE lower(id) = ?", (i,))]
        conn.executemany("DELETE FROM predictions WHERE id = ?", [(r["id"],) for r in rows])
        for file in {r["file"] for r in rows}:
            if not conn.execute("SELECT 1 FROM predictions WHERE file = ?", (file,)).fetchone():
                (project.path / file).unlink(missing_ok=True)
    return len(rows)
