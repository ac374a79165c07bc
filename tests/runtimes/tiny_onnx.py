"""A tiny real ONNX classifier with a known answer, shared by the engine and server tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def tiny_onnx(path: Path, weights: np.ndarray, *, size: int, layout: str = "NCHW", dtype: int = TensorProto.FLOAT,
              batch: int | str = 1, extra_input: bool = False) -> Path:
    """Mean colour per channel -> fixed 3x3 linear layer ``weights`` -> softmax, input ``data``, output
    ``model_output`` [batch, 3] (the S1 contract); checked with ``onnx.checker`` and saved to ``path``."""
    shape = [batch, 3, size, size] if layout == "NCHW" else [batch, size, size, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    nodes = [helper.make_node("Cast", ["data"], ["pixels"], to=TensorProto.FLOAT)]
    nodes += [
        helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["model_output"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("data", dtype, shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor("weights", TensorProto.FLOAT, [3, 3], np.asarray(weights, np.float32).flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
