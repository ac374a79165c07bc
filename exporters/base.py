"""The exporter contract: typed options, the export context, the artefact record and the ``Exporter`` base."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from edgevision.errors import EdgevisionError, UsageError, VerificationError
from runtimes.manifest import InputSpec, OutputSpec, Verification

#: The flavor every detector-capable exporter offers: the model without NMS (``raw_boxes``,
#: ``raw_scores``) for users who run their own post-processing.
RAW_FLAVOR = "raw"

__all__ = [
    "Artifact",
    "ExportContext",
    "ExportError",
    "Exporter",
    "Options",
    "OptionsError",
    "VerificationError",
]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ExportError(EdgevisionError):
    """An export could not be produced (conversion failed, unsupported task, missing package)."""


class OptionsError(ExportError, UsageError):
    """Unknown, mistyped or conflicting exporter options, or an unknown format/flavor (exit code 2)."""

    exit_code = 2


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or the list of known names."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or '(none)'}"


def _convert(value: Any, kind: Any, key: str) -> Any:
    """Convert a CLI string (or JSON value) to the option field's declared type."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union or (origin is not None and type(None) in args):  # Optional[T] / T | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key) if len(inner) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            raise OptionsError(f"option {key}={value!r}: expected one of {', '.join(map(str, args))}{suggest(str(value), map(str, args))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int,)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise OptionsError(f"option {key}={value!r}: expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise OptionsError(f"option {key}={value!r}: expected an integer")
        try:
            return int(value) if not isinstance(value, float) or value.is_integer() else _fail_int(key, value)
        except (TypeError, ValueError):
            raise OptionsError(f"option {key}={value!r}: expected an integer") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionsError(f"option {key}={value!r}: expected a number") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise OptionsError(f"option {key}={value!r}: expected a string")
        return str(value)
    return value


def _fail_int(key: str, value: Any) -> int:
    raise OptionsError(f"option {key}={value!r}: expected an integer")


@dataclass(frozen=True)
class Options:
    """An exporter's options: subclass with typed fields and defaults (the base has none).

    Values given on the command line arrive as strings (``--option opset=13``) and are converted to
    the field's type; unknown keys and conflicting values raise :class:`OptionsError`. Options the
    user gave are never rewritten.
    """

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> "Options":
        """Build validated options from ``{key: value}`` (strings from the CLI or typed values).

        Raises:
            OptionsError: an unknown key (with a "did you mean" suggestion), a value of the wrong
                type, or a conflict found by :meth:`validate`.
        """
        raw = dict(raw or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                known = list(fields)
                hint = suggest(key, known) if known else "; this format takes no options"
                raise OptionsError(f"unknown option {key!r}{hint}")
            values[key] = _convert(value, hints.get(key, Any), key)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise :class:`OptionsError` on conflicting values (subclasses override)."""

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON data (recorded in ``manifest.json``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExportContext:
    """Everything an exporter needs about the iteration being exported.

    Attributes:
        iteration: the :class:`edgevision.iteration.Iteration`.
        model: the float tf_keras model (RGB 0..255 NHWC in, probabilities out).
        labels / tag_ids: output order and the tags' ids.
        task: ``multiclass`` or ``multilabel``.
        input_size: the square input side in pixels.
        calibration_images: project images balanced across tags (int8 calibration).
        verification_images: held-out images of the iteration plus a few synthetic ones.
        out_dir: the empty folder the exporter writes into.
        verification_targets: optional ``(N, C)`` 0/1 targets of ``verification_images`` (None for
            images without tags, e.g. synthetic ones), for the accuracy-drop check.
        domain / project_name / iteration_name: recorded in the metadata files.
    """

    iteration: Any
    model: Any
    labels: list[str]
    tag_ids: list[str]
    task: str
    input_size: int
    calibration_images: list[Path]
    verification_images: list[Path]
    out_dir: Path
    verification_targets: Any = None
    domain: str = ""
    project_name: str = ""
    iteration_name: str = ""
    #: Detectors: the post-processing parameters (``iou_threshold``, ``candidates``, ``max_detections``).
    detection: dict[str, Any] | None = None
    #: Detectors: per held-out verification image, its true ``(boxes, classes)`` (for the mAP check).
    verification_truth: Any = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_detector(self) -> bool:
        return self.task == "detection"

    def output_specs(self, flavor: str, *, batch: bool = True, dtype: str = "float32") -> list[OutputSpec]:
        """The model outputs of an export of this iteration in ``flavor`` (docs/detection-contract.md).

        ``batch=False`` drops the leading batch dimension (TFLite detectors); ``dtype`` is the
        classifier's / the boxes' and scores' type (classes are always int64).
        """
        lead = (1,) if batch else ()
        c = len(self.labels)
        if not self.is_detector:
            return [OutputSpec("model_output", (1, c), dtype)]
        if flavor == RAW_FLAVOR:
            m = self.detection_locations()
            return [OutputSpec("raw_boxes", (*lead, m, 4), dtype), OutputSpec("raw_scores", (*lead, m, c), dtype)]
        n = min(int(self.detection["max_detections"]), int(self.detection["candidates"]), self.detection_locations())
        return [OutputSpec("detected_boxes", (*lead, n, 4), dtype), OutputSpec("detected_classes", (*lead, n), "int64"),
                OutputSpec("detected_scores", (*lead, n), dtype)]

    def detection_locations(self) -> int:
        """Candidate boxes a detector's raw output has (grid cells)."""
        grid = int(self.model.output_shape[1])
        return grid * grid

    def serving_model(self, flavor: str = "") -> Any:
        """The tf_keras model an exporter converts: the classifier itself, or the detector followed by its
        decoding and (except for the ``raw`` flavor) NMS, with outputs in :meth:`output_specs` order."""
        if not self.is_detector:
            return self.model
        key = f"serving-{flavor == RAW_FLAVOR}"
        if key not in self._cache:
            self._cache[key] = self.iteration.serving_model(raw=flavor == RAW_FLAVOR)
        return self._cache[key]

    def concrete_function(self, flavor: str = "", *, batch: bool = True) -> Any:
        """A cached ``tf.ConcreteFunction``: input ``TensorSpec([1, H, W, 3], float32, name="data")`` ->
        ``{"model_output": probabilities}`` (a detector: ``{name: tensor}`` of :meth:`output_specs`;
        ``batch=False`` drops a detector's leading batch dimension, as TFLite clients expect)."""
        key = f"concrete-{flavor == RAW_FLAVOR}-{batch}"
        if key not in self._cache:
            from edgevision._tf import import_tf

            tf, _ = import_tf()
            model = self.serving_model(flavor)
            names = [o.name for o in self.output_specs(flavor)]
            spec = tf.TensorSpec([1, self.input_size, self.input_size, 3], tf.float32, name="data")

            def serve(data: Any) -> dict[str, Any]:
                out = model(data, training=False)
                out = out if isinstance(out, (list, tuple)) else [out]
                if not batch and self.is_detector:
                    out = [t[0] for t in out]
                return dict(zip(names, out))

            self._cache[key] = tf.function(serve).get_concrete_function(spec)
        return self._cache[key]

    def variables_holder(self) -> Any:
        """A bare ``tf.Module`` holding the model's variables (what TFLite's converter wants with a
        concrete function: tracing the whole tf_keras model instead costs ~5x the time)."""
        if "holder" not in self._cache:
            from edgevision._tf import import_tf

            tf, _ = import_tf()
            holder = tf.Module()
            holder.model_variables = list(self.model.variables)
            self._cache["holder"] = holder
        return self._cache["holder"]

    def reference_detections(self) -> list[tuple[Any, Any, Any]]:
        """A detector's ``(boxes, classes, scores)`` per verification image, from the trained model (cached)."""
        if "reference_detections" not in self._cache:
            self._cache["reference_detections"] = self.iteration.detect(list(self.verification_images))
        return self._cache["reference_detections"]

    def reference_probabilities(self) -> Any:
        """The float model's probabilities on ``verification_images`` (cached), shape ``(N, C)``."""
        if "reference" not in self._cache:
            self._cache["reference"] = self.iteration.predict_probabilities(list(self.verification_images))
        return self._cache["reference"]


@dataclass
class Artifact:
    """What an exporter produced inside ``ctx.out_dir``.

    Attributes:
        model_file: the model, relative to the export folder (a file or a folder such as
            ``model.mlpackage`` or ``saved_model``).
        input / outputs: the model's I/O as recorded in ``manifest.json``.
        platform: ``cvexport.manifest`` ``Platform`` (``TFLite``, ``ONNX``, ``CoreML``, ...).
        flavor: the flavor actually written.
        extra_files: other files the exporter wrote (relative paths).
        runnable_here: False when this machine cannot run the artefact (CoreML off macOS).
    """

    model_file: str
    input: InputSpec
    outputs: list[OutputSpec]
    platform: str
    flavor: str
    extra_files: list[str] = field(default_factory=list)
    runnable_here: bool = True


class Exporter(ABC):
    """One export format. Subclasses set the class attributes and implement :meth:`export`.

    Heavy imports (TensorFlow converters, onnx, coremltools) belong inside :meth:`export`, so
    listing the registry stays fast.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("multiclass", "multilabel")
    flavors: ClassVar[tuple[str, ...]]
    default_flavor: ClassVar[str]
    runs_on: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    Options: ClassVar[type[Options]] = Options
    #: The hosted Training API's export names for this format: ``(platform, flavor)`` -> our flavor;
    #: flavor ``""`` stands for a request without one. The training API's export route reads them.
    hosted_exports: ClassVar[dict[tuple[str, str], str]] = {}

    @abstractmethod
    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        """Write the model (and any extra files) into ``ctx.out_dir``.

        Args:
            ctx: the iteration, its float model, labels and images.
            flavor: one of :attr:`flavors` (already checked).
            options: parsed and validated :attr:`Options`.

        Returns:
            The :class:`Artifact` describing what was written.

        Raises:
            ExportError: the conversion failed.
        """

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        """Compare the artefact with the trained model (default: run it through ``runtimes/``).

        Returns:
            A :class:`~runtimes.manifest.Verification`: ``ok``, ``failed`` (with the figures) or
            ``unverified`` with the reason.
        """
        from exporters.verify import compare_with_model

        return compare_with_model(ctx, artifact, flavor)
