"""CoreML exporter: ``.mlpackage`` ML Programs (float16 default, float32) and the older ``.mlmodel``
neural network for iOS 13/14, with an image input so Xcode and the Vision framework feed it directly.

I/O (ARCHITECTURE.md, contract 2):

- input ``data``: an RGB image of the model's side (``ct.ImageType``, scale 1, bias 0): the pixels
  reach the graph as 0..255 and the normalisation inside the graph does the rest.
- multiclass: a real CoreML *classifier* — outputs ``classLabel`` (the top tag, a string) and
  ``model_output`` (a dictionary tag -> probability), so ``VNCoreMLRequest`` returns
  ``VNClassificationObservation`` records with our tag names.
- multilabel: a CoreML classifier means one winning label (softmax semantics), which would mislead
  Vision; a multilabel model is therefore a plain model whose one output ``model_output`` is the
  ``[1, C]`` MultiArray of sigmoid probabilities in ``labels.txt`` order (the labels are also in the
  model's user-defined metadata under ``labels``).
- detection (``float16``, ``float32``, ``neuralnetwork``): a CoreML **pipeline** of two models, the
  layout Create ML's object detectors have, so ``VNCoreMLRequest`` returns
  ``VNRecognizedObjectObservation`` records (box + our tag names) and Xcode shows its
  object-detector preview:

  1. the detector (ML Program; a neural network for ``neuralnetwork``): image ``data`` in; box
     decoding inside (docs/detection-contract.md) and, instead of our fast NMS, the conversion to
     what CoreML's NMS model reads — ``raw_coordinates`` ``[M, 4]`` (x centre, y centre, width,
     height, normalised to 0..1 of the image, origin top left) and ``raw_confidence`` ``[M, C]``
     (per-tag scores in ``labels.txt`` order), batch dimension dropped. ``M`` = grid cells.
  2. a ``NonMaximumSuppression`` model: greedy NMS per tag (``pickTop.perClass``), ``iouThreshold``
     = the iteration's ``iou_threshold``, ``confidenceThreshold`` = option ``confidence_threshold``
     (default 0.01: drops the near-zero background cells, keeps every plausible box for the app to
     threshold itself, as the other formats' 100 padded rows do), ``stringClassLabels`` = the labels.

  Pipeline inputs: ``data`` (the image) and the doubles ``iouThreshold`` and
  ``confidenceThreshold``, which override the stored defaults per prediction (Xcode's preview
  sliders; Vision takes them from ``VNCoreMLModel.featureProvider``). They are not
  flagged ``isOptional``: CoreML's validator refuses optional inputs on an NMS model and a pipeline's
  inputs must equal its models' — Create ML and Turi Create write them the same way, marked
  "(optional)" in the description, and the NMS model falls back to the stored thresholds when one is
  not given. Outputs: ``confidence`` ``[N, C]`` and ``coordinates`` ``[N, 4]`` (x centre, y centre,
  width, height), ``N`` flexible (the boxes that survive NMS and the threshold).

  Unlike the other formats' fast NMS (docs/detection-contract.md) CoreML's NMS is greedy and has no
  ``candidates`` / ``max_detections`` cap: it keeps a superset of the fast NMS's boxes (a box
  suppressed only by an already-suppressed box survives) and every box above the threshold.
- detection, flavor ``raw``: the detector alone as a float32 ML Program with the contract's raw
  outputs ``raw_boxes`` ``[1, M, 4]`` (x1, y1, x2, y2) and ``raw_scores`` ``[1, M, C]``, for apps that
  run their own post-processing (the device runtime runs it with the manifest's parameters).

Known risk (cannot be checked off macOS): ML Program + NMS pipelines have been reported to give
wrong boxes on some iOS versions (coremltools issue #2445, open; ultralytics works around it by
padding the classes to a multiple of 80). The ``neuralnetwork`` flavor is the older neural network
+ NMS pipeline, the layout Create ML/Turi Create shipped for years; use it if the ML Program
pipeline misbehaves on a device.

The probabilities output is renamed ``model_output`` after conversion: coremltools names it after
the TensorFlow node (``Identity``) or ``classLabel_probs`` depending on the backend.

Verification: the written spec is first checked *structurally* — model type, spec version, input
name, type and size, output names and types, class labels equal to the labels, metadata; for a
detector also the pipeline's two models, their wiring, the NMS labels and thresholds. Then
numerically: on macOS through Core ML itself (every flavor at the float16 tolerance: Core ML picks
GPU/Neural Engine at run time; a detector pipeline's boxes compared with the trained model's);
elsewhere through edgevision's numpy ML Program interpreter (``exporters/coreml_interpreter.py``:
it reads the ``.mlpackage`` and its ``weight.bin`` and executes the program; a float16 program is
judged with float16 weights and float32 activations, as the other formats' float16 flavors, its
figure with float16 activations, as Core ML's GPU stores them, recorded beside it), each flavor at
its own tolerance, with ``checked_with`` saying that the interpreter, not Core ML, ran the model. What the interpreter cannot run stays ``unverified``
with the reason: the ``neuralnetwork`` flavor (a NeuralNetwork spec, not an ML Program) and any op
it does not implement (named).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from exporters.base import RAW_FLAVOR, Artifact, ExportContext, ExportError, Exporter, Options, OptionsError
from runtimes.manifest import InputSpec, OutputSpec, Verification

log = logging.getLogger(__name__)

PROBABILITIES = "model_output"
CLASS_LABEL = "classLabel"
INPUT_NAME = "data"
#: A detector pipeline's outputs and threshold inputs: the names Vision and Xcode expect.
CONFIDENCE = "confidence"
COORDINATES = "coordinates"
IOU_INPUT = "iouThreshold"
CONFIDENCE_INPUT = "confidenceThreshold"
#: The detector model's outputs inside the pipeline, read by the NMS model (Turi Create's names).
RAW_CONFIDENCE = "raw_confidence"
RAW_COORDINATES = "raw_coordinates"
DEFAULT_CONFIDENCE_THRESHOLD = 0.01
#: Flavor -> (model file, coremltools backend, compute precision name or None).
_FLAVORS = {
    "float16": ("model.mlpackage", "mlprogram", "FLOAT16"),
    "float32": ("model.mlpackage", "mlprogram", "FLOAT32"),
    "neuralnetwork": ("model.mlmodel", "neuralnetwork", None),
    RAW_FLAVOR: ("model.mlpackage", "mlprogram", "FLOAT32"),
}
#: Lowest spec version each backend must reach (ML Program: iOS 15 = 6; neural network: iOS 13 = 4).
_MIN_SPEC_VERSION = {"mlprogram": 6, "neuralnetwork": 4}
#: CoreML's NMS model takes FLOAT32 arrays from spec version 5 (iOS 14) on; before, DOUBLE only.
_NMS_FLOAT32_SPEC_VERSION = 5
UNVERIFIED_REASON = "needs macOS for a numeric check (coremltools cannot run CoreML models on {platform})"


@dataclass(frozen=True)
class CoreMLOptions(Options):
    """Options of the ``coreml`` exporter (what Xcode shows in the model's metadata pane).

    Attributes:
        author: ``MLModel.author`` (default ``edgevision``).
        license: ``MLModel.license`` (default ``unspecified``: say what your model's licence is).
        description: ``MLModel.short_description`` (default: task, project, iteration, domain, tags).
        version: ``MLModel.version`` (default: the iteration number).
        confidence_threshold: detectors with NMS (every flavor but ``raw``): the NMS model's default
            ``confidenceThreshold``, 0..1 (default 0.01); apps override it per prediction through
            the ``confidenceThreshold`` input.
    """

    author: str = "edgevision"
    license: str = "unspecified"
    description: Optional[str] = None
    version: Optional[str] = None
    confidence_threshold: Optional[float] = None

    def validate(self) -> None:
        if not self.author.strip():
            raise OptionsError("option author must not be empty")
        t = self.confidence_threshold
        if t is not None and not 0.0 <= t <= 1.0:
            raise OptionsError(f"option confidence_threshold={t}: expected a number in 0..1")


def _description(ctx: ExportContext, flavor: str = "") -> str:
    tags = ", ".join(ctx.labels)
    head = (f"for project {ctx.project_name!r}, iteration {ctx.iteration_name} ({ctx.domain}); "
            f"input: RGB image {ctx.input_size}x{ctx.input_size}")
    if ctx.is_detector:
        if flavor == RAW_FLAVOR:
            out = (f"raw_boxes [1, M, 4] (x1, y1, x2, y2 normalised) and raw_scores [1, M, {len(ctx.labels)}] "
                   "before NMS")
        else:
            out = (f"{CONFIDENCE} [N, {len(ctx.labels)}] and {COORDINATES} [N, 4] (x, y centre, width, height "
                   "normalised) after NMS")
        return f"object detector {head}; output: {out}; tags: {tags}"
    kind = "single-tag (multiclass) classifier" if ctx.task == "multiclass" else "multi-tag (multilabel) classifier"
    out = (f"classLabel (top tag) and {PROBABILITIES} (tag -> probability)" if ctx.task == "multiclass"
           else f"{PROBABILITIES} [1, {len(ctx.labels)}] sigmoid probabilities in labels order")
    return f"{kind} {head}; output: {out}; tags: {tags}"


def vision_function(ctx: ExportContext) -> Any:
    """The TensorFlow graph a detector pipeline's first model is converted from.

    ``data`` ``[1, H, W, 3]`` RGB 0..255 -> ``{raw_confidence: [M, C], raw_coordinates: [M, 4]}``:
    the detector's raw outputs (``ctx.serving_model("raw")``) without the batch dimension, the
    boxes turned from ``x1, y1, x2, y2`` into ``x centre, y centre, width, height`` (what CoreML's
    NMS model and Vision read), the scores as they are.
    """
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    raw = ctx.serving_model(RAW_FLAVOR)
    spec = tf.TensorSpec([1, ctx.input_size, ctx.input_size, 3], tf.float32, name=INPUT_NAME)

    def serve(data: Any) -> dict[str, Any]:
        boxes, scores = raw(data, training=False)
        boxes = boxes[0]
        centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        size = boxes[:, 2:] - boxes[:, :2]
        return {RAW_CONFIDENCE: scores[0], RAW_COORDINATES: tf.concat([centre, size], axis=-1)}

    return tf.function(serve).get_concrete_function(spec)


def vision_detections(confidence: Any, coordinates: Any, max_detections: int | None = None) -> tuple[np.ndarray, ...]:
    """One image's ``(boxes x1y1x2y2, classes int64, scores)`` from a detector pipeline's outputs.

    Args:
        confidence: ``[N, C]`` per-tag scores of the boxes that survived NMS (``[1, N, C]`` too).
        coordinates: ``[N, 4]`` x centre, y centre, width, height, normalised.
        max_detections: keep at most this many boxes (highest score first); None keeps all.

    Returns:
        Boxes clipped to 0..1, the top tag of each box and its score, sorted by score (descending,
        ties in output order), boxes scoring 0 dropped: the shape the contract's post-processing
        gives, so the export can be compared with the trained model.
    """
    conf = np.asarray(confidence, np.float32)
    conf = conf.reshape(-1, conf.shape[-1])
    xywh = np.asarray(coordinates, np.float32).reshape(-1, 4)
    boxes = np.clip(np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1), 0.0, 1.0)
    classes = conf.argmax(axis=1).astype(np.int64)
    scores = conf.max(axis=1)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0][:max_detections]
    return boxes[order].astype(np.float32), classes[order], scores[order].astype(np.float32)


def _rename_outputs(ct: Any, spec: Any, concrete: Any) -> None:
    """Name the converted model's outputs after the concrete function's output keys.

    coremltools names them after the graph's output nodes (``Identity``, ``Identity_1``); the
    function's structured outputs say which key each node carries.
    """
    by_node = {tensor.name.split(":")[0]: key for key, tensor in concrete.structured_outputs.items()}
    for item in list(spec.description.output):
        new = by_node.get(item.name)
        if new is None:
            raise ExportError(f"coremltools produced an output {item.name!r} the graph does not have "
                              f"(expected one of {sorted(by_node)})")
        if item.name != new:
            ct.utils.rename_feature(spec, item.name, new)


def _set_shape(feature: Any, shape: Sequence[int]) -> None:
    array = feature.type.multiArrayType
    del array.shape[:]
    array.shape.extend(int(d) for d in shape)


def _nms_spec(detector: Any, ctx: ExportContext, confidence_threshold: float, version: int) -> Any:
    """CoreML's ``NonMaximumSuppression`` model reading the detector's two outputs."""
    from coremltools.proto import FeatureTypes_pb2, Model_pb2

    outputs = {o.name: o for o in detector.description.output}
    nms = Model_pb2.Model()
    nms.specificationVersion = version
    for name in (RAW_CONFIDENCE, RAW_COORDINATES):
        nms.description.input.add().CopyFrom(outputs[name])
    for name in (IOU_INPUT, CONFIDENCE_INPUT):
        feature = nms.description.input.add()
        feature.name = name
        feature.type.doubleType.CopyFrom(FeatureTypes_pb2.DoubleFeatureType())
    for name, source, columns in ((CONFIDENCE, RAW_CONFIDENCE, len(ctx.labels)), (COORDINATES, RAW_COORDINATES, 4)):
        feature = nms.description.output.add()
        feature.CopyFrom(outputs[source])
        feature.name = name
        array = feature.type.multiArrayType
        del array.shape[:]
        rows = array.shapeRange.sizeRanges.add()  # any number of boxes survives
        rows.lowerBound, rows.upperBound = 0, -1
        cols = array.shapeRange.sizeRanges.add()
        cols.lowerBound = cols.upperBound = columns
    params = nms.nonMaximumSuppression
    params.pickTop.perClass = True
    params.stringClassLabels.vector.extend(list(ctx.labels))
    params.iouThreshold = float(ctx.detection["iou_threshold"])
    params.confidenceThreshold = float(confidence_threshold)
    params.confidenceInputFeatureName = RAW_CONFIDENCE
    params.coordinatesInputFeatureName = RAW_COORDINATES
    params.iouThresholdInputFeatureName = IOU_INPUT
    params.confidenceThresholdInputFeatureName = CONFIDENCE_INPUT
    params.confidenceOutputFeatureName = CONFIDENCE
    params.coordinatesOutputFeatureName = COORDINATES
    return nms


def _pipeline_spec(detector: Any, nms: Any, version: int) -> Any:
    """The two models as one pipeline: inputs image + thresholds, outputs the NMS model's."""
    from coremltools.proto import Model_pb2

    pipe = Model_pb2.Model()
    pipe.specificationVersion = version
    pipe.description.input.add().CopyFrom(detector.description.input[0])
    for feature in nms.description.input:
        if feature.name in (IOU_INPUT, CONFIDENCE_INPUT):
            pipe.description.input.add().CopyFrom(feature)
    for feature in nms.description.output:
        pipe.description.output.add().CopyFrom(feature)
    pipe.pipeline.models.add().CopyFrom(detector)
    pipe.pipeline.models.add().CopyFrom(nms)
    pipe.pipeline.names.extend(["detector", "nms"])
    return pipe


class CoreMLExporter(Exporter):
    """``.mlpackage`` / ``.mlmodel`` for Apple platforms (Xcode, Vision, Core ML).

    Flavors: ``float16`` (default) / ``float32``: ML Program (iOS 15+) with float16 or float32
    weights and arithmetic; ``neuralnetwork``: the older ``.mlmodel`` (classifiers iOS 13+, detectors
    iOS 14+, which CoreML's NMS needs for float32 arrays). A detector in any of the three is a
    detector + NMS pipeline with ``confidence`` / ``coordinates`` outputs (module docstring).
    ``raw`` (detectors only): the float32 ML Program without NMS, outputs ``raw_boxes`` /
    ``raw_scores`` as in every format's ``raw`` flavor.
    """

    name = "coreml"
    suffix = ".mlpackage"
    flavors = tuple(_FLAVORS)
    tasks = ("multiclass", "multilabel", "detection")
    default_flavor = "float16"
    runs_on = "iOS 15+/macOS 12+ (mlpackage); iOS 13+ (neuralnetwork .mlmodel; detectors iOS 14+); runs on macOS only"
    description = ("Core ML image classifier or Vision object detector (detector + NMS pipeline); "
                   "float16/float32 ML Program or the older neural network")
    Options = CoreMLOptions
    hosted_exports = {("CoreML", ""): "float16"}

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        assert isinstance(options, CoreMLOptions)
        if options.confidence_threshold is not None and (not ctx.is_detector or flavor == RAW_FLAVOR):
            raise OptionsError("option confidence_threshold applies to object detectors with NMS (not the "
                               f"{RAW_FLAVOR!r} flavor), not to this {ctx.task} {flavor} export")
        model_file, backend, precision = _FLAVORS[flavor]
        import coremltools as ct

        size = ctx.input_size
        kwargs: dict[str, Any] = {}
        if precision is not None:
            kwargs["compute_precision"] = getattr(ct.precision, precision)
        if ctx.task == "multiclass":
            kwargs["classifier_config"] = ct.ClassifierConfig(list(ctx.labels), predicted_feature_name=CLASS_LABEL)
        if not ctx.is_detector:
            concrete = ctx.concrete_function()
        elif flavor == RAW_FLAVOR:
            concrete = ctx.concrete_function(RAW_FLAVOR)
        else:
            concrete = vision_function(ctx)
        with warnings.catch_warnings():
            # coremltools warns that TensorFlow 2.21 is newer than its tested 2.12; FACTS.md: it works.
            warnings.simplefilter("ignore")
            model = ct.convert(
                [concrete], source="tensorflow", convert_to=backend,
                inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, size, size, 3),
                                     color_layout=ct.colorlayout.RGB, scale=1.0, bias=[0.0, 0.0, 0.0])],
                **kwargs)
        spec = model.get_spec()
        weights_dir = model.weights_dir if backend == "mlprogram" else None
        if ctx.is_detector:
            spec, outputs = self._detector_spec(ct, spec, concrete, ctx, flavor, options)
        else:
            old = (spec.description.predictedProbabilitiesName if ctx.task == "multiclass"
                   else spec.description.output[0].name)
            if old != PROBABILITIES:
                ct.utils.rename_feature(spec, old, PROBABILITIES)
            outputs = [OutputSpec(PROBABILITIES, (1, len(ctx.labels)), "float32")]
        self._describe(spec, ctx, options, flavor)
        # skip_model_load: off macOS there is no CoreML framework to compile it with.
        final = ct.models.MLModel(spec, weights_dir=weights_dir, skip_model_load=True)
        path = ctx.out_dir / model_file
        final.save(str(path))
        return Artifact(
            model_file=model_file,
            # A CoreML image input takes 8-bit pixels (runtimes.manifest.InputSpec).
            input=InputSpec(INPUT_NAME, "NHWC", (1, size, size, 3), "uint8"),
            outputs=outputs,
            platform="CoreML",
            flavor=flavor,
            runnable_here=sys.platform == "darwin",
        )

    @staticmethod
    def _detector_spec(ct: Any, spec: Any, concrete: Any, ctx: ExportContext, flavor: str,
                       options: CoreMLOptions) -> tuple[Any, list[OutputSpec]]:
        """Name the converted detector's outputs; wrap it in the NMS pipeline unless ``raw``."""
        _rename_outputs(ct, spec, concrete)
        m, c = ctx.detection_locations(), len(ctx.labels)
        if flavor == RAW_FLAVOR:
            wanted = {o.name: o.shape for o in ctx.output_specs(RAW_FLAVOR)}
            for feature in spec.description.output:  # the neural network backend leaves shapes out
                _set_shape(feature, wanted[feature.name])
            return spec, ctx.output_specs(RAW_FLAVOR)
        shapes = {RAW_CONFIDENCE: (m, c), RAW_COORDINATES: (m, 4)}
        for feature in spec.description.output:
            _set_shape(feature, shapes[feature.name])
        version = max(int(spec.specificationVersion), _NMS_FLOAT32_SPEC_VERSION)
        spec.specificationVersion = version
        threshold = (options.confidence_threshold if options.confidence_threshold is not None
                     else DEFAULT_CONFIDENCE_THRESHOLD)
        nms = _nms_spec(spec, ctx, threshold, version)
        pipe = _pipeline_spec(spec, nms, version)
        return pipe, [OutputSpec(CONFIDENCE, (None, c), "float32"), OutputSpec(COORDINATES, (None, 4), "float32")]

    @staticmethod
    def _describe(spec: Any, ctx: ExportContext, options: CoreMLOptions, flavor: str) -> None:
        meta = spec.description.metadata
        meta.author = options.author
        meta.license = options.license
        meta.shortDescription = options.description or _description(ctx, flavor)
        meta.versionString = options.version or str(ctx.iteration_name)
        user = meta.userDefined
        user["labels"] = json.dumps(list(ctx.labels), ensure_ascii=False)
        user["edgevision.task"] = ctx.task
        user["edgevision.domain"] = ctx.domain
        user["edgevision.project"] = ctx.project_name
        user["edgevision.iteration"] = str(ctx.iteration_name)
        user["edgevision.flavor"] = flavor
        if ctx.tag_ids and len(ctx.tag_ids) == len(ctx.labels):
            user["tag_ids"] = json.dumps(list(ctx.tag_ids))
        nms = _nms_params(spec)
        if ctx.is_detector:
            detection = dict(ctx.detection or {})
            user["edgevision.detection"] = json.dumps({
                "flavor": RAW_FLAVOR if flavor == RAW_FLAVOR else "coreml-nms",
                "iou_threshold": float(detection["iou_threshold"]),
                "candidates": int(detection["candidates"]),
                "max_detections": int(detection["max_detections"]),
                **({"confidence_threshold": nms.confidenceThreshold} if nms is not None else {}),
            })
            user["classes"] = ",".join(ctx.labels)  # where Turi Create / ultralytics detectors keep them
            if nms is not None:
                user["iou_threshold"] = str(nms.iouThreshold)
                user["confidence_threshold"] = str(nms.confidenceThreshold)
        for item in spec.description.input:
            if item.name == INPUT_NAME:
                item.shortDescription = f"RGB image, {ctx.input_size}x{ctx.input_size} (any photo: Vision scales it)"
            elif item.name == IOU_INPUT and nms is not None:
                item.shortDescription = (f"(optional) IoU threshold override (default: {nms.iouThreshold:g}): "
                                         "a box overlapping a better box of its tag by more is dropped")
            elif item.name == CONFIDENCE_INPUT and nms is not None:
                item.shortDescription = (f"(optional) confidence threshold override (default: "
                                         f"{nms.confidenceThreshold:g}): boxes scoring less are dropped")
        descriptions = {
            PROBABILITIES: ("probability of each tag" if ctx.task == "multiclass"
                            else "sigmoid probability of each tag, in labels order"),
            CLASS_LABEL: "the most probable tag",
            CONFIDENCE: "boxes × tag confidence (tags: user-defined metadata 'labels')",
            COORDINATES: "boxes × [x centre, y centre, width, height], 0..1 of the image, origin top left",
            "raw_boxes": "candidate boxes × [x1, y1, x2, y2], 0..1 of the image (before NMS)",
            "raw_scores": "candidate boxes × score of each tag, in labels order (before NMS)",
        }
        for item in spec.description.output:
            if item.name in descriptions:
                item.shortDescription = descriptions[item.name]

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        """Structural check everywhere, then the numeric check: Core ML itself on macOS, elsewhere
        edgevision's numpy ML Program interpreter (:mod:`exporters.coreml_interpreter`).

        Returns:
            ``failed`` when the structure is wrong or the numbers differ; ``ok`` with the figures
            (off macOS ``checked_with`` says the interpreter, not Core ML, ran the model);
            ``unverified`` with the reason where neither can run it (the ``neuralnetwork`` flavor,
            or an op the interpreter does not implement, named) off macOS.
        """
        path = ctx.out_dir / artifact.model_file
        problems, details = check_structure(path, ctx, flavor)
        details["flavor"] = flavor
        if problems:
            return Verification("failed", "structural check: " + "; ".join(problems), details)
        if artifact.runnable_here:
            # Core ML picks GPU/Neural Engine (float16 arithmetic) at run time whatever the stored
            # precision, so every flavor is held to the float16 tolerance.
            if ctx.is_detector and flavor != RAW_FLAVOR:
                from exporters.verify import compare_with_model

                numeric = compare_with_model(ctx, artifact, "float16", runner=_pipeline_runner(ctx, details))
            else:
                numeric = super().verify(ctx, artifact, "float16")
            return Verification(numeric.status, numeric.reason, {**details, **numeric.details, "flavor": flavor})
        from exporters.coreml_interpreter import verify_export

        # Each flavor at its own tolerance: the interpreter computes in float32 from the stored
        # (float16 or float32) weights; see coreml_interpreter.py for the float16 activation figure.
        return verify_export(ctx, artifact, flavor, details)


def _pipeline_runner(ctx: ExportContext, details: dict[str, Any]) -> Any:
    """macOS: ``runner(path, images) -> [(boxes, classes, scores)]`` through the pipeline itself."""

    def run(path: Path, images: Sequence[Path]) -> list[tuple[np.ndarray, ...]]:
        import coremltools as ct
        from PIL import Image

        from runtimes.preprocess import preprocess

        model = ct.models.MLModel(str(path))
        size = (ctx.input_size, ctx.input_size)
        detection = dict(ctx.detection or {})
        out = []
        for image in images:
            pixels = np.clip(np.rint(preprocess(image, size)), 0, 255).astype(np.uint8)
            result = model.predict({INPUT_NAME: Image.fromarray(pixels, "RGB"),
                                    IOU_INPUT: float(detection["iou_threshold"]),
                                    CONFIDENCE_INPUT: float(details.get("nms_confidence_threshold", 0.0))})
            out.append(vision_detections(result[CONFIDENCE], result[COORDINATES], int(detection["max_detections"])))
        return out

    return run


def _nms_params(spec: Any) -> Any:
    """The ``nonMaximumSuppression`` parameters of a detector pipeline, or None."""
    if spec.WhichOneof("Type") != "pipeline":
        return None
    for model in spec.pipeline.models:
        if model.WhichOneof("Type") == "nonMaximumSuppression":
            return model.nonMaximumSuppression
    return None


def _mlprogram_class_labels(spec: Any) -> list[str] | None:
    """The ``classes`` of the ML Program's ``classify`` op (where mlprogram classifiers keep labels)."""
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type != "classify":
                    continue
                for arg in op.inputs["classes"].arguments:
                    values = arg.value.immediateValue.list.values
                    return [v.immediateValue.tensor.strings.values[0] for v in values]
    return None


def _mlprogram_has_float16_weights(spec: Any) -> bool:
    from coremltools.proto import MIL_pb2

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "const" and op.outputs and op.outputs[0].type.tensorType.dataType == MIL_pb2.FLOAT16:
                    return True
    return False


def _mlprogram_outputs(spec: Any) -> list[str]:
    """The output names of the ML Program's ``main`` function (must equal the description's)."""
    function = spec.mlProgram.functions.get("main")
    if function is None:
        return []
    blocks = function.block_specializations
    block = blocks.get(function.opset) or next(iter(blocks.values()), None)
    return list(block.outputs) if block is not None else []


def _array_shape(feature: Any) -> list[int] | None:
    if feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    return [int(d) for d in feature.type.multiArrayType.shape]


def _check_image_input(ct: Any, feature: Any, ctx: ExportContext, problems: list[str], details: dict[str, Any]) -> None:
    if feature.name != INPUT_NAME or feature.type.WhichOneof("Type") != "imageType":
        problems.append(f"expected the image input {INPUT_NAME!r}, got {feature.name!r} "
                        f"({feature.type.WhichOneof('Type')})")
        return
    image = feature.type.imageType
    details["input"] = {"name": INPUT_NAME, "width": int(image.width), "height": int(image.height),
                        "color": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)}
    if (image.width, image.height) != (ctx.input_size, ctx.input_size):
        problems.append(f"input size {image.width}x{image.height}, expected {ctx.input_size}x{ctx.input_size}")
    if details["input"]["color"] != "RGB":
        problems.append(f"input colour space {details['input']['color']}, expected RGB")


def _check_classifier(ct: Any, spec: Any, ctx: ExportContext, flavor: str, problems: list[str],
                      details: dict[str, Any]) -> Any:
    """A classifier's structure (model type, image input, outputs, labels); returns the spec."""
    _, backend, _ = _FLAVORS[flavor]
    kind = spec.WhichOneof("Type")
    desc = spec.description
    want_kind = {"mlprogram": "mlProgram",
                 "neuralnetwork": "neuralNetworkClassifier" if ctx.task == "multiclass" else "neuralNetwork"}[backend]
    if kind != want_kind:
        problems.append(f"model type {kind!r}, expected {want_kind!r}")
    if spec.specificationVersion < _MIN_SPEC_VERSION[backend]:
        problems.append(f"spec version {spec.specificationVersion} < {_MIN_SPEC_VERSION[backend]}")
    inputs = list(desc.input)
    if len(inputs) != 1:
        problems.append(f"expected one image input {INPUT_NAME!r}, got "
                        f"{[(i.name, i.type.WhichOneof('Type')) for i in inputs]}")
    else:
        _check_image_input(ct, inputs[0], ctx, problems, details)
    outputs = {o.name: o.type.WhichOneof("Type") for o in desc.output}
    details["outputs"] = outputs
    if ctx.task == "multiclass":
        if outputs != {CLASS_LABEL: "stringType", PROBABILITIES: "dictionaryType"}:
            problems.append(f"classifier outputs {outputs}, expected {CLASS_LABEL} (string) and "
                            f"{PROBABILITIES} (dictionary)")
        if (desc.predictedFeatureName, desc.predictedProbabilitiesName) != (CLASS_LABEL, PROBABILITIES):
            problems.append(f"classifier reads {desc.predictedFeatureName!r}/{desc.predictedProbabilitiesName!r}, "
                            f"expected {CLASS_LABEL!r}/{PROBABILITIES!r}")
        if kind == "mlProgram":
            labels = _mlprogram_class_labels(spec)
        elif kind == "neuralNetworkClassifier":
            labels = list(spec.neuralNetworkClassifier.stringClassLabels.vector)
        else:
            labels = None
        if labels != list(ctx.labels):
            problems.append(f"class labels {labels}, expected {list(ctx.labels)}")
        details["class_labels"] = len(labels or [])
    else:
        shape = _array_shape(desc.output[0]) if outputs.get(PROBABILITIES) == "multiArrayType" else None
        if list(outputs) != [PROBABILITIES] or shape not in ([1, len(ctx.labels)], [len(ctx.labels)]):
            problems.append(f"outputs {outputs} (shape {shape}), expected one MultiArray {PROBABILITIES!r} "
                            f"[1, {len(ctx.labels)}]")
    return spec


def _pipeline_wiring_problems(spec: Any) -> list[str]:
    """What CoreML's pipeline validator would refuse: every model input must be a pipeline input or an
    earlier model's output of the very same type, and so must every pipeline output."""
    known = {f.name: f.type for f in spec.description.input}
    problems = []
    for i, model in enumerate(spec.pipeline.models):
        for feature in model.description.input:
            if feature.name not in known:
                problems.append(f"pipeline model {i} reads {feature.name!r}, which nothing before it provides")
            elif known[feature.name] != feature.type:
                problems.append(f"pipeline model {i} reads {feature.name!r} with another type than it is given")
        known.update({f.name: f.type for f in model.description.output})
    for feature in spec.description.output:
        if known.get(feature.name) != feature.type:
            problems.append(f"pipeline output {feature.name!r} is not produced with that type by its models")
    return problems


def _check_detector(ct: Any, spec: Any, ctx: ExportContext, flavor: str, problems: list[str],
                    details: dict[str, Any]) -> Any:
    """A detector's structure (pipeline or raw ML Program); returns the spec holding its weights."""
    _, backend, _ = _FLAVORS[flavor]
    desc = spec.description
    m, c = ctx.detection_locations(), len(ctx.labels)
    inputs = list(desc.input)
    outputs = {o.name: o for o in desc.output}
    details["outputs"] = {name: o.type.WhichOneof("Type") for name, o in outputs.items()}
    if flavor == RAW_FLAVOR:
        if spec.WhichOneof("Type") != "mlProgram":
            problems.append(f"model type {spec.WhichOneof('Type')!r}, expected 'mlProgram'")
        if spec.specificationVersion < _MIN_SPEC_VERSION[backend]:
            problems.append(f"spec version {spec.specificationVersion} < {_MIN_SPEC_VERSION[backend]}")
        if len(inputs) != 1:
            problems.append(f"expected one image input, got {[i.name for i in inputs]}")
        if inputs:
            _check_image_input(ct, inputs[0], ctx, problems, details)
        want = {o.name: list(o.shape) for o in ctx.output_specs(RAW_FLAVOR)}
        got = {name: _array_shape(o) for name, o in outputs.items()}
        if got != want:
            problems.append(f"outputs {got}, expected MultiArrays {want}")
        return spec
    kind = spec.WhichOneof("Type")
    if kind != "pipeline" or len(spec.pipeline.models) != 2:
        problems.append(f"model type {kind!r} with {len(spec.pipeline.models) if kind == 'pipeline' else 0} models, "
                        "expected a pipeline of the detector and a NonMaximumSuppression model")
        return None
    detector, nms_model = spec.pipeline.models
    want_kind = {"mlprogram": "mlProgram", "neuralnetwork": "neuralNetwork"}[backend]
    kinds = [detector.WhichOneof("Type"), nms_model.WhichOneof("Type")]
    details["pipeline"] = kinds
    if kinds != [want_kind, "nonMaximumSuppression"]:
        problems.append(f"pipeline models {kinds}, expected [{want_kind!r}, 'nonMaximumSuppression']")
        return None
    if detector.specificationVersion < _MIN_SPEC_VERSION[backend]:
        problems.append(f"detector spec version {detector.specificationVersion} < {_MIN_SPEC_VERSION[backend]}")
    # Inputs: the image, then the two optional threshold overrides (doubles).
    names = [i.name for i in inputs]
    if names != [INPUT_NAME, IOU_INPUT, CONFIDENCE_INPUT]:
        problems.append(f"pipeline inputs {names}, expected {[INPUT_NAME, IOU_INPUT, CONFIDENCE_INPUT]}")
    if inputs:
        _check_image_input(ct, inputs[0], ctx, problems, details)
    for feature in inputs[1:]:
        if feature.type.WhichOneof("Type") != "doubleType":
            problems.append(f"input {feature.name!r} is {feature.type.WhichOneof('Type')}, expected a double")
    # Outputs: Vision's names, flexible number of rows, C and 4 columns.
    if list(outputs) != [CONFIDENCE, COORDINATES]:
        problems.append(f"pipeline outputs {list(outputs)}, expected {[CONFIDENCE, COORDINATES]}")
    else:
        for name, columns in ((CONFIDENCE, c), (COORDINATES, 4)):
            ranges = [(r.lowerBound, r.upperBound) for r in outputs[name].type.multiArrayType.shapeRange.sizeRanges]
            if ranges != [(0, -1), (columns, columns)]:
                problems.append(f"output {name!r} allows shapes {ranges}, expected any rows x {columns} columns")
    # The detector model feeds the NMS model cx, cy, w, h [M, 4] and scores [M, C].
    det_out = {o.name: _array_shape(o) for o in detector.description.output}
    want_out = {RAW_CONFIDENCE: [m, c], RAW_COORDINATES: [m, 4]}
    if det_out != want_out:
        problems.append(f"detector outputs {det_out}, expected {want_out}")
    nms = nms_model.nonMaximumSuppression
    labels = list(nms.stringClassLabels.vector)
    details["class_labels"] = len(labels)
    details["nms_iou_threshold"] = float(nms.iouThreshold)
    details["nms_confidence_threshold"] = float(nms.confidenceThreshold)
    if labels != list(ctx.labels):
        problems.append(f"class labels {labels}, expected {list(ctx.labels)}")
    wiring = (nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName,
              nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName,
              nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName)
    want_wiring = (RAW_CONFIDENCE, RAW_COORDINATES, IOU_INPUT, CONFIDENCE_INPUT, CONFIDENCE, COORDINATES)
    if wiring != want_wiring:
        problems.append(f"NMS reads/writes {wiring}, expected {want_wiring}")
    if not nms.pickTop.perClass:
        problems.append("NMS suppresses across tags; expected per tag (pickTop.perClass)")
    iou = float((ctx.detection or {}).get("iou_threshold", -1))
    if abs(nms.iouThreshold - iou) > 1e-9:
        problems.append(f"NMS iouThreshold {nms.iouThreshold}, expected the iteration's {iou}")
    if not 0.0 <= nms.confidenceThreshold <= 1.0:
        problems.append(f"NMS confidenceThreshold {nms.confidenceThreshold} outside 0..1")
    features = [*nms_model.description.input, *nms_model.description.output]
    dtypes = {f.name: f.type.multiArrayType.dataType for f in features if f.type.WhichOneof("Type") == "multiArrayType"}
    if len(set(dtypes.values())) != 1:
        problems.append(f"NMS arrays mix element types {dtypes}")
    elif (nms_model.specificationVersion < _NMS_FLOAT32_SPEC_VERSION
          and set(dtypes.values()) != {ct.proto.FeatureTypes_pb2.ArrayFeatureType.DOUBLE}):
        problems.append(f"NMS on float32 arrays needs spec version {_NMS_FLOAT32_SPEC_VERSION}, "
                        f"has {nms_model.specificationVersion}")
    problems.extend(_pipeline_wiring_problems(spec))
    if spec.specificationVersion < max(detector.specificationVersion, nms_model.specificationVersion):
        problems.append(f"pipeline spec version {spec.specificationVersion} below its models' "
                        f"{[detector.specificationVersion, nms_model.specificationVersion]}")
    meta = json.loads(desc.metadata.userDefined.get("edgevision.detection", "{}") or "{}")
    if meta.get("iou_threshold") != iou:
        problems.append("metadata 'edgevision.detection' does not record the iteration's iou_threshold")
    return detector


def check_structure(path: Path, ctx: ExportContext, flavor: str) -> tuple[list[str], dict[str, Any]]:
    """Check a written CoreML model against the export contract without running it.

    Args:
        path: the ``.mlpackage`` folder or ``.mlmodel`` file.
        ctx: the export context (labels, task, input size; a detector's NMS parameters).
        flavor: the flavor it was exported as.

    Returns:
        ``(problems, details)``: a list of sentences (empty when all is well) and the figures read.
    """
    import coremltools as ct

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # coremltools raises assorted errors for unreadable models
        raise ExportError(f"{path}: coremltools cannot read the model it wrote ({exc})") from exc
    problems: list[str] = []
    details: dict[str, Any] = {"check": "structural", "spec_version": int(spec.specificationVersion),
                               "model_type": spec.WhichOneof("Type")}
    desc = spec.description
    check = _check_detector if ctx.is_detector else _check_classifier
    weights = check(ct, spec, ctx, flavor, problems, details)
    meta_labels = desc.metadata.userDefined.get("labels")
    if meta_labels is None or json.loads(meta_labels) != list(ctx.labels):
        problems.append("metadata 'labels' missing or different from labels.txt")
    if not desc.metadata.author or not desc.metadata.license or not desc.metadata.shortDescription:
        problems.append("metadata author, license or description missing")
    if weights is not None and weights.WhichOneof("Type") == "mlProgram":
        described, returned = [o.name for o in weights.description.output], _mlprogram_outputs(weights)
        if ctx.is_detector and returned != described:
            problems.append(f"the ML Program returns {returned} but its description lists {described}")
        fp16 = _mlprogram_has_float16_weights(weights)
        details["float16_weights"] = fp16
        if fp16 != (flavor == "float16"):
            problems.append(f"float16 weights {'present' if fp16 else 'absent'} in a {flavor} model")
    return problems, details
