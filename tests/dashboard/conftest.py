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
    log_in,
    need_browser,
)


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
