"""A real browser on the web page: Debian's Chromium driven by Playwright, one server per module.

Playwright's own browser download is never used (`playwright install` fetches from the network);
the tests launch the system's Chromium by path. Without it they fail, saying how to install it:
a skipped browser test would pass CI without the page ever having been seen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import CliServer

CHROMIUM = os.environ.get("PENSIEVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / ".cache" / "test-artifacts" / "web"
"""Screenshots land here (ignored by git) so a person can look at what the tests saw."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed ({CHROMIUM} is missing): install Debian's package with "
            "`sudo apt-get install -y chromium` (.ci/run does this in CI), or point "
            "PENSIEVE_CHROMIUM at a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: run `make install` (it is in the dev dependency group)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """`pensieve start` on the embedded SmolLM2 model (warm-up off: the tests time nothing)."""
    env = {"PENSIEVE_PERFORMANCE_WARMUP": "false", "PENSIEVE_API_KEY": "pensieve-local-key"}
    server = CliServer(tmp_path_factory.mktemp("web-home"), "--log-level", "INFO", env=env).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage), 1360x900; a screenshot is saved when the test ends.

    `page.errors` collects the page's uncaught errors and console errors, for tests to assert none.
    """
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))  # type: ignore[attr-defined]
    # Console errors too (a Content-Security-Policy violation is one), except the browser's note
    # on each 401 answer, which the key tests provoke on purpose.
    tab.on("console", lambda m: m.type == "error" and "status of 401" not in m.text and tab.errors.append(m.text))  # type: ignore[attr-defined]
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{request.node.name}.png"
    tab.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    context.close()
