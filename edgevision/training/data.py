"""Training sets from a project: label matrix, minimum-data checks, stratified folds and splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgevision import config
from edgevision.errors import NotEnoughDataError, UsageError

if TYPE_CHECKING:
    from edgevision.store.project import ImageRecord, Project


@dataclass
class TrainingSet:
    """The images a training uses and their 0/1 label matrix.

    ``labels`` are the model's output classes in order. In a multiclass project with Negative
    images, ``Negative`` is the last class (softmax must put the probability somewhere); in a
    multilabel project a Negative image is a row of zeros and not a class.
    """

    records: list["ImageRecord"]
    labels: list[str]
    tag_ids: list[str]
    targets: np.ndarray  # (N, C) float32 0/1
    multiclass: bool
    negative_class: bool

    @property
    def scored(self) -> list[bool]:
        """Columns that get per-tag figures (all but the multiclass Negative class)."""
        return [not (self.negative_class and i == len(self.labels) - 1) for i in range(len(self.labels))]

    def strata(self) -> np.ndarray:
        """A class id per image for stratified splitting (multilabel: its rarest tag; none: -1)."""
        counts = self.targets.sum(axis=0)
        out = np.full(len(self.records), -1)
        for i, row in enumerate(self.targets):
            present = np.nonzero(row)[0]
            if len(present):
                out[i] = present[np.argmin(counts[present])]
        return out


def build_training_set(project: "Project") -> TrainingSet:
    """Collect the tagged images of a classification project and check the minimums.

    Raises:
        UsageError: the project is a detection project.
        NotEnoughDataError: fewer than 2 tags (or 1 tag + Negative), or a tag with fewer than 5
            images; the message names each tag at fault and how many images it needs.
    """
    if not project.is_classification:
        raise UsageError(f"project {project.name!r} is a {project.type} project; classifier training needs multiclass or multilabel")
    records = project.training_images()
    tags = [t for t in project.tags() if t.kind == "regular"]
    negative = [t for t in project.tags() if t.kind == "negative" and t.image_count > 0]
    short = [t for t in tags if 0 < t.image_count < config.MIN_IMAGES_PER_TAG]
    if short:
        detail = ", ".join(f"{t.name!r} has {t.image_count}" for t in short)
        raise NotEnoughDataError(
            f"each tag needs at least {config.MIN_IMAGES_PER_TAG} images to train: {detail}; "
            "add images or delete the tag"
        )
    tags = [t for t in tags if t.image_count > 0]
    if len(tags) + (1 if negative else 0) < config.MIN_TAGS:
        raise NotEnoughDataError(
            f"training needs at least {config.MIN_TAGS} tags with {config.MIN_IMAGES_PER_TAG}+ images each "
            f"(or 1 tag plus '{config.NEGATIVE_TAG}' images); project {project.name!r} has "
            f"{', '.join(t.name for t in tags) or 'none'}"
        )
    multiclass = project.type == "multiclass"
    negative_class = multiclass and bool(negative)
    labels = [t.name for t in tags] + ([config.NEGATIVE_TAG] if negative_class else [])
    tag_ids = [t.id for t in tags] + ([negative[0].id] if negative_class else [])
    index = {name.lower(): i for i, name in enumerate(labels)}
    targets = np.zeros((len(records), len(labels)), dtype=np.float32)
    for i, record in enumerate(records):
        for tag in record.tags:
            j = index.get(tag.lower())
            if j is not None:
                targets[i, j] = 1.0
    return TrainingSet(records, labels, tag_ids, targets, multiclass, negative_class)


def stratified_folds(strata: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Split indices into ``k`` folds with each stratum spread evenly (deterministic for a seed)."""
    if k < 2:
        raise UsageError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for value in np.unique(strata):
        members = np.nonzero(strata == value)[0]
        rng.shuffle(members)
        for j, idx in enumerate(members):
            folds[(offset + j) % k].append(int(idx))
        offset += len(members)  # rotate so small strata do not all start in fold 0
    return [np.array(sorted(f), dtype=int) for f in folds]


def stratified_split(strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held-out) with about ``fraction`` of each stratum held out (≥ 1 each)."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for value in np.unique(strata):
        members = np.nonzero(strata == value)[0]
        rng.shuffle(members)
        n = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        held += members[:n].tolist()
    held_arr = np.array(sorted(held), dtype=int)
    rest = np.setdiff1d(np.arange(len(strata)), held_arr)
    return rest, held_arr


def choose_folds(targets: np.ndarray, requested: int | None) -> int:
    """Folds for cross-validation: ``requested`` or 5, never more than the rarest tag's image count."""
    smallest = int(min(c for c in targets.sum(axis=0) if c > 0))
    k = requested or 5
    return max(2, min(k, smallest))


def subset(records: Sequence["ImageRecord"], idx: np.ndarray) -> list["ImageRecord"]:
    return [records[i] for i in idx]
