"""Prediction records and their Custom Vision ``ImagePrediction`` JSON form (ARCHITECTURE.md #5)."""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class BoundingBox:
    """A box normalised to 0..1 of the original image: ``left, top, width, height``."""

    left: float
    top: float
    width: float
    height: float

    def to_dict(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class Prediction:
    """One tag's probability for an image (and its box, for a detector)."""

    tag_name: str
    probability: float
    tag_id: str = ""
    bounding_box: BoundingBox | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "tagId": self.tag_id,
            "tagName": self.tag_name,
            "boundingBox": self.bounding_box.to_dict() if self.bounding_box else None,
        }


@dataclass
class ImagePrediction:
    """All predictions for one image, serialised like the hosted service's ``ImagePrediction``."""

    predictions: list[Prediction]
    project: str = ""
    iteration: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "iteration": self.iteration,
            "created": self.created,
            "predictions": [p.to_dict() for p in self.predictions],
        }


def classification_predictions(
    probabilities: Sequence[float], labels: Sequence[str], tag_ids: Sequence[str] | None = None, threshold: float = 0.0
) -> list[Prediction]:
    """Turn one image's class probabilities into predictions sorted by probability, highest first.

    Args:
        probabilities: one value per label, in the order of ``labels``.
        labels: tag names (``labels.txt`` order).
        tag_ids: optional ids, same order.
        threshold: predictions below it are dropped.
    """
    if len(probabilities) != len(labels):
        raise ValueError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    ids = list(tag_ids) if tag_ids is not None else [""] * len(labels)
    out = [
        Prediction(tag_name=name, probability=float(p), tag_id=tid)
        for p, name, tid in zip(probabilities, labels, ids)
        if float(p) >= threshold
    ]
    return sorted(out, key=lambda p: -p.probability)
