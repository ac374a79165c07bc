"""Engines on small hand-built ONNX models: layouts, float16/uint8 inputs, batching, (de)quantization, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from runtimes.engines import TensorInfo, dequantize, engine_kind, infer_layout, open_engine, quantize
from runtimes.errors import EngineUnavailableError, InvalidOptionError, ModelMismatchError, RuntimeModelError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto  # noqa: E402
from tiny_onnx import tiny_onnx as _tiny_onnx  # noqa: E402  (tests/runtimes/tiny_onnx.py)

SIZE = 8
WEIGHTS = np.array([[0.03, -0.01, 0.0], [0.0, 0.02, -0.01], [-0.02, 0.0, 0.03]], dtype=np.float32)


def tiny_onnx(path: Path, **options) -> Path:
    """The shared tiny classifier at this module's size and weights."""
    return _tiny_onnx(path, WEIGHTS, size=SIZE, **options)


def reference(batch: np.ndarray) -> np.ndarray:
    logits = batch.mean(axis=(1, 2)) @ WEIGHTS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layout_is_inferred_and_transposed(tmp_path: Path, layout: str) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx", layout=layout), threads=1)
    assert engine.layout == layout and engine.input_size == (SIZE, SIZE)
    batch = images()
    out = engine.run(batch)
    assert list(out) == ["model_output"]
    np.testing.assert_allclose(out["model_output"], reference(batch), atol=1e-6)
    assert out["model_output"].dtype == np.float32


def test_float16_input_is_cast(tmp_path: Path) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx", dtype=TensorProto.FLOAT16))
    assert engine.input.dtype == np.float16
    batch = images()
    np.testing.assert_allclose(engine.run(batch)["model_output"], reference(batch), atol=1e-3)


def test_uint8_input_is_rounded_and_clipped(tmp_path: Path) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx", dtype=TensorProto.UINT8))
    batch = images()
    batch[0, 0, 0] = [300.0, -5.0, 254.6]  # out of range and fractional values
    expected = reference(np.clip(np.rint(batch), 0, 255))
    np.testing.assert_allclose(engine.run(batch)["model_output"], expected, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT16])
def test_uint8_pixels_give_the_same_result_as_float(tmp_path: Path, layout: str, dtype: int) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx", layout=layout, dtype=dtype))
    pixels = np.rint(images()).astype(np.uint8)
    np.testing.assert_array_equal(engine.run(pixels)["model_output"], engine.run(pixels.astype(np.float32))["model_output"])
    assert engine.prepare(pixels).flags["C_CONTIGUOUS"]


def test_fixed_batch_loops_and_dynamic_batch_runs_once(tmp_path: Path) -> None:
    fixed = open_engine(tiny_onnx(tmp_path / "fixed.onnx", batch=1))
    dynamic = open_engine(tiny_onnx(tmp_path / "dynamic.onnx", batch="N"))
    assert fixed.fixed_batch and not dynamic.fixed_batch
    calls: list[int] = []
    invoke = dynamic._invoke
    dynamic._invoke = lambda t: calls.append(t.shape[0]) or invoke(t)  # type: ignore[method-assign]
    batch = images(7)
    np.testing.assert_allclose(fixed.run(batch)["model_output"], reference(batch), atol=1e-6)
    np.testing.assert_allclose(dynamic.run(batch)["model_output"], reference(batch), atol=1e-6)
    assert calls == [7]


def test_quantize_and_dequantize_use_the_tensor_parameters() -> None:
    int8 = TensorInfo("x", (1,), np.dtype(np.int8), scale=0.5, zero_point=-10)
    q = quantize(np.array([0.0, 10.2, 200.0, -100.0], dtype=np.float32), int8)
    assert q.dtype == np.int8 and q.tolist() == [-10, 10, 127, -128]
    np.testing.assert_allclose(dequantize(q, int8), [0.0, 10.0, 68.5, -59.0])
    uint8 = TensorInfo("y", (1,), np.dtype(np.uint8), scale=1 / 256, zero_point=0)
    assert dequantize(np.array([255], np.uint8), uint8).tolist() == [255 / 256]
    shifted = TensorInfo("s", (1,), np.dtype(np.int8), scale=1.0, zero_point=-128)  # int8 input of 0..255
    pixels = np.array([0, 1, 128, 255], dtype=np.uint8)
    assert quantize(pixels, shifted).tolist() == [-128, -127, 0, 127]
    assert quantize(pixels.astype(np.float32), shifted).tolist() == [-128, -127, 0, 127]
    identity = TensorInfo("u", (1,), np.dtype(np.uint8), scale=1.0, zero_point=0)
    assert quantize(pixels, identity) is pixels  # already exactly what the model takes: no copy
    raw_uint8 = TensorInfo("z", (1,), np.dtype(np.uint8))  # no quantization: plain rounding cast
    assert quantize(np.array([12.5, 12.6, 999.0]), raw_uint8).tolist() == [12, 13, 255]
    assert dequantize(np.array([3], np.int64), TensorInfo("c", (1,), np.dtype(np.int64))).dtype == np.int64


def test_infer_layout() -> None:
    assert infer_layout((1, 224, 224, 3), "m") == "NHWC"
    assert infer_layout((None, 3, 224, 224), "m") == "NCHW"
    for bad in ((1, 3, 8, 3), (1, 8, 8, 4), (1, 8, 3)):
        with pytest.raises(ModelMismatchError, match="m: "):
            infer_layout(bad, "m")


def test_threads_reach_onnxruntime(tmp_path: Path) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx"), threads=2)
    assert engine._session.get_session_options().intra_op_num_threads == 2
    assert engine.threads == 2 and engine.backend == "onnxruntime"


def test_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError, match="expected one image input"):
        open_engine(tiny_onnx(tmp_path / "two.onnx", extra_input=True))
    with pytest.raises(ModelMismatchError, match="not NHWC"):
        open_engine(tiny_onnx(tmp_path / "m.onnx"), layout="NHWC")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeModelError, match=r"junk\.onnx: onnxruntime cannot load"):
        open_engine(tmp_path / "junk.onnx")
    (tmp_path / "junk.tflite").write_bytes(b"not a model")
    with pytest.raises(RuntimeModelError, match=r"junk\.tflite: .*cannot load"):
        open_engine(tmp_path / "junk.tflite")
    with pytest.raises(RuntimeModelError, match="not found"):
        open_engine(tmp_path / "missing.onnx")
    with pytest.raises(EngineUnavailableError, match=r"\.tflite, \.onnx"):
        engine_kind(tmp_path / "model.pt")
    with pytest.raises(InvalidOptionError, match="threads"):
        open_engine(tmp_path / "m.onnx", threads=0)


def test_engine_failures_are_typed(tmp_path: Path) -> None:
    engine = open_engine(tiny_onnx(tmp_path / "m.onnx"))
    with pytest.raises(RuntimeModelError, match=r"m\.onnx: onnxruntime failed on the input"):
        engine.run(np.zeros((1, SIZE // 2, SIZE // 2, 3), np.float32))  # not the model's size
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        engine.run(np.zeros((SIZE, SIZE, 3), np.float32))
    engine.close()
    with pytest.raises(RuntimeModelError, match="closed"):
        engine.run(images(1))


@pytest.mark.skipif(sys.platform == "darwin", reason="CoreML runs on macOS")
def test_coreml_off_macos_says_so(tmp_path: Path) -> None:
    (tmp_path / "model.mlpackage").mkdir()
    with pytest.raises(EngineUnavailableError, match="CoreML models run on macOS only"):
        open_engine(tmp_path / "model.mlpackage")
