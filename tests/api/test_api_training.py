"""Training API: train, iterations, performance, publish, prediction routes, quick test, exports.

One server over one home for the module; the sample project (4 tags x 6 images) is trained once,
and once more with forceTrain (the embedding cache makes that one a few seconds).
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.api.conftest import ApiClient, start_server, stop_server

from edgevision.store.project import Project


def wait_for(client: ApiClient, path: str, done: Any, timeout: float = 300.0) -> Any:
    """Poll GET ``path`` until ``done(json)`` is true; returns the last JSON."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.call("GET", path)
        assert answer.status == 200, answer.body
        if done(answer.json):
            return answer.json
        assert time.monotonic() < deadline, f"timed out waiting on {path}: {answer.json}"
        time.sleep(0.5)


def finished(it: dict[str, Any]) -> bool:
    return it["status"] != "Training"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Iterator[tuple[ApiClient, Project]]:
    home = tmp_path_factory.mktemp("api-training-home")
    project = Project.create("shapes", "multiclass", home=home)
    project.import_folder(sample_dir)
    small = Project.create("tiny", "multiclass", home=home)
    for tag in ("circle", "square"):
        small.import_items(_items(sample_dir / tag, tag, 3))
    server, thread = start_server(home)
    try:
        yield ApiClient(f"http://127.0.0.1:{server.server_address[1]}", server), project
    finally:
        stop_server(server, thread)
        project.close()
        small.close()


def _items(folder: Path, tag: str, n: int) -> list:
    from edgevision.store.project import ImportItem

    return [ImportItem(path=p, tags=(tag,)) for p in sorted(folder.iterdir())[:n]]


@pytest.fixture(scope="module")
def trained(served: tuple[ApiClient, Project]) -> dict[str, Any]:
    client, project = served
    answer = client.call("POST", f"/projects/{project.id}/train")
    assert answer.status == 200, answer.body
    started = answer.json
    assert started["status"] == "Training"
    assert started["trainingType"] == "Regular"
    assert "edgevisionProgress" in started
    done = wait_for(client, f"/projects/{project.id}/iterations/{started['id']}", finished)
    assert done["status"] == "Completed", done
    return {"started": started, "done": done}


def sample_bytes(sample_dir: Path, tag: str = "circle", index: int = 0) -> bytes:
    return sorted((sample_dir / tag).iterdir())[index].read_bytes()


def stored_count(project: Project) -> int:
    from edgevision.store.predictions import list_predictions

    with Project(project.path) as fresh:
        return len(list_predictions(fresh))


# ----------------------------------------------------------------------------- training
def test_train_keeps_the_id_it_answered_and_reports_hosted_fields(served, trained) -> None:
    client, project = served
    started, done = trained["started"], trained["done"]
    assert done["id"] == started["id"]
    assert done["projectId"] == project.id
    assert done["classificationType"] == "Multiclass"
    assert done["trainedAt"] and done["exportable"] is True
    assert {"TensorFlow", "ONNX", "CoreML", "DockerFile"} <= set(done["exportableTo"])
    assert done["domainId"] == "0732100f-1a38-4e49-a514-c9b44c697ab5"  # General (compact)
    assert done["publishName"] is None and done["trainingErrorDetails"] is None
    assert "edgevisionProgress" not in done
    listed = client.call("GET", f"/projects/{project.id}/iterations").json
    assert started["id"] in [it["id"] for it in listed]
    with Project(project.path) as fresh:
        assert fresh.iteration().id == started["id"]


def test_training_again_without_changes_needs_force(served, trained) -> None:
    client, project = served
    answer = client.call("POST", f"/projects/{project.id}/train")
    assert answer.status == 400
    assert answer.json["code"] == "BadRequestTrainingNotNeeded"


def test_too_few_images_is_refused_before_queueing(served) -> None:
    client, _ = served
    with Project.open("tiny", home=client.server.app.home) as tiny:
        tiny_id = tiny.id
    answer = client.call("POST", f"/projects/{tiny_id}/train")
    assert answer.status == 400
    assert answer.json["code"] == "BadRequestTrainingValidationFailed"
    assert "at least 5 images" in answer.json["message"]
    assert client.call("GET", f"/projects/{tiny_id}/iterations").json == []


def test_bad_training_type_and_unknown_project(served) -> None:
    client, project = served
    assert client.call("POST", f"/projects/{project.id}/train?trainingType=Huge").status == 400
    missing = client.call("POST", "/projects/00000000-0000-0000-0000-000000000000/train")
    assert missing.status == 404 and missing.json["code"] == "NotFound"


def test_a_failing_training_is_failed_with_details(served, trained, monkeypatch) -> None:
    client, project = served
    import edgevision.training

    def broken(*args: Any, **kwargs: Any) -> Any:
        kwargs["progress"](0, 1, "about to fail")
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(edgevision.training, "train", broken)
    answer = client.call("POST", f"/projects/{project.id}/train?forceTrain=true")
    assert answer.status == 200, answer.body
    failed = wait_for(client, f"/projects/{project.id}/iterations/{answer.json['id']}", finished, 60)
    assert failed["status"] == "Failed"
    assert "the disk is full" in failed["trainingErrorDetails"]
    assert client.call("GET", f"/projects/{project.id}/iterations/{failed['id']}/performance").json["code"] \
        == "BadRequestIterationNotCompleted"
    assert client.call("DELETE", f"/projects/{project.id}/iterations/{failed['id']}").status == 204
    assert client.call("GET", f"/projects/{project.id}/iterations/{failed['id']}").status == 404


def test_unknown_iteration_is_404(served) -> None:
    client, project = served
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/performance"), ("GET", "/export"),
                         ("POST", "/publish?publishName=x&predictionId=y")):
        answer = client.call(method, f"/projects/{project.id}/iterations/11111111-2222-3333-4444-555555555555{path}")
        assert answer.status == 404, (method, path, answer.body)
        assert answer.json["code"] == "NotFound"


def test_rename_an_iteration(served, trained) -> None:
    client, project = served
    it = trained["done"]["id"]
    answer = client.call("PATCH", f"/projects/{project.id}/iterations/{it}", json_body={"name": "first try"})
    assert answer.status == 200 and answer.json["name"] == "first try"
    assert client.call("GET", f"/projects/{project.id}/iterations/{it}").json["name"] == "first try"
    assert client.call("PATCH", f"/projects/{project.id}/iterations/{it}", json_body={"name": ""}).status == 400


# ----------------------------------------------------------------------------- performance
def test_performance_recomputed_at_two_thresholds(served, trained) -> None:
    client, project = served
    it = trained["done"]["id"]
    low = client.call("GET", f"/projects/{project.id}/iterations/{it}/performance?threshold=0.05").json
    high = client.call("GET", f"/projects/{project.id}/iterations/{it}/performance?threshold=0.95").json
    tags = {t.id: t.name for t in project.tags()}
    assert {t["id"]: t["name"] for t in low["perTagPerformance"]} == tags
    # A lower threshold predicts more tags: recall can only rise, precision usually falls.
    assert sum(t["edgevisionPredicted"] for t in low["perTagPerformance"]) > \
        sum(t["edgevisionPredicted"] for t in high["perTagPerformance"])
    assert low["recall"] >= high["recall"]
    assert low["averagePrecision"] == pytest.approx(high["averagePrecision"])  # AP does not depend on it
    assert low["edgevisionThreshold"] == 0.05 and high["edgevisionThreshold"] == 0.95
    # The same figures as `edgevision evaluate --threshold 0.95`.
    with Project(project.path) as fresh:
        expected = fresh.iteration().evaluate(threshold=0.95)
    assert high["precision"] == pytest.approx(expected.precision, nan_ok=True)
    assert high["recall"] == pytest.approx(expected.recall)
    assert set(high) >= {"precisionStdDeviation", "recallStdDeviation"}
    bad = client.call("GET", f"/projects/{project.id}/iterations/{it}/performance?threshold=2")
    assert bad.status == 400


# ----------------------------------------------------------------------------- publish and predict
@pytest.fixture(scope="module")
def published(served, trained) -> str:
    client, project = served
    it = trained["done"]["id"]
    answer = client.call("POST", f"/projects/{project.id}/iterations/{it}/publish?publishName=shapesModel&predictionId=local")
    assert answer.status == 200 and answer.json is True
    shown = client.call("GET", f"/projects/{project.id}/iterations/{it}").json
    assert shown["publishName"] == "shapesModel" and shown["originalPublishResourceId"] == "local"
    return "shapesModel"


def prediction_path(project: Project, name: str, kind: str = "classify", nostore: bool = False) -> str:
    return f"/customvision/v3.1/prediction/{project.id}/{kind}/iterations/{name}/image" + ("/nostore" if nostore else "")


def test_predict_through_the_published_name_stores_the_image(served, trained, published, sample_dir) -> None:
    client, project = served
    before = stored_count(project)
    answer = client.call("POST", prediction_path(project, published), body=sample_bytes(sample_dir, "circle", 1),
                         headers={"Content-Type": "application/octet-stream"}, training=False)
    assert answer.status == 200, answer.body
    payload = answer.json
    assert payload["project"] == project.id and payload["iteration"] == trained["done"]["id"]
    names = [p["tagName"] for p in payload["predictions"]]
    assert sorted(names) == sorted(t.name for t in project.tags())
    assert sum(p["probability"] for p in payload["predictions"]) == pytest.approx(1.0, abs=1e-3)
    assert payload["predictions"][0]["tagName"] == "circle"
    assert stored_count(project) == before + 1
    from edgevision.store.predictions import get_prediction

    with Project(project.path) as fresh:
        stored = get_prediction(fresh, payload["id"])
    assert stored is not None and stored.iteration_id == trained["done"]["id"]


def test_nostore_stores_nothing(served, published, sample_dir) -> None:
    client, project = served
    before = stored_count(project)
    answer = client.call("POST", prediction_path(project, published, nostore=True),
                         body=sample_bytes(sample_dir, "square", 2), headers={"Content-Type": "image/png"},
                         training=False)
    assert answer.status == 200, answer.body
    assert answer.json["predictions"][0]["tagName"] == "square"
    assert stored_count(project) == before


def test_prediction_route_errors(served, published, sample_dir) -> None:
    client, project = served
    image = sample_bytes(sample_dir)
    detect = client.call("POST", prediction_path(project, published, kind="detect"), body=image,
                         headers={"Content-Type": "application/octet-stream"}, training=False)
    assert detect.status == 400 and detect.json["code"] == "BadRequestNotSupported"
    unknown = client.call("POST", prediction_path(project, "noSuchName"), body=image,
                          headers={"Content-Type": "application/octet-stream"}, training=False)
    assert unknown.status == 404
    garbage = client.call("POST", prediction_path(project, published, nostore=True), body=b"not an image",
                          headers={"Content-Type": "application/octet-stream"}, training=False)
    assert garbage.status == 400 and garbage.json["code"] == "BadRequestImageFormat"


def test_quick_test(served, trained, sample_dir) -> None:
    client, project = served
    before = stored_count(project)
    path = f"/projects/{project.id}/quicktest/image?iterationId={trained['done']['id']}&store=false"
    answer = client.multipart(path, [("a.png", sample_bytes(sample_dir, "triangle", 3))])
    assert answer.status == 200, answer.body
    assert answer.json["predictions"][0]["tagName"] == "triangle"
    assert stored_count(project) == before
    answer = client.multipart(f"/projects/{project.id}/quicktest/image", [("a.png", sample_bytes(sample_dir))])
    assert answer.status == 200 and answer.json["iteration"] == trained["done"]["id"]
    assert stored_count(project) == before + 1


def test_publish_name_clash_overwrite_and_delete_rules(served, trained, published) -> None:
    client, project = served
    answer = client.call("POST", f"/projects/{project.id}/train?forceTrain=true")
    assert answer.status == 200, answer.body
    second = wait_for(client, f"/projects/{project.id}/iterations/{answer.json['id']}", finished)
    assert second["status"] == "Completed", second
    first = trained["done"]["id"]
    base = f"/projects/{project.id}/iterations"
    clash = client.call("POST", f"{base}/{second['id']}/publish?publishName={published}&predictionId=x")
    assert clash.status == 400 and clash.json["code"] == "BadRequestPublishNameNotUnique"
    deleting = client.call("DELETE", f"{base}/{first}")
    assert deleting.status == 400 and deleting.json["code"] == "BadRequestIterationIsPublished"
    moved = client.call("POST", f"{base}/{second['id']}/publish?publishName={published}&predictionId=x&overwrite=true")
    assert moved.status == 200
    assert client.call("GET", f"{base}/{first}").json["publishName"] is None
    assert client.call("GET", f"{base}/{second['id']}").json["publishName"] == published
    assert client.call("DELETE", f"{base}/{second['id']}/publish").status == 204
    assert client.call("DELETE", f"{base}/{second['id']}").status == 204
    assert client.call("GET", f"{base}/{second['id']}").status == 404
    # The first one is still there and can be published again for the tests after this one.
    assert client.call("POST", f"{base}/{first}/publish?publishName={published}&predictionId=x").status == 200


# ----------------------------------------------------------------------------- exports
def test_export_tflite_by_its_hosted_name(served, trained) -> None:
    client, project = served
    it = trained["done"]["id"]
    path = f"/projects/{project.id}/iterations/{it}/export"
    answer = client.call("POST", f"{path}?platform=TensorFlow&flavor=TensorFlowLite")
    assert answer.status == 200, answer.body
    assert answer.json["status"] == "Exporting" and answer.json["platform"] == "TensorFlow"
    assert answer.json["flavor"] == "TensorFlowLite" and answer.json["downloadUri"] is None
    exports = wait_for(client, path, lambda items: all(e["status"] != "Exporting" for e in items), 300)
    (export,) = exports
    assert export["status"] == "Done", export
    assert export["edgevisionFormat"] == "tflite" and export["edgevisionFlavor"] == "float32"
    assert export["edgevisionVerification"]["status"] == "ok"
    assert export["downloadUri"].endswith(f"/edgevision/exports/{project.id}/{it}/tflite-float32.zip")
    again = client.call("POST", f"{path}?platform=TensorFlow&flavor=TensorFlowLite").json
    assert again["status"] == "Done"  # the same export is not redone
    download = client.call("GET", export["downloadUri"].split(str(client.server.server_address[1]), 1)[1], training=False)
    assert download.status == 200 and download.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(download.body)).namelist()
    assert "model.tflite" in names and "labels.txt" in names and "manifest.json" in names


def test_export_errors_and_the_format_list(served, trained) -> None:
    client, project = served
    path = f"/projects/{project.id}/iterations/{trained['done']['id']}/export"
    assert client.call("POST", f"{path}?platform=VAIDK").json["code"] == "BadRequestExportPlatformNotSupported"
    assert client.call("POST", f"{path}?platform=tflite&flavor=huge").status == 400
    assert client.call("POST", f"{path}?platform=tflite&flavor=raw").status == 400  # detectors only
    formats = client.call("GET", "/edgevision/exporters", training=False).json
    tflite = next(f for f in formats if f["name"] == "tflite")
    assert "int8" in tflite["flavors"]
    assert {"platform": "TensorFlow", "flavor": "TensorFlowLite", "edgevisionFlavor": "float32"} in tflite["hosted"]


# ----------------------------------------------------------------------------- shutdown
def test_stopping_during_training_records_no_iteration(tmp_path: Path, sample_dir: Path) -> None:
    home = tmp_path / "home"
    with Project.create("stopping", "multiclass", home=home) as project:
        project.import_folder(sample_dir)
        project_id, path = project.id, project.path
    server, thread = start_server(home)
    client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", server)
    try:
        started = client.call("POST", f"/projects/{project_id}/train").json
        wait_for(client, f"/projects/{project_id}/iterations/{started['id']}",
                 lambda it: it.get("edgevisionProgress", {}).get("stage") not in ("queued", "starting"), 120)
    finally:
        stop_server(server, thread)
    with Project(path) as project:
        assert project.iterations() == []
    assert not [p for p in (path / "iterations").iterdir() if p.name.startswith(".staging")]
    server, thread = start_server(home)
    client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", server)
    try:
        (listed,) = client.call("GET", f"/projects/{project_id}/iterations").json
        assert listed["id"] == started["id"] and listed["status"] == "Failed"
        assert "stopped" in listed["trainingErrorDetails"]
    finally:
        stop_server(server, thread)


def test_trainings_queue_one_at_a_time(served, trained, sample_dir, monkeypatch) -> None:
    import threading

    import edgevision.training

    client, project = served
    with Project.create("queued", "multiclass", home=client.server.app.home) as other:
        other.import_folder(sample_dir)
        other_id = other.id
    release = threading.Event()
    calls: list[str] = []

    def waiting(p: Any, mode: str, **kwargs: Any) -> Any:
        calls.append(p.name)
        kwargs["progress"](1, 2, "waiting for the test")
        assert release.wait(60)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(edgevision.training, "train", waiting)
    first = client.call("POST", f"/projects/{project.id}/train?forceTrain=true").json
    second = client.call("POST", f"/projects/{other_id}/train").json
    try:
        wait_for(client, f"/projects/{project.id}/iterations/{first['id']}",
                 lambda it: it["edgevisionProgress"]["stage"] == "waiting for the test", 30)
        again = client.call("POST", f"/projects/{project.id}/train?forceTrain=true")
        assert again.status == 400 and again.json["code"] == "BadRequestTrainingAlreadyInProgress"
        queued = client.call("GET", f"/projects/{other_id}/iterations/{second['id']}").json
        assert queued["status"] == "Training"
        assert queued["edgevisionProgress"] == {"done": 0, "total": 0, "stage": "queued", "ahead": 1}
        assert calls == ["shapes"]
    finally:
        release.set()
    for pid, it in ((project.id, first["id"]), (other_id, second["id"])):
        assert wait_for(client, f"/projects/{pid}/iterations/{it}", finished, 60)["status"] == "Failed"
        assert client.call("DELETE", f"/projects/{pid}/iterations/{it}").status == 204
    assert calls == ["shapes", "queued"]


def test_image_performances(served, trained) -> None:
    client, project = served
    path = f"/projects/{project.id}/iterations/{trained['done']['id']}/performance/images"
    count = client.call("GET", f"{path}/count").json
    assert count == 24  # quick training scores every image out of fold
    page = client.call("GET", f"{path}?take=5&skip=2").json
    assert len(page) == 5
    first = page[0]
    assert first["imageUri"].endswith(f"/images/{first['id']}/original")
    assert len(first["tags"]) == 1 and len(first["predictions"]) == 4
    circle = next(t.id for t in project.tags() if t.name == "circle")
    only = client.call("GET", f"{path}?tagIds={circle}&take=100").json
    assert len(only) == 6 and all(i["tags"][0]["tagName"] == "circle" for i in only)
    assert client.call("GET", f"{path}/count?tagIds={circle}").json == 6


def test_train_refuses_a_bad_or_taken_iteration_id(served, trained) -> None:
    from edgevision.errors import UsageError
    from edgevision.training import train

    _, project = served
    with Project(project.path) as fresh:
        with pytest.raises(UsageError, match="not a UUID"):
            train(fresh, "quick", iteration_id="iteration-7")
        with pytest.raises(UsageError, match="already has an iteration"):
            train(fresh, "quick", iteration_id=trained["done"]["id"].upper())


def test_int8_ready_training(served, trained) -> None:
    """``edgevisionInt8Ready=true`` trains like ``edgevision train --int8-ready`` (last here: it adds an iteration)."""
    client, project = served
    bad = client.call("POST", f"/projects/{project.id}/train?edgevisionInt8Ready=maybe")
    assert bad.status == 400 and "edgevisionInt8Ready" in bad.json["message"]
    advanced = client.call("POST", f"/projects/{project.id}/train?trainingType=Advanced&edgevisionInt8Ready=true")
    assert advanced.status == 400 and advanced.json["code"] == "BadRequestNotSupported"
    assert "quick mode only" in advanced.json["message"]
    answer = client.call("POST", f"/projects/{project.id}/train?edgevisionInt8Ready=true")  # differs from the last
    assert answer.status == 200, answer.body
    assert answer.json["status"] == "Training" and answer.json["edgevisionInt8Ready"] is True
    done = wait_for(client, f"/projects/{project.id}/iterations/{answer.json['id']}", finished)
    assert done["status"] == "Completed" and done["edgevisionInt8Ready"] is True, done
    with Project(project.path) as fresh:
        assert fresh.iteration().info["int8_ready"]["views"] == ["hflip", "int8", "int8-hflip"]
    again = client.call("POST", f"/projects/{project.id}/train?edgevisionInt8Ready=true")
    assert again.status == 400 and again.json["code"] == "BadRequestTrainingNotNeeded"
    listed = {it["id"]: it for it in client.call("GET", f"/projects/{project.id}/iterations").json}
    assert listed[trained["started"]["id"]]["edgevisionInt8Ready"] is False
