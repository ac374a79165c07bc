"""Docker exporter: the bundle's files, and the container's entrypoint run as Docker would run it.

No Docker engine runs here, so the slow test does what the image build does — a fresh venv from the
bundle's own requirements.txt (from PyPI) — then starts the Dockerfile's CMD in the bundle folder
with PORT set to a free port, waits for /health and predicts an image over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest

from exporters.base import OptionsError
from exporters.docker import DockerExporter, DockerOptions, requirements


def test_options_are_strict() -> None:
    assert DockerOptions.parse({}).model == "tflite"
    assert DockerOptions.parse({"model": "onnx", "port": "8080"}).port == 8080
    with pytest.raises(OptionsError, match="did you mean 'model'"):
        DockerOptions.parse({"modle": "onnx"})
    with pytest.raises(OptionsError, match="tflite"):
        DockerOptions.parse({"model": "coreml"})
    with pytest.raises(OptionsError, match="port"):
        DockerOptions.parse({"port": 0})
    with pytest.raises(OptionsError, match="image"):
        DockerOptions.parse({"image": "Not A Name"})


def test_requirements_are_pinned_runtime_only() -> None:
    for model, engine in (("tflite", "ai-edge-litert"), ("onnx", "onnxruntime")):
        text = requirements(model)
        pins = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert all("==" in line for line in pins)
        names = {re.split(r"[=;]", line)[0].strip() for line in pins}
        assert engine in names and "numpy" in names and "pillow" in names
        assert not {n for n in names if "tensorflow" in n}
    # arm/v7: no ai-edge-litert wheel there; tflite-runtime with NumPy 1.x instead.
    assert 'tflite-runtime==2.14.0; platform_machine == "armv7l"' in requirements("tflite")
    assert 'ai-edge-litert' in requirements("tflite") and 'platform_machine != "armv7l"' in requirements("tflite")


# --------------------------------------------------------------------------- a real bundle
@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters import export_iteration

    _, iteration = trained
    return export_iteration(iteration, "docker", out=tmp_path_factory.mktemp("docker") / "bundle").path


def _dockerfile(bundle: Path) -> dict[str, list[str]]:
    """Instruction -> the argument lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", (bundle / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


@pytest.mark.slow
def test_bundle_layout(bundle: Path, trained) -> None:
    _, iteration = trained
    for name in ("Dockerfile", ".dockerignore", "requirements.txt", "serve.py", "README.md",
                 "model/model.tflite", "model/manifest.json", "model/labels.txt", "runtimes/server.py",
                 "runtimes/cli.py", "manifest.json", "cvexport.manifest", "labels.txt"):
        assert (bundle / name).is_file(), name
    assert not (bundle / "edgevision").exists() and not (bundle / "exporters").exists()
    assert not list(bundle.rglob("__pycache__"))
    for source in (bundle / "runtimes").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(import|from)\s+(edgevision|exporters)\b", text, re.M), source
        # engines.py's last-resort fallback imports TensorFlow lazily; never at module level.
        assert not re.search(r"^(import|from)\s+tensorflow\b", text, re.M), source

    instructions = _dockerfile(bundle)
    assert instructions["FROM"] == ["python:3.11-slim"]
    assert instructions["EXPOSE"] == ["80"]
    assert instructions["USER"] and instructions["USER"][-1] not in ("root", "0")
    assert "/health" in instructions["HEALTHCHECK"][0]
    assert json.loads(instructions["CMD"][0]) == ["python", "serve.py"]

    readme = (bundle / "README.md").read_text()
    assert "docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7" in readme
    assert "docker run --rm -p 80:80" in readme and "/image" in readme and "/health" in readme

    inner = json.loads((bundle / "model" / "manifest.json").read_text())
    outer = json.loads((bundle / "manifest.json").read_text())
    assert inner["verification"]["status"] == outer["verification"]["status"] == "ok"
    assert outer["model_file"] == "model/model.tflite"
    assert json.loads((bundle / "cvexport.manifest").read_text())["Platform"] == "DockerFile"
    assert inner["labels"] == iteration.labels


@pytest.mark.slow
def test_bundle_model_runs_with_runtimes(bundle: Path, trained, sample_dir: Path) -> None:
    import runtimes

    _, iteration = trained
    image = sorted(sample_dir.rglob("*.png"))[0]
    expected = iteration.predict_probabilities([image])[0]
    for folder in (bundle / "model", bundle):  # the served folder, and the bundle's own manifest
        with runtimes.load(folder) as predictor:
            got = {p.tag_name: p.probability for p in predictor.predict(image).predictions}
        assert np.allclose([got[label] for label in iteration.labels], expected, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_container_entrypoint_serves_predictions(bundle: Path, trained, sample_dir: Path, tmp_path: Path) -> None:
    """Fresh venv from requirements.txt, the Dockerfile's CMD in the bundle folder, HTTP predictions."""
    _, iteration = trained
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                          "-r", str(bundle / "requirements.txt")], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # No TensorFlow in the container's environment, and `runtimes` is the bundle's own copy.
    probe = subprocess.run([str(python), "-c", "import importlib.util, runtimes; "
                            "print(runtimes.__file__); print(importlib.util.find_spec('tensorflow'))"],
                           cwd=bundle, env=clean_env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    where, tf = probe.stdout.split()
    assert Path(where).resolve() == (bundle / "runtimes" / "__init__.py").resolve() and tf == "None"

    cmd = json.loads(_dockerfile(bundle)["CMD"][-1])
    assert cmd[0] == "python"
    port = _free_port()
    server = subprocess.Popen([str(python), *cmd[1:]], cwd=bundle,
                              env={**clean_env, "PORT": str(port), "HOST": "127.0.0.1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"server exited: {server.stdout.read() if server.stdout else ''}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "no /health answer within 60 s"
                time.sleep(0.25)
        assert health["status"] == "ok" and health["labelCount"] == len(iteration.labels)

        image = sorted(sample_dir.rglob("*.png"))[0]
        request = urllib.request.Request(f"{base}/image", data=image.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
            prediction = json.loads(resp.read())
        got = {p["tagName"]: p["probability"] for p in prediction["predictions"]}
        expected = iteration.predict_probabilities([image])[0]
        assert np.allclose([got[label] for label in iteration.labels], expected, atol=1e-4)
        assert max(got, key=got.get) == iteration.labels[int(np.argmax(expected))]
        assert prediction["project"] == iteration.project.name and prediction["iteration"] == str(iteration.number)
    finally:
        server.send_signal(signal.SIGINT)  # what `docker stop` does first is SIGTERM; the CLI stops cleanly on SIGINT
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()


def test_exporter_row() -> None:
    assert DockerExporter.name == "docker" and DockerExporter.flavors == ("linux",)


@pytest.mark.slow
def test_onnx_bundle(trained, sample_dir: Path, tmp_path: Path) -> None:
    import runtimes
    from exporters import export_iteration

    _, iteration = trained
    result = export_iteration(iteration, "docker", options={"model": "onnx", "port": 8080}, out=tmp_path / "bundle")
    assert (result.path / "model" / "model.onnx").is_file()
    reqs = (result.path / "requirements.txt").read_text()
    assert "onnxruntime==" in reqs and "ai-edge-litert" not in reqs and "tflite-runtime" not in reqs
    assert _dockerfile(result.path)["EXPOSE"] == ["8080"]
    assert result.verification.status == "ok" and result.verification.details["model"] == "onnx"
    image = sorted(sample_dir.rglob("*.png"))[0]
    with runtimes.load(result.path / "model") as predictor:
        got = {p.tag_name: p.probability for p in predictor.predict(image).predictions}
    expected = iteration.predict_probabilities([image])[0]
    assert np.allclose([got[label] for label in iteration.labels], expected, atol=1e-4)
