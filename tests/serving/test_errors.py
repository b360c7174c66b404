"""Every error status of the API, provoked: OpenAI's error object, the right status, the field named,
and the server still serving afterwards."""

from __future__ import annotations

import json
import threading

import httpx2 as httpx
import openai
import pytest

import uvicorn

from lmlab.generation.engine import Engine
from lmlab.serving import Backend, ServerLimits, create_app

from .conftest import healthy, live_server, running, wait_until

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def post(url: str, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json",
                                                            **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def still_serving(url: str) -> None:
    assert post(url, "/v1/chat/completions", CHAT).status_code == 200


@pytest.mark.parametrize("body, param", [
    (b'{"messages": [{"role": "user", "content": "Hi"}', None),  # malformed JSON
    (b'[1, 2]', None),
    ({**CHAT, "max_tokens": "5"}, "max_tokens"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "messages": "Hello"}, "messages"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({**CHAT, "stream": "yes"}, "stream"),
    ({**CHAT, "max_tokens": -3}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({**CHAT, "top_p": 1.5}, "top_p"),
    ({**CHAT, "temperature": -0.1}, "temperature"),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "top_logprobs": 3}, "top_logprobs"),
    ({**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({**CHAT, "presence_penalty": 2.5}, "presence_penalty"),
    ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 4}, "messages"),
])
def test_bad_chat_requests_are_400_naming_the_field(api_server, body, param):
    error = error_of(post(api_server.url, "/v1/chat/completions", body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    still_serving(api_server.url)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "Hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "Hi", "logprobs": 6}, "logprobs"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "Hi", "top_k": "ten"}, "top_k"),
])
def test_bad_completion_requests_are_400(api_server, body, param):
    assert error_of(post(api_server.url, "/v1/completions", body), 400)["param"] == param
    still_serving(api_server.url)


def test_a_prompt_longer_than_the_context_window_is_400_saying_both_lengths(api_server, tiny_model):
    prompt = "word " * 400
    error = error_of(post(api_server.url, "/v1/completions", {"prompt": prompt, "max_tokens": 4}), 400)
    assert error["code"] == "context_length_exceeded"
    assert "256" in error["message"] and "tokens long" in error["message"]
    n_tokens = int(error["message"].split(" tokens long")[0].split()[-1])
    assert n_tokens > 256
    with pytest.raises(openai.BadRequestError, match="context window holds 256"):
        api_server.client().chat.completions.create(model=str(tiny_model),
                                                    messages=[{"role": "user", "content": prompt}])
    still_serving(api_server.url)


def test_max_tokens_past_the_context_window_is_400(api_server):
    error = error_of(post(api_server.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 300}), 400)
    assert error["param"] == "max_tokens" and "300" in error["message"] and "256" in error["message"]


def test_unknown_model_and_route_are_404(api_server):
    with pytest.raises(openai.NotFoundError) as caught:
        api_server.client().chat.completions.create(model="gpt-9", messages=CHAT["messages"])
    assert caught.value.body["code"] == "model_not_found" and "gpt-9" in caught.value.body["message"]
    error_of(httpx.get(api_server.url + "/v1/nothing"), 404)
    error_of(post(api_server.url, "/v1/embeddings", {"input": "no encoder here"}), 404)
    still_serving(api_server.url)


def test_a_2_mb_body_is_413(api_server):
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    assert error_of(post(api_server.url, "/v1/chat/completions", body), 413)["code"] == "request_too_large"
    still_serving(api_server.url)


def test_the_api_key_guards_every_endpoint(tiny_model):
    with live_server(tiny_model, max_model_len=64, api_key="sesame") as live:
        for path in ("/v1/models", "/health", "/metrics", "/playground/defaults"):
            assert error_of(httpx.get(live.url + path), 401)["code"] == "invalid_api_key"
            wrong = httpx.get(live.url + path, headers={"Authorization": "Bearer sesam"})
            assert error_of(wrong, 401)["message"] == "the API key is wrong"
            assert httpx.get(live.url + path, headers={"Authorization": "Bearer sesame"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").chat.completions.create(model=str(tiny_model), messages=CHAT["messages"])
        assert live.client(api_key="sesame").chat.completions.create(model=str(tiny_model), max_tokens=3,
                                                                     messages=CHAT["messages"]).choices
        assert httpx.get(live.url + "/").status_code == 200  # the playground page asks for the key itself


def test_cors_is_closed_unless_an_origin_is_allowed(api_server, tiny_model):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    closed = httpx.request("OPTIONS", api_server.url + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    with live_server(tiny_model, max_model_len=64, cors_origins=("http://example.test",)) as live:
        opened = httpx.request("OPTIONS", live.url + "/v1/chat/completions", headers=preflight)
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == "http://example.test"
        other = httpx.request("OPTIONS", live.url + "/v1/chat/completions",
                              headers={**preflight, "Origin": "http://elsewhere.test"})
        assert "access-control-allow-origin" not in other.headers


def test_health_and_the_api_are_503_while_the_model_loads(api_server):
    """A server whose model is still loading (its loader waits for the test's signal)."""
    release = threading.Event()
    shared = api_server.state.backend

    def load() -> Backend:
        release.wait(60)
        return Backend(Engine(shared.engine.model, shared.tokenizer, slots=1, max_len=64), shared.tokenizer, "tiny")

    app = create_app(ServerLimits(), load)
    with running(uvicorn.Server(uvicorn.Config(app, log_level="warning")), wait=False) as live:
        assert httpx.get(live.url + "/health").json() == {"status": "loading"}
        assert httpx.get(live.url + "/health").status_code == 503
        loading = post(live.url, "/v1/chat/completions", CHAT)
        assert error_of(loading, 503)["code"] == "loading" and int(loading.headers["retry-after"]) >= 1
        release.set()
        wait_until(lambda: healthy(live.url), 60, "the load to finish")
        still_serving(live.url)


def test_a_draining_server_answers_503(tiny_model):
    with live_server(tiny_model, max_model_len=64) as live:
        live.server.on_signal()  # what SIGTERM does first, before uvicorn stops listening
        assert error_of(post(live.url, "/v1/chat/completions", CHAT), 503)["code"] == "shutting_down"
        assert httpx.get(live.url + "/health").json() == {"status": "shutting down"}
