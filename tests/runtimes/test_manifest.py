"""The export manifest: round trip, strict validation with errors naming file and field, schema version."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from runtimes.errors import IntegrityError, ManifestError
from runtimes.manifest import SCHEMA_VERSION, InputSpec, Manifest, OutputSpec, file_digests, safe_relative_path

VALID: dict[str, Any] = {
    "schema_version": 1,
    "task": "multiclass",
    "domain": "general-compact",
    "project": "flowers",
    "iteration": "3",
    "labels": ["daisy", "rose"],
    "tag_ids": ["id-daisy", "id-rose"],
    "model_file": "model.onnx",
    "labels_file": "labels.txt",
    "input": {"name": "data", "layout": "NCHW", "shape": [1, 3, 224, 224], "dtype": "float32",
              "color": "RGB", "range": [0, 255], "resize": "bilinear"},
    "outputs": [{"name": "model_output", "shape": [1, 2], "dtype": "float32"}],
    "files": {"model.onnx": "a" * 64},
    "exporter": {"name": "onnx", "version": "0.1.0", "options": {"opset": 17}},
    "verification": {"status": "ok", "reason": "", "max_abs_diff": 1e-6, "top1_agreement": 1.0},
    "created": "2026-11-21T10:00:00Z",
}


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        target = data
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return data


def test_round_trip_and_derived_values() -> None:
    m = Manifest.from_dict(VALID)
    assert m.to_dict() == VALID
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.input_size == (224, 224) and m.is_classifier and m.schema_version == SCHEMA_VERSION
    assert m.verification.details == {"max_abs_diff": 1e-6, "top1_agreement": 1.0}
    nhwc = InputSpec("x", "NHWC", (1, 240, 320, 3))
    assert nhwc.size == (320, 240)


def test_save_and_load(tmp_path: Path) -> None:
    m = Manifest.from_dict(VALID)
    path = m.save(tmp_path)
    assert path == tmp_path / "manifest.json"
    loaded = Manifest.load(tmp_path)
    assert loaded == m and loaded.source == str(path)
    assert json.loads(path.read_text())["input"]["range"] == [0, 255]


def test_optional_tag_ids() -> None:
    m = Manifest.from_dict(variant(tag_ids=KeyError))
    assert m.tag_ids is None and "tag_ids" not in m.to_dict()


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"task": "segmentation"}, "task", "not one of"),
        ({"labels": []}, "labels", "non-empty"),
        ({"labels": ["a", "a"]}, "labels", "duplicate"),
        ({"labels": ["a", 3]}, "labels", "item 1"),
        ({"tag_ids": ["only-one"]}, "tag_ids", "1 ids for 2 labels"),
        ({"model_file": "../model.onnx"}, "model_file", "inside the export folder"),
        ({"model_file": "/etc/passwd"}, "model_file", "relative"),
        ({"model_file": "C:/model.onnx"}, "model_file", "relative"),
        ({"model_file": "sub\\..\\..\\x"}, "model_file", "relative"),
        ({"labels_file": "a/../../labels.txt"}, "labels_file", "inside"),
        ({"input__layout": "HWC"}, "input.layout", "not one of"),
        ({"input__shape": [1, 224, 224, 3]}, "input", "does not match layout NCHW"),
        ({"input__shape": [1, 3, 224]}, "input.shape", "4 positive integers"),
        ({"input__dtype": "float64"}, "input.dtype", "not one of"),
        ({"input__color": "BGR"}, "input.color", "not one of"),
        ({"input__range": [0, 1]}, "input", "must be [0, 255]"),
        ({"input__resize": "lanczos"}, "input.resize", "not one of"),
        ({"input__name": KeyError}, "input.name", "is missing"),
        ({"outputs": []}, "outputs", "non-empty"),
        ({"outputs__0__shape": [1, 5]}, "outputs", "5 values but there are 2 labels"),
        ({"outputs": [{"name": "a", "shape": [1, 2], "dtype": "float32"}] * 2}, "outputs", "exactly one output"),
        ({"files": {"model.onnx": "ABC"}}, "files.model.onnx", "sha256"),
        ({"files": {"../x": "a" * 64}}, "files", "inside"),
        ({"exporter__version": KeyError}, "exporter.version", "is missing"),
        ({"verification__status": "maybe"}, "verification.status", "not one of"),
        ({"verification": {"status": "unverified"}}, "verification.reason", "'unverified' needs a reason"),
        ({"created": "yesterday"}, "created", "ISO 8601"),
        ({"iteration": 3}, "iteration", "expected a string"),
        ({"schema_version": True}, "schema_version", "expected an integer"),
        ({"project": KeyError}, "project", "is missing"),
    ],
)
def test_invalid_fields_are_named(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(variant(**changes), source="exports/x/manifest.json")
    message = str(info.value)
    assert message.startswith("exports/x/manifest.json: "), message
    assert field in message and words in message, message


def test_unknown_field_suggests_the_right_one() -> None:
    data = variant(labels=KeyError)
    data["lables"] = ["daisy", "rose"]
    with pytest.raises(ManifestError, match="did you mean 'labels'"):
        Manifest.from_dict(data)
    with pytest.raises(ManifestError, match=r"input\.layuot.*did you mean 'layout'"):
        Manifest.from_dict(variant(input__layuot="NCHW"))


def test_newer_schema_version_is_refused_with_advice() -> None:
    with pytest.raises(ManifestError, match="newer edgevision.*upgrade the runtime"):
        Manifest.from_dict(variant(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ManifestError, match="schema_version"):
        Manifest.from_dict(variant(schema_version=0))


def test_detection_manifest_is_valid_data() -> None:
    outputs = [{"name": n, "shape": [1, None, 4][: 3 if n == "detected_boxes" else 2], "dtype": "float32"}
               for n in ("detected_boxes", "detected_classes", "detected_scores")]
    m = Manifest.from_dict(variant(task="detection", outputs=outputs))
    assert not m.is_classifier and m.outputs[0].shape == (1, None, 4)


def test_construction_validates_too() -> None:
    good = Manifest.from_dict(VALID)
    with pytest.raises(ManifestError, match="model_file"):
        Manifest(task="multiclass", domain="d", project="p", iteration="1", labels=["a"], model_file="../m.onnx",
                 input=good.input, outputs=[OutputSpec("o", (1, 1))])


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest\.json: not found"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{ nope", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"manifest\.json: not valid JSON \(line 1"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ManifestError, match="expected an object"):
        Manifest.load(tmp_path)


def test_safe_relative_path() -> None:
    assert safe_relative_path("model.mlpackage/Data/model.mlmodel", "f") == "model.mlpackage/Data/model.mlmodel"
    for bad in ("", ".", "./m", "a//b", "a/", "..", "/a", "\\a", "D:x"):
        with pytest.raises(ManifestError):
            safe_relative_path(bad, "f")


def test_verify_files(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"model")
    m = Manifest.from_dict(variant(files=file_digests(tmp_path, ["model.onnx"])))
    m.verify_files(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"modem")
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 .* differs"):
        m.verify_files(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        m.verify_files(tmp_path)
