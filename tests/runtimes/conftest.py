"""Runtime fixtures: real, verified TFLite/ONNX exports of the session's tiny trained iteration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Fixture folder key -> (format, flavor) for exporters.export_iteration.
EXPORTS = {"tflite-fp32": ("tflite", "float32"), "tflite-int8": ("tflite", "int8"), "onnx": ("onnx", "float32")}


@dataclass(frozen=True)
class ExportedClassifier:
    """A trained iteration, its export folders by format and the images it was trained on."""

    iteration: Any  # edgevision.iteration.Iteration
    folders: dict[str, Path]  # "tflite-fp32" | "tflite-int8" | "onnx" -> export folder
    images: list[Path]


@pytest.fixture(scope="session")
def exported_classifier(tmp_path_factory: pytest.TempPathFactory, trained, sample_dir: Path) -> ExportedClassifier:
    """Exports of the session's trained sample iteration (tests/conftest.py ``trained``).

    Made by the real exporters (issue 4), each verified against the Keras model: TFLite float32,
    TFLite full-int8 (uint8 in/out, calibrated on the project's images) and ONNX (NCHW input
    ``data``, opset 17). About 25 s.
    """
    from exporters import export_iteration

    _, iteration = trained
    images = sorted(p for p in sample_dir.rglob("*.png"))
    dest = tmp_path_factory.mktemp("exports")
    folders = {key: export_iteration(iteration, fmt, flavor=flavor, out=dest / key).path
               for key, (fmt, flavor) in EXPORTS.items()}
    return ExportedClassifier(iteration, folders, images)
