"""ONNX exporter: NCHW input 'data', output 'model_output', metadata_props, opset option, float16."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters import OptionsError, export_iteration
from exporters.metadata import IMAGE_PROPERTIES


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, iteration = trained
    return export_iteration(iteration, "onnx", out=tmp_path_factory.mktemp("onnx") / "fp32").path


def test_io_metadata_and_checker(onnx_export: Path, trained) -> None:
    import onnx

    _, iteration = trained
    model = onnx.load(str(onnx_export / "model.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["data"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, iteration.input_size, iteration.input_size]
    assert [o.name for o in model.graph.output] == ["model_output"]
    assert model.opset_import[0].version == 17 or any(o.version == 17 for o in model.opset_import if o.domain == "")
    props = {p.key: p.value for p in model.metadata_props}
    assert IMAGE_PROPERTIES.items() <= props.items()
    assert props["CustomVision.Postprocess.Method"] == "ClassificationMultiClass"
    assert any(k.startswith("CustomVision.Preprocess.") for k in props)


def test_float16_and_opset_option(trained, tmp_path: Path) -> None:
    import onnx

    _, iteration = trained
    result = export_iteration(iteration, "onnx", flavor="float16", out=tmp_path / "fp16", options={"opset": "13"})
    assert result.verification.status == "ok"
    assert result.verification.details["max_abs_diff"] <= 1e-2
    model = onnx.load(str(result.path / "model.onnx"))
    assert any(o.version == 13 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    # float32 in and out (keep_io_types), float16 weights inside: about half the size.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.verification.details["file_bytes"] < 0.6 * sum(w.numpy().nbytes for w in iteration.load_model().weights)


def test_opset_out_of_range(trained, tmp_path: Path) -> None:
    _, iteration = trained
    with pytest.raises(OptionsError, match="opset"):
        export_iteration(iteration, "onnx", out=tmp_path / "x", options={"opset": "7"})
    with pytest.raises(OptionsError, match="expected an integer"):
        export_iteration(iteration, "onnx", out=tmp_path / "x", options={"opset": "seventeen"})
