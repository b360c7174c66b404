"""Screenshot of the playground with a finished answer from the embedded SmolLM2, for the README.

Serves smollm2-135m-instruct on a free loopback port, drives Debian's headless Chromium with Playwright
(as the browser tests do), asks one question with the token probabilities shown, opens the
alternatives of one token, and saves docs/playground.png.

    python scripts/playground_screenshot.py [--out docs/playground.png] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

from lmlab.serving import ServeSettings, build_server, serve_in_thread

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "What is a language model? Answer in two sentences."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    parser.add_argument("--threads", type=int, help="torch threads (on a busy machine, 1 avoids contention)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with serve_in_thread(build_server(ServeSettings(log_level="warning"))) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        page.wait_for_selector("#status:text-is('ready')")
        page.fill("#prompt", QUESTION)
        page.fill("#max_tokens", "80")
        page.fill("#temperature", "0.3")
        page.fill("#seed", "1")
        page.check("#show-probabilities")
        page.click("#submit")
        page.wait_for_selector("#status:text-matches('^done')")
        page.click("#output .token >> nth=4")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
