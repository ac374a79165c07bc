"""The hosted service's own Python prediction SDK works against our server unchanged (new base URL only)."""

from __future__ import annotations

import threading

import pytest

import runtimes
from runtimes.server import make_server

sdk = pytest.importorskip(
    "azure.cognitiveservices.vision.customvision.prediction",
    reason="the dev extra installs azure-cognitiveservices-vision-customvision (the hosted service's SDK)",
)
from msrest.authentication import ApiKeyCredentials  # noqa: E402  (installed with the SDK)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(exported_classifier):
    predictor = runtimes.load(exported_classifier.folders["onnx"])
    server = make_server(predictor, host="127.0.0.1", port=0, api_key="s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    predictor.close()


def _client(base_url: str, key: str):
    return sdk.CustomVisionPredictionClient(base_url, ApiKeyCredentials(in_headers={"Prediction-key": key}))


def test_sdk_classify_image_and_nostore(base_url: str, exported_classifier) -> None:
    image = next(p for p in exported_classifier.images if p.parent.name == "star")
    client = _client(base_url, "s3cret")
    expected = exported_classifier.iteration.predict_probabilities([image])[0]
    for call in (client.classify_image, client.classify_image_with_no_store):
        result = call("3fa85f64-5717-4562-b3fc-2c963f66afa6", "Iteration1", image.read_bytes())
        by_tag = {p.tag_name: p.probability for p in result.predictions}
        assert result.predictions[0].tag_name == "star"
        for label, probability in zip(exported_classifier.iteration.labels, expected):
            assert by_tag[label] == pytest.approx(float(probability), abs=1e-4)
        star = exported_classifier.iteration.labels.index("star")
        assert result.predictions[0].tag_id == exported_classifier.iteration.info["tag_ids"][star]


def test_sdk_surfaces_our_error_messages(base_url: str) -> None:
    from azure.cognitiveservices.vision.customvision.prediction.models import CustomVisionErrorException

    with pytest.raises(CustomVisionErrorException, match="Prediction-Key"):
        _client(base_url, "wrong").classify_image("p", "it", b"xx")
    with pytest.raises(CustomVisionErrorException, match="not an image"):
        _client(base_url, "s3cret").classify_image("p", "it", b"definitely not an image")
