"""A trained iteration: its record, model, stored evaluation, re-evaluation and prediction."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from edgevision.errors import UsageError
from edgevision.evaluation import DEFAULT_THRESHOLD, ClassificationMetrics, classification_metrics, summarise_folds
from runtimes.prediction import ImagePrediction, classification_predictions
from runtimes.preprocess import ImageDecodeError, ImageSource, load_image, preprocess

if TYPE_CHECKING:
    from edgevision.store.project import Project

PREDICT_BATCH = 32


class Iteration:
    """One training result of a project (numbered 1, 2, ...). Obtain it from ``Project.iteration(n)``."""

    def __init__(self, project: "Project", number: int, id: str, created: str, info: dict[str, Any]) -> None:
        self.project = project
        self.number = number
        self.id = id
        self.created = created
        self.info = info
        self._model: Any = None
        self._predict_fn: Any = None

    def __repr__(self) -> str:
        return f"Iteration({self.project.name!r}, {self.number}, mode={self.mode!r})"

    @property
    def path(self) -> Path:
        return self.project.path / "iterations" / str(self.number)

    @property
    def mode(self) -> str:
        return self.info.get("mode", "")

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def metrics(self) -> dict[str, Any]:
        """The figures computed when the iteration was trained (threshold 0.5)."""
        return self.info.get("metrics", {})

    def summary(self) -> dict[str, Any]:
        """The iteration record as plain data (what ``iterations --json`` prints)."""
        return {k: v for k, v in self.info.items() if k != "metrics"} | {"metrics": self.metrics}

    # ------------------------------------------------------------------ model
    def load_model(self) -> Any:
        """The trained tf_keras model (RGB 0..255 NHWC in, probabilities out); loaded once."""
        if self._model is None:
            from edgevision._tf import import_tf

            _, keras = import_tf()
            self._model = keras.models.load_model(self.path / self.info["model_file"], compile=False)
        return self._model

    @property
    def input_size(self) -> int:
        from edgevision.domains import get_domain

        return get_domain(self.info["domain"]).input_size

    def predict_probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities (N, C) for images, preprocessed by the shared runtime function."""
        if self._predict_fn is None:
            from edgevision._tf import import_tf

            tf, _ = import_tf()
            model = self.load_model()
            self._predict_fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        size = (self.input_size, self.input_size)
        out = []
        for start in range(0, len(images), PREDICT_BATCH):
            batch = np.stack([preprocess(im, size) for im in images[start : start + PREDICT_BATCH]])
            out.append(np.asarray(self._predict_fn(batch), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict(self, images: Sequence[ImageSource] | ImageSource, *, threshold: float = 0.0) -> list[ImagePrediction]:
        """Predict images; returns Custom Vision ``ImagePrediction`` records (see ``.to_dict()``).

        Args:
            images: one image or a list (paths, bytes, file objects, PIL images or arrays).
            threshold: predictions below this probability are left out.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        probs = self.predict_probabilities(images)
        ids = self.info.get("tag_ids")
        return [
            ImagePrediction(
                classification_predictions(p, self.labels, ids, threshold),
                project=self.project.name,
                iteration=str(self.number),
            )
            for p in probs
        ]

    # ------------------------------------------------------------------ export
    def export(self, format: str, *, flavor: str | None = None, out: str | os.PathLike | None = None,
               options: dict[str, Any] | None = None, zip: bool = False) -> Any:
        """Export this iteration to a format and verify it against the trained model.

        Args:
            format: ``tflite``, ``onnx``, ``coreml``, ``savedmodel``, ``docker`` or a plugin's name.
            flavor: the format's flavor (default: the format's default, e.g. ``float32``).
            out: export folder (default ``<project>/exports/<iteration>-<format>-<flavor>/``).
            options: exporter options, e.g. ``{"opset": 13}``.
            zip: also write ``<out>.zip``.

        Returns:
            ``exporters.ExportResult`` (``path``, ``manifest``, ``verification``).

        Raises:
            OptionsError: unknown format, flavor or option (exit code 2).
            VerificationError: the artefact does not match the model (exit code 3).
        """
        from exporters import export_iteration

        return export_iteration(self, format, flavor=flavor, out=out, options=options, zip=zip)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, *, threshold: float = DEFAULT_THRESHOLD, data: str | os.PathLike | None = None) -> ClassificationMetrics:
        """Figures at ``threshold`` without retraining.

        Args:
            threshold: probability at which a tag counts as predicted.
            data: an external folder-per-tag test set to score instead of the held-out images
                stored with the iteration. Its tags must be tags of this iteration.

        Raises:
            UsageError: bad threshold, or the test set has tags the model does not know.
        """
        if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0) or math.isnan(threshold):
            raise UsageError(f"threshold must be between 0 and 1, got {threshold}")
        multiclass = self.info["type"] == "multiclass"
        scored = [not (self.info.get("negative_class") and lab == self.labels[-1]) for lab in self.labels]
        if data is not None:
            return self._evaluate_external(Path(data), threshold, multiclass, scored)
        stored = np.load(self.path / "evaluation.npz")
        probs, targets = stored["probabilities"], stored["targets"]
        metrics = classification_metrics(probs, targets, self.labels, multiclass=multiclass, threshold=threshold, scored=scored)
        metrics.method = self.info.get("evaluation_method", "")
        if "fold" in stored.files:
            fold = stored["fold"]
            metrics.folds = summarise_folds([
                classification_metrics(probs[fold == f], targets[fold == f], self.labels,
                                       multiclass=multiclass, threshold=threshold, scored=scored)
                for f in np.unique(fold)
            ])
        return metrics

    def _evaluate_external(self, root: Path, threshold: float, multiclass: bool, scored: list[bool]) -> ClassificationMetrics:
        from edgevision.datasets import read_folder_per_tag

        items, problems = read_folder_per_tag(root)
        index = {name.lower(): i for i, name in enumerate(self.labels)}
        unknown = sorted({t for it in items for t in it.tags if t.lower() not in index and t.lower() != "negative"})
        if unknown:
            raise UsageError(
                f"{root}: tag folders {', '.join(unknown)} are not tags of iteration {self.number} "
                f"(tags: {', '.join(self.labels)}); rename or remove them"
            )
        readable = []
        for item in items:
            try:
                load_image(item.path)  # unreadable test images are reported, not fatal
                readable.append(item)
            except ImageDecodeError as exc:
                problems.append((str(item.path), str(exc)))
        items = readable
        if not items:
            raise UsageError(f"{root}: no readable images found in its tag folders")
        targets = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        for i, item in enumerate(items):
            for t in item.tags:
                if t.lower() in index:
                    targets[i, index[t.lower()]] = 1
        probs = self.predict_probabilities([it.path for it in items])
        metrics = classification_metrics(probs, targets, self.labels, multiclass=multiclass, threshold=threshold, scored=scored)
        metrics.method = f"external test set {root} ({len(items)} images, {len(problems)} files skipped)"
        metrics.skipped = problems
        return metrics


def iterations_table(iterations: Iterable[Iteration]) -> list[dict[str, Any]]:
    """One row per iteration: number, created, mode, images, duration and headline figures."""
    rows = []
    for it in iterations:
        m = it.metrics
        rows.append({
            "number": it.number,
            "id": it.id,
            "created": it.created,
            "mode": it.mode,
            "domain": it.info.get("domain"),
            "images": it.info.get("image_count"),
            "duration_s": it.info.get("duration_s"),
            "precision": m.get("precision"),
            "recall": m.get("recall"),
            "mean_average_precision": m.get("mean_average_precision"),
            "accuracy": m.get("accuracy"),
        })
    return rows
