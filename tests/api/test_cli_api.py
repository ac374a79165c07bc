"""`edgevision serve-api` and `edgevision portal` as real processes: they answer, stop on Ctrl-C, refuse
to listen beyond loopback without a key, and `edgevision --help` stays free of the heavy imports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _start(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "EDGEVISION_HOME": str(home)}
    env.pop("EDGEVISION_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgevision", *args, "--port", "0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline() if proc.stdout else ""
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        proc.kill()
        raise AssertionError(f"no address printed: {line!r} {proc.communicate(timeout=10)}")
    return proc, found.group(0)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("command", [["serve-api"], ["portal", "--no-browser"]])
def test_server_commands_answer_and_stop_on_ctrl_c(home: Path, command: list[str]) -> None:
    proc, url = _start(home, *command)
    try:
        with urllib.request.urlopen(url + "edgevision/health", timeout=30) as response:
            assert json.loads(response.read())["keyRequired"] is False
        with urllib.request.urlopen(url + "customvision/v3.4-preview/training/projects", timeout=30) as response:
            assert json.loads(response.read()) == []
        with urllib.request.urlopen(url, timeout=30) as response:  # the portal's page
            assert b"<html" in response.read().lower()
    finally:
        code = _stop(proc)
    assert code == 130


def test_sigterm_stops_cleanly(home: Path) -> None:
    proc, _ = _start(home, "serve-api")
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_network_host_needs_a_key(home: Path) -> None:
    env = {**os.environ, "EDGEVISION_HOME": str(home)}
    env.pop("EDGEVISION_API_KEY", None)
    for command in (["serve-api"], ["portal", "--no-browser"]):
        done = subprocess.run([sys.executable, "-m", "edgevision", *command, "--host", "0.0.0.0", "--port", "0"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "--key" in done.stderr and "0.0.0.0" in done.stderr


def test_key_is_required_by_a_keyed_server(home: Path) -> None:
    env = {**os.environ, "EDGEVISION_HOME": str(home), "EDGEVISION_API_KEY": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "edgevision", "serve-api", "--port", "0"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = re.search(r"http://\S+/", proc.stdout.readline() if proc.stdout else "").group(0)  # type: ignore[union-attr]
        api = url + "customvision/v3.4-preview/training/projects"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(api, timeout=30)
        assert caught.value.code == 401
        with urllib.request.urlopen(urllib.request.Request(api, headers={"Training-Key": "s3cret"}), timeout=30) as r:
            assert r.status == 200
    finally:
        assert _stop(proc) == 130


def test_help_does_not_import_the_server_or_tensorflow() -> None:
    code = ("import sys\nfrom edgevision.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('tensorflow', 'edgevision.api', 'keras') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "serve-api" in done.stdout and "portal" in done.stdout
