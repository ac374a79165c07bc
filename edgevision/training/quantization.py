"""Quantization-aware fine-tuning (``train --qat``) and magnitude pruning (``train --prune``) of classifiers.

Both run after the float model is trained, with tensorflow-model-optimization on the tf_keras model
(FACTS.md: tfmot rejects Keras 3 models; :func:`edgevision._tf.import_tf` selects tf_keras), and
both learn by **distillation**: the target of every training image is the float model's own output,
not its tag. The point of either step is to keep what the float model does while the weights are
quantized or zeroed; with a few dozen images per tag, fitting the tags again would only overfit.

QAT (:func:`quantization_aware`): the model, its head split by feature group (:func:`split_head`),
is cloned with every layer annotated for tfmot's default 8-bit scheme. The backbone's input
``Normalization`` layer has no entry in tfmot's registry, so it gets an output-only config
(:func:`_output_only_config`); Conv/DepthwiseConv + BatchNorm + ReLU6 (quantized as one op, as
TFLite fuses it), Add, pooling, Activation and Dense are tfmot's own. tfmot learns activation ranges as
moving averages with a fixed decay of 0.999 starting from [-6, 6]: a few hundred steps would leave
them mostly at their start. So before fine-tuning the ranges are set from the data in one pass
(:func:`_calibrate_ranges`), then one pass over each image, its mirror and two augmented copies,
with a low learning rate and BatchNorm frozen, adapts the weights to the fake quantization. The QAT
model is stored next to the float one (``model_qat.h5``); the TFLite ``int8`` export converts it,
every other export keeps using the float model (FACTS.md: fake-quant nodes make an invalid ONNX
graph, CoreML likewise). On the Fashion-MNIST benchmark it did not beat post-training int8
(bench/README.md): the fake-quantized model matches the float one on the training images but
generalises that to new images no better than post-training quantization does.

Pruning: ``prune_low_magnitude`` on every ``Conv2D`` (depthwise kernels are small and each channel
has only k*k weights; the head is left dense) with a polynomial schedule from 0 to the target
sparsity over the first two thirds of the fine-tune, then ``strip_pruning``. Quick iterations prune
the backbone by matching its features (labels unused) and then cross-validate and fit the head on
the pruned backbone's features, so their figures describe the pruned model; advanced iterations prune
the fine-tuned model by matching its probabilities on the training part and re-score the hold-out.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from edgevision.errors import UsageError

if TYPE_CHECKING:
    from edgevision.domains import Domain
    from edgevision.iteration import Iteration
    from edgevision.store.project import ImageRecord
    from edgevision.training.data import TrainingSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

QAT_MODEL_FILE = "model_qat.h5"
QAT_EPOCHS = 1
QAT_LEARNING_RATE = 1e-5
#: Randomly augmented copies of each training image distilled on, besides the image and its mirror.
QAT_AUGMENTED_VIEWS = 2
PRUNE_AUGMENTED_VIEWS = 0
#: At most this many images set the activation ranges before QAT fine-tuning.
RANGE_CALIBRATION_IMAGES = 300
PRUNE_EPOCHS = 3
PRUNE_LEARNING_RATE = 1e-4
#: The schedule reaches the target sparsity after this fraction of the pruning steps, then holds it.
PRUNE_RAMP = 2 / 3
BATCH = 16
PREDICT_BATCH = 32


# --------------------------------------------------------------------------- requests
def check_request(project_type: str, *, qat: bool = False, prune: float | None = None, int8_ready: bool = False,
                  mode: str = "quick") -> None:
    """Refuse ``--qat`` / ``--prune`` / ``--int8-ready`` values that cannot work, before anything is loaded.

    Raises:
        UsageError: ``prune`` outside (0, 1), two of the options at once, any of them on an object-detection
            project, or ``int8_ready`` outside quick mode.
    """
    if int8_ready:
        if qat or prune is not None:
            other = "--qat" if qat else "--prune"
            raise UsageError(f"--int8-ready and {other} cannot be combined: --int8-ready makes the float model itself "
                             "int8-friendly (weights on the int8 grid, head fitted on int8 features), "
                             f"{'which a quantization-aware copy would not be' if qat else 'and pruning would move its weights off that grid'}. "
                             "Use one of them")
        if project_type == "detection":
            raise UsageError("--int8-ready is for classifiers only; `export --format tflite --flavor int8` still "
                             "quantizes a detector after training")
        if mode != "quick":
            raise UsageError("--int8-ready works in quick mode only (it fits the head on int8 features of a frozen "
                             "backbone; advanced mode fine-tunes the backbone): drop --mode advanced, or use --qat")
    if prune is not None:
        if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0.0 < float(prune) < 1.0:
            raise UsageError(f"--prune takes the fraction of weights to zero, strictly between 0 and 1 "
                             f"(e.g. --prune 0.5), got {prune}")
    if qat and prune is not None:
        raise UsageError("--qat and --prune cannot be combined yet: quantization-aware fine-tuning would fill the "
                         "pruned weights in again. Train one iteration with each (or prune, then export int8 "
                         "with post-training quantization, which keeps the zeros)")
    if project_type == "detection" and (qat or prune is not None):
        what = " and ".join(w for w, on in (("--qat", qat), ("--prune", prune is not None)) if on)
        raise UsageError(f"{what} is for classifiers only: detector training has its own loss and data "
                         "pipeline that quantization-aware training and pruning are not wired into yet. "
                         "Train without it; `export --format tflite --flavor int8` still quantizes the detector "
                         "after training")


def training_records(ts: "TrainingSet", evaluation: dict[str, np.ndarray]) -> list["ImageRecord"]:
    """The images the float model trained on: all of them (cross-validated quick mode) or all but the
    hold-out (advanced mode), so QAT and pruning never touch the images the figures are computed on."""
    if "fold" in evaluation:
        return list(ts.records)
    held_out = {str(i) for i in evaluation["image_ids"]}
    return [r for r in ts.records if r.id not in held_out]


# --------------------------------------------------------------------------- shared
def _tfmot() -> Any:
    from edgevision._tf import import_tf

    import_tf()  # TF_USE_LEGACY_KERAS before tfmot imports TensorFlow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow_model_optimization as tfmot
    return tfmot


def _images(records: Sequence["ImageRecord"], size: int) -> np.ndarray:
    """Decoded training images, uint8 (N, size, size, 3): 4x less memory than float32."""
    from edgevision.training.embeddings import load_batch

    out = np.empty((len(records), size, size, 3), np.uint8)
    for start in range(0, len(records), PREDICT_BATCH):
        chunk = records[start : start + PREDICT_BATCH]
        out[start : start + len(chunk)] = load_batch([r.path for r in chunk], size).astype(np.uint8)
    return out


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    """``model`` on uint8 images in batches (inference mode)."""
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    out = []
    for start in range(0, len(x), PREDICT_BATCH):
        batch = x[start : start + PREDICT_BATCH].astype(np.float32)
        out.append(np.asarray(fn(batch), np.float32))
    return np.concatenate(out)


def _views(x: np.ndarray, domain: "Domain", augmented: int, *, seed: int) -> list[np.ndarray]:
    """The images to distil on: as they are, mirrored (when the domain allows flips) and ``augmented``
    randomly augmented copies (the domain's own augmentation, as advanced training uses). The float
    model's outputs are known for any input, so every extra view is a new training example: with a
    few hundred images, matching only the images themselves generalises poorly to new ones."""
    from edgevision._tf import import_tf
    from edgevision.training.advanced import _augmenter

    _, keras = import_tf()
    views = [x]
    if domain.augmentation.hflip:
        views.append(np.ascontiguousarray(x[:, :, ::-1]))
    for k in range(augmented):
        augment = _augmenter(keras, domain.augmentation, seed + 101 * (k + 1))
        out = np.empty_like(x)
        for start in range(0, len(x), PREDICT_BATCH):
            batch = x[start : start + PREDICT_BATCH].astype(np.float32)
            out[start : start + len(batch)] = np.clip(np.asarray(augment(batch, training=True)), 0, 255).round()
        views.append(out)
    return views


def _distillation_data(views: list[np.ndarray], targets: list[np.ndarray], *, seed: int) -> Any:
    """A shuffled dataset of (image, the float model's output on it) over all views."""
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    x, y = np.concatenate(views), np.concatenate(targets)
    return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .map(lambda im, t: (tf.cast(im, tf.float32), t)).batch(BATCH).prefetch(2))


def _freeze_batchnorm(model: Any, keras: Any) -> None:
    """BatchNorm stays in inference mode: a few images make batch statistics noisy (as in advanced mode)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _copy(model: Any, keras: Any) -> Any:
    """A copy of a functional model with its own layers and the same weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else 1.0


class _ProgressCallback:
    """Keras callback reporting ``progress(step, total, what)`` per batch."""

    def __new__(cls, keras: Any, progress: Progress | None, total: int, what: str) -> Any:
        class Callback(keras.callbacks.Callback):
            step = 0

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                Callback.step += 1
                if progress:
                    progress(min(Callback.step, total), total, what)

        return Callback()


# --------------------------------------------------------------------------- int8-friendly head
def split_head(model: Any) -> Any:
    """The same classifier with its head applied to each pooled feature group separately and summed.

    The quick/advanced classifier concatenates the pooled top features (ReLU6, 0..6) with pooled
    stage outputs (no activation, about -15..30) before one Dense layer. Int8 TFLite gives a
    concatenation a single scale for all its inputs, so the top features, which carry most of the
    signal, got ~0.12 per step (a few dozen levels) on the Fashion-MNIST benchmark. ``Dense(concat(a,
    b, ...))`` equals ``Dense_a(a) + Dense_b(b) + ...``: split that way every group keeps its own scale.
    Used for int8 conversion and QAT only; the stored float model is unchanged.

    Returns:
        An equivalent model (on a copy of the original's layers), or ``model`` itself when it has no
        ``features`` Concatenate feeding a ``model_output`` Dense.
    """
    from edgevision._tf import import_tf

    _, keras = import_tf()
    try:
        concat, dense = model.get_layer("features"), model.get_layer("model_output")
    except ValueError:
        return model
    if not isinstance(concat, keras.layers.Concatenate) or not isinstance(dense, keras.layers.Dense):
        return model
    # A layer used in several models (advanced training assembles the backbone twice; pruning and
    # tfmot clone around shared layers) answers `.input` for its first graph: copy, so there is one.
    model = _copy(model, keras)
    concat, dense = model.get_layer("features"), model.get_layer("model_output")
    kernel, bias = dense.get_weights()
    parts = list(concat.input)
    logits, offset = [], 0
    for i, part in enumerate(parts):
        width = int(part.shape[-1])
        layer = keras.layers.Dense(kernel.shape[1], use_bias=i == 0, name=f"model_output_{i}")
        logits.append(layer(part))
        layer.set_weights([kernel[offset : offset + width]] + ([bias] if i == 0 else []))
        offset += width
    summed = keras.layers.Add(name="logits")(logits) if len(logits) > 1 else logits[0]
    outputs = keras.layers.Activation(dense.get_config()["activation"], name="model_output")(summed)
    return keras.Model(model.input, outputs, name=f"{model.name}_split_head")


# --------------------------------------------------------------------------- int8-grid weights
#: TFLite's int8 weights: symmetric, narrow range [-127, 127], one scale per output channel.
INT8_WEIGHT_LEVELS = 127


def _folded_convs(model: Any) -> list[tuple[Any, Any, int]]:
    """(conv or depthwise conv, the BatchNorm right after it or None, output-channel axis of its kernel)."""
    from edgevision._tf import import_tf

    _, keras = import_tf()
    pairs = []
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        consumers = [node.outbound_layer for node in layer._outbound_nodes]  # noqa: SLF001
        bn = consumers[0] if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization) else None
        # Keras kernels: conv (kh, kw, in, out); depthwise (kh, kw, C, 1) -> per channel C.
        pairs.append((layer, bn, -1 if not isinstance(layer, keras.layers.DepthwiseConv2D) else 2))
    return pairs


def _bn_factor(bn: Any, channels: int) -> np.ndarray:
    """The per-channel factor TFLite multiplies a conv kernel by when it folds ``bn`` into it (1 when none)."""
    if bn is None:
        return np.ones(channels)
    weights = {w.name.split("/")[-1].split(":")[0]: np.asarray(w.numpy(), np.float64) for w in bn.weights}
    gamma = weights.get("gamma", np.ones(channels))
    return gamma / np.sqrt(weights["moving_variance"] + bn.epsilon)


def _grid_step(folded: np.ndarray, axis: int) -> np.ndarray:
    """Per-output-channel int8 step of ``folded`` (max |w| / 127; 0 for an all-zero channel)."""
    moved = np.moveaxis(folded, axis, -1).reshape(-1, folded.shape[axis])
    return np.max(np.abs(moved), axis=0) / INT8_WEIGHT_LEVELS


def _shaped(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along ``axis`` of an ``ndim``-d kernel."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _snap(folded: np.ndarray, step: np.ndarray, axis: int) -> np.ndarray:
    s = _shaped(step, folded.ndim, axis)
    return np.where(s > 0, np.round(folded / np.where(s > 0, s, 1.0)) * s, 0.0)


def _folded(conv: Any, bn: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(``conv``'s kernel as TFLite folds ``bn`` into it, the broadcastable per-channel fold factor)."""
    kernel = np.asarray(conv.get_weights()[0], np.float64)
    factor = _shaped(_bn_factor(bn, kernel.shape[axis]), kernel.ndim, axis)
    return kernel * factor, factor


def int8_grid_steps(model: Any) -> dict[str, np.ndarray]:
    """Each conv / depthwise conv's per-channel int8 step, after BatchNorm folding (what TFLite quantizes with)."""
    return {conv.name: _grid_step(_folded(conv, bn, axis)[0], axis) for conv, bn, axis in _folded_convs(model)}


def snap_to_int8_grid(model: Any) -> dict[str, Any]:
    """Move every conv / depthwise conv kernel of ``model`` (in place) onto TFLite's per-channel int8 grid.

    Full-integer int8 rounds each folded kernel (``kernel * gamma / sqrt(var + eps)`` of the BatchNorm
    after it) to ``step * k``, ``k`` in -127..127, ``step = max |w| / 127`` per output channel. Here the
    float kernel is changed so that its folded form already *is* such a grid: the converter then keeps it
    exactly, and an int8 export differs from this float model only by its activation rounding.

    Returns:
        ``{"layers": n, "relative_change": ||Δ folded|| / ||folded|| over all kernels}``.
    """
    changed = total = 0.0
    count = 0
    for conv, bn, axis in _folded_convs(model):
        folded, factor = _folded(conv, bn, axis)
        snapped = _snap(folded, _grid_step(folded, axis), axis)
        changed += float(np.sum((snapped - folded) ** 2))
        total += float(np.sum(folded**2))
        weights = conv.get_weights()
        safe = np.where(factor != 0, factor, 1.0)
        weights[0] = np.where(factor != 0, snapped / safe, weights[0]).astype(np.float32)
        conv.set_weights(weights)
        count += 1
    return {"layers": count, "relative_change": float(np.sqrt(changed / max(total, 1e-30)))}


#: The extra views an int8-ready quick head is fitted on (besides the plain float features).
INT8_VIEWS = ("hflip", "int8", "int8-hflip")


def default_calibration(project: Any) -> list[Path]:
    """The images a quick iteration's int8 export calibrates on when given no options (no hold-out)."""
    from exporters import classifier_calibration_groups, select_calibration_images
    from exporters.tflite import DEFAULT_CALIBRATION_IMAGES

    return select_calibration_images(classifier_calibration_groups(project.training_images()),
                                     DEFAULT_CALIBRATION_IMAGES, "balanced", 0)


def int8_views(extractor: Any, records: Sequence["ImageRecord"], features: np.ndarray, calibration: list[Path], *,
               progress: Progress | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """More views of the training images for an int8-aware quick head: the mirrored images' float
    features, and the pooled features of the images and their mirrors as the int8 model computes them.

    ``features`` are the images' float features (``extractor.embed(records)``), for the int8 error figure.
    ``extractor`` holds the grid-snapped feature model (``FeatureExtractor(int8_grid=True)``): its weights
    pass through int8 conversion unchanged, so the int8 features differ from the float ones only by
    activation rounding. That model is converted with the int8 export's own recipe, least-squares
    ranges and bias correction included (:func:`exporters.tflite.int8_outputs_model`; about a minute
    for 100 images on 2 cores) on ``calibration`` (the images the export will
    calibrate on by default), and each pooled feature group is read back dequantized: what the int8
    export's head will read for that image. A head fitted on these as well learns to ignore the
    directions int8 rounding moves the features in.

    Returns:
        ``([hflip, int8, int8-hflip] features, each (N, D)), info``.
    """
    from edgevision._tf import import_tf
    from edgevision.training.embeddings import load_batch
    from exporters.tflite import int8_outputs_model

    _, keras = import_tf()
    size = extractor.domain.input_size
    mirrored = np.asarray(extractor.embed(records, view="hflip", progress=progress), np.float32)
    started = time.perf_counter()
    if progress:
        progress(0, len(records), f"converting the backbone to int8 ({len(calibration)} calibration images)")
    groups = list(extractor.model.get_layer("features").input)
    blob = int8_outputs_model(keras.Model(extractor.model.input, groups), calibration, size)
    from runtimes.engines import _import_tflite_interpreter

    interpreter_class, _ = _import_tflite_interpreter()
    runner = interpreter_class(model_content=blob).get_signature_runner()
    quantized: list[np.ndarray] = [np.empty((len(records), int(sum(g.shape[-1] for g in groups))), np.float32)
                                   for _ in range(2)]
    for start in range(0, len(records), PREDICT_BATCH):
        if progress:
            progress(start, len(records), "int8 features of the training images")
        chunk = records[start : start + PREDICT_BATCH]
        for view, flip in enumerate((False, True)):
            batch = np.round(load_batch([r.path for r in chunk], size, hflip=flip))
            for k, image in enumerate(batch):
                out = runner(data=image[None].astype(np.float32))
                quantized[view][start + k] = np.concatenate([np.ravel(out[f"output_{g}"]) for g in range(len(groups))])
    error = float(np.linalg.norm(quantized[0] - features) / max(np.linalg.norm(features), 1e-12))
    info = {"views": list(INT8_VIEWS), "calibration_images": len(calibration),
            "int8_feature_error": round(error, 4), "int8_seconds": round(time.perf_counter() - started, 1)}
    log.info("int8-aware views: relative int8 feature error %.3f", error)
    return [mirrored, quantized[0], quantized[1]], info


def snap_head_to_int8_grid(model: Any) -> None:
    """Move the classifier's Dense kernel (``model_output``) onto the grid its int8 export quantizes it with.

    The int8 export splits the head by pooled feature group (:func:`split_head`), each group one
    FULLY_CONNECTED op with a scale per output class: snap each group's rows per column.
    """
    try:
        concat, dense = model.get_layer("features"), model.get_layer("model_output")
        widths = [int(t.shape[-1]) for t in concat.input]
    except (ValueError, AttributeError):
        dense, widths = model.get_layer("model_output"), None
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    widths = widths or [kernel.shape[0]]
    out, offset = [], 0
    for width in widths:
        part = kernel[offset : offset + width]
        out.append(_snap(part, _grid_step(part, 1), 1))
        offset += width
    dense.set_weights([np.concatenate(out).astype(np.float32), bias.astype(np.float32)])


# --------------------------------------------------------------------------- QAT
_CONFIGS: dict[str, type] = {}


def _output_only_config() -> type:
    """A tfmot ``QuantizeConfig`` that quantizes only a layer's output (no weights): for the input
    ``Normalization`` layer, which tfmot's default registry does not know."""
    if "output" not in _CONFIGS:
        tfmot = _tfmot()
        quantizers = tfmot.quantization.keras.quantizers

        class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
            def get_weights_and_quantizers(self, layer: Any) -> list:
                return []

            def get_activations_and_quantizers(self, layer: Any) -> list:
                return []

            def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
                pass

            def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
                pass

            def get_output_quantizers(self, layer: Any) -> list:
                return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

            def get_config(self) -> dict:
                return {}

        _CONFIGS["output"] = OutputQuantizeConfig
    return _CONFIGS["output"]


def qat_custom_objects() -> dict[str, type]:
    """What ``quantize_scope`` needs to load a stored QAT model."""
    return {"OutputQuantizeConfig": _output_only_config()}


def _annotate(model: Any, keras: Any) -> Any:
    """The quantization-aware clone of a float classifier (weights copied, BatchNorm frozen).

    Raises:
        UsageError: a layer tfmot cannot quantize (names it).
    """
    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    config = _output_only_config()

    def annotate(layer: Any) -> Any:
        if isinstance(layer, keras.layers.Normalization):
            return qk.quantize_annotate_layer(layer, config())
        # Everything else: tfmot's registry and its Conv+BN+ReLU transforms decide (like
        # quantize_annotate_model, which cannot be told about Normalization).
        return qk.quantize_annotate_layer(layer)

    # Annotation wraps the very layer objects it is given: work on a copy, and freeze its BatchNorm
    # before quantize_apply clones it again (the flag travels in the layer config).
    copy = _copy(model, keras)
    _freeze_batchnorm(copy, keras)
    clone = keras.models.clone_model(copy, clone_function=annotate)
    with qk.quantize_scope(qat_custom_objects()):
        try:
            return qk.quantize_apply(clone)
        except RuntimeError as exc:  # "Layer X:<class> is not supported ..."
            raise UsageError(f"quantization-aware training cannot quantize this model: {exc}") from exc


@contextlib.contextmanager
def _batch_mean_ranges(count: Any) -> Iterator[None]:
    """Make tfmot's moving-average activation quantizers average the per-batch min/max instead.

    tfmot hard-codes an EMA decay of 0.999 (quantizers.MovingAverageQuantizer), so ranges would take
    thousands of steps to leave their [-6, 6] start. While this is active, the ``k``-th batch
    (``count`` = k) moves each range to the running mean of the batches' min/max, the statistic the
    EMA estimates, without its start value. Not the overall min/max: on the Fashion-MNIST benchmark a
    few outlier activations then widened the ranges, and more calibration images gave *lower*
    post-training agreement (100 images 96.0 %, 500 images 94.8 %). Swapped in only while the
    calibration pass is traced; the fine-tune's graph uses tfmot's own function again.
    """
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    _tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize

    def averaged(inputs: Any, min_var: Any, max_var: Any, per_channel: bool = False, ema_decay: float = 0.999,
                 name_prefix: str = "MovingAvgQuantize", is_training: bool = True, num_bits: int = 8,
                 narrow_range: bool = False, symmetric: bool = False) -> Any:
        if not is_training or per_channel or symmetric:
            return original(inputs, min_var, max_var, per_channel=per_channel, ema_decay=ema_decay,
                            name_prefix=name_prefix, is_training=is_training, num_bits=num_bits,
                            narrow_range=narrow_range, symmetric=symmetric)
        rate = 1.0 / count
        low = min_var.assign_add((tf.minimum(tf.reduce_min(inputs), 0.0) - min_var) * rate)
        high = max_var.assign_add((tf.maximum(tf.reduce_max(inputs), 0.0) - max_var) * rate)
        return tf.quantization.fake_quant_with_min_max_vars(inputs, low, tf.maximum(high, low + 1e-6),
                                                            num_bits=num_bits, narrow_range=narrow_range)

    quant_ops.MovingAvgQuantize = averaged
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _calibrate_ranges(qat_model: Any, x: np.ndarray) -> int:
    """Set every activation range of ``qat_model`` from ``x`` (one pass in batches of ``BATCH``; no
    weight changes: BatchNorm is frozen and nothing is optimised). Returns the number of ranges set."""
    from edgevision._tf import import_tf

    tf, _ = import_tf()
    ranges = [v for v in qat_model.non_trainable_variables
              if v.name.rsplit("/", 1)[-1].split(":")[0].endswith(("_min", "_max")) and "kernel" not in v.name]
    count = tf.Variable(0.0, trainable=False)
    with _batch_mean_ranges(count):
        step = tf.function(lambda t: qat_model(t, training=True))
        for start in range(0, len(x), BATCH):
            count.assign_add(1.0)
            step(x[start : start + BATCH].astype(np.float32))
    return len(ranges) // 2


def quantization_aware(model: Any, records: Sequence["ImageRecord"], domain: "Domain", *, seed: int,
                       multilabel: bool, progress: Progress | None = None) -> tuple[Any, dict[str, Any]]:
    """Quantization-aware fine-tuning of a trained float classifier by distillation.

    Args:
        model: the float tf_keras classifier (RGB 0..255 in, probabilities out); not modified.
        records: the images it trained on (never the hold-out).
        domain: gives the input size and whether mirrored views are valid (its augmentation).
        seed: shuffling seed.
        multilabel: sigmoid outputs (binary cross-entropy) instead of softmax (KL divergence).
        progress: ``progress(done, total, what)``.

    Returns:
        ``(qat_model, info)``: the fake-quantized tf_keras model and what was done (recorded in
        ``iteration.json`` under ``qat``), including the fake-quantized model's top-1 agreement
        with the float model on the training images before and after fine-tuning.
    """
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    x = _images(records, domain.input_size)
    views = _views(x, domain, QAT_AUGMENTED_VIEWS, seed=seed)
    targets = [_predict(model, v) for v in views]
    qat_model = _annotate(split_head(model), keras)
    pick = np.linspace(0, len(x) - 1, min(len(x), RANGE_CALIBRATION_IMAGES)).round().astype(int)
    ranges = _calibrate_ranges(qat_model, x[np.unique(pick)])
    before = _agreement(_predict(qat_model, x), targets[0])
    loss = keras.losses.BinaryCrossentropy() if multilabel else keras.losses.KLDivergence()
    qat_model.compile(optimizer=keras.optimizers.Adam(QAT_LEARNING_RATE), loss=loss)
    data = _distillation_data(views, targets, seed=seed)
    steps = int(np.ceil(len(x) * len(views) / BATCH)) * QAT_EPOCHS
    callback = _ProgressCallback(keras, progress, steps, "quantization-aware fine-tuning")
    history = qat_model.fit(data, epochs=QAT_EPOCHS, callbacks=[callback], verbose=0)
    after = _agreement(_predict(qat_model, x), targets[0])
    info = {
        "model_file": QAT_MODEL_FILE,
        "method": "tfmot default 8-bit scheme (Normalization: output-only config), activation ranges from a "
                  "mean batch min/max pass, then distillation from the float model",
        "images": len(x), "views": len(views), "epochs": QAT_EPOCHS, "batch": BATCH,
        "learning_rate": QAT_LEARNING_RATE, "batchnorm": "frozen", "ranges_calibrated": ranges,
        "final_loss": round(float(history.history["loss"][-1]), 6),
        "train_agreement_before": round(before, 4), "train_agreement_after": round(after, 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("QAT: fake-quantized agreement with the float model on %d training images %.4f -> %.4f",
             len(x), before, after)
    return qat_model, info


def save_qat_model(model: Any, folder: Path) -> Path:
    """Write the QAT model as HDF5 (``model_qat.h5``) into ``folder``."""
    path = folder / QAT_MODEL_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": it is what load_qat_model reads
        model.save(path, include_optimizer=False, save_format="h5")
    return path


def load_qat_model(iteration: "Iteration") -> Any:
    """The iteration's quantization-aware model, or None when it was trained without ``--qat``."""
    name = (iteration.info.get("qat") or {}).get("model_file")
    if not name or not (iteration.path / name).exists():
        return None
    from edgevision._tf import import_tf

    _, keras = import_tf()
    tfmot = _tfmot()
    with tfmot.quantization.keras.quantize_scope(qat_custom_objects()):
        return keras.models.load_model(iteration.path / name, compile=False)


# --------------------------------------------------------------------------- pruning
def _kernels(model: Any, keras: Any) -> list[tuple[Any, np.ndarray]]:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out.append((layer, layer.depthwise_kernel.numpy()))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out.append((layer, layer.kernel.numpy()))
    return out


def sparsity(model: Any) -> dict[str, float]:
    """Fraction of exactly-zero weights: over the pruned (``Conv2D``) kernels and over every conv,
    depthwise and dense kernel of the model."""
    from edgevision._tf import import_tf

    _, keras = import_tf()
    kernels = _kernels(model, keras)
    pruned = [k for layer, k in kernels if type(layer) is keras.layers.Conv2D]
    zeros = lambda ks: float(sum(int((k == 0).sum()) for k in ks) / max(sum(k.size for k in ks), 1))  # noqa: E731
    return {"sparsity": round(zeros(pruned), 4), "sparsity_all_weights": round(zeros([k for _, k in kernels]), 4)}


def prune(model: Any, views: list[np.ndarray], targets: list[np.ndarray], target_sparsity: float, *, seed: int,
          loss: str, progress: Progress | None = None) -> tuple[Any, dict[str, Any]]:
    """Magnitude-prune ``model``'s ``Conv2D`` kernels to ``target_sparsity`` while it learns to reproduce
    ``targets`` (its own outputs on ``views``), then strip the wrappers.

    Args:
        model: a float tf_keras model (a backbone or a classifier); not modified.
        views: uint8 training images (as they are, mirrored, augmented: see :func:`_views`).
        targets: the model's outputs on each of ``views``.
        target_sparsity: fraction of each pruned kernel set to zero, 0 < s < 1.
        seed: shuffling seed.
        loss: ``mse`` (features), ``kld`` (softmax) or ``bce`` (sigmoid).
        progress: ``progress(done, total, what)``.

    Returns:
        ``(pruned float model, info)``.
    """
    from edgevision._tf import import_tf

    tf, keras = import_tf()
    tfmot = _tfmot()
    sp = tfmot.sparsity.keras
    steps_per_epoch = int(np.ceil(sum(len(v) for v in views) / BATCH))
    total = steps_per_epoch * PRUNE_EPOCHS
    end = max(1, int(total * PRUNE_RAMP))
    schedule = sp.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(target_sparsity), begin_step=0,
                                  end_step=end, frequency=max(1, min(steps_per_epoch // 4, end // 4) or 1))

    def wrap(layer: Any) -> Any:
        # type() is: DepthwiseConv2D subclasses Conv2D in tf_keras and stays dense.
        return sp.prune_low_magnitude(layer, pruning_schedule=schedule) if type(layer) is keras.layers.Conv2D else layer

    # The wrapped model shares its layers with a private copy, never with the caller's model.
    wrapped = keras.models.clone_model(_copy(model, keras), clone_function=wrap)
    _freeze_batchnorm(wrapped, keras)
    losses = {"mse": keras.losses.MeanSquaredError(), "kld": keras.losses.KLDivergence(),
              "bce": keras.losses.BinaryCrossentropy()}
    wrapped.compile(optimizer=keras.optimizers.Adam(PRUNE_LEARNING_RATE), loss=losses[loss])
    started = time.monotonic()
    callback = _ProgressCallback(keras, progress, total, f"pruning to {target_sparsity:.0%} sparsity")
    history = wrapped.fit(_distillation_data(views, targets, seed=seed), epochs=PRUNE_EPOCHS,
                          callbacks=[sp.UpdatePruningStep(), callback], verbose=0)
    pruned = sp.strip_pruning(wrapped)
    info = {
        "target_sparsity": float(target_sparsity), **sparsity(pruned),
        "pruned_layers": sum(1 for layer in wrapped.layers if type(getattr(layer, "layer", None)) is keras.layers.Conv2D),
        "schedule": f"polynomial 0 -> {target_sparsity:g} over {end} of {total} steps",
        "epochs": PRUNE_EPOCHS, "batch": BATCH, "learning_rate": PRUNE_LEARNING_RATE, "loss": loss,
        "images": len(views[0]), "views": len(views), "batchnorm": "frozen",
        "final_loss": round(float(history.history["loss"][-1]), 6),
        "seconds": round(time.monotonic() - started, 1),
    }
    return pruned, info


def prune_backbone(extractor: Any, records: Sequence["ImageRecord"], features: np.ndarray, domain: "Domain",
                   target_sparsity: float, *, seed: int, progress: Progress | None = None
                   ) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Quick mode: prune the frozen backbone so that it reproduces its own pooled features.

    Labels are not used, so the cross-validation that follows (on the pruned backbone's features)
    stays honest. The pruned features are not cached: the cache is keyed by the pretrained backbone.

    Args:
        extractor: the :class:`~edgevision.training.embeddings.FeatureExtractor` (its model is copied,
            not changed; its cache gives the mirrored view's features).
        records: every training image; ``features``: their cached features (plain view).

    Returns:
        ``(pruned feature model, its features of records, info)``.
    """
    x = _images(records, domain.input_size)
    views = _views(x, domain, PRUNE_AUGMENTED_VIEWS, seed=seed)
    targets = [np.asarray(features, np.float32)]  # the cached features of the images as they are
    if domain.augmentation.hflip:  # and of their mirror images (cached too)
        targets.append(np.asarray(extractor.embed(records, view="hflip"), np.float32))
    targets += [_predict(extractor.model, v) for v in views[len(targets):]]
    pruned, info = prune(extractor.model, views, targets, target_sparsity, seed=seed, loss="mse", progress=progress)
    new = _predict(pruned, x)
    info["fitted"] = "backbone (feature matching), then the quick head cross-validated on the pruned features"
    info["feature_rel_error"] = round(float(np.linalg.norm(new - targets[0]) / max(np.linalg.norm(targets[0]), 1e-12)), 4)
    return pruned, new, info


def prune_classifier(result: dict[str, Any], ts: "TrainingSet", domain: "Domain", target_sparsity: float, *,
                     seed: int, progress: Progress | None = None) -> dict[str, Any]:
    """Advanced mode: prune the fine-tuned classifier (matching its probabilities on the images it
    trained on), then re-score the hold-out with the pruned model. Updates ``result`` in place
    (``model``, ``metrics``, the stored evaluation) and returns the pruning info, which keeps the
    unpruned model's hold-out figures for comparison."""
    from edgevision.evaluation import classification_metrics

    model = result["model"]
    multilabel = not ts.multiclass
    views = _views(_images(training_records(ts, result["evaluation"]), domain.input_size), domain,
                   PRUNE_AUGMENTED_VIEWS, seed=seed)
    targets = [_predict(model, v) for v in views]
    pruned, info = prune(model, views, targets, target_sparsity, seed=seed, loss="bce" if multilabel else "kld",
                         progress=progress)
    by_id = {r.id: r for r in ts.records}
    held = [by_id[str(i)] for i in result["evaluation"]["image_ids"]]
    x_test = _images(held, domain.input_size)
    before = np.asarray(result["evaluation"]["probabilities"], np.float32)
    probs = _predict(pruned, x_test)
    metrics = classification_metrics(probs, result["evaluation"]["targets"], ts.labels, multiclass=ts.multiclass,
                                     scored=ts.scored)
    metrics.method = f"{result.get('evaluation_method', 'hold-out')}, pruned model"
    info["fitted"] = "the fine-tuned classifier (probability matching on its training images); hold-out re-scored"
    info["before"] = {k: result["metrics"].get(k) for k in ("accuracy", "mean_average_precision")}
    info["hold_out_agreement"] = round(_agreement(probs, before), 4)
    what = "accuracy" if ts.multiclass else "mean_average_precision"
    was, now = info["before"].get(what), getattr(metrics, what, None)
    if was is not None and now is not None:
        note = (f"pruned to {info['sparsity']:.0%} sparsity: hold-out {what.replace('_', ' ')} {was:.4f} before, "
                f"{now:.4f} after; the figures are the pruned model's")
        result["note"] = f"{result['note']}; {note}" if result.get("note") else note
    result["model"] = pruned
    result["metrics"] = metrics.to_dict()
    result["evaluation_method"] = metrics.method
    result["evaluation"]["probabilities"] = probs
    return info
