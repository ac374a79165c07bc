"""Helpers shared by the portal's browser tests and ``python -m tests.portal.screenshots``.

A training API + portal server on a free loopback port, a plain HTTP client to seed projects
through the API, and Debian's Chromium launched through Playwright (its own browser downloads do
not work offline, so the executable is given explicitly).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevision.api import TrainingApiServer, make_api_server

TRAINING = "/customvision/v3.4-preview/training"
#: Debian's chromium package; EDGEVISION_CHROMIUM points elsewhere.
CHROMIUM = Path(os.environ.get("EDGEVISION_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
#: The hosted "General (compact)" domain ids (edgevision/api/domains.py keeps them).
CLASSIFICATION_DOMAIN = "0732100f-1a38-4e49-a514-c9b44c697ab5"
DETECTION_DOMAIN = "a27d5ca5-bb19-49d8-a70a-fec086c47f5b"


def launch_chromium(playwright: Any) -> Any:
    """A headless Debian Chromium driven by Playwright."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@dataclass
class Portal:
    """A running server over a home folder, with a small JSON client for seeding and checking."""

    base: str
    server: TrainingApiServer
    thread: threading.Thread
    key: str | None = None

    def call(self, method: str, path: str, *, json_body: Any = None, body: bytes | None = None,
             headers: dict[str, str] | None = None, training: bool = True) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or raw bytes or None)."""
        url = self.base + (TRAINING if training else "") + path
        sent = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        if self.key:
            sent.setdefault("Training-Key", self.key)
            sent.setdefault("Prediction-Key", self.key)
        request = urllib.request.Request(url, data=body, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                status, data, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, data, kind = error.code, error.read(), error.headers.get("Content-Type", "")
        if "json" in kind and data:
            return status, json.loads(data)
        return status, data or None

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, data = self.call(method, path, **kwargs)
        if status >= 300:
            raise AssertionError(f"{method} {path} answered {status}: {data!r}")
        return data

    def upload(self, path: str, files: list[Path], *, training: bool = True) -> Any:
        """POST files as multipart ``imageData`` parts."""
        boundary = uuid.uuid4().hex
        chunks = []
        for file in files:
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="imageData"; filename="{file.name}"\r\n'
                          "Content-Type: application/octet-stream\r\n\r\n".encode() + file.read_bytes() + b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        return self.ok("POST", path, body=b"".join(chunks), training=training,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def seed_classification(self, name: str, sample: Path, *, multilabel: bool = False) -> dict[str, Any]:
        """A project with one tag per sample folder and its images; returns the project JSON."""
        from urllib.parse import urlencode

        query = urlencode({"name": name, "domainId": CLASSIFICATION_DOMAIN,
                           "classificationType": "Multilabel" if multilabel else "Multiclass"})
        project = self.ok("POST", f"/projects?{query}")
        for folder in sorted(p for p in sample.iterdir() if p.is_dir()):
            tag = self.ok("POST", f"/projects/{project['id']}/tags?{urlencode({'name': folder.name})}")
            self.upload(f"/projects/{project['id']}/images?tagIds={tag['id']}", sorted(folder.glob("*.png")))
        return project

    def wait_iteration(self, project_id: str, iteration_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll an iteration until it is no longer training."""
        deadline = time.monotonic() + timeout
        while True:
            iteration = self.ok("GET", f"/projects/{project_id}/iterations/{iteration_id}")
            if iteration["status"] != "Training" or time.monotonic() > deadline:
                return iteration
            time.sleep(1)


def open_page(browser: Any, base: str) -> tuple[Any, Any, list[str]]:
    """A new browser context and page on the portal, and the list collecting its script errors and
    Content-Security-Policy violations (the portal must run without inline scripts or styles)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    page.goto(base + "/")
    return context, page, errors


def start_portal(home: Path, *, key: str | None = None) -> Portal:
    server = make_api_server(home=home, host="127.0.0.1", port=0, key=key)
    thread = threading.Thread(target=server.serve_forever, name="portal-server", daemon=True)
    thread.start()
    return Portal(f"http://127.0.0.1:{server.server_address[1]}", server, thread, key)


def stop_portal(portal: Portal) -> None:
    portal.server.shutdown()
    portal.server.server_close()
    portal.server.app.stop()
    portal.thread.join(10)
