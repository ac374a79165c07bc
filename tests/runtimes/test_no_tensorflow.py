"""The runtime never imports TensorFlow, Keras or edgevision, and runs where they cannot be imported at all.

Each check runs in a fresh interpreter. "No TensorFlow" is made real by putting stub packages
first on ``PYTHONPATH`` whose import raises ``ImportError`` (as on a device without them); the
script first proves the stubs work, then loads and predicts with the ONNX and TFLite exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BANNED = ("tensorflow", "tf_keras", "keras", "edgevision")

SCRIPT = """
import json, sys
banned = {banned!r}
for name in {blocked!r}:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"stub for {{name}} did not block it")
import runtimes
out = {{}}
for fmt, folder in json.loads(sys.argv[1]).items():
    with runtimes.load(folder, threads=1) as predictor:
        out[fmt] = {{"backend": predictor.engine.backend,
                    "probabilities": predictor.probabilities(json.loads(sys.argv[2])).tolist(),
                    "json": predictor.predict(json.loads(sys.argv[2])[0]).to_dict()}}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in banned)
print(json.dumps({{"results": out, "loaded": loaded}}))
"""


def stub_packages(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here (test stub)')\n")
    return root


def run_isolated(tmp_path: Path, exported_classifier, formats: list[str], blocked: tuple[str, ...],
                 banned: tuple[str, ...] = BANNED) -> subprocess.CompletedProcess[str]:
    stubs = stub_packages(tmp_path / "stubs", blocked)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TF_"))}
    env["PYTHONPATH"] = str(stubs)
    folders = {fmt: str(exported_classifier.folders[fmt]) for fmt in formats}
    images = [str(p) for p in exported_classifier.images[:3]]
    script = SCRIPT.format(banned=banned, blocked=blocked)
    # cwd is a scratch folder so that the repository's own edgevision/ is not importable from ''.
    return subprocess.run([sys.executable, "-c", script, json.dumps(folders), json.dumps(images)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def reference(exported_classifier) -> np.ndarray:
    return exported_classifier.iteration.predict_probabilities(exported_classifier.images[:3])


def test_nothing_heavy_is_imported(exported_classifier, tmp_path: Path) -> None:
    done = run_isolated(tmp_path, exported_classifier, ["onnx", "tflite-fp32", "tflite-int8"], blocked=())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    assert report["results"]["tflite-fp32"]["backend"] == "ai_edge_litert.interpreter"


def test_works_where_tensorflow_cannot_be_imported(exported_classifier, reference: np.ndarray, tmp_path: Path) -> None:
    done = run_isolated(tmp_path, exported_classifier, ["onnx", "tflite-fp32", "tflite-int8"], blocked=BANNED)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    for fmt in ("onnx", "tflite-fp32"):
        np.testing.assert_allclose(results[fmt]["probabilities"], reference, atol=1e-4)
    int8 = np.asarray(results["tflite-int8"]["probabilities"])
    assert (int8.argmax(1) == reference.argmax(1)).all()
    assert results["onnx"]["json"]["predictions"][0]["tagName"] == exported_classifier.iteration.labels[
        int(reference[0].argmax())]


def test_tflite_falls_back_to_tensorflow_lite_only_without_litert(exported_classifier, reference: np.ndarray,
                                                                  tmp_path: Path) -> None:
    done = run_isolated(tmp_path, exported_classifier, ["tflite-fp32"], blocked=("ai_edge_litert", "tflite_runtime"),
                        banned=())
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["results"]["tflite-fp32"]
    assert result["backend"] == "tensorflow.lite"
    np.testing.assert_allclose(result["probabilities"], reference, atol=1e-4)


def test_no_tflite_engine_at_all_is_a_clear_error(exported_classifier, tmp_path: Path) -> None:
    done = run_isolated(tmp_path, exported_classifier, ["tflite-fp32"],
                        blocked=("ai_edge_litert", "tflite_runtime", "tensorflow"))
    assert done.returncode == 1
    assert "EngineUnavailableError" in done.stderr and "pip install ai-edge-litert" in done.stderr
