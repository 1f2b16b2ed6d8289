"""Screenshot of an explanation page (`transpose explain --html`) in headless Chromium, for the docs.

    transpose explain --model outputs/pretrain --image tests/data/realdata/coco/000000000785.jpg \\
        --box 280,44,218,346 --html explain.html
    .venv/bin/python scripts/explain_page_screenshot.py explain.html docs/figures/explain_page.png \\
        --keypoint left_wrist --layer 2

Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def browser(width: int, height: int) -> webdriver.Chrome:
    """Headless Chromium at a fixed window size."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="the .html page")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--keypoint", help="keypoint name to click (default: the page's start, the best-scoring)")
    parser.add_argument("--layer", type=int, help="1-based encoder layer (default: the last)")
    parser.add_argument("--affected", action="store_true", help="show affected areas")
    parser.add_argument("--size", type=int, nargs=2, default=(1000, 780), metavar=("W", "H"), help="window (1000 780)")
    args = parser.parse_args()
    if not args.page.is_file():
        raise SystemExit(f"{args.page}: no such page")
    driver = browser(*args.size)
    try:
        driver.get(args.page.resolve().as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!(window.explainState || {}).ready"))
        names = json.loads(driver.find_element(By.ID, "explain-meta").get_attribute("textContent"))["names"]
        if args.keypoint:
            if args.keypoint not in names:
                raise SystemExit(f"{args.page}: no keypoint {args.keypoint!r}; it has {', '.join(names)}")
            driver.find_element(By.ID, f"kp-{names.index(args.keypoint)}").click()
        if args.layer:
            slider = "const e = document.getElementById('layer'); e.value = arguments[0];"
            driver.execute_script(slider + " e.dispatchEvent(new Event('input'))", args.layer - 1)
        if args.affected:
            driver.find_element(By.ID, "affected").click()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"{args.out}: {driver.execute_script('return window.explainState')}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
