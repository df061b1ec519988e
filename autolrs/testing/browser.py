"""Open the dashboard in a real headless browser (the dashboard tests and bench/dashboard.py).

Debian's ``chromium`` driven by ``chromedriver`` through selenium (the ``test`` extra), started
so that it works on a closed network: without these flags Chromium waits on background
network calls (component updates, sync, QUIC probes) and can hang. Each browser gets a fresh
profile folder, removed on close. :func:`missing` says why a browser cannot be started here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why no headless browser can run here (None when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _which(BROWSERS) is None:
        return "no chromium binary (apt-get install chromium chromium-driver)"
    if _which(DRIVERS) is None:
        return "no chromedriver (apt-get install chromium-driver)"
    return None


class Browser:
    """A headless Chromium; ``driver`` is the selenium WebDriver. Use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 1000):
        reason = missing()
        if reason is not None:
            raise RuntimeError(f"cannot start a headless browser: {reason}")
        # Never let selenium look for (download) a driver: the paths are given.
        os.environ.setdefault("SE_OFFLINE", "true")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="autolrs-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = _which(BROWSERS)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(_which(DRIVERS)))
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(30)

    def console_errors(self) -> list[dict]:
        """The console's SEVERE entries since the last call (errors, failed loads, CSP refusals)."""
        return [entry for entry in self.driver.get_log("browser") if entry.get("level") == "SEVERE"]

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole page's height by default)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            width = self.driver.execute_script("return document.documentElement.scrollWidth")
            self.driver.set_window_size(max(width, 800), min(max(height, 600), 6000))
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
