"""Training with the real pretrained Lite0 on the generated sample: iterations, metrics, invariants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevision.datasets.sample import make_image, write_sample_dataset
from edgevision.errors import IterationNotFoundError, NotEnoughDataError, UsageError
from edgevision.store.project import Project

pytestmark = pytest.mark.slow


def test_quick_iteration_is_recorded_and_good(trained) -> None:
    project, it = trained
    assert it.number == 1 and it.mode == "quick"
    assert it.labels == ["circle", "square", "star", "triangle"]
    info = json.loads((it.path / "iteration.json").read_text())
    for key in ("id", "domain", "seed", "duration_s", "image_count", "hyperparameters", "metrics", "labels"):
        assert key in info
    assert info["image_count"] == 24 and info["hyperparameters"]["folds"] == 5
    assert (it.path / "labels.txt").read_text().split("\n")[:4] == it.labels
    m = it.metrics
    assert m["method"] == "5-fold cross-validation"
    assert m["accuracy"] >= 0.9  # shapes on noise are easy for ImageNet features
    assert set(m["folds"]) >= {"precision", "recall", "accuracy"}
    assert len(m["confusion_matrix"]["matrix"]) == 4


def test_trainer_and_saved_model_give_the_same_probabilities(trained) -> None:
    """The head on cached features (trainer) and the saved full model (prediction) agree."""
    from edgevision.domains import get_domain
    from edgevision.training.embeddings import FeatureExtractor
    from edgevision.training.head import fit_linear_head

    project, it = trained
    records = project.training_images()
    extractor = FeatureExtractor(get_domain(project.domain), project.path / "cache" / "embeddings.sqlite")
    features = extractor.embed(records)
    extractor.close()
    targets = np.array([[t in r.tags for t in it.labels] for r in records], dtype=np.float32)
    head = fit_linear_head(features, targets, multilabel=False, l2=it.info["hyperparameters"]["l2"])
    from_model = it.predict_probabilities([r.path for r in records])
    np.testing.assert_allclose(from_model, head.predict(features), atol=1e-4)
    np.testing.assert_allclose(from_model.sum(axis=1), 1.0, atol=1e-5)


def test_predict_returns_custom_vision_json(trained) -> None:
    project, it = trained
    image = make_image("star", np.random.default_rng(99))
    [result] = it.predict(image)
    d = result.to_dict()
    assert set(d) == {"id", "project", "iteration", "created", "predictions"}
    assert d["project"] == "shapes" and d["iteration"] == "1"
    top = d["predictions"][0]
    assert set(top) == {"probability", "tagId", "tagName", "boundingBox"} and top["boundingBox"] is None
    assert top["tagName"] == "star"
    assert top["tagId"] == project.get_tag("star").id
    assert [p["probability"] for p in d["predictions"]] == sorted((p["probability"] for p in d["predictions"]), reverse=True)


def test_threshold_changes_figures_without_retraining(trained) -> None:
    _, it = trained
    low = it.evaluate(threshold=0.0)
    high = it.evaluate(threshold=1.0)
    assert low.recall == 1.0 and low.precision == pytest.approx(0.25)
    assert high.recall <= it.evaluate(threshold=0.5).recall
    assert low.accuracy == high.accuracy  # top-1 does not depend on the threshold
    with pytest.raises(UsageError):
        it.evaluate(threshold=2.0)


def test_evaluate_external_folder(trained, tmp_path: Path) -> None:
    _, it = trained
    data = write_sample_dataset(tmp_path / "test", per_tag=2, seed=7)
    (data / "star" / "broken.png").write_bytes(b"not a png")
    m = it.evaluate(data=data)
    assert m.images == 8 and "external" in m.method
    assert [Path(p).name for p, _ in m.skipped] == ["broken.png"]
    (data / "hexagon").mkdir()
    make_image("circle", np.random.default_rng(3)).save(data / "hexagon" / "h.png")
    with pytest.raises(UsageError, match="hexagon"):
        it.evaluate(data=data)


def test_same_seed_same_iteration(trained) -> None:
    project, first = trained
    again = project.train("quick", seed=0)
    try:
        assert again.number == first.number + 1
        assert again.metrics == first.metrics
        a = np.load(first.path / "evaluation.npz")["probabilities"]
        b = np.load(again.path / "evaluation.npz")["probabilities"]
        np.testing.assert_array_equal(a, b)
    finally:
        project.delete_iteration(again.number)
    with pytest.raises(IterationNotFoundError, match="no iteration 2"):
        project.iteration(2)


def test_not_enough_images_names_the_tag(home: Path, sample_dir: Path) -> None:
    p = Project.create("few")
    p.add_images(sorted((sample_dir / "circle").iterdir())[:5], ["circle"])
    p.add_images(sorted((sample_dir / "square").iterdir())[:4], ["square"])
    with pytest.raises(NotEnoughDataError, match="'square' has 4"):
        p.train()
    p.delete_tag("square")
    with pytest.raises(NotEnoughDataError, match="at least 2 tags"):
        p.train()
    with pytest.raises(UsageError, match="advanced"):
        p.train("quick", budget=1)


def test_one_tag_plus_negative_trains_with_negative_class(home: Path, sample_dir: Path) -> None:
    p = Project.create("neg")
    p.add_images(sorted((sample_dir / "circle").iterdir())[:5], ["circle"])
    p.add_images(sorted((sample_dir / "square").iterdir())[:5], ["Negative"])
    it = p.train(folds=2)
    assert it.labels == ["circle", "Negative"] and it.info["negative_class"]
    assert [t["tag"] for t in it.metrics["tags"]] == ["circle"]


def test_interrupted_training_leaves_no_iteration(home: Path, sample_dir: Path, monkeypatch) -> None:
    import edgevision.training as training

    p = Project.create("ctrl-c")
    p.import_folder(sample_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "assemble_classifier", interrupted)
    with pytest.raises(KeyboardInterrupt):
        p.train()
    assert p.iterations() == []
    assert list((p.path / "iterations").iterdir()) == []


def test_multilabel_uses_sigmoid(home: Path, sample_dir: Path) -> None:
    p = Project.create("ml", "multilabel")
    for tag in ("circle", "square", "star"):
        p.add_images(sorted((sample_dir / tag).iterdir()), [tag])
    it = p.train(folds=3)
    probs = it.predict_probabilities([sorted((sample_dir / "star").iterdir())[0]])
    assert probs.shape == (1, 3) and probs.argmax() == 2
    assert it.load_model().get_layer("model_output").activation.__name__ == "sigmoid"
    assert "accuracy" not in it.metrics


def test_advanced_training_fine_tunes_within_budget(home: Path, sample_dir: Path) -> None:
    p = Project.create("adv")
    for tag in ("circle", "square"):
        p.add_images(sorted((sample_dir / tag).iterdir()), [tag])
    it = p.train("advanced", budget=0.3, seed=1)
    hp = it.info["hyperparameters"]
    assert it.mode == "advanced" and hp["kept"] in ("fine-tuned", "quick head")
    assert hp["split"]["test"] >= 2 and hp["epochs_run"] >= 1
    assert it.metrics["images"] == hp["split"]["test"]
    assert "hold-out" in it.metrics["method"]
    assert it.predict_probabilities([sorted((sample_dir / "circle").iterdir())[0]]).shape == (1, 2)
