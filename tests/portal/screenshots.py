"""Screenshots of the portal's main pages for docs/portal.md: ``python -m tests.portal.screenshots``.

Builds a throw-away home with a classification project (the generated shapes sample, trained
quickly through the API, published, with a few stored predictions and a TFLite export) and a
detection project (the generated boxes sample), serves it, and saves ``docs/images/portal-*.png``
with Debian's headless Chromium. Takes a minute or two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from portal_helpers import Portal, launch_chromium, open_page, start_portal, stop_portal  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _seed(portal: Portal, home: Path, work: Path) -> dict[str, Any]:
    from edgevision.datasets.sample import generate_detection_sample, write_sample_dataset
    from edgevision.store.project import Project

    sample = write_sample_dataset(work / "shapes", per_tag=8)
    project = portal.seed_classification("shapes", sample)
    pid = project["id"]
    iteration = portal.ok("POST", f"/projects/{pid}/train?trainingType=Regular")
    iteration = portal.wait_iteration(pid, iteration["id"])
    if iteration["status"] != "Completed":
        raise SystemExit(f"training failed: {iteration.get('trainingErrorDetails')}")
    portal.ok("POST", f"/projects/{pid}/iterations/{iteration['id']}/publish?publishName=shapes1&predictionId=local")
    field = write_sample_dataset(work / "field", per_tag=2, seed=42)
    for image in sorted(field.glob("*/*.png")):
        portal.upload(f"/customvision/v3.0/Prediction/{pid}/classify/iterations/shapes1/image", [image], training=False)
    portal.ok("POST", f"/projects/{pid}/iterations/{iteration['id']}/export?platform=tflite&flavor=float32")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        exports = portal.ok("GET", f"/projects/{pid}/iterations/{iteration['id']}/export")
        if all(e["status"] != "Exporting" for e in exports):
            break
        time.sleep(2)

    boxes = Project.create("boxes", "detection", home=home)
    boxes.import_detection(generate_detection_sample(work / "boxes", per_tag=4, seed=0), "coco")
    detection = next(p for p in portal.ok("GET", "/projects") if p["name"] == "boxes")
    images = portal.ok("GET", f"/projects/{detection['id']}/images/tagged?take=1")
    return {"project": project, "iteration": iteration, "sample": sample, "detection": detection,
            "detection_image": images[0]["id"]}


def _shrink(path: Path) -> None:
    """A 256-colour palette PNG: the noisy sample photos otherwise make each file ~0.5 MB."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, "PNG", optimize=True)


def take(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="edgevision-shots-") as tmp:
        home = Path(tmp) / "home"
        portal = start_portal(home)
        try:
            seeded = _seed(portal, home, Path(tmp))
            pid, iid = seeded["project"]["id"], seeded["iteration"]["id"]
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                context, page, errors = open_page(browser, portal.base)

                def shot(name: str, *, full: bool = False) -> None:
                    page.wait_for_timeout(400)  # let thumbnails and fonts settle
                    path = out / f"portal-{name}.png"
                    page.screenshot(path=str(path), full_page=full)
                    _shrink(path)
                    saved.append(path)

                page.locator("#project-list .card").first.wait_for()
                page.locator("#new-name").fill("flowers")
                shot("projects")

                page.goto(f"{portal.base}/#/projects/{pid}")
                page.locator("#image-grid li.tile img").first.wait_for()
                for box in page.locator("#image-grid input.pick").all()[:3]:
                    box.check()
                shot("images")

                page.goto(f"{portal.base}/#/projects/{seeded['detection']['id']}/images/{seeded['detection_image']}")
                page.locator(".stage .box").first.wait_for()
                page.locator(".stage .box").first.focus()
                shot("detection-editor")

                page.goto(f"{portal.base}/#/projects/{pid}/train/{iid}")
                page.locator("#perf-table tbody tr").first.wait_for()
                page.locator("#threshold").fill("0.7")
                page.wait_for_timeout(600)
                shot("iterations")

                page.goto(f"{portal.base}/#/projects/{pid}/test")
                page.locator("#test-file").set_input_files(str(sorted((seeded["sample"] / "star").glob("*.png"))[0]))
                page.locator("#test-result .predictions li").first.wait_for()
                shot("quick-test")

                page.goto(f"{portal.base}/#/projects/{pid}/export")
                page.locator("#export-list tr.export-row").first.wait_for()
                shot("export")

                page.goto(f"{portal.base}/#/projects/{pid}/predictions")
                page.locator("#review-list .review-item").first.wait_for()
                shot("predictions")

                page.goto(f"{portal.base}/#/projects/{pid}/train")
                page.locator("#force-train").check()
                page.locator("#train-quick").click()
                page.locator("#train-progress .progress-row").wait_for()
                page.wait_for_timeout(1500)
                shot("training")
                if errors:
                    print("page errors:", *errors, sep="\n  ", file=sys.stderr)
                context.close()
                browser.close()
        finally:
            stop_portal(portal)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="where the PNGs go")
    args = parser.parse_args()
    for path in take(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
