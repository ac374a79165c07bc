"""Predictor on real exports: same probabilities as the trainer, every image source, batches, JSON shape."""

from __future__ import annotations

import datetime as _dt
import io
import uuid

import numpy as np
import pytest
from PIL import Image

import runtimes
from runtimes.errors import ImageDecodeError, InvalidOptionError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(exported_classifier) -> np.ndarray:
    """The trainer's own probabilities for the sample images (tf_keras model)."""
    return exported_classifier.iteration.predict_probabilities(exported_classifier.images)


@pytest.mark.parametrize("fmt", ["tflite-fp32", "onnx"])
def test_same_probabilities_as_the_trainer(exported_classifier, reference: np.ndarray, fmt: str) -> None:
    with runtimes.load(exported_classifier.folders[fmt], threads=1) as predictor:
        probs = predictor.probabilities(exported_classifier.images)
    assert probs.shape == reference.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_int8_agrees_on_top1(exported_classifier, reference: np.ndarray) -> None:
    with runtimes.load(exported_classifier.folders["tflite-int8"]) as predictor:
        assert predictor.engine.input.dtype == np.uint8 and predictor.engine.outputs[0].quantized
        probs = predictor.probabilities(exported_classifier.images)
    agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
    # FACTS.md's target is >= 99 % on a large set; on 24 images one flip would be 96 %.
    assert agreement >= 0.95, agreement
    assert np.abs(probs - reference).max() < 0.1


def test_every_image_source_gives_the_same_result(exported_classifier) -> None:
    path = exported_classifier.images[3]
    data = path.read_bytes()
    pil = Image.open(path)
    pil.load()
    array = np.asarray(pil.convert("RGB"))
    with runtimes.load(exported_classifier.folders["tflite-fp32"]) as predictor:
        results = [
            predictor.predict(path), predictor.predict(str(path)), predictor.predict(data),
            predictor.predict(io.BytesIO(data)), predictor.predict(pil), predictor.predict(array),
            predictor.predict(array.astype(np.float32)),
        ]
    first = [(p.tag_name, p.probability) for p in results[0].predictions]
    for result in results[1:]:
        assert [(p.tag_name, p.probability) for p in result.predictions] == first


def test_predict_batch_equals_predict(exported_classifier) -> None:
    images = exported_classifier.images[:5]
    with runtimes.load(exported_classifier.folders["onnx"]) as predictor:
        singles = [predictor.predict(im) for im in images]
        batch = predictor.predict_batch(images)
        probs = predictor.probabilities(images)
    assert len(batch) == len(images)
    for one, many, row in zip(singles, batch, probs):
        assert [p.tag_name for p in one.predictions] == [p.tag_name for p in many.predictions]
        np.testing.assert_allclose([p.probability for p in one.predictions],
                                   [p.probability for p in many.predictions], atol=1e-6)
        assert max(p.probability for p in one.predictions) == pytest.approx(float(row.max()), abs=1e-6)


def test_image_prediction_json(exported_classifier) -> None:
    iteration = exported_classifier.iteration
    with runtimes.load(exported_classifier.folders["tflite-fp32"]) as predictor:
        assert predictor.task == "multiclass" and predictor.labels == iteration.labels
        assert predictor.input_size == (224, 224)
        result = predictor.predict(exported_classifier.images[0]).to_dict()
        thresholded = predictor.predict(exported_classifier.images[0], threshold=0.5).to_dict()
    assert set(result) == {"id", "project", "iteration", "created", "predictions"}
    uuid.UUID(result["id"])
    assert _dt.datetime.fromisoformat(result["created"].replace("Z", "+00:00")).tzinfo is not None
    assert result["project"] == iteration.project.name and result["iteration"] == str(iteration.number)
    preds = result["predictions"]
    assert [set(p) for p in preds] == [{"probability", "tagId", "tagName", "boundingBox"}] * len(iteration.labels)
    assert [p["probability"] for p in preds] == sorted((p["probability"] for p in preds), reverse=True)
    ids = dict(zip(iteration.labels, iteration.info["tag_ids"]))
    assert all(p["tagId"] == ids[p["tagName"]] and p["boundingBox"] is None for p in preds)
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-4)
    assert 1 <= len(thresholded["predictions"]) < len(preds)
    assert all(p["probability"] >= 0.5 for p in thresholded["predictions"])


def test_bad_inputs(exported_classifier, tmp_path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    predictor = runtimes.load(exported_classifier.folders["onnx"])
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg"):
        predictor.predict(bad)
    with pytest.raises(InvalidOptionError, match="threshold"):
        predictor.predict(exported_classifier.images[0], threshold=1.5)
    assert predictor.probabilities([]).shape == (0, 4)
    predictor.close()
    predictor.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        predictor.predict(exported_classifier.images[0])
