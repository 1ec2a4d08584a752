"""Screenshot of the web studio mid-run, for README.md (``docs/web-studio.png``).

Starts the studio in-process (random weights unless ``--weights`` names real ones), drives it
with headless Chromium (Debian's ``chromium`` + ``chromium-driver``, as the browser test does):
one short run to put a result in the session strip, then a longer one, photographed while the
image forms, then stopped.

    python scripts/web_screenshot.py                      # writes docs/web-studio.png
    python scripts/web_screenshot.py --weights weights/vgg19.nst.h5 --size 256
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from nst_jax.weights.store import resolve_weights
from nst_jax.web.server import StudioServer

MAX_BYTES = 300 * 1024


def _driver(width: int, height: int):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        sys.exit("needs Chromium: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def _set(driver, field: str, value: str) -> None:
    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def _run(driver, *, preset: str, size: int, steps: int, every: int) -> None:
    Select(driver.find_element(By.ID, "preset")).select_by_value(preset)
    _set(driver, "size", str(size))
    _set(driver, "steps", str(steps))
    _set(driver, "preview_every", str(every))
    driver.find_element(By.ID, "start").click()


def _step(driver) -> int:
    text = driver.find_element(By.ID, "step").text.split(" / ")[0]
    return int(text) if text.isdigit() else 0


def _save_small(png: bytes, out: Path) -> int:
    """Writes the screenshot, reduced to a 256-colour palette if it is over ``MAX_BYTES``."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    if buf.tell() > MAX_BYTES:
        buf = io.BytesIO()
        im.quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return buf.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/web-studio.png")
    ap.add_argument("--weights", default="random", help="weights spec (default: random)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--at", type=float, default=0.4, help="photograph at this fraction of steps")
    ap.add_argument("--window", default="1280x900")
    args = ap.parse_args()
    width, height = (int(v) for v in args.window.split("x"))

    weights = resolve_weights(args.weights)
    driver = _driver(width, height)
    try:
        with tempfile.TemporaryDirectory(prefix="nst-jax-shot-") as work, \
                StudioServer(weights, work) as server:
            driver.get(server.url)
            wait = WebDriverWait(driver, 600, poll_frequency=0.1)
            wait.until(lambda d: d.find_element(By.ID, "start").is_enabled())
            driver.find_element(By.CSS_SELECTOR, "#content-samples button[data-name=chelsea]").click()
            driver.find_element(By.CSS_SELECTOR, "#style-samples button[data-name=strokes]").click()
            # A first, short run fills the session strip.
            _run(driver, preset=args.preset, size=args.size // 2, steps=60, every=10)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#strip figure"))
            _run(driver, preset=args.preset, size=args.size, steps=args.steps, every=10)
            wait.until(lambda d: _step(d) >= args.at * args.steps)
            png = driver.get_screenshot_as_png()
            driver.find_element(By.ID, "stop").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#strip figure")) == 2)
    finally:
        driver.quit()
    n = _save_small(png, Path(args.out))
    print(f"wrote {args.out} ({n // 1024} KB)")


if __name__ == "__main__":
    main()
