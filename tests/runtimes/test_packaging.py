"""`pip install edgevision[runtime]` must not pull TensorFlow (or Keras, or PyTorch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"tensorflow", "tensorflow-cpu", "tf-keras", "keras", "torch", "tensorflow-model-optimization"}


@pytest.mark.slow
def test_runtime_extra_resolves_without_tensorflow(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), f"{ROOT}[runtime]"],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 and ("Could not find" in result.stderr or "connection" in result.stderr.lower()):
        pytest.skip(f"pip could not reach a package index to resolve the extra: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "ai-edge-litert", "numpy", "pillow"} <= names
    assert not names & HEAVY, f"the runtime extra pulls {sorted(names & HEAVY)}"
