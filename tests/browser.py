"""Headless Debian chromium driven by selenium through Debian's chromedriver.

Nothing is downloaded: the browser and the driver are the Debian packages
``chromium`` and ``chromium-driver`` (``scripts/setup`` installs them), and
Selenium Manager is told to stay offline. Every browser gets a new empty
profile directory. Tests skip with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def browser_unavailable_reason() -> str | None:
    if not any(Path(p).exists() for p in CHROMIUM):
        return "Debian's chromium is not installed (run: bash scripts/setup)"
    if not Path(CHROMEDRIVER).exists():
        return "Debian's chromium-driver is not installed (run: bash scripts/setup)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


class Browser:
    """One headless chromium; ``quit()`` removes its profile."""

    def __init__(self, width: int = 1400, height: int = 1500) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="pytapdemon-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = next(p for p in CHROMIUM if Path(p).exists())
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.add_argument(f"--window-size={width},{height}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        self.console: list[dict[str, Any]] = []

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, predicate: Callable[[], Any], timeout: float = 10, every: float = 0.05,
             what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page: timed out after {timeout:g}s waiting for {what or predicate}")
            time.sleep(every)

    def logs(self) -> list[dict[str, Any]]:
        """Every console entry since the last call (kept in ``console`` too)."""
        new = self.driver.get_log("browser")
        self.console.extend(new)
        return new

    def errors(self) -> list[dict[str, Any]]:
        self.logs()
        return [e for e in self.console if e.get("level") in ("SEVERE", "ERROR")]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The whole page: grow the window to the document's height first.
        height = self.js("return Math.ceil(document.documentElement.scrollHeight)")
        width = self.js("return window.outerWidth")
        self.driver.set_window_size(width, max(600, min(int(height) + 140, 6000)))
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless chromium for a test (skips with the reason when there is none); a test
    module takes it with ``from tests.browser import browser``."""
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    b = Browser()
    try:
        yield b
    finally:
        b.quit()
