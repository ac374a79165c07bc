"""Detector exports: NMS inside the graph, the contract's output names/shapes/types, box-by-box verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporters import OptionsError


@pytest.fixture(scope="module")
def tflite_export(trained_detector, tmp_path_factory: pytest.TempPathFactory):
    _, it = trained_detector
    return it.export("tflite", out=tmp_path_factory.mktemp("det-tflite") / "out")


def _images(project) -> list[Path]:
    return [Path(r.path) for r in sorted(project.images(), key=lambda r: r.sha256)[:4]]


def test_tflite_detector_has_the_contract_outputs_and_is_verified(tflite_export) -> None:
    from ai_edge_litert.interpreter import Interpreter

    result = tflite_export
    v = result.verification
    assert v.status == "ok", v.reason
    assert v.details["boxes_matched"] == 1.0 and v.details["min_iou"] > 0.99 and v.details["boxes_compared"] > 0
    interp = Interpreter(str(result.path / "model.tflite"))
    outs = {d["name"]: d for d in interp.get_output_details()}
    # TFLite: the contract's names without the batch dimension (clients read tensor names).
    assert sorted(outs) == ["detected_boxes", "detected_classes", "detected_scores"]
    assert list(outs["detected_boxes"]["shape"]) == [100, 4]
    assert list(outs["detected_scores"]["shape"]) == [100]
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["task"] == "detection"
    assert manifest["detection"] == {"flavor": "postprocessed", "iou_threshold": 0.45, "candidates": 200,
                                     "max_detections": 100}
    cv = json.loads((result.path / "cvexport.manifest").read_text())
    assert cv["DomainType"] == "ObjectDetection"


def test_device_runtime_gives_the_trained_models_boxes(trained_detector, tflite_export) -> None:
    import runtimes

    project, it = trained_detector
    images = _images(project)
    expected = it.predict(images, threshold=0.3)
    with runtimes.load(tflite_export.path) as predictor:
        for image, want in zip(images, expected):
            got = predictor.predict(image, threshold=0.3)
            assert [p.tag_name for p in got.predictions] == [p.tag_name for p in want.predictions]
            for a, b in zip(got.predictions, want.predictions):
                assert abs(a.probability - b.probability) < 1e-4
                np.testing.assert_allclose(list(a.bounding_box.to_dict().values()),
                                           list(b.bounding_box.to_dict().values()), atol=1e-4)


def test_onnx_detector_input_image_tensor_and_int64_classes(trained_detector, tmp_path: Path) -> None:
    import onnx

    _, it = trained_detector
    result = it.export("onnx", out=tmp_path / "onnx")
    assert result.verification.status == "ok", result.verification.reason
    model = onnx.load(str(result.path / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["image_tensor"]
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {"detected_boxes": onnx.TensorProto.FLOAT, "detected_classes": onnx.TensorProto.INT64,
                       "detected_scores": onnx.TensorProto.FLOAT}


def test_onnx_float16_detector(trained_detector, tmp_path: Path) -> None:
    # tf2onnx shares scalar constants between the backbone and the NMS part; the float16 converter
    # used to write duplicate Cast outputs for them (invalid graph). The exporter unshares them.
    _, it = trained_detector
    result = it.export("onnx", flavor="float16", out=tmp_path / "f16")
    v = result.verification
    assert v.status == "ok", v.reason
    assert v.details["mean_iou"] >= 0.95


def test_raw_flavor_runs_nms_in_the_runtime(trained_detector, tmp_path: Path) -> None:
    import runtimes

    project, it = trained_detector
    result = it.export("onnx", flavor="raw", out=tmp_path / "raw")
    assert result.verification.status == "ok", result.verification.reason
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["raw_boxes", "raw_scores"]
    assert manifest["detection"]["flavor"] == "raw"
    image = _images(project)[0]
    want = it.predict(image, threshold=0.3)[0]
    with runtimes.load(result.path) as predictor:
        got = predictor.predict(image, threshold=0.3)
    assert [p.tag_name for p in got.predictions] == [p.tag_name for p in want.predictions]


def test_int8_detector_is_smaller_and_keeps_map(trained_detector, tmp_path: Path) -> None:
    _, it = trained_detector
    result = it.export("tflite", flavor="int8", out=tmp_path / "int8")
    v = result.verification
    assert v.status == "ok", v.reason
    assert v.details["map50_drop"] <= 0.02
    assert v.details["file_bytes"] < 0.4 * v.details["float32_weights_bytes"]
    assert v.details["ranges"] == "minmax" and v.details["bias_correction"] is False


@pytest.mark.parametrize("options, match", [({"ranges": "mse"}, "float post-processing"),
                                            ({"bias_correction": "true"}, "converted in one step")])
def test_int8_detector_refuses_classifier_only_options(trained_detector, tmp_path: Path, options: dict,
                                                       match: str) -> None:
    _, it = trained_detector
    with pytest.raises(OptionsError, match=match):
        it.export("tflite", flavor="int8", out=tmp_path / "int8", options=options)
    assert not (tmp_path / "int8").exists()


def test_raw_flavor_is_for_detectors_only(trained) -> None:
    _, it = trained
    with pytest.raises(OptionsError, match="object detectors"):
        it.export("onnx", flavor="raw")
