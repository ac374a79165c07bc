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


# --------------------------------------------------------------------------- issue 6: quantization options
def test_int8_weights_are_per_channel_in_the_flatbuffer(tflite_exports: dict[str, Path]) -> None:
    """TFLite's default: every conv / depthwise / dense weight tensor carries one scale per output channel."""
    from exporters.tflite import weight_quantization

    for flavor in ("dynamic", "int8"):
        w = weight_quantization(tflite_exports[flavor] / "model.tflite")
        # dynamic-range quantization leaves tensors under 1,024 weights (the first depthwise kernels) float
        assert w["per_tensor"] == 0 and w["float"] == (0 if flavor == "int8" else w["float"]) < 8
        assert w["by_op"]["CONV_2D"]["per_channel"] > 30 and w["by_op"]["DEPTHWISE_CONV_2D"]["per_channel"] > 10
        assert Manifest.load(tflite_exports[flavor]).verification.details["weights"] == w
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(tflite_exports["int8"] / "model.tflite")).get_tensor_details()
    stem = next(d for d in details if tuple(d["shape"]) == (32, 3, 3, 3) and d["dtype"] == np.int8)  # OHWI
    assert len(stem["quantization_parameters"]["scales"]) == 32  # one per output channel
    assert weight_quantization(tflite_exports["float32"] / "model.tflite")["per_channel"] == 0


def test_per_channel_false_gives_per_tensor_weights(trained, tmp_path: Path) -> None:
    from exporters.tflite import weight_quantization

    from edgevision.errors import VerificationError

    _, iteration = trained
    # One scale per tensor is destructive on this backbone (depthwise channels differ widely in
    # range): the verification fails it, and the artefact shows why.
    with pytest.raises(VerificationError, match="top-1 agreement"):
        export_iteration(iteration, "tflite", flavor="dynamic", out=tmp_path / "pt", options={"per_channel": "false"})
    w = weight_quantization(tmp_path / "pt.failed" / "model.tflite")
    assert w["per_channel"] == 0 and w["per_tensor"] > 40
    m = Manifest.load(tmp_path / "pt.failed")
    assert m.exporter.options["per_channel"] is False and m.verification.details["weights"] == w


def test_int8_records_its_calibration(tflite_exports: dict[str, Path]) -> None:
    d = Manifest.load(tflite_exports["int8"]).verification.details
    # quick iteration of 24 images: no hold-out, so all 24 may calibrate; balanced by default
    assert d["calibration"] == {"method": "balanced", "images": 24, "seed": 0, "available": 24, "tags": 4}
    assert d["qat"] is False  # the sample iteration was trained without --qat
    assert d["ranges"] == "mse"  # least-squares activation ranges, the classifiers' default
    bc = d["bias_correction"]  # on by default: every conv / depthwise layer, on the calibration images
    assert bc["layers"] > 40 and bc["images"] == 24 and bc["mean_error_after"] < 0.5 * bc["mean_error_before"]


def test_least_squares_range_clips_rare_outliers_only() -> None:
    from exporters.tflite import RANGE_FRACTIONS, _int8_error, least_squares_range

    rng = np.random.default_rng(0)
    relu6 = np.clip(rng.exponential(0.3, 100_000), 0, 6)  # mostly < 1, a few up to 6
    lo, hi = least_squares_range(relu6, 0.0, 6.0)
    assert lo == 0.0 and 1.2 <= hi < 6.0  # finer steps for the bulk, the tail clipped
    assert _int8_error(relu6, lo, hi) < 0.5 * _int8_error(relu6, 0.0, 6.0)
    flat = rng.uniform(-3, 5, 100_000)  # no outliers: min/max is already best
    assert least_squares_range(flat, -3.0, 5.0) == (-3.0, 5.0)
    skewed = np.concatenate([rng.normal(0, 1, 100_000), [-40.0], [8.0]])  # each end needs its own fraction
    lo, hi = least_squares_range(skewed, -40.0, 8.0)
    assert -40.0 <= lo < 0 < hi < 8.0 and lo / -40.0 != hi / 8.0
    best_symmetric = min(_int8_error(skewed, -40.0 * f, 8.0 * f) for f in RANGE_FRACTIONS)
    assert _int8_error(skewed, lo, hi) < best_symmetric


def _tiny_calibrated(rng: np.random.Generator, images: np.ndarray) -> bytes:
    """A calibrated (not yet quantized) float TFLite model of a tiny conv / depthwise / conv network whose
    channels differ a hundredfold in weight range (so one int8 scale per tensor rounds them unevenly)."""
    from edgevision._tf import import_tf
    from exporters.tflite import _concrete_function, _holder

    tf, keras = import_tf()
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation=tf.nn.relu6, name="a")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6, name="b")(x)
    x = keras.layers.Conv2D(6, 1, name="c")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            spread = rng.uniform(0.01, 2.0, w[0].shape[-2 if isinstance(layer, keras.layers.DepthwiseConv2D) else -1])
            kernel = rng.normal(0, 1, w[0].shape) * (spread[:, None] if isinstance(layer, keras.layers.DepthwiseConv2D)
                                                      else spread)
            layer.set_weights([kernel.astype(np.float32), rng.normal(0, 0.5, w[1].shape).astype(np.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(tf, model, 16)], _holder(tf, model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True
    return converter.convert()


def _layer_mean_errors(calibrated: bytes, quantized: bytes, images: np.ndarray) -> np.ndarray:
    """Per output channel of every conv / depthwise op: mean over ``images`` of ``quantized`` minus the float
    model ``calibrated``."""
    from ai_edge_litert.interpreter import Interpreter

    def means(blob: bytes) -> dict[str, np.ndarray]:
        ip = Interpreter(model_content=blob, experimental_preserve_all_tensors=True)
        ip.allocate_tensors()
        outs = [ip._get_tensor_details(op["outputs"][0], 0) for op in ip._get_ops_details()
                if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        sums = {d["name"]: 0.0 for d in outs}
        for image in images:
            ip.set_tensor(ip.get_input_details()[0]["index"], image[None])
            ip.invoke()
            for d in outs:
                v = ip.get_tensor(d["index"]).astype(np.float32)
                if d["dtype"] != np.float32:
                    v = (v - d["quantization"][1]) * d["quantization"][0]
                sums[d["name"]] = sums[d["name"]] + v.reshape(-1, v.shape[-1]).mean(0) / len(images)
        return sums

    f, q = means(calibrated), means(quantized)
    return np.concatenate([q[name] - f[name] for name in f])


def test_bias_correction_removes_the_int8_mean_drift_on_new_images() -> None:
    """Per-tensor weights round a tiny network's channels unevenly: each conv output drifts by a per-channel
    offset. After correct_biases the drift is much smaller, on images it never saw too, and only biases moved."""
    import tensorflow as tf
    from tensorflow.lite.python import convert, schema_py_generated as schema

    from exporters.tflite import correct_biases

    rng = np.random.default_rng(0)
    seen, unseen = (rng.uniform(0, 1, (n, 1, 16, 16, 3)).astype(np.float32) for n in (16, 16))
    calibrated = _tiny_calibrated(rng, seen)

    def quantize(blob: bytes) -> bytes:
        return convert.mlir_quantize(blob, disable_per_channel=True, input_data_type=tf.float32,
                                     output_data_type=tf.float32)

    corrected, info = correct_biases(calibrated, list(seen), quantize)
    assert info["layers"] == 3 and info["images"] == 16
    assert info["mean_error_after"] < 0.2 * info["mean_error_before"]
    before = np.sqrt(np.mean(_layer_mean_errors(calibrated, quantize(calibrated), unseen[:, 0]) ** 2))
    after = np.sqrt(np.mean(_layer_mean_errors(calibrated, quantize(corrected), unseen[:, 0]) ** 2))
    assert after < 0.5 * before

    def buffers(blob: bytes) -> list[bytes]:
        model = schema.Model.GetRootAsModel(bytearray(blob), 0)
        return [model.Buffers(i).DataAsNumpy().tobytes() if model.Buffers(i).DataLength() else b""
                for i in range(model.BuffersLength())]

    changed = [i for i, (a, b) in enumerate(zip(buffers(calibrated), buffers(corrected))) if a != b]
    model = schema.Model.GetRootAsModel(bytearray(calibrated), 0)
    graph = model.Subgraphs(0)
    biases = {graph.Tensors(graph.Operators(k).Inputs(2)).Buffer() for k in range(graph.OperatorsLength())
              if graph.Operators(k).InputsLength() > 2 and graph.Operators(k).Inputs(2) >= 0}
    assert changed and set(changed) <= biases


def test_int8_bias_correction_option(trained, tmp_path: Path) -> None:
    """Bias correction is on by default for classifiers (figures recorded); ``bias_correction=false`` skips it."""
    _, iteration = trained
    result = export_iteration(iteration, "tflite", flavor="int8", out=tmp_path / "off",
                              options={"bias_correction": "false"})
    assert result.verification.status == "ok" and result.verification.details["bias_correction"] is False
    assert result.manifest.exporter.options["bias_correction"] is False


def test_int8_minmax_ranges_option(trained, tmp_path: Path) -> None:
    """``ranges=minmax`` keeps the converter's calibration ranges: a different (valid) file, recorded as such."""
    _, iteration = trained
    result = export_iteration(iteration, "tflite", flavor="int8", out=tmp_path / "mm", options={"ranges": "minmax"})
    assert result.verification.status == "ok" and result.verification.details["ranges"] == "minmax"
    assert result.manifest.exporter.options["ranges"] == "minmax"


@pytest.mark.parametrize("options, match", [
    ({"calibration_images": "500"}, "only 24 images can calibrate"),
    ({"calibration": "balance"}, "did you mean 'balanced'"),
    ({"calibration_seed": "-1"}, "non-negative"),
    ({"qat": "true"}, "no quantization-aware model"),
    ({"ranges": "mse2"}, "did you mean 'mse'"),
])
def test_bad_quantization_options(trained, tmp_path: Path, options: dict[str, str], match: str) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError, match=match):
        export_iteration(iteration, "tflite", flavor="int8", out=tmp_path / "x", options=options)


@pytest.mark.parametrize("flavor, options", [("float32", {"per_channel": "true"}), ("dynamic", {"calibration": "random"}),
                                             ("float16", {"qat": "false"}), ("dynamic", {"ranges": "minmax"}),
                                             ("float32", {"bias_correction": "true"})])
def test_quantization_options_refused_on_other_flavors(trained, tmp_path: Path, flavor: str, options: dict) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError, match="applies to|apply to"):
        export_iteration(iteration, "tflite", flavor=flavor, out=tmp_path / "x", options=options)
