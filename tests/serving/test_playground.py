"""The playground page in a real headless Chromium (Debian's, driven by Playwright) against a live server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import live_server, wait_until

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's binary (/usr/bin/chromium is a wrapper script)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLIDER_VALUES = {"max_tokens": "7", "temperature": "0.35", "top_k": "12", "top_p": "0.8"}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, api_server):
    """The playground, loaded and connected; `page.problems` collects console errors and page errors."""
    page = browser.new_page(viewport={"width": 1200, "height": 850})
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(api_server.url + "/")
    page.wait_for_selector("#status:text-is('ready')")
    yield page
    page.close()


def submit_and_capture(page) -> dict:
    """Click Submit; the JSON body the page sent (the answer is awaited too)."""
    with page.expect_request("**/v1/chat/completions") as request:
        page.click("#submit")
    page.wait_for_selector("#status:text-matches('^done')")
    return json.loads(request.value.post_data)


def test_the_page_loads_without_console_errors(page, tiny_model):
    assert page.text_content("#model") == str(tiny_model)
    assert page.get_attribute("#max_tokens", "max") == "255"  # from the server: its 256-token window
    assert not page.is_disabled("#submit")
    assert page.problems == []


def test_moving_each_slider_changes_the_request_sent(page):
    page.fill("#prompt", "Hello")
    page.fill("#max_tokens", SLIDER_VALUES["max_tokens"])
    before = submit_and_capture(page)
    for name, value in SLIDER_VALUES.items():
        if name != "max_tokens":
            assert before[name] != float(value)
            page.fill(f"#{name}", value)
            assert page.text_content(f"#{name}-value") == value
        sent = submit_and_capture(page)
        assert sent[name] == float(value)
    page.fill("#seed", "42")
    page.fill("#stop-strings", "\\n\nEND")
    sent = submit_and_capture(page)
    assert sent["seed"] == 42 and sent["stop"] == ["\\n", "END"]
    assert sent["messages"] == [{"role": "user", "content": "Hello"}] and sent["stream"] is True
    assert page.problems == []


def test_submit_streams_text_into_the_page(page):
    page.fill("#prompt", "Tell me a story.")
    page.fill("#max_tokens", "60")
    page.fill("#seed", "3")
    page.evaluate("""() => {
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('output'),
                                                               {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#submit")
    page.wait_for_selector("#status:text-matches('^done')")
    assert page.evaluate("window.updates") > 1  # the text came in pieces
    assert len(page.text_content("#output")) > 0
    assert int(page.text_content("#token-count")) > 0
    assert page.problems == []


def test_stop_aborts_and_metrics_count_a_cancelled_request(browser, tiny_model):
    with live_server(tiny_model, max_model_len=256) as live:
        engine = live.state.backend.engine
        step = engine.step
        engine.step = lambda: time.sleep(0.05) or step()  # a slow model, so Stop comes mid-answer
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(live.url + "/")
        page.wait_for_selector("#status:text-is('ready')")
        page.fill("#prompt", "Tell me a long story.")
        page.fill("#max_tokens", "200")
        page.fill("#temperature", "0")
        page.click("#submit")
        page.wait_for_function("Number(document.getElementById('token-count').textContent) > 0")
        page.click("#stop")
        page.wait_for_selector("#status:text-is('stopped')")
        assert int(page.text_content("#token-count")) < 200
        wait_until(lambda: live.metric("lmlab_cancelled_requests_total") == 1, 30,
                   "the server to count the cancelled request")
        page.close()


def test_the_probability_view_shows_5_alternatives_for_a_token(page):
    page.fill("#prompt", "Hello")
    page.fill("#max_tokens", "6")
    page.fill("#temperature", "0")  # greedy: the same 6 tokens every run
    page.check("#show-probabilities")
    sent = submit_and_capture(page)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert page.locator("#output .token").count() == 6
    page.click("#output .token >> nth=1")
    assert page.locator("#alternatives tr").count() == 5
    assert page.is_visible("#alternatives")
    assert page.problems == []


def test_an_api_key_server_refuses_the_page_until_the_key_is_typed(browser, tiny_model):
    with live_server(tiny_model, max_model_len=64, api_key="sesame") as live:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(live.url + "/")
        page.wait_for_selector("#status:text-is('needs an API key')")
        assert page.is_visible("#key-panel") and page.is_disabled("#submit")
        page.fill("#api-key", "open")
        page.click("#connect")
        page.wait_for_selector("#error:text-is('The API key is wrong.')")
        assert page.is_disabled("#submit")
        page.fill("#api-key", "sesame")
        page.click("#connect")
        page.wait_for_selector("#status:text-is('ready')")
        assert not page.is_visible("#key-panel")
        page.fill("#prompt", "Hello")
        page.fill("#max_tokens", "4")
        page.click("#submit")
        page.wait_for_selector("#status:text-matches('^done')")
        page.close()
