"""The portal in a real browser (Debian's headless Chromium via Playwright) against the running API.

Each test drives the UI as a user would and checks the result through the API.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips these tests (or fails them under EDGEVISION_REQUIRE_BROWSER=1)
    expect = None
from edgevision.datasets.sample import write_sample_dataset
from portal_helpers import Portal, open_page, start_portal, stop_portal

TIMEOUT_TRAIN_MS = 600_000
TIMEOUT_EXPORT_MS = 300_000


def _create_project(page: Any, name: str, kind: str) -> str:
    """Fill the new-project form; returns the new project's id (from the URL)."""
    page.get_by_label("Name", exact=True).fill(name)
    page.locator(f"input[name=type][value={kind}]").check()
    domain = page.locator("#new-domain")
    expect(page.locator("#new-domain option").first).to_be_attached()
    assert "General (compact)" in domain.locator("option").all_inner_texts()
    page.get_by_role("button", name="Create project").click()
    page.wait_for_url(re.compile(r"#/projects/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def _eventually(get: Any, ok: Any, timeout: float = 10.0) -> Any:
    """Poll ``get()`` until ``ok(value)`` (the API catches up with the page), then return the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _drop_files(page: Any, selector: str, files: list[Path]) -> None:
    """A real drop: a DataTransfer holding the files, dispatched as dragenter/dragover/drop."""
    payload = [{"name": f.name, "b64": base64.b64encode(f.read_bytes()).decode(), "type": "image/png"} for f in files]
    page.evaluate("""([selector, files]) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, { type: f.type }));
        }
        const zone = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
        }
    }""", [selector, payload])


def test_create_project_upload_and_tag_several(page: Any, portal: Portal, sample_dir: Path) -> None:
    project_id = _create_project(page, "shapes", "multiclass")
    expect(page.locator(".project-head h1")).to_have_text("shapes")

    # Upload with the file picker, tagging the upload with a new tag.
    circles = sorted((sample_dir / "circle").glob("*.png"))[:3]
    page.locator("#upload-new-tags").fill("circle")
    page.locator("#file-input").set_input_files([str(p) for p in circles])
    page.locator("#upload-progress").get_by_text("Uploaded 3 images.").wait_for()
    page.locator("#image-grid li.tile").nth(2).wait_for()

    # Upload by dropping files (no tags: they land untagged).
    squares = sorted((sample_dir / "square").glob("*.png"))[:2]
    _drop_files(page, "#dropzone", squares)
    page.locator("#upload-progress").get_by_text("Uploaded 2 images.").wait_for()
    expect(page.locator("#image-grid li.tile")).to_have_count(5)
    assert portal.ok("GET", f"/projects/{project_id}/images/untagged/count") == 2
    assert portal.ok("GET", f"/projects/{project_id}/images/tagged/count") == 3

    # A new tag, then the untagged view: select both images and tag them at once.
    page.locator("#new-tag").fill("square")
    page.get_by_role("button", name="Add", exact=True).click()
    page.locator("a.filter[data-filter]", has_text="square").wait_for()
    page.locator("a.filter[data-filter=untagged]").click()
    page.wait_for_url(re.compile(r"\?tag=untagged$"))
    expect(page.locator("#image-grid li.tile")).to_have_count(2)
    page.get_by_role("button", name="Select all").click()
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    page.locator("#bulk-tag").select_option(label="square")
    page.locator("#bulk-add").click()
    page.locator("#image-grid").get_by_text("No untagged images.").wait_for()
    assert portal.ok("GET", f"/projects/{project_id}/images/untagged/count") == 0
    tags = {t["name"]: t for t in portal.ok("GET", f"/projects/{project_id}/tags")}
    assert tags["square"]["imageCount"] == 2 and tags["circle"]["imageCount"] == 3

    # Upload a folder with the folder picker, tagging each image with its folder's name.
    page.locator("a.filter[data-filter=all]").click()
    page.locator("#tag-by-folder").check()
    page.locator("#folder-input").set_input_files(str(sample_dir / "star"))
    page.locator("#upload-progress").get_by_text("Uploaded 6 images.").wait_for()
    stars = [t for t in portal.ok("GET", f"/projects/{project_id}/tags") if t["name"] == "star"]
    assert len(stars) == 1 and stars[0]["imageCount"] == 6

    # Remove the tag from one image again with the same bar.
    page.locator(f"a.filter[data-filter='{tags['square']['id']}']").click()
    expect(page.locator("#image-grid li.tile")).to_have_count(2)
    page.locator("#image-grid input.pick").first.check()
    page.locator("#bulk-tag").select_option(label="square")
    page.locator("#bulk-remove").click()
    expect(page.locator("#image-grid li.tile")).to_have_count(1)
    assert portal.ok("GET", f"/projects/{project_id}/images/untagged/count") == 1


def test_detection_boxes_draw_move_retag_delete(page: Any, portal: Portal, sample_dir: Path) -> None:
    project_id = _create_project(page, "boxes", "detection")
    image = sorted((sample_dir / "circle").glob("*.png"))[0]
    page.locator("#file-input").set_input_files(str(image))
    page.locator("#image-grid li.tile a.thumb").first.click()
    page.wait_for_url(re.compile(r"/images/[0-9a-f-]{36}$"))
    image_id = page.url.rsplit("/", 1)[1]

    page.locator("#box-new-tag").fill("circle")
    page.locator("#box-new-tag").press("Enter")
    expect(page.locator("#box-tag option")).to_have_count(1)
    page.locator(".stage img").wait_for()
    page.locator(".stage img.fitted").wait_for()  # sized to the room it has: measure after that
    layer = page.locator(".box-layer").bounding_box()
    assert layer and layer["width"] > 50

    def at(fx: float, fy: float) -> tuple[float, float]:
        return layer["x"] + fx * layer["width"], layer["y"] + fy * layer["height"]

    def regions() -> list[dict[str, Any]]:
        return portal.ok("GET", f"/projects/{project_id}/images/id?imageIds={image_id}")[0].get("regions") or []

    # Draw: drag on empty space.
    page.mouse.move(*at(0.2, 0.2))
    page.mouse.down()
    page.mouse.move(*at(0.4, 0.4), steps=5)
    page.mouse.move(*at(0.6, 0.6), steps=5)
    page.mouse.up()
    expect(page.locator(".stage")).to_have_attribute("data-box-count", "1")
    page.locator("#box-list select").first.wait_for()
    found = regions()
    assert len(found) == 1 and found[0]["tagName"] == "circle"
    assert found[0]["left"] == pytest.approx(0.2, abs=0.03) and found[0]["width"] == pytest.approx(0.4, abs=0.03)

    # Move: drag the box by +10 % both ways (a delete and a create on the API).
    page.mouse.move(*at(0.4, 0.4))
    page.mouse.down()
    page.mouse.move(*at(0.45, 0.45), steps=5)
    page.mouse.move(*at(0.5, 0.5), steps=5)
    page.mouse.up()
    found = _eventually(regions, lambda r: len(r) == 1 and abs(r[0]["left"] - 0.3) < 0.03)
    assert len(found) == 1
    assert found[0]["left"] == pytest.approx(0.3, abs=0.03) and found[0]["top"] == pytest.approx(0.3, abs=0.03)
    assert found[0]["width"] == pytest.approx(0.4, abs=0.03)

    # Retag: a second tag, chosen in the box list.
    page.locator("#box-new-tag").fill("square")
    page.locator("#box-new-tag").press("Enter")
    expect(page.locator("#box-list select").first.locator("option")).to_have_count(2)
    page.get_by_label("Tag of box 1").select_option(label="square")
    page.locator(".box[data-tag=square]").wait_for()
    found = _eventually(regions, lambda r: [x["tagName"] for x in r] == ["square"])
    assert [r["tagName"] for r in found] == ["square"]

    # Delete with the keyboard: focus the box, press Delete.
    page.locator(".box").first.focus()
    page.keyboard.press("Delete")
    expect(page.locator(".stage")).to_have_attribute("data-box-count", "0")
    assert _eventually(regions, lambda r: r == []) == []


def test_key_prompt_sets_header_and_cookie(browser: Any, home: Path) -> None:
    running = start_portal(home, key="s3cret")
    context, page, errors = open_page(browser, running.base)
    try:
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.get_by_label("Training key", exact=True).fill("s3cret")
        page.get_by_role("button", name="Use this key").click()
        page.get_by_text("No projects yet").wait_for()
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        assert cookies.get("edgevision-key") == "s3cret"
        assert page.evaluate("localStorage.getItem('edgevision-key')") == "s3cret"
        assert not errors, errors
    finally:
        context.close()
        stop_portal(running)


def test_api_error_message_is_shown(page: Any, portal: Portal) -> None:
    project = portal.ok("POST", "/projects?name=empty&domainId=0732100f-1a38-4e49-a514-c9b44c697ab5"
                                "&classificationType=Multiclass")
    status, answer = portal.call("POST", f"/projects/{project['id']}/train")
    assert status == 400 and answer["message"]
    page.goto(f"{portal.base}/#/projects/{project['id']}/train")
    page.locator("#train-quick").click()
    notice = page.locator("#notice.error")
    notice.wait_for()
    expect(notice.locator(".notice-text")).to_have_text(answer["message"])
    expect(page.get_by_role("alert")).to_be_visible()


# ---------------------------------------------------------------- a trained project, shared below
@pytest.fixture(scope="module")
def trained_portal(browser: Any, tmp_path_factory: pytest.TempPathFactory, sample_dir: Path):
    """A server whose multiclass project was trained with the portal's Quick training button.

    Yields (portal, project JSON, iteration JSON, what the page showed while training).
    """
    running = start_portal(tmp_path_factory.mktemp("portal-home"))
    try:
        project = running.seed_classification("shapes", sample_dir)
        context, page, errors = open_page(browser, running.base)
        seen: dict[str, Any] = {"progress": [], "errors": errors}
        try:
            page.goto(f"{running.base}/#/projects/{project['id']}/train")
            page.locator("#train-quick").click()
            row = page.locator("#train-progress .progress-row")
            row.wait_for()
            seen["progress"].append(row.inner_text())
            for _ in range(3):
                page.wait_for_timeout(1500)
                if row.count():
                    seen["progress"].append(row.inner_text())
            page.locator("#iteration-detail .status-completed, #iteration-detail .status-failed").wait_for(timeout=TIMEOUT_TRAIN_MS)
            iterations = running.ok("GET", f"/projects/{project['id']}/iterations")
        finally:
            context.close()
        assert len(iterations) == 1 and iterations[0]["status"] == "Completed", iterations
        yield running, project, iterations[0], seen
    finally:
        stop_portal(running)


@pytest.fixture()
def trained_page(browser: Any, trained_portal) -> Any:
    running = trained_portal[0]
    context, page, errors = open_page(browser, running.base)
    try:
        yield page
        assert not errors, errors
    finally:
        context.close()


def test_train_quick_shows_live_progress(trained_portal) -> None:
    _, _, iteration, seen = trained_portal
    assert seen["progress"] and all(text.startswith(iteration["name"]) for text in seen["progress"]), seen
    # The stage (and done / total once known) from edgevisionProgress is shown beside the bar.
    assert any(text[len(iteration["name"]):].strip() for text in seen["progress"]), seen
    assert not seen["errors"], seen["errors"]
    assert iteration["trainingType"] == "Regular"


def test_threshold_slider_refetches_performance(trained_page: Any, trained_portal) -> None:
    running, project, iteration, _ = trained_portal
    page = trained_page
    thresholds: list[str] = []
    page.on("request", lambda r: thresholds.extend(re.findall(r"[?&]threshold=([0-9.]+)", r.url)) if "/performance" in r.url else None)
    page.goto(f"{running.base}/#/projects/{project['id']}/train/{iteration['id']}")
    table = page.locator("#perf-table tbody tr")
    table.first.wait_for()
    assert table.count() == 4
    # A classifier's train panel offers int8-ready quick training (edgevisionInt8Ready); this one was plain.
    assert page.locator("#int8-ready").count() == 1 and iteration["edgevisionInt8Ready"] is False

    def expected(threshold: float) -> tuple[str, str]:
        perf = running.ok("GET", f"/projects/{project['id']}/iterations/{iteration['id']}/performance?threshold={threshold}")
        return f"{perf['precision'] * 100:.1f}%", f"{perf['recall'] * 100:.1f}%"

    expect(page.locator("#metric-precision .metric-value")).to_have_text(expected(0.5)[0])
    expect(page.locator("#metric-recall .metric-value")).to_have_text(expected(0.5)[1])
    for value in ("0.05", "0.99"):
        page.locator("#threshold").fill(value)
        expect(page.locator("#threshold-value")).to_have_text(f"{round(float(value) * 100)}%")
        want = expected(float(value))
        expect(page.locator("#metric-precision .metric-value")).to_have_text(want[0])
        expect(page.locator("#metric-recall .metric-value")).to_have_text(want[1])
    assert "0.99" in thresholds and "0.05" in thresholds
    assert expected(0.05) != expected(0.99), "the sample's figures should move with the threshold"


def test_quick_test_shows_prediction(trained_page: Any, trained_portal, sample_dir: Path) -> None:
    running, project, _, _ = trained_portal
    page = trained_page
    page.goto(f"{running.base}/#/projects/{project['id']}/test")
    page.locator("#test-file").set_input_files(str(sorted((sample_dir / "triangle").glob("*.png"))[-1]))
    rows = page.locator("#test-result .predictions li")
    rows.first.wait_for()
    assert rows.count() == 4
    names = {rows.nth(i).get_attribute("data-tag") for i in range(rows.count())}
    assert names == {"circle", "square", "triangle", "star"} or len(names) == 4
    assert re.fullmatch(r"\d+\.\d%", rows.first.locator(".probability").inner_text())
    assert page.locator("#test-result img").evaluate("img => img.complete && img.naturalWidth > 0")


def test_publish_then_review_a_stored_prediction(trained_page: Any, trained_portal, tmp_path: Path) -> None:
    running, project, iteration, _ = trained_portal
    page = trained_page
    page.goto(f"{running.base}/#/projects/{project['id']}/train/{iteration['id']}")
    page.locator("#publish-name").fill("shapes1")
    page.locator("#publish").click()
    page.locator("#published-as").get_by_text("Published as shapes1").wait_for()
    assert running.ok("GET", f"/projects/{project['id']}/iterations/{iteration['id']}")["publishName"] == "shapes1"

    # A client sends a new image to the prediction route; it is stored for review.
    image = write_sample_dataset(tmp_path / "field", per_tag=1, tags=("square",), seed=99) / "square" / "square-000.png"
    answer = running.upload(f"/customvision/v3.0/Prediction/{project['id']}/classify/iterations/shapes1/image", [image],
                            training=False)
    assert answer["predictions"], answer
    before = running.ok("GET", f"/projects/{project['id']}/images/tagged/count")

    page.goto(f"{running.base}/#/projects/{project['id']}/predictions")
    items = page.locator("#review-list .review-item")
    items.first.wait_for()
    count = items.count()
    first = items.first
    first.locator(".predictions li").first.wait_for()
    first.get_by_role("radio", name="square", exact=True).check()
    first.get_by_role("button", name="Add to training set").click()
    expect(items).to_have_count(count - 1)
    assert running.ok("GET", f"/projects/{project['id']}/images/tagged/count") == before + 1
    stored = running.ok("POST", f"/projects/{project['id']}/predictions/query", json_body={"orderBy": "Newest"})["results"]
    assert len(stored) == count - 1  # the reviewed one left the predictions

    # Unpublish: the prediction route stops answering for that name.
    page.goto(f"{running.base}/#/projects/{project['id']}/train/{iteration['id']}")
    page.locator("#unpublish").click()
    expect(page.locator("#published-as")).to_have_count(0)
    assert running.ok("GET", f"/projects/{project['id']}/iterations/{iteration['id']}")["publishName"] is None
    status, _ = running.call("POST", f"/customvision/v3.0/Prediction/{project['id']}/classify/iterations/shapes1/image",
                             body=image.read_bytes(), headers={"Content-Type": "application/octet-stream"}, training=False)
    assert status == 404


def test_export_tflite_done_verified_and_downloadable(trained_page: Any, trained_portal) -> None:
    running, project, _, _ = trained_portal
    page = trained_page
    page.goto(f"{running.base}/#/projects/{project['id']}/export")
    page.locator("#export-format").select_option("tflite")
    page.locator("#export-flavor").select_option("float32")
    page.locator("#export-start").click()
    row = page.locator("#export-list tr.export-row[data-platform=tflite][data-flavor=float32]")
    row.locator(".export-status").get_by_text("Done", exact=True).wait_for(timeout=TIMEOUT_EXPORT_MS)
    verification = row.locator(".verification .status")
    expect(verification).to_have_text("verified")
    assert verification.get_attribute("data-status") == "ok"
    href = row.locator("a.download").get_attribute("href")
    assert href
    with urllib.request.urlopen(href, timeout=60) as answer:
        assert answer.status == 200
        assert answer.read(2) == b"PK"


# ---------------------------------------------------------------- a trained detector
@pytest.fixture(scope="module")
def trained_detector_portal(tmp_path_factory: pytest.TempPathFactory, detection_sample: Path):
    """A server with a detection project (the generated boxes sample) trained quickly through the API."""
    from edgevision.store.project import Project

    home = tmp_path_factory.mktemp("portal-detector-home")
    Project.create("boxes", "detection", home=home).import_detection(detection_sample, "coco")
    running = start_portal(home)
    try:
        project = running.ok("GET", "/projects")[0]
        iteration = running.ok("POST", f"/projects/{project['id']}/train?trainingType=Regular")
        iteration = running.wait_iteration(project["id"], iteration["id"])
        assert iteration["status"] == "Completed", iteration
        yield running, project, iteration
    finally:
        stop_portal(running)


def test_detector_overlap_slider_quick_test_boxes_and_review(browser: Any, trained_detector_portal, tmp_path: Path) -> None:
    from edgevision.datasets.sample import generate_detection_sample

    running, project, iteration = trained_detector_portal
    context, page, errors = open_page(browser, running.base)
    try:
        overlaps: list[str] = []
        page.on("request", lambda r: overlaps.extend(re.findall(r"overlapThreshold=([0-9.]+)", r.url)))
        page.goto(f"{running.base}/#/projects/{project['id']}/train/{iteration['id']}")
        page.locator("#perf-table tbody tr").first.wait_for()
        expect(page.locator("#metric-ap .metric-label")).to_have_text("mAP")
        assert page.locator("#int8-ready").count() == 0  # int8-ready training is for classifiers
        page.locator("#overlap").fill("0.7")
        expect(page.locator("#overlap-value")).to_have_text("70%")
        perf = running.ok("GET", f"/projects/{project['id']}/iterations/{iteration['id']}/performance"
                                 "?threshold=0.5&overlapThreshold=0.7")
        expect(page.locator("#metric-ap .metric-value")).to_have_text(f"{perf['averagePrecision'] * 100:.1f}%")
        assert "0.7" in overlaps

        # Quick test on a new image: boxes drawn over it, saved for review.
        fresh = generate_detection_sample(tmp_path / "fresh", per_tag=1, seed=123)
        image = sorted(p for p in fresh.parent.rglob("*") if p.suffix.lower() in (".png", ".jpg"))[0]
        page.goto(f"{running.base}/#/projects/{project['id']}/test")
        page.locator("#test-store").check()
        page.locator("#test-threshold").fill("0.05")
        page.locator("#test-file").set_input_files(str(image))
        page.locator("#test-result .stage.read-only").wait_for()
        page.locator("#test-result .stage .box").first.wait_for()
        assert page.locator("#test-result .predictions li").count() == page.locator("#test-result .stage .box").count()

        # Review it: the boxes come pre-filled; add it to the training set with them.
        before = running.ok("GET", f"/projects/{project['id']}/images/tagged/count")
        page.goto(f"{running.base}/#/projects/{project['id']}/predictions")
        page.locator("#review-threshold").fill("0.05")
        page.locator("#review-threshold").dispatch_event("change")
        item = page.locator("#review-list .review-item").first
        item.locator(".stage .box").first.wait_for()
        boxes = item.locator(".stage .box").count()
        item.get_by_role("button", name="Add to training set").click()
        expect(page.locator("#review-list .review-item")).to_have_count(0)
        assert running.ok("GET", f"/projects/{project['id']}/images/tagged/count") == before + 1
        newest = running.ok("GET", f"/projects/{project['id']}/images/tagged?orderBy=Newest&take=1")[0]
        assert len(newest["regions"]) == boxes
        assert not errors, errors
    finally:
        context.close()
