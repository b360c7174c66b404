"""The official `openai` client against a live `lmlab serve`: every endpoint and request field, with
texts checked against `lmlab generate` and log-probabilities against the model's own distribution."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from lmlab.cli.main import main as lmlab_main
from lmlab.hub.resolve import load_model

from .conftest import live_server

PROMPT = "Good morning, how are you today?"


def lmlab_generate(capsys, *args: str) -> str:
    """What `lmlab generate ARGS` prints as the answer."""
    capsys.readouterr()
    assert lmlab_main(["generate", *args]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_models_lists_the_served_model(api_server, tiny_model):
    models = api_server.client().models.list()
    assert [m.id for m in models.data] == [str(tiny_model)]


def test_the_server_decodes_with_fused_projections_as_the_inference_commands(api_server):
    attention = api_server.state.backend.engine.model.decoder.layers[0].attn
    assert attention.qkv_proj is not None and "q_proj" not in attention._modules


def test_greedy_completion_equals_lmlab_generate(api_server, tiny_model, capsys):
    answer = api_server.client().completions.create(model=str(tiny_model), prompt=PROMPT, max_tokens=12,
                                                    temperature=0)
    expected = lmlab_generate(capsys, str(tiny_model), "--prompt", PROMPT, "--no-chat", "--max-new-tokens", "12")
    assert answer.choices[0].text == expected
    assert answer.choices[0].finish_reason in ("length", "stop")
    ids = load_model(str(tiny_model)).tokenizer.encode(PROMPT, add_special_tokens=True)
    assert answer.usage.prompt_tokens == len(ids)
    assert answer.usage.completion_tokens == 12 or answer.choices[0].finish_reason == "stop"


def test_int8_weights_answer_as_lmlab_generate_with_int8(tiny_model, capsys):
    with live_server(tiny_model, max_model_len=64, dtype="int8") as live:
        answer = live.client().completions.create(model=str(tiny_model), prompt=PROMPT, max_tokens=10, temperature=0)
    expected = lmlab_generate(capsys, str(tiny_model), "--prompt", PROMPT, "--no-chat", "--max-new-tokens", "10",
                              "--dtype", "int8")
    assert answer.choices[0].text == expected


def test_sampled_completion_equals_lmlab_generate_with_the_same_seed(api_server, tiny_model, capsys):
    answer = api_server.client().completions.create(model=str(tiny_model), prompt=PROMPT, max_tokens=15,
                                                    temperature=0.9, top_p=0.95, seed=7,
                                                    extra_body={"top_k": 40})
    expected = lmlab_generate(capsys, str(tiny_model), "--prompt", PROMPT, "--no-chat", "--max-new-tokens", "15",
                              "--do-sample", "--temperature", "0.9", "--top-p", "0.95", "--top-k", "40",
                              "--seed", "7")
    assert answer.choices[0].text == expected


def test_chat_equals_lmlab_generate_in_the_chat_template(api_server, tiny_model, capsys):
    answer = api_server.client().chat.completions.create(
        model=str(tiny_model), messages=[{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": PROMPT}],
        max_tokens=10, temperature=0)
    expected = lmlab_generate(capsys, str(tiny_model), "--prompt", PROMPT, "--system", "Be brief.",
                              "--max-new-tokens", "10")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected


def test_streamed_chat_with_usage_equals_the_whole_answer(api_server, tiny_model):
    client = api_server.client()
    request = dict(model=str(tiny_model), messages=[{"role": "user", "content": PROMPT}], max_tokens=20,
                   temperature=0.8, seed=3)
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
           [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_with_a_seed(api_server, tiny_model):
    client = api_server.client()
    request = dict(model=str(tiny_model), prompt=PROMPT, max_tokens=10, temperature=1.0)
    three = client.completions.create(**request, n=3, seed=11)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.text for c in three.choices}) > 1
    assert [c.text for c in client.completions.create(**request, n=3, seed=11).choices] == \
           [c.text for c in three.choices]
    # choice j is drawn with seed + j
    one = client.completions.create(**request, seed=12)
    assert one.choices[0].text == three.choices[1].text
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once


def test_a_list_of_prompts_and_token_ids(api_server, tiny_model):
    client = api_server.client()
    tokenizer = load_model(str(tiny_model)).tokenizer
    second = "The weather is"
    both = client.completions.create(model=str(tiny_model), prompt=[PROMPT, second], max_tokens=6, temperature=0)
    as_ids = client.completions.create(model=str(tiny_model), prompt=tokenizer.encode(second, add_special_tokens=True),
                                       max_tokens=6, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].text == as_ids.choices[0].text


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_same_seed_gives_the_same_tokens_alone_and_among_8_concurrent_requests(api_server, tiny_model,
                                                                                   temperature):
    client = api_server.client()

    def ask(i: int) -> str:
        return client.completions.create(model=str(tiny_model), prompt=f"{PROMPT} {'and more ' * i}", max_tokens=24,
                                         temperature=temperature, seed=100 + i).choices[0].text

    alone = [ask(i) for i in (0, 5)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert [together[0], together[5]] == alone


def test_stop_strings_end_the_text_and_never_leak(api_server, tiny_model):
    client = api_server.client()
    request = dict(model=str(tiny_model), prompt=PROMPT, max_tokens=40, temperature=0.7, seed=1)
    full = client.completions.create(**request).choices[0].text
    stop = full[9:12]  # starts and ends inside tokens, most likely spanning two of them
    expected = full[:full.index(stop)]
    stopped = client.completions.create(**request, stop=[stop, "never appears"])
    assert stopped.choices[0].text == expected and stopped.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(**request, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_completion_logprobs_are_the_models_distribution(api_server, tiny_model):
    loaded = load_model(str(tiny_model))
    ids = loaded.tokenizer.encode(PROMPT, add_special_tokens=True)
    answer = api_server.client().completions.create(model=str(tiny_model), prompt=PROMPT, max_tokens=3,
                                                    temperature=0, logprobs=5)
    logprobs = answer.choices[0].logprobs
    with torch.no_grad():
        reference = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    best = reference.topk(5)
    assert len(logprobs.tokens) == 3 and len(logprobs.top_logprobs) == 3
    assert logprobs.token_logprobs[0] == pytest.approx(best.values[0].item(), abs=1e-4)
    # the 5 alternatives, keyed by their text (tokens that read the same share a key, as in OpenAI's shape)
    for value in logprobs.top_logprobs[0].values():
        assert min(abs(value - v) for v in best.values.tolist()) < 1e-4


def test_chat_logprobs_in_the_chat_shape(api_server, tiny_model):
    answer = api_server.client().chat.completions.create(
        model=str(tiny_model), messages=[{"role": "user", "content": PROMPT}], max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=4)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for token in content:
        assert len(token.top_logprobs) == 4
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)  # greedy: the most likely token
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs),
                                                                 reverse=True)
