"""CoreML exporter: real conversions of the session's trained iteration, checked structurally.

coremltools cannot run a model off macOS, so these tests read the written spec (image input,
classifier labels, outputs, metadata) and check that the verification says ``unverified``, never ``ok``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

from exporters.base import OptionsError
from exporters.coreml import CLASS_LABEL, PROBABILITIES, CoreMLExporter, CoreMLOptions

off_macos = pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the numeric check runs instead")


def test_options_are_strict() -> None:
    assert CoreMLOptions.parse({}) == CoreMLOptions()
    assert CoreMLOptions.parse({"author": "Ann", "license": "MIT"}).license == "MIT"
    with pytest.raises(OptionsError, match="did you mean 'license'"):
        CoreMLOptions.parse({"licence": "MIT"})
    with pytest.raises(OptionsError, match="author"):
        CoreMLOptions.parse({"author": " "})


def test_flavors() -> None:
    assert CoreMLExporter.flavors == ("float16", "float32", "neuralnetwork")
    assert CoreMLExporter.default_flavor == "float16"


# --------------------------------------------------------------------------- real exports
@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """flavor -> (export folder, seconds) for the three flavors of the trained sample iteration."""
    from exporters import export_iteration

    _, iteration = trained
    root = tmp_path_factory.mktemp("coreml")
    out: dict[str, tuple[Path, float]] = {}
    for flavor in CoreMLExporter.flavors:
        started = time.monotonic()
        result = export_iteration(iteration, "coreml", flavor=flavor, out=root / flavor,
                                  options={"author": "Test Author", "license": "Apache-2.0"})
        out[flavor] = (result.path, time.monotonic() - started)
    return out


def _spec(path: Path):
    import coremltools as ct

    return ct.utils.load_spec(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("flavor", CoreMLExporter.flavors)
def test_classifier_contract(exports, trained, flavor: str) -> None:
    from exporters.coreml import _mlprogram_class_labels

    _, iteration = trained
    folder, seconds = exports[flavor]
    model_file = "model.mlmodel" if flavor == "neuralnetwork" else "model.mlpackage"
    assert (folder / model_file).exists()
    assert seconds < 120, f"{flavor} export took {seconds:.1f} s"
    spec = _spec(folder / model_file)
    size = iteration.input_size

    # An image input Xcode and Vision feed directly.
    (inp,) = spec.description.input
    assert inp.name == "data" and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (size, size)

    # A real classifier: class label + per-class probabilities, our labels in order.
    outputs = {o.name: o.type.WhichOneof("Type") for o in spec.description.output}
    assert outputs == {CLASS_LABEL: "stringType", PROBABILITIES: "dictionaryType"}
    assert spec.description.predictedFeatureName == CLASS_LABEL
    assert spec.description.predictedProbabilitiesName == PROBABILITIES
    if flavor == "neuralnetwork":
        assert spec.WhichOneof("Type") == "neuralNetworkClassifier"
        assert spec.specificationVersion == 4  # iOS 13
        assert list(spec.neuralNetworkClassifier.stringClassLabels.vector) == iteration.labels
    else:
        assert spec.WhichOneof("Type") == "mlProgram"
        assert spec.specificationVersion >= 6  # iOS 15
        assert _mlprogram_class_labels(spec) == iteration.labels

    meta = spec.description.metadata
    assert meta.author == "Test Author" and meta.license == "Apache-2.0"
    assert iteration.project.name in meta.shortDescription
    assert json.loads(meta.userDefined["labels"]) == iteration.labels
    assert meta.userDefined["edgevision.task"] == "multiclass"

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "uint8" and manifest["outputs"][0]["name"] == PROBABILITIES
    assert any(name.startswith(model_file + "/") or name == model_file for name in manifest["files"])
    cvexport = json.loads((folder / "cvexport.manifest").read_text())
    assert cvexport["Platform"] == "CoreML" and cvexport["Flavor"] == flavor


@pytest.mark.slow
@off_macos
@pytest.mark.parametrize("flavor", CoreMLExporter.flavors)
def test_verification_is_unverified_off_macos(exports, flavor: str) -> None:
    folder, _ = exports[flavor]
    verification = json.loads((folder / "manifest.json").read_text())["verification"]
    assert verification["status"] == "unverified"
    assert "needs macOS" in verification["reason"]
    assert verification["check"] == "structural"


@pytest.mark.slow
def test_float16_is_half_the_size(exports) -> None:
    from exporters.verify import path_bytes

    fp16 = path_bytes(exports["float16"][0] / "model.mlpackage")
    fp32 = path_bytes(exports["float32"][0] / "model.mlpackage")
    assert fp16 < 0.6 * fp32


@pytest.mark.slow
def test_structural_check_catches_wrong_labels(exports, trained, tmp_path: Path) -> None:
    from exporters import build_context
    from exporters.coreml import check_structure

    _, iteration = trained
    ctx = build_context(iteration, tmp_path, tmp_path)
    folder, _ = exports["float16"]
    problems, _ = check_structure(folder / "model.mlpackage", ctx, "float16")
    assert problems == []
    wrong = dataclasses.replace(ctx, labels=list(reversed(ctx.labels)))
    problems, _ = check_structure(folder / "model.mlpackage", wrong, "float16")
    assert any("class labels" in p for p in problems)
    bigger = dataclasses.replace(ctx, input_size=ctx.input_size + 1)
    problems, _ = check_structure(folder / "model.mlpackage", bigger, "float16")
    assert any("input size" in p for p in problems)


@pytest.mark.slow
@off_macos
def test_multilabel_is_a_plain_model(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> None:
    """Multilabel: no classifier config (it implies one winning label); one MultiArray output."""
    from edgevision.store.project import Project
    from exporters import export_iteration

    project = Project.create("shapes-multilabel", "multilabel", home=tmp_path_factory.mktemp("ml-home"))
    project.import_folder(sample_dir)
    iteration = project.train("quick", seed=0)
    result = export_iteration(iteration, "coreml", out=tmp_path_factory.mktemp("ml") / "coreml")
    spec = _spec(result.path / "model.mlpackage")
    (out,) = spec.description.output
    assert out.name == PROBABILITIES and out.type.WhichOneof("Type") == "multiArrayType"
    assert list(out.type.multiArrayType.shape) == [1, len(iteration.labels)]
    assert spec.description.predictedFeatureName == ""
    assert json.loads(spec.description.metadata.userDefined["labels"]) == iteration.labels
    assert result.verification.status == "unverified"
