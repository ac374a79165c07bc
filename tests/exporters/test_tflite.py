"""TFLite exporter: flavors, tensor names, int8 I/O option, size and verification on the real sample iteration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters import OptionsError, export_iteration
from runtimes.manifest import Manifest


def _tensor_names(path: Path) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return ([d["name"] for d in interpreter.get_input_details()], [d["name"] for d in interpreter.get_output_details()])


@pytest.fixture(scope="module")
def tflite_exports(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _, iteration = trained
    root = tmp_path_factory.mktemp("tflite")
    return {flavor: export_iteration(iteration, "tflite", flavor=flavor, out=root / flavor).path
            for flavor in ("float32", "dynamic", "int8")}


def test_float32_names_tensors_after_the_contract(tflite_exports: dict[str, Path]) -> None:
    inputs, outputs = _tensor_names(tflite_exports["float32"] / "model.tflite")
    assert inputs == ["data"] and outputs == ["model_output"]
    m = Manifest.load(tflite_exports["float32"])
    assert m.verification.status == "ok" and m.verification.details["max_abs_diff"] <= 1e-4
    assert m.input.layout == "NHWC" and m.input.dtype == "float32"


def test_quantized_flavors_are_smaller_and_agree(tflite_exports: dict[str, Path]) -> None:
    fp32 = (tflite_exports["float32"] / "model.tflite").stat().st_size
    for flavor in ("dynamic", "int8"):
        m = Manifest.load(tflite_exports[flavor])
        assert (tflite_exports[flavor] / "model.tflite").stat().st_size < fp32 / 2
        assert m.verification.status == "ok"
        assert m.verification.details["top1_agreement_held_out"] >= 0.98
        assert m.verification.details["accuracy_drop"] <= 0.02


def test_int8_defaults_to_uint8_io(tflite_exports: dict[str, Path]) -> None:
    m = Manifest.load(tflite_exports["int8"])
    assert m.input.dtype == "uint8" and m.outputs[0].dtype == "uint8"
    assert m.exporter.options["flavor"] == "int8"
    assert _tensor_names(tflite_exports["int8"] / "model.tflite")[1] == ["model_output"]


def test_int8_float_io_option(trained, tmp_path: Path) -> None:
    _, iteration = trained
    result = export_iteration(iteration, "tflite", flavor="int8", out=tmp_path / "x",
                              options={"io": "float", "calibration_images": "8"})
    assert result.manifest.input.dtype == "float32"
    assert result.manifest.exporter.options["calibration_images"] == 8
    import runtimes

    with runtimes.load(result.path) as predictor:
        probs = [p.probability for p in predictor.predict(iteration.project.training_images()[0].path).predictions]
    assert sum(probs) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("options", [{"io": "int4"}, {"iio": "float"}, {"calibration_images": "0"}])
def test_bad_options_are_refused(trained, tmp_path: Path, options: dict[str, str]) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError):
        export_iteration(iteration, "tflite", flavor="int8", out=tmp_path / "x", options=options)
    assert not (tmp_path / "x").exists()


def test_int8_options_conflict_with_float_flavors(trained, tmp_path: Path) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError, match="int8 flavor only"):
        export_iteration(iteration, "tflite", flavor="float16", out=tmp_path / "x", options={"io": "float"})


def test_unknown_flavor_suggests(trained, tmp_path: Path) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError, match="did you mean 'int8'"):
        export_iteration(iteration, "tflite", flavor="int9", out=tmp_path / "x")


def test_verification_failure_keeps_the_artefact_aside(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mismatching artefact fails the export (exit code 3) and lands in <out>.failed/."""
    from edgevision.errors import VerificationError
    from exporters import verify

    _, iteration = trained
    real = verify.run_artifact
    monkeypatch.setattr(verify, "run_artifact", lambda *a, **k: np.roll(real(*a, **k), 1, axis=1))
    out = tmp_path / "bad"
    with pytest.raises(VerificationError) as info:
        export_iteration(iteration, "tflite", out=out)
    assert info.value.exit_code == 3 and "top-1" in str(info.value)
    assert not out.exists()
    failed = Manifest.load(tmp_path / "bad.failed")
    assert failed.verification.status == "failed" and failed.verification.reason
