"""Fixtures for the training API: a server on a free loopback port over a temporary home, and a client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgevision.api import TrainingApiServer, make_api_server

TRAINING = "/customvision/v3.4-preview/training"


@dataclass
class Answer:
    """One HTTP answer: status, headers, raw body and (when JSON) the decoded body."""

    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ApiClient:
    """Plain urllib calls against a running server (no SDK), for tests that check the wire format."""

    base: str
    server: TrainingApiServer
    key: str | None = None

    def call(self, method: str, path: str, *, json_body: Any = None, body: bytes | None = None,
             headers: dict[str, str] | None = None, training: bool = True) -> Answer:
        url = self.base + (TRAINING if training else "") + path
        sent = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.key is not None:
            sent.setdefault("Training-Key", self.key)
        request = urllib.request.Request(url, data=body, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read())

    def multipart(self, path: str, files: list[tuple[str, bytes]], *, field: str = "imageData") -> Answer:
        """POST images as multipart/form-data, one part per (filename, bytes)."""
        boundary = uuid.uuid4().hex
        chunks = []
        for name, data in files:
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                          f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        return self.call("POST", path, body=b"".join(chunks),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def start_server(home: Path, *, key: str | None = None) -> tuple[TrainingApiServer, threading.Thread]:
    server = make_api_server(home=home, host="127.0.0.1", port=0, key=key)
    thread = threading.Thread(target=server.serve_forever, name="api-server", daemon=True)
    thread.start()
    return server, thread


def stop_server(server: TrainingApiServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    server.app.stop()
    thread.join(10)


@pytest.fixture()
def api(home: Path) -> Iterator[ApiClient]:
    """A training API server over the test's empty home, and a client for it."""
    server, thread = start_server(home)
    try:
        yield ApiClient(f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        stop_server(server, thread)
