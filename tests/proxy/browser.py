"""Headless Chromium (Debian's ``chromium`` package) under Playwright for Python, for the
dashboard's browser tests. Playwright's own browser download cannot work here (no internet), so
the system browser is launched by path.

Without chromium the tests are skipped on a developer machine, and FAIL in CI (``CI=true``):
``.ci/run`` installs it, so a missing browser there is a broken pipeline, not a reason to skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .system_tools import require

ROOT = Path(__file__).resolve().parents[2]
#: Every run's screenshots (ignored by git). The README's are made by docs/screenshots/make.py.
OUTPUT = ROOT / "test-output" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    return require("chromium", "chromium")


def launch() -> Iterator[Any]:
    """A started browser (generator, for a fixture)."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=False)


def login(page: Any, base: str, key: str, path: str = "/") -> None:
    """Log in through the form, as a user does, and land on ``path``."""
    page.goto(base + path)
    assert page.url.startswith(base + "/login?next="), page.url
    page.fill("#key", key)
    page.click("form#login-form button[type=submit]")
    wait_ready(page)
    assert page.url.split("?")[0] == base + path.split("?")[0], page.url


def wait_ready(page: Any) -> None:
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=15000)


def goto(page: Any, url: str) -> None:
    page.goto(url)
    wait_ready(page)
