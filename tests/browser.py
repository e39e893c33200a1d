"""A real headless Chromium (Debian's chromium + chromedriver) driven by Selenium.

Browser tests need the two Debian packages; .ci/run installs them. Where they are missing
(a developer's machine) the tests are skipped, except under CI=true, where a missing
browser is a failure: CI must never pass by not running them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser() -> None:
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("chromium and chromium-driver are not installed: .ci/run must install them")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


def start_browser(profile: Path, width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The flags keep Chromium from phoning home: this machine's network is closed, and
    # background connections would only slow the start and fill the log.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(profile / "downloads"),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def screenshot(driver, name: str, fallback: Path) -> Path:
    """Save a screenshot; into $SCREENSHOTS_DIR when set (how docs/screenshots is refreshed)."""
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def click_and_wait(driver, element, locator, timeout: float = 15):
    """Click what loads a new page, wait until the old page is gone and `locator` (a
    (By, value) pair) is on the new one; the element found. A click returns before the
    navigation ends, so looking right after it can find the old page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, timeout).until(seen.staleness_of(old))
    return WebDriverWait(driver, timeout).until(seen.presence_of_element_located(locator))
