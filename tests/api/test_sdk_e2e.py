"""End to end with the hosted service's own Python SDKs against a key-protected local server.

Training SDK (``CustomVisionTrainingClient``, ``Training-key``): create project -> tags -> upload ->
train -> poll -> performance -> publish; prediction SDK (``CustomVisionPredictionClient``,
``Prediction-key``): classify (or detect) through the published name; then export -> poll -> download.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgevision.api import routes_training
from tests.api.conftest import start_server, stop_server

training_sdk = pytest.importorskip("azure.cognitiveservices.vision.customvision.training")
prediction_sdk = pytest.importorskip("azure.cognitiveservices.vision.customvision.prediction")

from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient  # noqa: E402
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient  # noqa: E402
from azure.cognitiveservices.vision.customvision.training.models import (  # noqa: E402
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
    Region,
)
from msrest.authentication import ApiKeyCredentials  # noqa: E402

KEY = "local-test-key"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, thread = start_server(tmp_path_factory.mktemp("sdk-home"), key=KEY)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop_server(server, thread)


@pytest.fixture(scope="module")
def trainer(endpoint: str) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(endpoint, ApiKeyCredentials(in_headers={"Training-key": KEY}))


@pytest.fixture(scope="module")
def predictor(endpoint: str) -> CustomVisionPredictionClient:
    return CustomVisionPredictionClient(endpoint, ApiKeyCredentials(in_headers={"Prediction-key": KEY}))


def poll(get: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out: {value}"
        time.sleep(1.0)


def train_and_publish(trainer: CustomVisionTrainingClient, project_id: str, name: str, timeout: float) -> Any:
    iteration = trainer.train_project(project_id)
    assert iteration.status == "Training"
    iteration = poll(lambda: trainer.get_iteration(project_id, iteration.id), lambda it: it.status != "Training", timeout)
    assert iteration.status == "Completed", iteration.training_error_details
    assert trainer.publish_iteration(project_id, iteration.id, name, "local-prediction-resource") is True
    return iteration


def export_and_download(trainer: CustomVisionTrainingClient, project_id: str, iteration_id: str, model: str) -> None:
    import requests

    export = trainer.export_iteration(project_id, iteration_id, "TensorFlow", flavor="TensorFlowLite")
    assert export.status == "Exporting"
    exports = poll(lambda: trainer.get_exports(project_id, iteration_id),
                   lambda items: all(e.status != "Exporting" for e in items), 300)
    (export,) = [e for e in exports if e.platform == "TensorFlow" and e.flavor == "TensorFlowLite"]
    assert export.status == "Done"
    # Like the hosted service's SAS URLs, the download URL works without the key header ...
    answer = requests.get(export.download_uri, timeout=60)
    assert answer.status_code == 200, answer.text
    assert model in zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    # ... and is refused when its signature is taken off or its expiry moved ...
    base, query = export.download_uri.split("?", 1)
    assert requests.get(base, timeout=60).status_code == 401
    params = dict(urllib.parse.parse_qsl(query))
    assert requests.get(f"{base}?se={int(params['se']) + 3600}&sig={params['sig']}", timeout=60).status_code == 401
    assert requests.get(f"{base}?se=%C2%B2&sig={params['sig']}", timeout=60).status_code == 401  # '²' is no number
    # ... and once expired it says so; the key header still works.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routes_training, "DOWNLOAD_LINK_SECONDS", -5)
        (stale,) = [e for e in trainer.get_exports(project_id, iteration_id) if e.flavor == "TensorFlowLite"]
    expired = requests.get(stale.download_uri, timeout=60)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    assert requests.get(stale.download_uri, headers={"Training-Key": KEY}, timeout=60).status_code == 200


def test_classification_flow(trainer, predictor, sample_dir: Path) -> None:
    with pytest.raises(CustomVisionErrorException):  # the key is checked
        CustomVisionTrainingClient(trainer.config.endpoint,
                                   ApiKeyCredentials(in_headers={"Training-key": "wrong"})).get_projects()
    domain = next(d for d in trainer.get_domains() if d.type == "Classification" and d.name == "General (compact)")
    project = trainer.create_project("sdk-shapes", domain_id=domain.id, classification_type="Multiclass")
    tags = {name: trainer.create_tag(project.id, name) for name in sorted(p.name for p in sample_dir.iterdir())}
    entries = [ImageFileCreateEntry(name=path.name, contents=path.read_bytes(), tag_ids=[tags[tag].id])
               for tag in tags for path in sorted((sample_dir / tag).iterdir())]
    summary = trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=entries))
    assert summary.is_batch_successful, [i.status for i in summary.images]

    iteration = train_and_publish(trainer, project.id, "sdkModel", 300)
    assert [it.id for it in trainer.get_iterations(project.id)] == [iteration.id]

    performance = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.5)
    assert {t.name for t in performance.per_tag_performance} == set(tags)
    assert 0.0 <= performance.precision <= 1.0 and 0.0 <= performance.average_precision <= 1.0
    assert trainer.get_image_performance_count(project.id, iteration.id) == len(entries)

    image = sorted((sample_dir / "square").iterdir())[0].read_bytes()
    result = predictor.classify_image(project.id, "sdkModel", image)
    assert result.predictions[0].tag_name == "square"
    assert result.predictions[0].tag_id == tags["square"].id
    result = predictor.classify_image_with_no_store(project.id, "sdkModel", image)
    assert len(result.predictions) == len(tags)
    with pytest.raises(Exception):  # the prediction key is checked too
        CustomVisionPredictionClient(trainer.config.endpoint, ApiKeyCredentials(
            in_headers={"Prediction-key": "wrong"})).classify_image(project.id, "sdkModel", image)

    quick = trainer.quick_test_image(project.id, image, iteration_id=iteration.id, store=False)
    assert quick.predictions[0].tag_name == "square"

    export_and_download(trainer, project.id, iteration.id, "model.tflite")


@pytest.mark.slow
def test_detection_flow(trainer, predictor, detection_sample: Path) -> None:
    coco = json.loads(detection_sample.read_text())
    domain = next(d for d in trainer.get_domains() if d.type == "ObjectDetection" and d.name == "General (compact)")
    project = trainer.create_project("sdk-boxes", domain_id=domain.id)
    tags = {c["id"]: trainer.create_tag(project.id, c["name"]) for c in coco["categories"]}
    by_image: dict[int, list[Region]] = {}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco["annotations"]:
        w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            Region(tag_id=tags[a["category_id"]].id, left=x / w, top=y / h, width=bw / w, height=bh / h))
    entries = [ImageFileCreateEntry(name=im["file_name"], contents=(detection_sample.parent / im["file_name"]).read_bytes(),
                                    regions=by_image.get(im["id"], []))
               for im in coco["images"]]
    for start in range(0, len(entries), 64):
        summary = trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=entries[start:start + 64]))
        assert summary.is_batch_successful, [i.status for i in summary.images]

    iteration = train_and_publish(trainer, project.id, "sdkBoxes", 600)
    low = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.1, overlap_threshold=0.3)
    high = trainer.get_iteration_performance(project.id, iteration.id, threshold=0.9, overlap_threshold=0.3)
    assert low.recall >= high.recall
    assert {t.name for t in low.per_tag_performance} == {c["name"] for c in coco["categories"]}
    held_out = trainer.get_image_performances(project.id, iteration.id, take=100)
    assert len(held_out) == trainer.get_image_performance_count(project.id, iteration.id) > 0
    assert any(i.regions for i in held_out) and all(p.bounding_box for i in held_out for p in i.predictions)

    first = coco["images"][0]
    result = predictor.detect_image(project.id, "sdkBoxes", (detection_sample.parent / first["file_name"]).read_bytes())
    assert result.predictions and result.predictions[0].bounding_box is not None
    assert result.predictions[0].probability > 0.5

    export_and_download(trainer, project.id, iteration.id, "model.tflite")
