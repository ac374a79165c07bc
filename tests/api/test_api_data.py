"""Training API data routes against a running server: projects, domains, tags, images, regions,
image files, stored predictions, errors and keys; and the hosted service's training SDK driving them."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgevision.api import make_api_server
from edgevision.store import predictions as stored
from edgevision.store.project import Project

from tests.api.conftest import ApiClient, start_server, stop_server

GENERAL_COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
DETECTION_COMPACT = "a27d5ca5-bb19-49d8-a70a-fec086c47f5b"


def image_bytes(color: Any = "red", size: tuple[int, int] = (64, 48), fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt, **save)
    return buffer.getvalue()


def make_project(api: ApiClient, name: str = "p", **query: str) -> dict[str, Any]:
    qs = urllib.parse.urlencode({"name": name, **query})
    answer = api.call("POST", f"/projects?{qs}")
    assert answer.status == 200, answer.body
    return answer.json


def make_tag(api: ApiClient, pid: str, name: str, **query: str) -> dict[str, Any]:
    qs = urllib.parse.urlencode({"name": name, **query})
    answer = api.call("POST", f"/projects/{pid}/tags?{qs}")
    assert answer.status == 200, answer.body
    return answer.json


def upload(api: ApiClient, pid: str, images: list[dict[str, Any]], tag_ids: list[str] | None = None) -> Any:
    entries = [{**e, "contents": base64.b64encode(e["contents"]).decode() if isinstance(e["contents"], bytes)
                else e["contents"]} for e in images]
    body: dict[str, Any] = {"images": entries}
    if tag_ids:
        body["tagIds"] = tag_ids
    return api.call("POST", f"/projects/{pid}/images/files", json_body=body)


def error_of(answer: Any) -> tuple[int, str, str]:
    body = answer.json
    assert set(body) == {"code", "message"}, body
    return answer.status, body["code"], body["message"]


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()



# ---------------------------------------------------------------------------- domains
def test_domains_list_and_get(api: ApiClient) -> None:
    domains = api.call("GET", "/domains").json
    ids = {d["id"]: d for d in domains}
    assert ids[GENERAL_COMPACT]["name"] == "General (compact)" and ids[GENERAL_COMPACT]["type"] == "Classification"
    assert ids[DETECTION_COMPACT]["type"] == "ObjectDetection"
    assert all({"id", "name", "type", "exportable", "enabled", "exportablePlatforms", "modelInformation"} <= set(d)
               for d in domains)
    assert api.call("GET", f"/domains/{DETECTION_COMPACT}").json["id"] == DETECTION_COMPACT
    assert error_of(api.call("GET", f"/domains/{uuid.uuid4()}"))[:2] == (404, "NotFoundDomain")


# ---------------------------------------------------------------------------- projects
def test_project_create_get_list_patch_delete(api: ApiClient, home: Path) -> None:
    project = make_project(api, "Mes chats & chiens!", description="d", classificationType="Multilabel",
                           targetExportPlatforms="TensorFlow,ONNX")
    assert project["name"] == "Mes chats & chiens!"
    assert project["settings"]["classificationType"] == "Multilabel"
    assert project["settings"]["domainId"] == GENERAL_COMPACT
    assert project["settings"]["targetExportPlatforms"] == ["TensorFlow", "ONNX"]
    assert {"id", "name", "description", "settings", "created", "lastModified", "status"} <= set(project)
    uuid.UUID(project["id"])
    folder = project["edgevisionName"]
    assert folder == "Mes-chats-chiens" and (home / "projects" / folder / "project.sqlite").is_file()

    assert error_of(api.call("POST", "/projects?name=mes%20CHATS%20%26%20chiens!"))[:2] == (
        400, "BadRequestProjectNameNotUnique")
    assert error_of(api.call("POST", "/projects?name="))[:2] == (400, "BadRequestProjectName")
    assert error_of(api.call("POST", "/projects?name=x&classificationType=Both"))[:2] == (
        400, "BadRequestProjectUnknownClassification")
    assert error_of(api.call("POST", f"/projects?name=x&domainId={uuid.uuid4()}"))[:2] == (400, "BadRequestDomainInvalid")
    assert error_of(api.call("POST", "/projects?name=x&targetExportPlatforms=VAIDK"))[:2] == (
        400, "BadRequestProjectUnsupportedExportPlatform")

    detection = make_project(api, "cars", domainId=DETECTION_COMPACT)
    assert detection["settings"]["classificationType"] is None and detection["edgevisionType"] == "detection"
    # The same display-name-derived folder is taken: the next one gets a suffix.
    other = make_project(api, "Mes chats chiens")
    assert other["edgevisionName"] == "Mes-chats-chiens-2"

    listed = {p["id"]: p for p in api.call("GET", "/projects").json}
    assert set(listed) == {project["id"], detection["id"], other["id"]}
    assert api.call("GET", f"/projects/{project['id']}").json["name"] == "Mes chats & chiens!"

    patched = api.call("PATCH", f"/projects/{project['id']}", json_body={
        "name": "Cats", "description": "new", "settings": {"classificationType": "Multiclass"}}).json
    assert (patched["name"], patched["description"], patched["settings"]["classificationType"]) == (
        "Cats", "new", "Multiclass")
    assert patched["edgevisionName"] == folder  # the folder keeps its name
    assert error_of(api.call("PATCH", f"/projects/{project['id']}",
                             json_body={"settings": {"domainId": DETECTION_COMPACT}}))[:2] == (
        400, "BadRequestProjectUnsupportedDomainTypeChange")
    assert error_of(api.call("PATCH", f"/projects/{project['id']}", json_body={"name": "cars"}))[:2] == (
        400, "BadRequestProjectNameNotUnique")

    assert api.call("DELETE", f"/projects/{project['id']}").status == 204
    assert not (home / "projects" / folder).exists()
    assert error_of(api.call("GET", f"/projects/{project['id']}"))[:2] == (404, "NotFound")
    assert project["id"] not in {p["id"] for p in api.call("GET", "/projects").json}
    assert make_project(api, "Cats")["name"] == "Cats"  # the name is free again


def test_folder_names_from_any_display_name(api: ApiClient) -> None:
    for name, folder in (("!!!", "project"), ("日本の猫", "project-2"), ("Café crème", "Cafe-creme"),
                         ("../../etc", "etc"), ("a" * 100, "a" * 56)):
        made = make_project(api, name)
        assert (made["name"], made["edgevisionName"]) == (name, folder)
    assert error_of(api.call("POST", "/projects?name=tab%09name"))[:2] == (400, "BadRequestProjectName")


def test_cli_made_projects_are_listed(api: ApiClient, home: Path) -> None:
    Project.create("flowers", "multilabel", home=home).close()
    (listed,) = api.call("GET", "/projects").json
    assert listed["name"] == "flowers" and listed["settings"]["classificationType"] == "Multilabel"


# ---------------------------------------------------------------------------- tags
def test_tags(api: ApiClient) -> None:
    pid = make_project(api)["id"]
    cat = make_tag(api, pid, "cat", description="meow")
    assert {k: cat[k] for k in ("name", "description", "type", "imageCount")} == {
        "name": "cat", "description": "meow", "type": "Regular", "imageCount": 0}
    assert error_of(api.call("POST", f"/projects/{pid}/tags?name=CAT"))[:2] == (400, "BadRequestTagNameNotUnique")
    assert error_of(api.call("POST", f"/projects/{pid}/tags?name=a%2Fb"))[:2] == (400, "BadRequestTagName")
    assert error_of(api.call("POST", f"/projects/{pid}/tags?name=x&type=GeneralProduct"))[:2] == (400, "BadRequestTagType")
    assert error_of(api.call("POST", f"/projects/{pid}/tags?name=Negative"))[:2] == (400, "BadRequestTagName")
    assert make_tag(api, pid, "Negative", type="Negative")["type"] == "Negative"

    assert api.call("GET", f"/projects/{pid}/tags/{cat['id']}").json["description"] == "meow"
    renamed = api.call("PATCH", f"/projects/{pid}/tags/{cat['id']}", json_body={"name": "kitty", "description": ""}).json
    assert (renamed["id"], renamed["name"], renamed["description"]) == (cat["id"], "kitty", "")
    assert sorted(t["name"] for t in api.call("GET", f"/projects/{pid}/tags").json) == ["Negative", "kitty"]
    assert api.call("DELETE", f"/projects/{pid}/tags/{cat['id']}").status == 204
    assert error_of(api.call("GET", f"/projects/{pid}/tags/{cat['id']}"))[:2] == (404, "NotFoundTag")
    assert error_of(api.call("GET", f"/projects/{pid}/tags?iterationId={uuid.uuid4()}"))[:2] == (
        400, "BadRequestNotSupported")


# ---------------------------------------------------------------------------- uploads
def test_multipart_upload_statuses(api: ApiClient, home: Path) -> None:
    pid = make_project(api)["id"]
    tag = make_tag(api, pid, "red")
    big = Image.effect_noise((1800, 1800), 100).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, "BMP")  # ~9.7 MB
    files = [
        ("ok.png", image_bytes("red")),
        ("../../../escape.png", image_bytes("blue")),
        ("..\\..\\win.png", image_bytes("navy")),
        ("again.png", image_bytes("red")),
        ("corrupt.jpg", image_bytes("red", fmt="JPEG")[:200]),
        ("text.txt", b"hello, not an image"),
        ("thin.png", image_bytes("red", size=(520, 20))),
        ("huge.bmp", buffer.getvalue()),
    ]
    answer = api.multipart(f"/projects/{pid}/images?tagIds={tag['id']}", files)
    assert answer.status == 207
    summary = answer.json
    assert summary["isBatchSuccessful"] is False
    statuses = [r["status"] for r in summary["images"]]
    assert statuses == ["OK", "OK", "OK", "OKDuplicate", "ErrorImageFormat", "ErrorImageFormat", "ErrorImageDimensions",
                        "ErrorImageSize"]
    assert "6 MB" in summary["images"][7]["edgevisionMessage"]
    first, escaped, windows, duplicate = (r["image"] for r in summary["images"][:4])
    assert windows["edgevisionName"] == "win.png"
    assert duplicate["id"] == first["id"]
    assert first["tags"][0]["tagId"] == tag["id"] and (first["width"], first["height"]) == (64, 48)
    assert escaped["edgevisionName"] == "escape.png"
    assert not (home.parent / "escape.png").exists() and not list(home.rglob("escape.png"))
    assert api.call("GET", f"/projects/{pid}/images/tagged/count").json == 3

    # One raw image body (application/octet-stream), as the hosted service also accepts.
    raw = api.call("POST", f"/projects/{pid}/images", body=image_bytes("green"),
                   headers={"Content-Type": "application/octet-stream"})
    assert raw.status == 200 and raw.json["isBatchSuccessful"] is True
    assert error_of(api.call("POST", f"/projects/{pid}/images", body=b"x", headers={"Content-Type": "text/plain"}))[
        :2] == (415, "UnsupportedMediaType")
    assert error_of(api.call("POST", f"/projects/{pid}/images?tagIds=nope", body=image_bytes(),
                             headers={"Content-Type": "image/png"}))[:2] == (400, "BadRequestInvalidIds")


def test_multipart_batch_of_64(api: ApiClient) -> None:
    pid = make_project(api)["id"]
    files = [(f"{n}.png", image_bytes((n, 1, 2), size=(8, 8))) for n in range(65)]
    assert error_of(api.multipart(f"/projects/{pid}/images", files))[:2] == (400, "BadRequestImageBatch")
    answer = api.multipart(f"/projects/{pid}/images", files[:64])
    assert answer.status == 200 and len(answer.json["images"]) == 64


def test_files_batch_statuses(api: ApiClient) -> None:
    pid = make_project(api)["id"]
    a, b = make_tag(api, pid, "a"), make_tag(api, pid, "b")
    neg = make_tag(api, pid, "Negative", type="Negative")
    answer = upload(api, pid, [
        {"name": "1.png", "contents": image_bytes("red"), "tagIds": [a["id"]]},
        {"name": "2.png", "contents": "%%% not base64 %%%"},
        {"name": "3.png", "contents": image_bytes("blue"), "tagIds": [str(uuid.uuid4())]},
        {"name": "4.png", "contents": image_bytes("green"), "tagIds": [a["id"], b["id"]]},
        {"name": "5.png", "contents": image_bytes("white"), "tagIds": [neg["id"], b["id"]]},
        {"name": "6.png", "contents": image_bytes("black")},
    ])
    assert answer.status == 207
    assert [r["status"] for r in answer.json["images"]] == [
        "OK", "ErrorSource", "ErrorInvalidTag", "ErrorTagLimitExceed", "ErrorNegativeAndRegularTagOnSameImage", "OK"]
    assert answer.json["images"][0]["sourceUrl"] == "1.png"
    wrapped = base64.encodebytes(image_bytes("cyan")).decode()  # base64 in 76-character lines
    assert "\n" in wrapped and upload(api, pid, [{"name": "w.png", "contents": wrapped}]).status == 200
    ok = upload(api, pid, [{"name": "7.png", "contents": image_bytes("yellow")}], tag_ids=[b["id"]])
    assert ok.status == 200 and ok.json["isBatchSuccessful"] is True
    assert ok.json["images"][0]["image"]["tags"][0]["tagName"] == "b"

    # Metadata: given with a batch, updated with images/metadata (at most 10 entries of 128/256 characters).
    tagged = upload(api, pid, [{"name": "m.png", "contents": image_bytes("orange")}], tag_ids=[a["id"]])
    tagged_id = tagged.json["images"][0]["image"]["id"]
    body = {"images": [{"name": "m2.png", "contents": base64.b64encode(image_bytes("purple")).decode()}],
            "metadata": {"camera": "door"}}
    with_meta = api.call("POST", f"/projects/{pid}/images/files", json_body=body).json["images"][0]["image"]
    assert with_meta["metadata"] == {"camera": "door"}
    updated = api.call("POST", f"/projects/{pid}/images/metadata?imageIds={with_meta['id']},{uuid.uuid4()}",
                       json_body={"site": "north"})
    assert updated.status == 207 and not updated.json["isBatchSuccessful"]
    assert [e["status"] for e in updated.json["images"]] == ["OK", "ErrorImageNotFound"]
    assert updated.json["images"][0]["metadata"] == {"camera": "door", "site": "north"}
    full = api.call("POST", f"/projects/{pid}/images/metadata?imageIds={tagged_id}",
                    json_body={f"k{n}": "v" for n in range(10)})
    assert full.status == 200
    assert api.call("POST", f"/projects/{pid}/images/metadata?imageIds={tagged_id}",
                    json_body={"k11": "v"}).json["images"][0]["status"] == "ErrorLimitExceed"
    assert error_of(api.call("POST", f"/projects/{pid}/images/metadata?imageIds={tagged_id}",
                             json_body={"k": 1}))[:2] == (400, "BadRequestImageMetadataValue")
    assert api.call("GET", f"/projects/{pid}/images/id?imageIds={with_meta['id']}").json[0]["metadata"] == {
        "camera": "door", "site": "north"}

    too_many = upload(api, pid, [{"name": f"{n}.png", "contents": image_bytes((n, 0, 0))} for n in range(65)])
    assert error_of(too_many)[:2] == (400, "BadRequestImageBatch")
    assert error_of(api.call("POST", f"/projects/{pid}/images/files", body=b"{not json",
                             headers={"Content-Type": "application/json"}))[:2] == (400, "BadRequest")
    assert error_of(api.call("POST", f"/projects/{pid}/images/files", json_body={"images": "x"}))[:2] == (
        400, "BadRequestImageBatch")
    # Regions in a classification project: the call is refused whole, nothing stored.
    refused = upload(api, pid, [{"name": "r.png", "contents": image_bytes((1, 2, 3)),
                                 "regions": [{"tagId": a["id"], "left": 0, "top": 0, "width": 1, "height": 1}]}])
    assert error_of(refused)[:2] == (400, "BadRequestImageRegions")
    assert api.call("GET", f"/projects/{pid}/images/count").json == 6


def test_detection_uploads_and_regions(api: ApiClient) -> None:
    pid = make_project(api, "cars", domainId=DETECTION_COMPACT)["id"]
    car = make_tag(api, pid, "car")
    box = {"tagId": car["id"], "left": 0.1, "top": 0.2, "width": 0.3, "height": 0.4}
    answer = upload(api, pid, [
        {"name": "1.png", "contents": image_bytes("red"), "regions": [box]},
        {"name": "2.png", "contents": image_bytes("blue")},
        {"name": "3.png", "contents": image_bytes("green"), "regions": [box] * 301},
        {"name": "4.png", "contents": image_bytes("white"), "tagIds": [car["id"]]},
    ])
    assert [r["status"] for r in answer.json["images"]] == ["OK", "OK", "ErrorRegionLimitExceed", "ErrorInvalidTag"]
    image = answer.json["images"][0]["image"]
    (region,) = image["regions"]
    assert (region["tagId"], region["tagName"], region["left"], region["height"]) == (car["id"], "car", 0.1, 0.4)
    assert image["tags"][0]["tagName"] == "car"  # a detection image's tags are its regions' tags
    background = answer.json["images"][1]["image"]["id"]
    assert api.call("GET", f"/projects/{pid}/images/untagged").json[0]["id"] == background
    assert api.call("GET", f"/projects/{pid}/tags/{car['id']}").json["imageCount"] == 1

    bad_box = upload(api, pid, [{"name": "5.png", "contents": image_bytes("black"), "regions": [{**box, "left": 0.9}]}])
    status, code, message = error_of(bad_box)
    assert (status, code) == (400, "BadRequestImageRegions") and "not inside the image" in message

    created = api.call("POST", f"/projects/{pid}/images/regions", json_body={"regions": [
        {"imageId": background, "tagId": car["id"], "left": 0.5, "top": 0.5, "width": 0.5, "height": 0.5},
        {"imageId": background, "tagId": car["id"], "left": 0.5, "top": 0.5, "width": 0.5, "height": 0.5},
        {"imageId": image["id"], **{k: box[k] for k in ("tagId", "left", "top", "width", "height")}},
    ]}).json
    assert (len(created["created"]), len(created["duplicated"]), len(created["exceeded"])) == (1, 2, 0)
    new_region = created["created"][0]
    assert new_region["tagName"] == "car" and uuid.UUID(new_region["regionId"])
    assert api.call("GET", f"/projects/{pid}/images/untagged/count").json == 0

    for body, code in (
        ({"regions": [{"imageId": background, "tagId": car["id"], "left": 0.5, "top": 0.5, "width": 0.6, "height": 0.1}]},
         "BadRequestImageRegions"),
        ({"regions": [{"imageId": str(uuid.uuid4()), "tagId": car["id"], "left": 0, "top": 0, "width": 1, "height": 1}]},
         "BadRequestInvalidIds"),
        ({"regions": [{"imageId": background, "tagId": car["id"], "left": "0", "top": 0, "width": 1, "height": 1}]},
         "BadRequestImageRegions"),
        ({"regions": []}, "BadRequest"),
    ):
        assert error_of(api.call("POST", f"/projects/{pid}/images/regions", json_body=body))[:2] == (400, code)
    assert api.call("DELETE", f"/projects/{pid}/images/regions?regionIds={new_region['regionId']}").status == 204
    assert api.call("GET", f"/projects/{pid}/images/untagged/count").json == 1
    assert error_of(api.call("DELETE", f"/projects/{pid}/images/regions"))[:2] == (400, "BadRequestRequiredParamIsNull")
    # Whole-image tags do not exist in a detection project.
    assert error_of(api.call("POST", f"/projects/{pid}/images/tags", json_body={
        "tags": [{"imageId": background, "tagId": car["id"]}]}))[:2] == (400, "BadRequestImageTags")


# ---------------------------------------------------------------------------- listing, tagging, deleting
def test_listing_tagging_and_deleting(api: ApiClient) -> None:
    pid = make_project(api, classificationType="Multiclass")["id"]
    a, b = make_tag(api, pid, "a"), make_tag(api, pid, "b")
    neg = make_tag(api, pid, "Negative", type="Negative")
    ids = []
    for n in range(5):
        answer = upload(api, pid, [{"name": f"{n}.png", "contents": image_bytes((n * 40, 0, 0))}],
                        tag_ids=[a["id"]] if n < 2 else ([b["id"]] if n == 2 else None))
        ids.append(answer.json["images"][0]["image"]["id"])
    newest = [i["id"] for i in api.call("GET", f"/projects/{pid}/images/tagged").json]
    assert newest == [ids[2], ids[1], ids[0]]
    assert [i["id"] for i in api.call("GET", f"/projects/{pid}/images/tagged?orderBy=Oldest&take=2&skip=1").json] == [
        ids[1], ids[2]]
    assert [i["id"] for i in api.call("GET", f"/projects/{pid}/images/tagged?tagIds={b['id']}").json] == [ids[2]]
    assert api.call("GET", f"/projects/{pid}/images/tagged/count?tagIds={a['id']},{b['id']}").json == 3
    assert [i["id"] for i in api.call("GET", f"/projects/{pid}/images/untagged?orderBy=Oldest").json] == ids[3:]
    assert api.call("GET", f"/projects/{pid}/images?taggingStatus=Untagged").json[0]["id"] == ids[4]
    assert api.call("GET", f"/projects/{pid}/images/count?taggingStatus=Tagged").json == 3
    by_id = api.call("GET", f"/projects/{pid}/images/id?imageIds={ids[4]},{ids[0]},{uuid.uuid4()}").json
    assert [i["id"] for i in by_id] == [ids[4], ids[0]]
    for query, code in (("take=257", "BadRequest"), ("take=x", "BadRequest"), ("orderBy=Biggest", "BadRequest"),
                        ("tagIds=not-an-id", "BadRequestInvalidIds")):
        assert error_of(api.call("GET", f"/projects/{pid}/images/tagged?{query}"))[:2] == (400, code)

    summary = api.call("POST", f"/projects/{pid}/images/tags", json_body={"tags": [
        {"imageId": ids[3], "tagId": b["id"]},
        {"imageId": ids[0], "tagId": a["id"]},   # already there
        {"imageId": ids[1], "tagId": b["id"]},   # multiclass: a second tag exceeds the limit
    ]}).json
    assert [len(summary[k]) for k in ("created", "duplicated", "exceeded")] == [1, 1, 1]
    assert summary["created"] == [{"imageId": ids[3], "tagId": b["id"]}]
    conflict = api.call("POST", f"/projects/{pid}/images/tags", json_body={"tags": [
        {"imageId": ids[4], "tagId": a["id"]}, {"imageId": ids[3], "tagId": neg["id"]}]})
    assert error_of(conflict)[:2] == (400, "BadRequestNegativeAndRegularTagOnSameImage")
    assert api.call("GET", f"/projects/{pid}/images/untagged/count").json == 1  # ids[4] was not tagged either
    assert error_of(api.call("POST", f"/projects/{pid}/images/tags", json_body={"tags": [
        {"imageId": ids[4], "tagId": str(uuid.uuid4())}]}))[:2] == (400, "BadRequestInvalidIds")

    assert api.call("DELETE", f"/projects/{pid}/images/tags?imageIds={ids[3]}&tagIds={b['id']}").status == 204
    assert api.call("GET", f"/projects/{pid}/images/untagged/count").json == 2
    assert api.call("GET", f"/projects/{pid}/tags/{a['id']}").json["imageCount"] == 2

    assert api.call("DELETE", f"/projects/{pid}/images?imageIds={ids[0]},{uuid.uuid4()}").status == 204
    assert api.call("GET", f"/projects/{pid}/images/count").json == 4
    assert error_of(api.call("DELETE", f"/projects/{pid}/images"))[:2] == (400, "BadRequestRequiredParamIsNull")
    assert api.call("DELETE", f"/projects/{pid}/images?allImages=true").status == 204
    assert api.call("GET", f"/projects/{pid}/images/count").json == 0


# ---------------------------------------------------------------------------- image files
def test_image_files(api: ApiClient) -> None:
    pid = make_project(api)["id"]
    # A landscape JPEG whose EXIF says "rotate 90°": shown (and previewed) as portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = image_bytes("red", size=(2000, 1000), fmt="JPEG", exif=exif.tobytes())
    answer = upload(api, pid, [{"name": "r.jpg", "contents": rotated}])
    image = answer.json["images"][0]["image"]
    assert (image["width"], image["height"]) == (1000, 2000)
    status, headers, body = fetch(image["originalImageUri"])
    assert status == 200 and body == rotated and headers["Content-Type"] == "image/jpeg"
    for key, side in (("thumbnailUri", 320), ("resizedImageUri", 1024)):
        status, headers, body = fetch(image[key])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(body)) as preview:
            assert preview.size == (side // 2, side)
        assert fetch(image[key], {"If-None-Match": headers["ETag"]})[0] == 304
    base = f"{api.base}/edgevision/projects/{pid}/images"
    assert fetch(f"{base}/{image['id']}/huge")[0] == 404
    assert fetch(f"{base}/{uuid.uuid4()}/original")[0] == 404
    assert fetch(f"{base}/..%2F..%2Fproject.sqlite/original")[0] == 404
    assert fetch(f"{api.base}/edgevision/projects/{uuid.uuid4()}/images/{image['id']}/original")[0] == 404


# ---------------------------------------------------------------------------- stored predictions
def test_uncertainty() -> None:
    assert stored.uncertainty("multiclass", [{"probability": 0.5}, {"probability": 0.5}]) == pytest.approx(1.0)
    assert stored.uncertainty("multiclass", [{"probability": 0.9}, {"probability": 0.1}]) == pytest.approx(0.2)
    assert stored.uncertainty("multilabel", [{"probability": 0.99}, {"probability": 0.6}]) == pytest.approx(0.8)
    assert stored.uncertainty("detection", []) == 0.0


def test_stored_predictions(api: ApiClient, home: Path) -> None:
    pid = make_project(api, "review")["id"]
    a, b = make_tag(api, pid, "a"), make_tag(api, pid, "b")
    iteration = str(uuid.uuid4())
    project = Project.open(api.call("GET", f"/projects/{pid}").json["edgevisionName"], home=home)

    def said(pa: float) -> list[dict[str, Any]]:
        return [{"probability": pa, "tagId": a["id"], "tagName": "a"},
                {"probability": 1 - pa, "tagId": b["id"], "tagName": "b"}]

    sure = stored.store_prediction(project, image_bytes("red"), iteration_id=iteration, predictions=said(0.95))
    unsure = stored.store_prediction(project, image_bytes("blue"), iteration_id=iteration, predictions=said(0.55))
    other = stored.store_prediction(project, image_bytes("red"), iteration_id=str(uuid.uuid4()), predictions=said(0.3))
    with pytest.raises(Exception, match="cannot be read"):
        stored.store_prediction(project, b"junk", iteration_id=iteration, predictions=[])
    project.close()

    query = f"/projects/{pid}/predictions/query"
    newest = api.call("POST", query, json_body={}).json
    assert [r["id"] for r in newest["results"]] == [other, unsure, sure]
    assert newest["token"]["continuation"] is None
    first = newest["results"][2]
    assert {"id", "project", "iteration", "created", "predictions", "originalImageUri", "thumbnailUri",
            "resizedImageUri", "domain"} <= set(first)
    assert first["project"] == pid and first["iteration"] == iteration and first["domain"] == GENERAL_COMPACT
    assert first["predictions"][0] == {"probability": 0.95, "tagId": a["id"], "tagName": "a", "boundingBox": None,
                                       "tagType": "Regular"}
    assert fetch(first["originalImageUri"])[2] == image_bytes("red")
    assert fetch(first["thumbnailUri"])[0] == 200

    suggested = api.call("POST", query, json_body={"orderBy": "Suggested", "maxCount": 2}).json
    assert [r["id"] for r in suggested["results"]] == [unsure, other]
    assert suggested["token"]["continuation"] == "2"
    rest = api.call("POST", query, json_body=suggested["token"]).json
    assert [r["id"] for r in rest["results"]] == [sure] and rest["token"]["continuation"] is None
    assert [r["id"] for r in api.call("POST", query, json_body={"iterationId": iteration, "orderBy": "Oldest"}).json[
        "results"]] == [sure, unsure]
    # Time windows: any ISO 8601 form (Z, an offset, no offset = UTC) is the instant it names.
    created = {r["id"]: _dt.datetime.fromisoformat(r["created"]) for r in newest["results"]}
    ms = _dt.timedelta(milliseconds=1)
    after_sure = (created[sure] + ms).astimezone(_dt.timezone(_dt.timedelta(hours=5)))
    window = api.call("POST", query, json_body={"orderBy": "Oldest", "startTime": after_sure.isoformat(),
                                                 "endTime": (created[other] + ms).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    assert [r["id"] for r in window.json["results"]] == [x for x in (unsure, other) if created[x] > created[sure]]
    naive = (created[other] + _dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert api.call("POST", query, json_body={"startTime": naive}).json["results"] == []
    filtered = api.call("POST", query, json_body={"tags": [{"id": a["id"], "minThreshold": 0.5, "maxThreshold": 0.9}]})
    assert [r["id"] for r in filtered.json["results"]] == [unsure]
    for body, code in (({"orderBy": "Best"}, "BadRequestPredictionInvalidQueryParameters"),
                       ({"maxCount": 1000}, "BadRequestPredictionResultsExceededCount"),
                       ({"continuation": "abc"}, "BadRequestPredictionInvalidQueryParameters"),
                       ({"startTime": "yesterday"}, "BadRequestPredictionInvalidQueryParameters"),
                       ({"endTime": 1700000000}, "BadRequestPredictionInvalidQueryParameters"),
                       ({"startTime": "0001-01-01T00:00:00+05:00"}, "BadRequestPredictionInvalidQueryParameters")):
        assert error_of(api.call("POST", query, json_body=body))[:2] == (400, code)

    # Add the unsure one to the training set with its right tag; an unknown id gets ErrorSource.
    added = api.call("POST", f"/projects/{pid}/images/predictions", json_body={"images": [
        {"id": unsure, "tagIds": [b["id"]]}, {"id": str(uuid.uuid4())}]})
    assert added.status == 207
    assert [r["status"] for r in added.json["images"]] == ["OK", "ErrorSource"]
    assert added.json["images"][0]["image"]["tags"][0]["tagId"] == b["id"]
    assert fetch(added.json["images"][0]["image"]["originalImageUri"])[2] == image_bytes("blue")

    previews = home / "projects" / "review" / "previews"
    assert [p for p in previews.rglob("*.jpg")]  # the red thumbnail fetched above
    assert api.call("DELETE", f"/projects/{pid}/predictions?ids={sure}").status == 204
    assert [p for p in previews.rglob("*.jpg")]  # `other` is red too: its preview stays
    assert api.call("DELETE", f"/projects/{pid}/predictions?ids={other}").status == 204
    assert [r["id"] for r in api.call("POST", query, json_body={}).json["results"]] == [unsure]
    folder = home / "projects" / "review" / "predictions"
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 1  # the red file went with its last prediction
    assert not [p for p in previews.rglob("*.jpg")]  # and so did its cached previews
    assert error_of(api.call("DELETE", f"/projects/{pid}/predictions"))[:2] == (400, "BadRequestPredictionIdsMissing")


def test_concurrent_uploads_and_previews(api: ApiClient) -> None:
    pid = make_project(api)["id"]
    tag = make_tag(api, pid, "t")
    failures: list[Any] = []

    def work(n: int) -> None:
        try:
            answer = upload(api, pid, [{"name": f"{n}-{k}.png", "contents": image_bytes((n, k, 7), size=(400, 300))}
                                       for k in range(3)], tag_ids=[tag["id"]])
            assert answer.status == 200, answer.body
            for result in answer.json["images"]:
                assert fetch(result["image"]["thumbnailUri"])[0] == 200
        except BaseException as exc:  # reported below: an assert in a thread would be lost
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert api.call("GET", f"/projects/{pid}/images/tagged/count").json == 24


# ---------------------------------------------------------------------------- errors, keys, limits
def test_error_shapes(api: ApiClient) -> None:
    assert error_of(api.call("GET", f"/projects/{uuid.uuid4()}/tags"))[:2] == (404, "NotFound")
    assert error_of(api.call("GET", "/projects/..%2F..%2Fetc/tags"))[:2] == (404, "NotFound")
    assert error_of(api.call("GET", "/nothing/here"))[:2] == (404, "NotFound")
    pid = make_project(api)["id"]
    status, code, message = error_of(api.call("PATCH", f"/projects/{pid}", body=b"{", headers={
        "Content-Type": "application/json"}))
    assert (status, code) == (400, "BadRequest") and "JSON" in message
    assert error_of(api.call("PATCH", f"/projects/{pid}", json_body=[1]))[:2] == (400, "BadRequest")
    assert error_of(api.call("PUT", f"/projects/{pid}"))[0] == 405


def test_huge_body_is_refused(home: Path) -> None:
    server = make_api_server(home=home, port=0, max_body=1024 * 1024)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", server)
        pid = make_project(client)["id"]
        answer = client.call("POST", f"/projects/{pid}/images", body=b"\0" * (2 * 1024 * 1024),
                             headers={"Content-Type": "application/octet-stream"})
        assert answer.status == 413 and answer.json["code"]
    finally:
        stop_server(server, thread)


def test_key_protected_server(home: Path) -> None:
    server, thread = start_server(home, key="k")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        anonymous = ApiClient(base, server)
        assert error_of(anonymous.call("GET", "/projects"))[:2] == (401, "Unauthorized")
        wrong = ApiClient(base, server, key="nope")
        assert error_of(wrong.call("GET", "/projects"))[:2] == (401, "Unauthorized")
        right = ApiClient(base, server, key="k")
        pid = make_project(right)["id"]
        image = upload(right, pid, [{"name": "x.png", "contents": image_bytes()}]).json["images"][0]["image"]
        assert fetch(image["thumbnailUri"])[0] == 401  # image files need the key too
        assert fetch(image["thumbnailUri"], {"Training-Key": "k"})[0] == 200
        assert fetch(image["originalImageUri"], {"Cookie": "edgevision-key=k"})[0] == 200  # the portal's way
        assert fetch(f"{base}/edgevision/health")[0] == 200
    finally:
        stop_server(server, thread)


# ---------------------------------------------------------------------------- the hosted SDK
def test_hosted_training_sdk_drives_the_data_routes(api: ApiClient) -> None:
    from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
    from azure.cognitiveservices.vision.customvision.training.models import (
        CustomVisionErrorException,
        ImageFileCreateBatch,
        ImageFileCreateEntry,
        ImageTagCreateEntry,
        Region,
    )
    from msrest.authentication import ApiKeyCredentials

    trainer = CustomVisionTrainingClient(api.base, ApiKeyCredentials(in_headers={"Training-key": "anything"}))
    domains = trainer.get_domains()
    detection_domain = next(d for d in domains if d.type == "ObjectDetection" and d.name == "General (compact)")
    classification_domain = next(d for d in domains if d.type == "Classification" and d.name == "General (compact)")

    project = trainer.create_project("Fruit (SDK)", domain_id=classification_domain.id, classification_type="Multilabel")
    assert project.settings.classification_type == "Multilabel" and project.name == "Fruit (SDK)"
    apple = trainer.create_tag(project.id, "apple")
    pear = trainer.create_tag(project.id, "pear")
    first = trainer.create_images_from_data(project.id, image_bytes("red"), tag_ids=[apple.id])
    assert first.is_batch_successful and first.images[0].status == "OK"
    again = trainer.create_images_from_data(project.id, image_bytes("red"), tag_ids=[apple.id])
    assert not again.is_batch_successful and again.images[0].status == "OKDuplicate"
    batch = trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name="p.png", contents=image_bytes("green"), tag_ids=[pear.id]),
        ImageFileCreateEntry(name="u.png", contents=image_bytes("blue")),
    ]))
    assert batch.is_batch_successful
    untagged = trainer.get_untagged_images(project.id)
    assert [i.id for i in untagged] == [batch.images[1].image.id]
    summary = trainer.create_image_tags(project.id, [ImageTagCreateEntry(image_id=untagged[0].id, tag_id=pear.id)])
    assert len(summary.created) == 1
    tagged = trainer.get_tagged_images(project.id)
    assert len(tagged) == 3 and all(i.thumbnail_uri.startswith(api.base) for i in tagged)
    assert trainer.get_tagged_image_count(project.id, tag_ids=[pear.id]) == 2
    trainer.delete_images(project.id, image_ids=[untagged[0].id])
    assert trainer.get_tagged_image_count(project.id) == 2

    detector = trainer.create_project("Cars (SDK)", domain_id=detection_domain.id)
    car = trainer.create_tag(detector.id, "car")
    made = trainer.create_images_from_files(detector.id, ImageFileCreateBatch(images=[
        ImageFileCreateEntry(name="c.png", contents=image_bytes("white"),
                             regions=[Region(tag_id=car.id, left=0.1, top=0.1, width=0.5, height=0.5)])]))
    assert made.is_batch_successful and made.images[0].image.regions[0].tag_name == "car"
    assert trainer.get_tagged_images(detector.id)[0].regions[0].width == pytest.approx(0.5)

    with pytest.raises(CustomVisionErrorException) as caught:
        trainer.create_tag(project.id, "apple")
    assert caught.value.error.code == "BadRequestTagNameNotUnique"

    trainer.delete_project(detector.id)
    assert [p.id for p in trainer.get_projects()] == [project.id]
    with pytest.raises(CustomVisionErrorException):
        trainer.get_project(detector.id)


def test_keyless_server_refuses_foreign_host_names(api: ApiClient) -> None:
    """Without a key only loopback names are served: a rebound DNS name (another site's page) gets 403."""
    answer = api.call("GET", "/projects", headers={"Host": "evil.example:5000"})
    assert answer.status == 403 and answer.json["code"] == "Forbidden"
    for host in ("localhost:5000", "127.0.0.1", "[::1]:80"):
        assert api.call("GET", "/projects", headers={"Host": host}).status == 200
