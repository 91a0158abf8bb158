"""A real headless Chromium (the distribution's package, driven by Selenium) and a live uvicorn server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest


def chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its chromedriver; skip without them, or fail when ``CI`` is set."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = (
        "headless browser test needs Chromium and its driver from the distribution's packages "
        "(Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"$CI is set, so the browser is required: {message}", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def headless_chromium(width: int = 1200, height: int = 900) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def upload_and_wait(driver, base_url: str, paths: list[str], timeout: float = 60) -> list:
    """Open the page, pick ``paths`` in its file input, and return the result cards once shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base_url + "/")
    WebDriverWait(driver, timeout).until(lambda d: "checkpoint" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "files").send_keys("\n".join(paths))
    WebDriverWait(driver, timeout).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(paths))
    return driver.find_elements(By.CSS_SELECTOR, ".result")
