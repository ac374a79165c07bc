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

The probabilities output is renamed ``model_output`` after conversion: coremltools names it after
the TensorFlow node (``Identity``) or ``classLabel_probs`` depending on the backend.

Verification: coremltools cannot execute a model off macOS (``MLModel.predict`` needs Apple's CoreML
framework), so here the export is checked *structurally* — model type, spec version, input name,
type and size, output names and types, class labels equal to the labels, metadata — and the status
is ``unverified`` ("needs macOS for a numeric check"), never ``ok``. On macOS the numeric check
through ``runtimes/`` runs as for every other format.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from exporters.base import Artifact, ExportContext, ExportError, Exporter, Options, OptionsError
from runtimes.manifest import InputSpec, OutputSpec, Verification

log = logging.getLogger(__name__)

PROBABILITIES = "model_output"
CLASS_LABEL = "classLabel"
INPUT_NAME = "data"
#: Flavor -> (model file, coremltools backend, compute precision name or None).
_FLAVORS = {
    "float16": ("model.mlpackage", "mlprogram", "FLOAT16"),
    "float32": ("model.mlpackage", "mlprogram", "FLOAT32"),
    "neuralnetwork": ("model.mlmodel", "neuralnetwork", None),
}
#: Lowest spec version each backend must reach (ML Program: iOS 15 = 6; neural network: iOS 13 = 4).
_MIN_SPEC_VERSION = {"mlprogram": 6, "neuralnetwork": 4}
UNVERIFIED_REASON = "needs macOS for a numeric check (coremltools cannot run CoreML models on {platform})"


@dataclass(frozen=True)
class CoreMLOptions(Options):
    """Options of the ``coreml`` exporter (what Xcode shows in the model's metadata pane).

    Attributes:
        author: ``MLModel.author`` (default ``edgevision``).
        license: ``MLModel.license`` (default ``unspecified``: say what your model's licence is).
        description: ``MLModel.short_description`` (default: task, project, iteration, domain, tags).
        version: ``MLModel.version`` (default: the iteration number).
    """

    author: str = "edgevision"
    license: str = "unspecified"
    description: Optional[str] = None
    version: Optional[str] = None

    def validate(self) -> None:
        if not self.author.strip():
            raise OptionsError("option author must not be empty")


def _description(ctx: ExportContext) -> str:
    kind = "single-tag (multiclass) classifier" if ctx.task == "multiclass" else "multi-tag (multilabel) classifier"
    tags = ", ".join(ctx.labels)
    out = (f"classLabel (top tag) and {PROBABILITIES} (tag -> probability)" if ctx.task == "multiclass"
           else f"{PROBABILITIES} [1, {len(ctx.labels)}] sigmoid probabilities in labels order")
    return (f"{kind} for project {ctx.project_name!r}, iteration {ctx.iteration_name} ({ctx.domain}); "
            f"input: RGB image {ctx.input_size}x{ctx.input_size}; output: {out}; tags: {tags}")


class CoreMLExporter(Exporter):
    """``.mlpackage`` / ``.mlmodel`` for Apple platforms (Xcode, Vision, Core ML)."""

    name = "coreml"
    suffix = ".mlpackage"
    flavors = tuple(_FLAVORS)
    default_flavor = "float16"
    runs_on = "iOS 15+/macOS 12+ (mlpackage); iOS 13+ (neuralnetwork .mlmodel); runs on macOS only"
    description = "Core ML image classifier; float16/float32 ML Program or the older neural network"
    Options = CoreMLOptions

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        assert isinstance(options, CoreMLOptions)
        model_file, backend, precision = _FLAVORS[flavor]
        import coremltools as ct

        size = ctx.input_size
        kwargs: dict[str, Any] = {}
        if precision is not None:
            kwargs["compute_precision"] = getattr(ct.precision, precision)
        if ctx.task == "multiclass":
            kwargs["classifier_config"] = ct.ClassifierConfig(list(ctx.labels), predicted_feature_name=CLASS_LABEL)
        with warnings.catch_warnings():
            # coremltools warns that TensorFlow 2.21 is newer than its tested 2.12; FACTS.md: it works.
            warnings.simplefilter("ignore")
            model = ct.convert(
                [ctx.concrete_function()], source="tensorflow", convert_to=backend,
                inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, size, size, 3),
                                     color_layout=ct.colorlayout.RGB, scale=1.0, bias=[0.0, 0.0, 0.0])],
                **kwargs)
        spec = model.get_spec()
        old = (spec.description.predictedProbabilitiesName if ctx.task == "multiclass"
               else spec.description.output[0].name)
        if old != PROBABILITIES:
            ct.utils.rename_feature(spec, old, PROBABILITIES)
        self._describe(spec, ctx, options, flavor)
        weights_dir = model.weights_dir if backend == "mlprogram" else None
        # skip_model_load: off macOS there is no CoreML framework to compile it with.
        final = ct.models.MLModel(spec, weights_dir=weights_dir, skip_model_load=True)
        path = ctx.out_dir / model_file
        final.save(str(path))
        return Artifact(
            model_file=model_file,
            # A CoreML image input takes 8-bit pixels (runtimes.manifest.InputSpec).
            input=InputSpec(INPUT_NAME, "NHWC", (1, size, size, 3), "uint8"),
            outputs=[OutputSpec(PROBABILITIES, (1, len(ctx.labels)), "float32")],
            platform="CoreML",
            flavor=flavor,
            runnable_here=sys.platform == "darwin",
        )

    @staticmethod
    def _describe(spec: Any, ctx: ExportContext, options: CoreMLOptions, flavor: str) -> None:
        meta = spec.description.metadata
        meta.author = options.author
        meta.license = options.license
        meta.shortDescription = options.description or _description(ctx)
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
        for item in spec.description.input:
            if item.name == INPUT_NAME:
                item.shortDescription = f"RGB image, {ctx.input_size}x{ctx.input_size} (any photo: Vision scales it)"
        for item in spec.description.output:
            if item.name == PROBABILITIES:
                item.shortDescription = ("probability of each tag" if ctx.task == "multiclass"
                                         else "sigmoid probability of each tag, in labels order")
            elif item.name == CLASS_LABEL:
                item.shortDescription = "the most probable tag"

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        """Structural check everywhere; the numeric check through ``runtimes/`` on macOS only.

        Returns:
            ``failed`` when the structure is wrong; off macOS ``unverified`` with the reason and
            the structural figures; on macOS the numeric verdict.
        """
        path = ctx.out_dir / artifact.model_file
        problems, details = check_structure(path, ctx, flavor)
        details["flavor"] = flavor
        if problems:
            return Verification("failed", "structural check: " + "; ".join(problems), details)
        if artifact.runnable_here:
            # Core ML picks GPU/Neural Engine (float16 arithmetic) at run time whatever the stored
            # precision, so every flavor is held to the float16 tolerance.
            numeric = super().verify(ctx, artifact, "float16")
            return Verification(numeric.status, numeric.reason, {**details, **numeric.details, "flavor": flavor})
        return Verification("unverified", UNVERIFIED_REASON.format(platform=sys.platform) +
                            "; structural check passed", details)


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


def check_structure(path: Path, ctx: ExportContext, flavor: str) -> tuple[list[str], dict[str, Any]]:
    """Check a written CoreML model against the export contract without running it.

    Args:
        path: the ``.mlpackage`` folder or ``.mlmodel`` file.
        ctx: the export context (labels, task, input size).
        flavor: the flavor it was exported as.

    Returns:
        ``(problems, details)``: a list of sentences (empty when all is well) and the figures read.
    """
    import coremltools as ct

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # coremltools raises assorted errors for unreadable models
        raise ExportError(f"{path}: coremltools cannot read the model it wrote ({exc})") from exc
    _, backend, _ = _FLAVORS[flavor]
    problems: list[str] = []
    kind = spec.WhichOneof("Type")
    details: dict[str, Any] = {"check": "structural", "spec_version": int(spec.specificationVersion), "model_type": kind}
    want_kind = {"mlprogram": "mlProgram",
                 "neuralnetwork": "neuralNetworkClassifier" if ctx.task == "multiclass" else "neuralNetwork"}[backend]
    if kind != want_kind:
        problems.append(f"model type {kind!r}, expected {want_kind!r}")
    if spec.specificationVersion < _MIN_SPEC_VERSION[backend]:
        problems.append(f"spec version {spec.specificationVersion} < {_MIN_SPEC_VERSION[backend]}")
    desc = spec.description
    inputs = list(desc.input)
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type.WhichOneof("Type") != "imageType":
        problems.append(f"expected one image input {INPUT_NAME!r}, got "
                        f"{[(i.name, i.type.WhichOneof('Type')) for i in inputs]}")
    else:
        image = inputs[0].type.imageType
        details["input"] = {"name": INPUT_NAME, "width": int(image.width), "height": int(image.height),
                            "color": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)}
        if (image.width, image.height) != (ctx.input_size, ctx.input_size):
            problems.append(f"input size {image.width}x{image.height}, expected {ctx.input_size}x{ctx.input_size}")
        if details["input"]["color"] != "RGB":
            problems.append(f"input colour space {details['input']['color']}, expected RGB")
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
        shape = [int(d) for d in desc.output[0].type.multiArrayType.shape] if outputs.get(PROBABILITIES) == "multiArrayType" else None
        if list(outputs) != [PROBABILITIES] or shape not in ([1, len(ctx.labels)], [len(ctx.labels)]):
            problems.append(f"outputs {outputs} (shape {shape}), expected one MultiArray {PROBABILITIES!r} "
                            f"[1, {len(ctx.labels)}]")
    meta_labels = desc.metadata.userDefined.get("labels")
    if meta_labels is None or json.loads(meta_labels) != list(ctx.labels):
        problems.append("metadata 'labels' missing or different from labels.txt")
    if not desc.metadata.author or not desc.metadata.license or not desc.metadata.shortDescription:
        problems.append("metadata author, license or description missing")
    if kind == "mlProgram":
        fp16 = _mlprogram_has_float16_weights(spec)
        details["float16_weights"] = fp16
        if fp16 != (flavor == "float16"):
            problems.append(f"float16 weights {'present' if fp16 else 'absent'} in a {flavor} model")
    return problems, details
