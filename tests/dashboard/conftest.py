"""Fixtures: one real fleet and one Chromium per module, a logged-in page per user."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    READER,
    READER_PASSWORD,
    SHOTS,
    DashFleet,
    dash_fleet,
    need_browser,
)

VIEWPORT = {"width": 1360, "height": 860}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashFleet]:
    need_browser()
    with dash_fleet(tmp_path_factory.mktemp("dashboard")) as f:
        yield f


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def log_in(browser: Any, fleet: DashFleet, user: str, password: str) -> Any:
    context = browser.new_context(viewport=VIEWPORT, base_url=fleet.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    page.goto("/app/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/app/")
    return page


@pytest.fixture(scope="module")
def admin(browser: Any, fleet: DashFleet) -> Iterator[Any]:
    page = log_in(browser, fleet, "admin", fleet.admin_password)
    yield page
    assert not page.js_errors, page.js_errors
    page.context.close()


@pytest.fixture(scope="module")
def reader(browser: Any, fleet: DashFleet) -> Iterator[Any]:
    page = log_in(browser, fleet, READER, READER_PASSWORD)
    yield page
    page.context.close()


@pytest.fixture
def shot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    """Screenshot a page. With FLEETCMD_SCREENSHOTS=1 the pictures go to docs/img (used
    by docs/dashboard.md); otherwise to a scratch folder, so a test run leaves the
    checkout untouched."""
    folder = (
        SHOTS
        if os.environ.get("FLEETCMD_SCREENSHOTS") == "1"
        else (tmp_path_factory.getbasetemp() / "screenshots")
    )

    def take(page: Any, name: str, full_page: bool = True) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
