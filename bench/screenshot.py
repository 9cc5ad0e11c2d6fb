"""A screenshot of the web app after one click on Generate, for the README.

    python bench/screenshot.py --model cats --out docs/img/serve.png

Drives Debian's chromium (`/usr/bin/chromium`) headless through Playwright.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright
from serve_batching import start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--best-of", default="6")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--out", type=Path, default=Path("docs/img/serve.png"))
    args = parser.parse_args()
    url, _ = start(args.model)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 800, "height": 720})
        page.goto(url)
        page.fill("#seed", args.seed)
        page.fill("#n", args.best_of)
        page.click("#generate")
        page.wait_for_function("document.getElementById('result').src.startsWith('data:image/png')", timeout=120_000)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
