"""Runtime fixtures: real TFLite/ONNX exports of a tiny trained iteration (SCAFFOLDING until issue 4's exporters)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ExportedClassifier:
    """A trained iteration, its export folders by format and the images it was trained on."""

    iteration: Any  # edgevision.iteration.Iteration
    folders: dict[str, Path]  # "tflite-fp32" | "tflite-int8" | "onnx" -> export folder
    images: list[Path]


@pytest.fixture(scope="session")
def exported_classifier(tmp_path_factory: pytest.TempPathFactory, trained, sample_dir: Path) -> ExportedClassifier:
    """Exports of the session's trained sample iteration (tests/conftest.py ``trained``).

    SCAFFOLDING: the conversions live in ``bench/_scaffold_exports.py`` (one copy, shared with
    ``bench/runtime_latency.py``) until the real exporters exist (issue 4); then this fixture calls
    them instead. About 20 s: TFLite float32, TFLite full-int8 (uint8 in/out, calibrated on the
    sample images) and ONNX (NCHW input ``data``, opset 17).
    """
    # Loaded from its file rather than by putting bench/ on sys.path for the whole session.
    spec = importlib.util.spec_from_file_location("_scaffold_exports", REPO / "bench" / "_scaffold_exports.py")
    assert spec and spec.loader
    _scaffold_exports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_scaffold_exports)

    _, iteration = trained
    images = sorted(p for p in sample_dir.rglob("*.png"))
    folders = _scaffold_exports.export_iteration(iteration, tmp_path_factory.mktemp("exports"), images)
    return ExportedClassifier(iteration, folders, images)
