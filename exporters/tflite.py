"""TFLite exporter: float32, float16, dynamic-range and full-integer int8 models for LiteRT.

I/O follows the S1 contract: one NHWC input ``data`` of RGB 0..255 and one output ``model_output``.
The converter names tensors after graph nodes (``StatefulPartitionedCall:0``); clients that read
tensor names would not find ``model_output``, so the written flatbuffer's input/output tensors are
renamed after the signature's keys (FACTS.md).

TFLite metadata (labels, normalisation inside the flatbuffer) is not written: the maintained writer,
tflite-support (last release 0.4.4), requires ``protobuf<4`` while TensorFlow 2.21 needs protobuf 7,
so it cannot be installed beside TensorFlow. Labels travel in ``labels.txt`` and ``manifest.json``;
normalisation is inside the graph, so no metadata is needed to feed the model.

Quantization (issue 6): ``int8`` calibrates activation ranges on project images picked by
``calibration=balanced|random|first`` (never the iteration's held-out images), quantizes conv and
dense weights per output channel unless ``per_channel=false``, and converts the iteration's
quantization-aware model (``edgevision train --qat``) instead of the float one when there is one.
A classifier's head is split by feature group for int8 (see
:func:`edgevision.training.quantization.split_head`: the same function, one int8 scale per group).
The verification's figures then say how the weights were quantized and what calibrated them.
Activation ranges are the calibration min/max shrunk to least squared error (``ranges=mse``, the
classifier default; :func:`least_squares_ranges`) or left as calibrated (``ranges=minmax``). A classifier's
conv biases are then corrected so that each channel's int8 output keeps the float mean
(``bias_correction``, default on; :func:`correct_biases`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import numpy as np

from exporters.base import RAW_FLAVOR, Artifact, ExportContext, Exporter, Options, OptionsError
from runtimes.manifest import InputSpec, OutputSpec, Verification

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
IO_TYPES = ("uint8", "float")
#: Calibration images used when ``calibration_images`` is not given (fewer if fewer are available).
DEFAULT_CALIBRATION_IMAGES = 100
#: Options that only mean something for a flavor that quantizes activations / weights.
INT8_ONLY = ("io", "calibration_images", "calibration", "calibration_seed", "qat", "ranges", "bias_correction")
WEIGHT_QUANTIZING_FLAVORS = ("dynamic", "int8")


@dataclass(frozen=True)
class TFLiteOptions(Options):
    """Options of the ``tflite`` exporter.

    Attributes:
        io: ``int8`` flavor only: ``uint8`` (default; input pixels and output probabilities as uint8,
            for integer-only accelerators) or ``float`` (float32 in and out, quantized inside).
        calibration_images: ``int8`` flavor only: this many project images calibrate the activation
            ranges (default: 100, or all there are when fewer; asking for more than there are is
            an error). Images the iteration held out for its figures are never used.
        calibration: ``int8`` flavor only: how they are picked: ``balanced`` (default; round-robin
            across tags), ``random`` (a seeded sample, tags in their natural proportions) or
            ``first`` (the first N in training order; a baseline). See
            :func:`exporters.select_calibration_images`.
        calibration_seed: ``int8`` flavor only: seed of ``balanced`` / ``random`` (default 0).
        per_channel: ``dynamic`` and ``int8``: quantize conv / dense weights with one scale per
            output channel (default true, TFLite's default); false gives one scale per tensor
            (what some older accelerators need; it costs accuracy when channels differ in range).
        qat: ``int8`` flavor only: convert the iteration's quantization-aware model (``train --qat``).
            Default: use it when the iteration has one; ``false``: post-training quantization of
            the float model even so; ``true``: required (an error if the iteration has none).
        ranges: ``int8`` flavor only: how each activation's int8 range is chosen. ``mse`` (default for
            classifiers): the range, within the calibration min/max, that gives the least squared
            rounding + clipping error on the calibration activations (:func:`least_squares_ranges`);
            ``minmax``: the calibration min/max as the converter records them (the default for
            detectors, whose float post-processing the range editing does not cover).
        bias_correction: ``int8`` flavor only: shift each conv / depthwise bias so that the int8
            model's outputs have, channel by channel, the same mean as the float model's on the
            calibration images (:func:`correct_biases`). Default true for classifiers (it costs about
            half a second per calibration image on two cores); detectors and quantization-aware models
            are converted without it (asking for it there is an error).
    """

    io: Optional[str] = None
    calibration_images: Optional[int] = None
    calibration: Optional[Literal["balanced", "random", "first"]] = None
    calibration_seed: Optional[int] = None
    per_channel: Optional[bool] = None
    qat: Optional[bool] = None
    ranges: Optional[Literal["mse", "minmax"]] = None
    bias_correction: Optional[bool] = None

    def validate(self) -> None:
        if self.io is not None and self.io not in IO_TYPES:
            raise OptionsError(f"option io={self.io!r}: expected one of {', '.join(IO_TYPES)}")
        if self.calibration_images is not None and self.calibration_images < 1:
            raise OptionsError(f"option calibration_images={self.calibration_images}: expected a positive integer")
        if self.calibration_seed is not None and self.calibration_seed < 0:
            raise OptionsError(f"option calibration_seed={self.calibration_seed}: expected a non-negative integer")

    def check_flavor(self, flavor: str) -> None:
        """Refuse options that do not apply to ``flavor`` (never silently ignored)."""
        given = [k for k in INT8_ONLY if getattr(self, k) is not None]
        if flavor != "int8" and given:
            raise OptionsError(f"option{'s' if len(given) > 1 else ''} {', '.join(given)} appl"
                               f"{'y' if len(given) > 1 else 'ies'} to the int8 flavor only, not {flavor!r}")
        if self.per_channel is not None and flavor not in WEIGHT_QUANTIZING_FLAVORS:
            raise OptionsError(f"option per_channel applies to the dynamic and int8 flavors only, not {flavor!r} "
                               "(float weights have no quantization scales)")


def rename_io_tensors(path: Path, input_name: str = "data") -> None:
    """Rename the model's input/output tensors after its signature's keys (in place).

    Clients that look tensors up by name (the hosted service's TFLite samples) then find
    ``model_output`` instead of ``StatefulPartitionedCall:0``.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for signature in model.signatureDefs or []:
        tensors = model.subgraphs[signature.subgraphIndex].tensors
        for item in list(signature.inputs or []) + list(signature.outputs or []):
            key = item.name.decode() if isinstance(item.name, bytes) else item.name
            tensors[item.tensorIndex].name = key.encode()
    flatbuffer_utils.write_model(model, str(path))


#: Operators whose weights (input 1) TFLite quantizes, by builtin code name.
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def weight_quantization(path: Path) -> dict[str, Any]:
    """How a ``.tflite`` file's conv / depthwise / dense weights are quantized, read from the flatbuffer.

    Returns:
        ``{"per_channel": n, "per_tensor": n, "float": n, "by_op": {OP: {"per_channel": n, ...}}}``,
        counting weight tensors: per-channel ones carry a scale vector as long as the output
        channels (``quantizedDimension`` 0 for conv / dense, 3 for depthwise), per-tensor ones a
        single scale, float ones none.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    out: dict[str, Any] = {"per_channel": 0, "per_tensor": 0, "float": 0, "by_op": {}}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "")
            if name not in _WEIGHT_OPS or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            q = tensor.quantization
            scales = 0 if q is None or q.scale is None else len(q.scale)
            kind = "float" if scales == 0 else "per_tensor" if scales == 1 else "per_channel"
            out[kind] += 1
            counts = out["by_op"].setdefault(name, {"per_channel": 0, "per_tensor": 0, "float": 0})
            counts[kind] += 1
    return out


class TFLiteExporter(Exporter):
    """``.tflite`` for LiteRT / TensorFlow Lite (Android, Linux boards, microcontrollers with int8)."""

    name = "tflite"
    suffix = ".tflite"
    flavors = ("float32", "float16", "dynamic", "int8", RAW_FLAVOR)
    tasks = ("multiclass", "multilabel", "detection")
    default_flavor = "float32"
    runs_on = "Android, iOS, Linux boards (LiteRT); int8: Edge TPU / NPUs"
    description = "TensorFlow Lite flatbuffer; dynamic = int8 weights, int8 = full integer"
    Options = TFLiteOptions
    hosted_exports = {("TensorFlow", "TensorFlowLite"): "float32"}

    def export(self, ctx: ExportContext, flavor: str, options: Options) -> Artifact:
        assert isinstance(options, TFLiteOptions)
        options.check_flavor(flavor)
        from edgevision._tf import import_tf

        tf, _ = import_tf()
        self._notes: dict[str, Any] = {}
        qat_model = self._qat_model(ctx, options) if flavor == "int8" else None
        ranges, bias_correction = ((self._ranges(ctx, options, qat_model), self._bias_correction(ctx, options, qat_model))
                                   if flavor == "int8" else ("minmax", False))
        if qat_model is not None:
            # The fake-quant ranges learnt in training decide the activation scales; calibration
            # below still covers what the QAT graph leaves float.
            function, holder = _concrete_function(tf, qat_model, ctx.input_size), _holder(tf, qat_model)
        elif flavor == "int8" and not ctx.is_detector:
            from edgevision.training.quantization import split_head

            # Same function, but each pooled feature group keeps its own int8 scale (see split_head).
            model = split_head(ctx.model)
            function, holder = _concrete_function(tf, model, ctx.input_size), _holder(tf, model)
        else:
            function, holder = ctx.concrete_function(flavor, batch=not ctx.is_detector), ctx.variables_holder()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
        io = options.io or "uint8"
        if flavor in WEIGHT_QUANTIZING_FLAVORS and options.per_channel is False:
            # A private converter switch (TF 2.21): one scale per weight tensor instead of per
            # output channel. Checked in the written flatbuffer by weight_quantization().
            converter._experimental_disable_per_channel = True
        if flavor == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif flavor == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif flavor == "int8":
            images = self._calibration(ctx, options)
            int8_recipe(tf, converter, images, ctx.input_size)
            if ctx.is_detector:
                # Box decoding and NMS (TopK, ArgMax, gathers, int64 classes) stay in float where
                # they have no int8 kernel; the backbone and head are integer.
                converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
            if io == "uint8":
                converter.inference_input_type = tf.uint8
                if not ctx.is_detector:  # a detector's boxes/scores stay float32, its classes int64
                    converter.inference_output_type = tf.uint8
        path = ctx.out_dir / MODEL_FILE
        if ranges == "mse" or bias_correction:  # classifiers (detectors and QAT models have neither)
            blob, notes = int8_calibrated(tf, converter, images, ctx.input_size, io, ranges=ranges,
                                          bias_correction=bias_correction)
            self._notes.update(notes)
            path.write_bytes(blob)
        else:
            path.write_bytes(converter.convert())
        rename_io_tensors(path)
        dtype = "uint8" if flavor == "int8" and io == "uint8" else "float32"
        size = ctx.input_size
        return Artifact(
            model_file=MODEL_FILE,
            input=InputSpec("data", "NHWC", (1, size, size, 3), dtype),
            # Detectors: the contract's names without the batch dimension (the hosted service's
            # TFLite detector layout); classifiers keep [1, C].
            outputs=ctx.output_specs(flavor, batch=not ctx.is_detector,
                                     dtype="float32" if ctx.is_detector else dtype),
            platform="TFLite",
            flavor=flavor,
        )

    def verify(self, ctx: ExportContext, artifact: Artifact, flavor: str) -> Verification:
        """The shared check (:func:`exporters.verify.compare_with_model`, always against the float model),
        plus how the file's weights are quantized and, for int8, what calibrated it."""
        verification = super().verify(ctx, artifact, flavor)
        if flavor in WEIGHT_QUANTIZING_FLAVORS:
            verification.details["weights"] = weight_quantization(ctx.out_dir / artifact.model_file)
        if not ctx.is_detector and ctx.iteration is not None and verification.details.get("held_out_images"):
            # Say what the "held-out" images are: a quick iteration is cross-validated, so its stored
            # evaluation covers every training image and its final head has seen them all; agreement
            # and accuracy there are in-sample (and optimistic: training images sit far from the
            # decision boundaries). Advanced iterations are checked on a true hold-out.
            from exporters import _hold_out_ids

            verification.details["verification_images"] = (
                "hold-out (never trained on)" if _hold_out_ids(ctx.iteration)
                else "training images (cross-validated quick iteration: no hold-out)")
        verification.details.update(getattr(self, "_notes", {}))
        return verification

    def _qat_model(self, ctx: ExportContext, options: TFLiteOptions) -> Any:
        """The iteration's quantization-aware model when it has one and ``qat`` allows it, else None."""
        if options.qat is False:
            self._notes["qat"] = False
            return None
        model = None
        if not ctx.is_detector and ctx.iteration is not None:
            from edgevision.training.quantization import load_qat_model

            model = load_qat_model(ctx.iteration)
        if model is None and options.qat:
            raise OptionsError(f"option qat=true: iteration {ctx.iteration_name} of {ctx.project_name!r} has no "
                               f"quantization-aware model; train one with `edgevision train {ctx.project_name} --qat`")
        self._notes["qat"] = model is not None
        return model

    def _ranges(self, ctx: ExportContext, options: TFLiteOptions, qat_model: Any) -> str:
        """The activation-range method the options ask for (``mse`` unless that cannot apply)."""
        if options.ranges == "mse" and (ctx.is_detector or qat_model is not None):
            why = ("a detector's float post-processing is not covered by the range editing" if ctx.is_detector
                   else "the quantization-aware model brings its own trained ranges (or export with qat=false)")
            raise OptionsError(f"option ranges=mse: not available here: {why}; use ranges=minmax")
        ranges = options.ranges or ("minmax" if ctx.is_detector or qat_model is not None else "mse")
        self._notes["ranges"] = ranges
        return ranges

    def _bias_correction(self, ctx: ExportContext, options: TFLiteOptions, qat_model: Any) -> bool:
        """Whether the options ask for :func:`correct_biases` (classifiers without a QAT model: default yes)."""
        if options.bias_correction and (ctx.is_detector or qat_model is not None):
            why = ("a detector is converted in one step with its float post-processing" if ctx.is_detector
                   else "a quantization-aware model's trained ranges already match its own float graph "
                        "(or export with qat=false)")
            raise OptionsError(f"option bias_correction=true: not available here: {why}; drop the option")
        on = options.bias_correction is not False and not ctx.is_detector and qat_model is None
        self._notes["bias_correction"] = False  # replaced by its figures when it runs
        return on

    def _calibration(self, ctx: ExportContext, options: TFLiteOptions) -> list[Path]:
        """The int8 calibration images the options ask for (the iteration's hold-out excluded)."""
        method = options.calibration or "balanced"
        seed = options.calibration_seed or 0
        wanted = options.calibration_images
        if ctx.iteration is not None:
            from exporters import calibration_groups, select_calibration_images

            groups = calibration_groups(ctx.iteration)
        else:  # a context built by hand (tests): its own list, as one group
            groups = {"": list(ctx.calibration_images)}
        available = sum(len(v) for v in groups.values())
        if not available:
            raise OptionsError("the int8 flavor needs project images to calibrate on; the project has none "
                               "(apart from the iteration's held-out images)")
        if wanted is not None and wanted > available:
            raise OptionsError(f"option calibration_images={wanted}: only {available} images can calibrate this "
                               f"iteration (its held-out images are never used); ask for at most {available}")
        images = select_calibration_images(groups, wanted or DEFAULT_CALIBRATION_IMAGES, method, seed)
        self._notes["calibration"] = {"method": method, "images": len(images), "seed": seed,
                                      "available": available, "tags": len(groups)}
        log.info("int8 calibration: %d images (%s, seed %d) of %d available", len(images), method, seed, available)
        return images


def int8_recipe(tf: Any, converter: Any, images: list[Path], size: int) -> None:
    """Set ``converter`` up for full-integer int8 calibrated on ``images`` (the int8 flavor's recipe)."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(images, size)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def int8_outputs_model(model: Any, images: list[Path], size: int) -> bytes:
    """``model`` (tf_keras, RGB 0..255 in, one or more outputs) as the int8 export converts a classifier:
    :func:`int8_recipe` on ``images``, least-squares activation ranges, bias correction (see
    :func:`int8_calibrated`); float32 in and out, so each
    output reads back dequantized. Quantization-aware quick training uses it to see the pooled features
    exactly as the int8 export's head will read them.

    Returns:
        The ``.tflite`` bytes; its signature's outputs are ``output_0``, ``output_1``, ... in ``model``'s
        output order.
    """
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="data")

    def serve(data: Any) -> dict[str, Any]:
        result = model(data, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        return {f"output_{i}": r for i, r in enumerate(result)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(serve).get_concrete_function(spec)], _holder(tf, model))
    int8_recipe(tf, converter, images, size)
    return int8_calibrated(tf, converter, images, size, "float")[0]


def int8_calibrated(tf: Any, converter: Any, images: list[Path], size: int, io: str, *, ranges: str = "mse",
                    bias_correction: bool = True) -> tuple[bytes, dict[str, Any]]:
    """A classifier's full-integer conversion: calibrate only, edit the calibrated float model, quantize.

    The same steps ``TFLiteConverter.convert()`` takes for int8 (calibrate, then the MLIR quantizer with
    per-channel weights unless disabled). In between, ``ranges="mse"`` applies :func:`least_squares_ranges`
    and ``bias_correction`` applies :func:`correct_biases`, both on ``images``.

    Returns:
        The ``.tflite`` bytes (``io`` ``uint8`` or ``float``) and notes for the verification details
        (``{"bias_correction": its figures, or False}``).
    """
    from tensorflow.lite.python import convert

    from runtimes.preprocess import preprocess

    converter.experimental_new_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001  (TF 2.21: returns the calibrated float model)
    calibrated = converter.convert()
    per_channel_off = bool(converter._experimental_disable_per_channel)  # noqa: SLF001
    # Decoded once for both edits, as uint8 (the same pixel values; a quarter of float32's memory).
    decoded = [preprocess(p, (size, size), dtype=np.uint8)[None] for p in images]
    if ranges == "mse":
        calibrated = least_squares_ranges(calibrated, decoded)
    notes: dict[str, Any] = {"bias_correction": False}
    if bias_correction:
        def measured(model: bytes) -> bytes:
            return convert.mlir_quantize(model, disable_per_channel=per_channel_off,
                                         input_data_type=tf.float32, output_data_type=tf.float32)

        calibrated, notes["bias_correction"] = correct_biases(calibrated, decoded, measured)
        log.info("int8 bias correction: %s", notes["bias_correction"])
    kind = tf.uint8 if io == "uint8" else tf.float32
    return convert.mlir_quantize(calibrated, disable_per_channel=per_channel_off,
                                 input_data_type=kind, output_data_type=kind), notes


#: Activation values sampled per calibration image and tensor for the range search.
RANGE_SAMPLES_PER_IMAGE = 2000
#: Candidate range ends, as fractions of the calibration min (max).
RANGE_FRACTIONS = np.linspace(0.2, 1.0, 33)


def _int8_error(v: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of ``v`` quantized to 256 levels over [lo, hi] (zero exact, as TFLite nudges it)."""
    step = (hi - lo) / 255.0
    if step <= 0:
        return float(np.mean(v * v))
    zero = np.round(-lo / step)
    q = (np.clip(np.round(v / step) + zero, 0, 255) - zero) * step
    return float(np.mean((q - v) ** 2))


def least_squares_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The int8 range within [lo, hi] (each end a fraction 0.2..1 of the calibration's) with the least
    squared rounding + clipping error on ``values``, by coordinate descent over the two ends.

    Min/max ranges are set by a few outliers: a ReLU6 map whose values sit mostly below 1 still gets
    steps of 6/255. Clipping the rare outliers buys finer steps for everything else.
    """
    best_lo, best_hi = lo, hi
    best = _int8_error(values, lo, hi)
    for _ in range(2):
        for end in ("hi", "lo"):
            base = hi if end == "hi" else lo
            if base == 0:
                continue
            for f in RANGE_FRACTIONS:
                cand_lo, cand_hi = (best_lo, base * f) if end == "hi" else (base * f, best_hi)
                err = _int8_error(values, cand_lo, cand_hi)
                if err < best - 1e-18:
                    best, best_lo, best_hi = err, cand_lo, cand_hi
    return best_lo, best_hi


def least_squares_ranges(calibrated: bytes, images: Iterable[np.ndarray], *, seed: int = 0) -> bytes:
    """A calibrated (not yet quantized) TFLite model with every activation range replaced by its
    :func:`least_squares_range` over the activations ``images`` produce; the model's inputs keep theirs.

    Args:
        calibrated: what the converter returns with ``_experimental_calibrate_only`` (float ops, each
            tensor carrying the calibration min/max).
        images: batches [1, H, W, 3] of pixel values, float32 or uint8 (the calibration images).
        seed: which activation values are sampled (:data:`RANGE_SAMPLES_PER_IMAGE` per image and tensor).
            The positions depend only on the seed and the tensor's size, so the same tensor gets the
            same range in any model that contains it (a classifier and its feature model, say).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = fb.subgraphs[0]
    inputs = set(int(i) for i in graph.inputs)
    ranged = [i for i, t in enumerate(graph.tensors) if i not in inputs and t.quantization is not None
              and t.quantization.min is not None and len(t.quantization.min) == 1]
    interpreter, source = _all_tensors_interpreter(calibrated)
    picks: dict[int, np.ndarray] = {}  # positions sampled, by tensor size: the same in any model (see above)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in ranged}
    for image in images:
        interpreter.set_tensor(source, np.asarray(image, np.float32))
        interpreter.invoke()
        for i in ranged:
            v = interpreter.get_tensor(i).ravel()
            if v.size > RANGE_SAMPLES_PER_IMAGE:
                if v.size not in picks:
                    picks[v.size] = np.random.default_rng([seed, v.size]).integers(0, v.size, RANGE_SAMPLES_PER_IMAGE)
                v = v[picks[v.size]]
            samples[i].append(v.astype(np.float32))
    for i in ranged:
        q = graph.tensors[i].quantization
        lo, hi = least_squares_range(np.concatenate(samples[i]), float(q.min[0]), float(q.max[0]))
        q.min, q.max = np.array([lo], np.float32), np.array([hi], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


#: A channel's correction is divided by the fraction of its outputs inside its activation's linear
#: range, but never by less than this (a channel almost always clipped gets at most 4x its error).
BIAS_CORRECTION_MIN_ACTIVE = 0.25
#: Fused activations and their linear ranges, by TFLite's ActivationFunctionType value.
_LINEAR_RANGE = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}


def correct_biases(calibrated: bytes, images: Sequence[np.ndarray],
                   quantize: Callable[[bytes], bytes]) -> tuple[bytes, dict[str, Any]]:
    """Empirical bias correction: shift each conv / depthwise bias of a calibrated float model so that
    its int8 version's output has, per channel, the same mean as the float model's.

    Int8 rounding is not mean-free. Clipping an activation to a shrunk range removes its tail, and
    rounding a weight changes a channel's gain, so every layer's int8 output drifts from the float
    one by a per-channel offset. The drift adds up through the network. The correction walks the
    layers in execution order. For each layer it quantizes the model as corrected so far (``quantize``:
    the export's own ``mlir_quantize`` call, float io), runs ``images`` through it, and measures the
    mean of ``int8 - float`` on every output channel. It then subtracts that from the float bias. The
    difference is divided by the fraction of outputs in the fused activation's linear range (a bias
    moves a ReLU6 output only where it is neither 0 nor 6). Each layer is measured after all layers
    before it are corrected, so no drift is corrected twice. Weights and activation ranges are left
    alone. The float model's outputs are the reference. Dense layers (the head) are not corrected.

    Args:
        calibrated: a calibrated float model (``_experimental_calibrate_only``), ranges as they
            will be quantized.
        images: batches [1, H, W, 3] of pixel values as the model takes them (float32 or uint8).
        quantize: turns a calibrated model into the int8 one whose tensors are measured.

    Returns:
        The calibrated model with corrected biases, and ``{"layers", "images", "seconds",
        "mean_error_before", "mean_error_after"}``: the RMS, over every corrected layer's channels, of
        the per-channel mean error of the int8 model before and after.
    """
    import time
    from collections import Counter

    from tensorflow.lite.python import schema_py_generated as schema

    start = time.perf_counter()
    data = bytearray(calibrated)
    model = schema.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    kinds = {schema.BuiltinOperator.CONV_2D: schema.Conv2DOptions,
             schema.BuiltinOperator.DEPTHWISE_CONV_2D: schema.DepthwiseConv2DOptions}
    targets = []  # (output tensor's name, writable float32 view of the bias inside `data`, linear range)
    uses = Counter(graph.Tensors(i).Buffer() for i in range(graph.TensorsLength()))
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = kinds.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind is None or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        bias = graph.Tensors(op.Inputs(2))
        values = model.Buffers(bias.Buffer()).DataAsNumpy()
        if (bias.Type() != schema.TensorType.FLOAT32 or not isinstance(values, np.ndarray) or not values.size
                or uses[bias.Buffer()] > 1):
            continue  # not a float bias, or a buffer other tensors share (correcting it would move them too)
        options = kind()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        linear = _LINEAR_RANGE.get(options.FusedActivationFunction())
        if linear is None:
            continue
        # By name: quantizing inserts tensors, so indices differ between the float and int8 models.
        targets.append((graph.Tensors(op.Outputs(0)).Name().decode(), values.view(np.float32), linear))

    def channel_means(blob: bytes, tensors: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per output channel of each tensor: mean over ``images`` and positions, and the fraction inside
        its linear range (dequantized when the tensor is int8)."""
        interpreter, source = _all_tensors_interpreter(blob)
        details = {d["name"]: d for d in interpreter.get_tensor_details()}
        sums: dict[str, Any] = {t: 0.0 for t in tensors}
        inside: dict[str, Any] = {t: 0.0 for t in tensors}
        count = dict.fromkeys(tensors, 0)
        for image in images:
            interpreter.set_tensor(source, np.asarray(image, np.float32))
            interpreter.invoke()
            for t in tensors:
                v = interpreter.get_tensor(details[t]["index"])
                if v.dtype != np.float32:
                    s, z = details[t]["quantization"]
                    v = (v.astype(np.float32) - z) * s
                v = v.reshape(-1, v.shape[-1])
                lo, hi = linear_ranges[t]
                sums[t] = sums[t] + v.sum(axis=0, dtype=np.float64)
                inside[t] = inside[t] + ((v > lo) & (v < hi)).sum(axis=0)
                count[t] += len(v)
        return [(sums[t] / count[t], inside[t] / count[t]) for t in tensors]

    outputs = [t for t, _, _ in targets]
    linear_ranges = {t: linear for t, _, linear in targets}
    reference = channel_means(bytes(data), outputs)

    def rms_error() -> float:  # of every target's per-channel mean, int8 against float
        means = channel_means(quantize(bytes(data)), outputs)
        return float(np.sqrt(np.mean(np.concatenate([m - f for (m, _), (f, _) in zip(means, reference)]) ** 2)))

    before = rms_error() if targets else 0.0
    for (tensor, bias, _), (float_mean, active) in zip(targets, reference):
        (int8_mean, _), = channel_means(quantize(bytes(data)), [tensor])
        bias -= ((int8_mean - float_mean) / np.maximum(active, BIAS_CORRECTION_MIN_ACTIVE)).astype(np.float32)
    after = rms_error() if targets else 0.0

    return bytes(data), {"layers": len(targets), "images": len(images), "seconds": round(time.perf_counter() - start, 1),
                         "mean_error_before": round(before, 5), "mean_error_after": round(after, 5)}


def _all_tensors_interpreter(model: bytes) -> tuple[Any, int]:
    """An allocated LiteRT interpreter that keeps every intermediate tensor readable, and its input's index."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "intended for debugging": reading inner tensors is the point here
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter, interpreter.get_input_details()[0]["index"]


def _representative(images: list[Path], size: int) -> Any:
    """The converter's representative dataset: each image decoded lazily (100 images at 260 px
    would be 80 MB held at once) through the runtime's own preprocessing."""
    from runtimes.preprocess import preprocess

    def generate() -> Any:
        for image in images:
            yield [preprocess(image, (size, size))[None]]

    return generate


def _concrete_function(tf: Any, model: Any, size: int) -> Any:
    """A classifier's serving function over ``model``: ``data`` [1, H, W, 3] -> ``{"model_output": probs}``."""
    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="data")

    def serve(data: Any) -> dict[str, Any]:
        return {"model_output": model(data, training=False)}

    return tf.function(serve).get_concrete_function(spec)


def _holder(tf: Any, model: Any) -> Any:
    """A bare ``tf.Module`` holding ``model``'s variables (see ``ExportContext.variables_holder``)."""
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    return holder

