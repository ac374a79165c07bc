"""Fixtures for the portal's browser tests: Debian's headless Chromium through Playwright, and a
training API + portal server over a temporary home.

Without /usr/bin/chromium (or Playwright) the tests skip, unless EDGEVISION_REQUIRE_BROWSER=1 (CI sets
it in .ci/run, which installs the browser first): then a missing browser fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from portal_helpers import CHROMIUM, Portal, launch_chromium, open_page, start_portal, stop_portal


def _no_browser(reason: str) -> None:
    if os.environ.get("EDGEVISION_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and EDGEVISION_REQUIRE_BROWSER=1 asks for the browser tests "
                    "(apt-get install -y chromium chromium-driver; pip install -e '.[dev]')")
    pytest.skip(f"{reason} (set EDGEVISION_REQUIRE_BROWSER=1 to make this a failure)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's package) driven by Playwright, shared by the session."""
    if not CHROMIUM.is_file():
        _no_browser(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("Playwright is not installed")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def portal(home: Path) -> Iterator[Portal]:
    """The API and portal over the test's empty home."""
    running = start_portal(home)
    try:
        yield running
    finally:
        stop_portal(running)


@pytest.fixture()
def page(browser: Any, portal: Portal) -> Iterator[Any]:
    """A fresh browser page on the portal; fails the test on script errors or CSP violations."""
    context, page, errors = open_page(browser, portal.base)
    try:
        yield page
        assert not errors, errors
    finally:
        context.close()
