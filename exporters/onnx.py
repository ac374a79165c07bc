"""ONNX exporter: float32 or float16 models for onnxruntime / Windows ML / ML.NET, opset 17 by default.

I/O follows the S1 contract: one NCHW float32 input ``data`` of RGB 0..255, one output
``model_output``; ``metadata_props`` carry the ``Image.*`` and ``CustomVision.*`` keys the hosted
service's clients read. The model passes ``onnx.checker``.

float16: weights and compute in float16, input and output kept float32 (``keep_io_types``) so
clients feed the same float32 pixels as to the float32 model. onnxconverter-common is not a
dependency: the identical converter ships inside onnxruntime (``onnxruntime.transformers.float16``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from exporters.base import RAW_FLAVOR, Artifact, ExportContext, Exporter, Options, OptionsError
from runtimes.manifest import InputSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 17
#: tf2onnx 1.17 supports opsets up to 18; below 13 the converter lacks ops our backbones use.
MIN_OPSET, MAX_OPSET = 13, 18


@dataclass(frozen=True)
class ONNXOptions(Options):
    """Options of the ``onnx`` exporter.

    Attributes:
        opset: ONNX opset version (default 17; 13..18).
    """

    opset: int = DEFAULT_OPSET

    def validate(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise OptionsError(f"option opset={self.opset}: tf2onnx here converts opsets {MIN_OPSET}..{MAX_OPSET}")


def _rename_output(graph: object, old: str, new: str) -> None:
    """Rename a graph output and every reference to it."""
    if old == new:
        return
    for node in graph.node:  # type: ignore[attr-defined]
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for output in graph.output:  # type: ignore[attr-defined]
        if output.name == old:
            output.name = new


def _rename_input(graph: object, old: str, new: str) -> None:
    """Rename a graph input and every node input reading it."""
    if old == new:
        return
    for node in graph.node:  # type: ignore[attr-defined]
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for item in graph.input:  # type: ignore[attr-defined]
        if item.name == old:
            item.name = new


def _unshare_small_constants(graph: object, max_elements: int = 16) -> None:
    """Give each consumer of a small shared initializer its own copy.

    tf2onnx shares scalar constants (a ReLU6's 0 and 6, a clamp's 0) between unrelated nodes. The
    float16 converter inserts one Cast per blocked consumer of a float initializer, all with the same
    output name, which breaks single static assignment; a detector's NMS part (TopK, comparisons)
    has such consumers, classifiers do not.
    """
    import onnx

    inits = {t.name: t for t in graph.initializer}  # type: ignore[attr-defined]
    uses: dict[str, int] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        for name in node.input:
            if name in inits:
                uses[name] = uses.get(name, 0) + 1
    shared = {n for n, c in uses.items() if c > 1 and int(_element_count(inits[n].dims)) <= max_elements}
    seen: dict[str, int] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        for i, name in enumerate(node.input):
            if name in shared:
                k = seen[name] = seen.get(name, 0) + 1
                if k > 1:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[name])
                    copy.name = f"{name}__copy{k}"
                    graph.initializer.append(copy)  # type: ignore[attr-defined]
                    node.input[i] = copy.name


def _element_count(dims: object) -> int:
    out = 1
    for d in dims:  # type: ignore[attr-defined]
        out *= int(d)
    return out


def _topological_sort(graph: object) -> None:
    """Reorder nodes so each comes after its inputs' producers (onnx.checker requires it).

    The float16 converter appends the Cast nodes it adds for ``keep_io_types`` at the end of the
    node list, after the nodes that read them.
    """
    nodes = list(graph.node)  # type: ignore[attr-defined]
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}  # type: ignore[attr-defined]
    available.add("")  # optional inputs are written as empty names
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or an undefined input: leave the rest as it is, the checker will say
            ordered.extend(pending)
            break
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, n in zip(copies, ordered):
        copy.CopyFrom(n)
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(copies)  # type: ignore[attr-defined]


class ONNXExporter(Exporter):
    """``.onnx`` for onnxruntime (Windows ML, ML.NET, Linux, Android, iOS)."""

    name = "onnx"
    suffix = ".onnx"
    flavors = ("float32", "float16", RAW_FLAVOR)
    tasks = ("multiclass", "multilabel", "detection")
    default_flavor = "float32"
    runs_on = "onnxruntime: Windows ML, ML.NET, Linux, Android, iOS"
    description = "ONNX, NCHW input 'data', Custom Vision metadata_props"
    Options = ONNXOptions
    hosted_exports = {("ONNX", ""): "float32", ("ONNX", "ONNX10"): "float32", ("ONNX", "ONNX12"): "float32"}

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        assert isinstance(options, ONNXOptions)
        import onnx
        import tf2onnx

        from edgevision._tf import import_tf
        from exporters.metadata import metadata_properties

        tf, _ = import_tf()
        size = ctx.input_size
        spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="data")
        model_proto, _ = tf2onnx.convert.from_keras(ctx.serving_model(flavor), input_signature=[spec],
                                                   opset=options.opset, inputs_as_nchw=["data"])
        graph = model_proto.graph
        outputs = ctx.output_specs(flavor)
        if len(graph.output) != len(outputs):
            raise OptionsError(f"the converted model has {len(graph.output)} outputs; expected {len(outputs)}")
        for converted, wanted in zip(list(graph.output), outputs):
            _rename_output(graph, converted.name, wanted.name)
        # The hosted service's detector samples (C#/ML.NET) feed an input named image_tensor.
        input_name = "image_tensor" if ctx.is_detector else "data"
        _rename_input(graph, "data", input_name)
        if flavor == "float16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            _unshare_small_constants(model_proto.graph)
            model_proto = convert_float_to_float16(model_proto, keep_io_types=True)
            _topological_sort(model_proto.graph)
        model_proto.producer_name = "edgevision"
        model_proto.doc_string = f"edgevision {ctx.project_name} iteration {ctx.iteration_name} ({ctx.task}, {flavor})"
        onnx.helper.set_model_props(model_proto, metadata_properties(ctx, flavor))
        onnx.checker.check_model(model_proto, full_check=True)
        onnx.save(model_proto, str(ctx.out_dir / MODEL_FILE))
        return Artifact(
            model_file=MODEL_FILE,
            input=InputSpec(input_name, "NCHW", (1, 3, size, size), "float32"),
            outputs=outputs,
            platform="ONNX",
            flavor=flavor,
        )
