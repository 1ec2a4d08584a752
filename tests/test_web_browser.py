"""The web studio in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

Loads the page, checks bad input gets a message in the page, uploads the bundled content and
style images, starts a tiny run on random weights, sees the preview change as it forms, stops,
downloads the result and checks it is a PNG of the requested size. Skips, saying why, where
no browser can be had (``.ci/run`` installs one).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("aiohttp", reason="the web studio needs aiohttp: pip install '.[web]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from nst_jax import image_io  # noqa: E402
from nst_jax.web.server import StudioServer  # noqa: E402

TIMEOUT = 240  # a shared 2-core machine compiles slowly; this is a ceiling, not a measurement


def chromium_driver(download_dir: Path):
    """Headless Chromium through chromedriver, downloads going to ``download_dir``; skips the
    test (with the reason) where either is missing or the browser does not start."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (see .ci/run)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
    })
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    except WebDriverException as e:
        pytest.skip(f"Chromium did not start: {str(e).strip().splitlines()[0]}")
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


@pytest.fixture()
def page(weights, tmp_path):
    driver = chromium_driver(tmp_path / "downloads")
    try:
        with StudioServer(weights, tmp_path / "work") as server:
            driver.get(server.url)
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "start").is_enabled())
            yield driver
    finally:
        driver.quit()


def _message(driver, expected: str) -> str:
    WebDriverWait(driver, 60).until(lambda d: expected in d.find_element(By.ID, "message").text)
    return driver.find_element(By.ID, "message").text


def _set(driver, field: str, value: str) -> None:
    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def test_live_preview_stop_and_download(page, tmp_path):
    d = page
    weights_badge = d.find_element(By.ID, "weights")
    assert "RANDOM" in weights_badge.text
    assert "random" in weights_badge.get_attribute("class").split()
    assert weights_badge.value_of_css_property("background-color") == "rgba(192, 22, 27, 1)"

    # Bad input gets a message in the page, and the server keeps serving.
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(200 * 2**20)  # a sparse 200 MB file
    d.find_element(By.ID, "content-file").send_keys(str(big))
    assert _message(d, "big.jpg") == "big.jpg is 200 MB; the limit is 25 MB per image"
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image")
    d.find_element(By.ID, "content-file").send_keys(str(notes))
    d.find_element(By.CSS_SELECTOR, "#style-samples button[data-name=hubble]").click()
    d.find_element(By.ID, "start").click()
    assert "'notes.txt' cannot be used: not a recognised image file" in _message(d, "notes.txt")
    d.find_element(By.CSS_SELECTOR, "#style-list button").click()  # remove that style again
    d.find_element(By.ID, "content-file").send_keys(str(image_io.sample_path("chelsea")))
    d.find_element(By.ID, "style-files").send_keys(str(image_io.sample_path("strokes")))
    assert len(d.find_elements(By.CSS_SELECTOR, "#style-list li")) == 1
    _set(d, "steps", "lots")
    d.find_element(By.ID, "start").click()
    assert "steps must be a whole number, got 'lots'" in _message(d, "lots")

    # A tiny run: the preview must change at least twice as the image forms.
    Select(d.find_element(By.ID, "preset")).select_by_value("tiny")
    _set(d, "size", "32")
    _set(d, "steps", "5000")
    _set(d, "preview_every", "5")
    d.execute_script("""
        window.previews = [];
        const img = document.getElementById('preview');
        new MutationObserver(() => window.previews.push(img.src))
            .observe(img, {attributes: true, attributeFilter: ['src']});
    """)
    d.find_element(By.ID, "start").click()
    WebDriverWait(d, TIMEOUT, poll_frequency=0.1).until(
        lambda d: len(set(d.execute_script("return window.previews"))) >= 3
    )
    previews = d.execute_script("return window.previews")
    assert all(p.startswith("data:image/png;base64,") for p in previews)
    assert d.find_element(By.ID, "message").text == ""
    assert d.find_element(By.ID, "step").text.split(" / ")[1].startswith("5000")
    assert not d.find_element(By.ID, "download").is_displayed()

    d.find_element(By.ID, "stop").click()
    WebDriverWait(d, TIMEOUT).until(lambda d: d.find_element(By.ID, "download").is_displayed())
    assert "stopped: best image kept" in d.find_element(By.ID, "status").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#strip figure")) == 1

    d.find_element(By.ID, "download").click()
    downloads = tmp_path / "downloads"
    deadline = time.monotonic() + 60
    while not list(downloads.glob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    files = list(downloads.glob("*.png"))
    assert len(files) == 1, list(downloads.iterdir()) if downloads.exists() else "no downloads"
    with Image.open(files[0]) as im:
        im.load()
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (32, 21)  # the 256x170 sample at the requested 32 px
