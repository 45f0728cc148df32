"""A real headless Chromium (Debian's package) driven by Playwright, for report and dashboard tests.

Missing Chromium is a failure, not a skip: `.ci/run` installs it (apt-get install chromium).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TRUECOST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TRUECOST_ARTIFACTS") or ROOT / "artifacts")


def launch(playwright):
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}: apt-get install chromium (scripts/test.sh does)"
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-dev-shm-usage"],
    )


class Page:
    """A page with its console errors and failed requests collected."""

    def __init__(self, browser, width: int = 1280, height: int = 900) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))

    def open(self, url: str) -> "Page":
        self.page.goto(url, wait_until="load")
        return self

    def login(self, base_url: str, key: str, mount: str = "/ui"):
        """Log in through the dashboard's form; returns the response to the form's POST."""
        self.page.goto(f"{base_url}{mount}/login", wait_until="load")
        self.page.fill("input[name=key]", key)
        with self.page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/login")) as answer:
            self.page.click("form.login button[type=submit]")
        self.page.wait_for_load_state("load")
        return answer.value

    def session_cookies(self) -> list[dict]:
        return self.page.context.cookies()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def figures(self) -> dict[str, tuple[str, str]]:
        """data-key -> (raw data-value, text shown)."""
        items = self.page.eval_on_selector_all(
            "[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value, e.textContent])"
        )
        return {k: (v, t) for k, v, t in items}

    def close(self) -> None:
        self.page.close()


def shown_number(text: str) -> float:
    """'$1,234.50' -> 1234.5; '-$0.0000202' -> -2.02e-05; '12.5%' -> 0.125."""
    m = re.search(r"(-?)\$?(\d*\.?\d+(?:e-?\d+)?)", text.replace(",", ""))
    assert m, f"no number in {text!r}"
    value = float(m.group(2)) * (-1 if m.group(1) else 1)
    return value / 100 if "%" in text else value


def browser_fixture():
    """A module-scoped pytest fixture body: one Chromium for all tests of a module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
