"""Issue 6: int8 calibration selection, `train --qat` and `train --prune` end to end, and their errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgevision.cli.main import main
from edgevision.errors import UsageError
from edgevision.training import quantization
from exporters import calibration_groups, select_calibration_images


def _groups() -> dict[str, list[Path]]:
    return {tag: [Path(f"{tag}{i:02d}.png") for i in range(n)] for tag, n in (("a", 5), ("b", 2), ("c", 9))}


def _tag(path: Path) -> str:
    return path.name[0]


# --------------------------------------------------------------------------- calibration selection
def test_balanced_goes_round_robin_across_tags() -> None:
    picked = select_calibration_images(_groups(), 7, "balanced")
    assert [_tag(p) for p in picked] == ["a", "b", "c", "a", "b", "c", "a"]
    # once a tag runs out the others go on, still alternating
    picked = select_calibration_images(_groups(), 12, "balanced")
    assert Counter(map(_tag, picked)) == {"a": 5, "b": 2, "c": 5}
    assert len(set(picked)) == 12


def test_balanced_and_random_are_seeded() -> None:
    for method in ("balanced", "random"):
        first = select_calibration_images(_groups(), 8, method, seed=3)
        assert first == select_calibration_images(_groups(), 8, method, seed=3)
        assert first != select_calibration_images(_groups(), 8, method, seed=4)
        assert len(set(first)) == 8
    pool = {p for ps in _groups().values() for p in ps}
    assert set(select_calibration_images(_groups(), 100, "random")) == pool  # more than there are: all of them


def test_random_follows_natural_proportions_and_first_is_training_order() -> None:
    groups = {"big": [Path(f"big{i:03d}") for i in range(90)], "small": [Path(f"small{i}") for i in range(10)]}
    counts = Counter(p.name.rstrip("0123456789") for p in select_calibration_images(groups, 50, "random", seed=0))
    assert counts["big"] > 3 * counts["small"]  # random: no balancing
    balanced = Counter(p.name.rstrip("0123456789") for p in select_calibration_images(groups, 20, "balanced"))
    assert balanced == {"big": 10, "small": 10}
    assert select_calibration_images(groups, 3, "first") == sorted(groups["big"] + groups["small"], key=lambda p: p.name)[:3]
    with pytest.raises(ValueError, match="unknown calibration method"):
        select_calibration_images(groups, 3, "smallest")


def _fake_iteration(tmp_path: Path, evaluation: dict[str, np.ndarray]) -> SimpleNamespace:
    records = [SimpleNamespace(id=f"id{i}", path=str(tmp_path / f"{i:02d}.png"), tags=[("x", "y")[i % 2]], sha256=f"{i:02d}")
               for i in range(10)]
    np.savez(tmp_path / "evaluation.npz", **evaluation)
    project = SimpleNamespace(training_images=lambda: records)
    return SimpleNamespace(path=tmp_path, info={"type": "multiclass"}, project=project)


def test_calibration_never_uses_the_hold_out(tmp_path: Path) -> None:
    held = _fake_iteration(tmp_path, {"image_ids": np.array(["id0", "id3", "id4"]), "targets": np.zeros((3, 2))})
    groups = calibration_groups(held)
    names = sorted(p.name for ps in groups.values() for p in ps)
    assert names == [f"{i:02d}.png" for i in (1, 2, 5, 6, 7, 8, 9)]
    # a cross-validated (quick) iteration has no hold-out: every training image may calibrate
    cv = _fake_iteration(tmp_path, {"image_ids": np.array(["id0", "id3"]), "fold": np.array([0, 1])})
    assert sum(len(v) for v in calibration_groups(cv).values()) == 10


# --------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("value", [1.5, 1.0, 0.0, -0.2, True])
def test_prune_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        quantization.check_request("multiclass", prune=value)


@pytest.mark.parametrize("options", [{"qat": True}, {"prune": 0.5}])
def test_detectors_refuse_qat_and_prune(options: dict) -> None:
    with pytest.raises(UsageError, match="for classifiers only"):
        quantization.check_request("detection", **options)


def test_qat_and_prune_together_are_refused() -> None:
    with pytest.raises(UsageError, match="cannot be combined"):
        quantization.check_request("multiclass", qat=True, prune=0.5)


@pytest.mark.parametrize("options, match", [
    ({"qat": True}, "--int8-ready and --qat cannot be combined"),
    ({"prune": 0.5}, "--int8-ready and --prune cannot be combined"),
    ({"mode": "advanced"}, "quick mode only"),
])
def test_int8_ready_conflicts_are_refused(options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        quantization.check_request("multiclass", int8_ready=True, **options)
    with pytest.raises(UsageError, match="classifiers only"):
        quantization.check_request("detection", int8_ready=True)


# --------------------------------------------------------------------------- int8 grid
def _conv_bn_model(seed: int = 0):
    """A tiny conv + BatchNorm + depthwise + BatchNorm + head model with random, uneven weights."""
    from edgevision._tf import import_tf

    _, keras = import_tf()
    rng = np.random.default_rng(seed)
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="a_conv")(x)
    x = keras.layers.BatchNormalization(name="a_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="b_conv")(x)
    x = keras.layers.BatchNormalization(name="b_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="model_output")(x))
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            n = weights[0].shape[0]
            weights = [rng.uniform(0.2, 3.0, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.1, 4.0, n)]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):  # channels a hundredfold apart in range
            weights = [rng.normal(0, 1, weights[0].shape) * rng.uniform(0.01, 2.0, (1, 1, weights[0].shape[2], 1))]
        elif isinstance(layer, keras.layers.Conv2D):
            weights = [rng.normal(0, 1, weights[0].shape) * rng.uniform(0.01, 2.0, (1, 1, 1, weights[0].shape[3]))]
        elif weights:
            weights = [rng.normal(0, 1, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def test_snap_puts_folded_kernels_on_the_int8_grid() -> None:
    model = _conv_bn_model()
    before = model.predict(np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)), verbose=0)
    report = quantization.snap_to_int8_grid(model)
    assert report["layers"] == 2 and 0 < report["relative_change"] < 0.01
    steps = quantization.int8_grid_steps(model)
    for conv, bn, axis in quantization._folded_convs(model):
        folded, _ = quantization._folded(conv, bn, axis)
        k = folded / quantization._shaped(steps[conv.name], folded.ndim, axis)
        assert np.max(np.abs(k - np.round(k))) < 1e-3  # integers ...
        assert np.max(np.abs(k)) == pytest.approx(127, abs=1e-3)  # ... spanning -127..127 per channel
    # snapping again changes nothing; the float function moved only by the rounding
    assert quantization.snap_to_int8_grid(model)["relative_change"] < 1e-6
    after = model.predict(np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)), verbose=0)
    assert 0 < np.max(np.abs(after - before)) < 0.05 * np.max(np.abs(before))


def test_snapped_head_sits_on_a_per_class_grid() -> None:
    model = _conv_bn_model()
    quantization.snap_head_to_int8_grid(model)
    kernel = model.get_layer("model_output").get_weights()[0]
    k = kernel / (np.max(np.abs(kernel), axis=0) / 127)
    assert np.max(np.abs(k - np.round(k))) < 1e-3


def test_cli_bad_values_exit_2(capsys: pytest.CaptureFixture[str], home: Path, sample_dir: Path) -> None:
    assert main(["project", "create", "p", "--type", "multiclass"]) == 0
    assert main(["train", "p", "--prune", "1.5"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert main(["project", "create", "d", "--type", "detection"]) == 0
    assert main(["train", "d", "--qat"]) == 2
    assert "--qat is for classifiers only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "p", "--prune", "half"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def qat_project(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path):
    from edgevision.store.project import Project

    project = Project.create("shapes", "multiclass", home=tmp_path_factory.mktemp("qat-home"))
    project.import_folder(sample_dir)
    return project


@pytest.mark.slow
def test_train_qat_then_int8_export_uses_it(qat_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --qat` stores a QAT model beside the float one; the int8 export converts it, float exports don't."""
    monkeypatch.setattr(quantization, "QAT_AUGMENTED_VIEWS", 0)  # the image and its mirror are enough here
    it = qat_project.train("quick", seed=0, qat=True)
    assert (it.path / "model_qat.h5").exists() and (it.path / "model.h5").exists()
    q = it.info["qat"]
    assert q["model_file"] == "model_qat.h5" and q["ranges_calibrated"] > 50 and q["train_agreement_after"] >= 0.9
    result = it.export("tflite", flavor="int8", out=tmp_path / "int8")
    v = result.verification
    assert v.status == "ok" and v.details["qat"] is True
    assert v.details["calibration"]["method"] == "balanced" and v.details["calibration"]["images"] == 24
    assert v.details["weights"]["by_op"]["CONV_2D"]["per_channel"] > 0
    assert "accuracy_drop" in v.details
    with pytest.raises(Exception, match="qat"):  # qat on a float flavor is refused, not ignored
        it.export("tflite", flavor="float32", out=tmp_path / "f", options={"qat": "true"})


@pytest.mark.slow
def test_train_int8_ready_then_int8_export(qat_project, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --int8-ready`: the stored float model's backbone is on the int8 grid (the int8 file keeps its
    weights), the head saw int8 features, and the int8 export verifies against that float model."""
    from ai_edge_litert.interpreter import Interpreter

    monkeypatch.setenv("EDGEVISION_HOME", str(qat_project.path.parent.parent))
    assert main(["train", "shapes", "--int8-ready"]) == 0
    assert "int8-ready: weights on the int8 grid" in capsys.readouterr().out
    it = qat_project.iterations()[-1]
    ready = it.info["int8_ready"]
    assert ready["views"] == ["hflip", "int8", "int8-hflip"] and ready["calibration_images"] == 24
    assert ready["grid"]["layers"] > 40 and 0 < ready["int8_feature_error"] < 0.5
    assert it.metrics["accuracy"] is not None and "qat" not in it.info
    model = it.load_model()
    steps = quantization.int8_grid_steps(model)
    result = it.export("tflite", flavor="int8", out=tmp_path / "int8")
    v = result.verification
    assert v.status == "ok" and v.details["ranges"] == "mse" and v.details["qat"] is False
    # The converter kept the grid: each conv's per-channel scales are the float model's grid steps
    # (channels whose weights are ~0 aside: the converter widens their scale to fit the bias).
    ip = Interpreter(model_path=str(result.path / "model.tflite"))
    convs = [op for op in ip._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == len(steps)
    kept = 0
    for op, (name, step) in zip(convs, steps.items()):
        scales = ip._get_tensor_details(op["inputs"][1], 0)["quantization_parameters"]["scales"]
        live = step > 1e-6 * step.max()
        kept += int(np.allclose(scales[live], step[live], rtol=1e-5))
    assert kept == len(steps)


@pytest.mark.slow
def test_train_prune_records_sparsity_and_exports(qat_project, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEVISION_HOME", str(qat_project.path.parent.parent))
    monkeypatch.setattr(quantization, "PRUNE_EPOCHS", 2)
    assert main(["train", "shapes", "--prune", "0.5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    pr = info["pruning"]
    assert pr["target_sparsity"] == 0.5 and 0.45 <= pr["sparsity"] <= 0.55 and 0.3 < pr["sparsity_all_weights"] < pr["sparsity"]
    assert info["metrics"]["accuracy"] is not None  # cross-validated on the pruned backbone's features
    it = qat_project.iteration(info["number"])
    model = it.load_model()
    assert quantization.sparsity(model)["sparsity"] == pr["sparsity"]  # zeros survive saving
    result = it.export("tflite", flavor="int8", out=tmp_path / "int8", options={"calibration": "random"})
    assert result.verification.status == "ok" and result.verification.details["calibration"]["method"] == "random"
