"""Screenshot of the playground with a finished answer from the embedded SmolLM2, for the README.

Serves smollm2-135m-instruct on a free loopback port, drives Debian's headless Chromium with Playwright
(as the browser tests do), asks one question with the token probabilities shown, opens the
alternatives of one token, and saves docs/playground.png.

    python scripts/playground_screenshot.py [--out docs/playground.png] [--threads 1]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

from lmlab.serving import ServeSettings, build_server

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
    server = build_server(ServeSettings(log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(300_000)
            while not server.started:
                time.sleep(0.1)
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
    finally:
        server.should_exit = True
        thread.join(60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
