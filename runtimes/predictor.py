"""``Predictor``: an export's manifest + engine, turning images into Custom Vision ``ImagePrediction`` records."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from runtimes.engines import Engine
from runtimes.errors import InvalidOptionError, ModelMismatchError, UnsupportedTaskError
from runtimes.manifest import Manifest
from runtimes.prediction import ImagePrediction, classification_predictions
from runtimes.preprocess import ImageSource, preprocess

log = logging.getLogger(__name__)

#: Images preprocessed and run together by ``predict_batch``/``probabilities`` (bounds memory:
#: 32 images at 224 px are 4.8 MB of pixels, 19 MB once converted to float32).
BATCH_SIZE = 32


def check_supported(manifest: Manifest) -> None:
    """Refuse, before anything heavy is loaded, an export whose task this runtime cannot run yet.

    Raises:
        UnsupportedTaskError: an object-detection export.
    """
    if manifest.task == "detection":
        # Detection exports are valid manifests; running them (box outputs, NMS in the graph)
        # arrives with the detection issue, as a _detections() twin of _classifications().
        raise UnsupportedTaskError(
            f"{manifest.source}: this is an object-detection export; the runtime runs classifiers only for now "
            "(detection support arrives with the object-detection release)")


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float if it is a probability in [0, 1].

    Raises:
        InvalidOptionError: not a number between 0 and 1 (a ``ValueError``).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise InvalidOptionError(f"threshold must be a probability between 0 and 1, got {threshold!r}")
    return float(threshold)


class Predictor:
    """Runs one export on images. Obtain it from :func:`runtimes.load`; close it (or use ``with``).

    One call at a time: the engines' interpreters are not thread-safe, so a multi-threaded caller
    serialises calls (as ``runtimes.server`` does) or loads one predictor per thread.

    Attributes:
        manifest: the export's :class:`~runtimes.manifest.Manifest`.
        task: ``multiclass`` or ``multilabel``.
        labels: tag names in output order.
        input_size: the model's input ``(width, height)``.
        engine: the loaded :class:`~runtimes.engines.Engine`.
    """

    def __init__(self, manifest: Manifest, engine: Engine, *, on_close: Callable[[], None] | None = None) -> None:
        """Pair a validated manifest with an engine loaded from its model file.

        Args:
            manifest: the export's manifest.
            engine: the engine running ``manifest.model_file``.
            on_close: called once by :meth:`close` (e.g. to remove a zip's extraction folder).

        Raises:
            UnsupportedTaskError: the export is an object detector (not runnable by this version yet).
            ModelMismatchError: the model's input size or output width disagree with the manifest.
        """
        self.manifest = manifest
        self.engine = engine
        self._on_close = on_close
        self._closed = False
        check_supported(manifest)
        self._check_against_model()
        self._output_name = self._pick_output()

    # ------------------------------------------------------------------ properties
    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.manifest.input_size

    def __repr__(self) -> str:
        return (f"Predictor(task={self.task!r}, labels={len(self.labels)}, input_size={self.input_size}, "
                f"engine={self.engine!r})")

    # ------------------------------------------------------------------ checks at load
    def _check_against_model(self) -> None:
        m, e = self.manifest, self.engine
        width, height = e.input_size
        if (width is not None and width != m.input.width) or (height is not None and height != m.input.height):
            raise ModelMismatchError(
                f"{m.source}: input is {m.input.width}x{m.input.height} but {e.path.name} takes {width}x{height}; "
                "the manifest does not belong to this model file")
        if e.layout != m.input.layout:
            raise ModelMismatchError(f"{m.source}: input layout {m.input.layout} but {e.path.name} takes {e.layout}")
        if e.input.dtype != np.dtype(m.input.dtype):
            raise ModelMismatchError(
                f"{m.source}: input dtype {m.input.dtype} but {e.path.name} takes {e.input.dtype}")

    def _pick_output(self) -> str:
        names = [o.name for o in self.engine.outputs]
        wanted = self.manifest.outputs[0].name
        if wanted in names:
            return wanted
        if len(names) == 1:
            # TFLite files converted without renaming call their output "StatefulPartitionedCall:0";
            # a classifier has one output, so it is unambiguous.
            return names[0]
        raise ModelMismatchError(
            f"{self.manifest.source}: output {wanted!r} not found in {self.engine.path.name} (it has {', '.join(names)})")

    # ------------------------------------------------------------------ prediction
    def _tensor(self, images: Sequence[ImageSource]) -> np.ndarray:
        size, method = self.manifest.input_size, self.manifest.input.resize
        # uint8 pixels: the same values as float32, but the engine converts them once, straight to
        # the model's dtype (or not at all for a uint8-input model): part of staying within 1.1x
        # of the bare engine call.
        arrays = [preprocess(image, size, method, dtype=np.uint8) for image in images]
        return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("this Predictor is closed; load the export again")
        out = np.asarray(self.engine.run(batch)[self._output_name], dtype=np.float32)
        out = out.reshape(out.shape[0], -1)
        if out.shape[1] != len(self.manifest.labels):
            raise ModelMismatchError(
                f"{self.engine.path.name} gives {out.shape[1]} values per image but {self.manifest.labels_file} "
                f"has {len(self.manifest.labels)} labels")
        return out

    def probabilities(self, images: Iterable[ImageSource]) -> np.ndarray:
        """Class probabilities for images, in label order.

        Args:
            images: paths, bytes, binary file objects, PIL images or numpy arrays (HxWx3, 0..255).

        Returns:
            float32 array ``(N, C)``; ``C == len(labels)``.

        Raises:
            ImageDecodeError: an image cannot be decoded (the message names it).
        """
        images = list(images)
        if not images:
            return np.zeros((0, len(self.manifest.labels)), np.float32)
        parts = [self._run(self._tensor(images[i : i + BATCH_SIZE])) for i in range(0, len(images), BATCH_SIZE)]
        return np.concatenate(parts)

    def _classifications(self, probabilities: np.ndarray, threshold: float) -> list[ImagePrediction]:
        m = self.manifest
        return [
            ImagePrediction(classification_predictions(p, m.labels, m.tag_ids, threshold),
                            project=m.project, iteration=m.iteration)
            for p in probabilities
        ]

    def predict(self, image: ImageSource, *, threshold: float = 0.0) -> ImagePrediction:
        """Predict one image.

        Args:
            image: a path, bytes, a binary file object, a PIL image or a numpy array (HxW, HxWx3 or
                HxWx4; uint8 or 0..255 floats).
            threshold: tags with a lower probability are left out (0..1).

        Returns:
            An :class:`~runtimes.prediction.ImagePrediction` (``.to_dict()`` is Custom Vision JSON),
            predictions sorted by probability, highest first.

        Raises:
            ImageDecodeError: the image cannot be decoded.
            ValueError: threshold outside 0..1.
        """
        threshold = check_threshold(threshold)
        return self._classifications(self._run(self._tensor([image])), threshold)[0]

    def predict_batch(self, images: Iterable[ImageSource], *, threshold: float = 0.0) -> list[ImagePrediction]:
        """Predict several images (run together in batches of :data:`BATCH_SIZE`).

        Returns:
            One :class:`~runtimes.prediction.ImagePrediction` per image, in order.

        Raises:
            ImageDecodeError: an image cannot be decoded (nothing is returned for the others; call
                :meth:`predict` per image to skip bad ones).
            ValueError: threshold outside 0..1.
        """
        threshold = check_threshold(threshold)
        return self._classifications(self.probabilities(images), threshold)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the engine and remove any temporary extraction folder. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.engine.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
