"""`lmlab generate` and `lmlab chat` through the CLI entry point: outputs, and one clear line for bad input."""

from __future__ import annotations

import io

import pytest

from lmlab.cli.main import main
from lmlab.generation import GenerationConfig, generate
from lmlab.generation.chat import chat_ids, user_message


@pytest.mark.parametrize("option,value,message", [
    ("--top-p", "1.5", "top_p must be in (0, 1]"),
    ("--top-p", "0", "top_p must be in (0, 1]"),
    ("--temperature", "-1", "temperature must be >= 0"),
    ("--top-k", "-3", "top_k must be an integer >= 0"),
    ("--max-new-tokens", "0", "max_new_tokens must be an integer >= 1"),
    ("--num-beams", "0", "num_beams must be an integer >= 1"),
])
def test_bad_generation_parameters_give_one_line(capsys, option, value, message):
    assert main(["generate", "--prompt", "hello", "--do-sample", option, value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmlab: error: ") and message in err


def test_prompt_longer_than_the_context_window_gives_one_line(capsys, tiny_checkpoint):
    folder, _, _ = tiny_checkpoint
    assert main(["generate", str(folder), "--no-chat", "--prompt", "cakes and donuts " * 40]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "context window holds 64 tokens" in err and "--truncate" in err
    assert main(["generate", str(folder), "--no-chat", "--prompt", "cakes and donuts " * 40, "--truncate",
                 "--max-new-tokens", "4"]) == 0


def test_generate_prints_the_greedy_text_in_the_chat_template(capsys, tiny_checkpoint):
    folder, model, tokenizer = tiny_checkpoint
    expected = generate(model, [chat_ids(tokenizer, user_message("a banana muffin"))],
                        GenerationConfig(max_new_tokens=12), tokenizer)[0].text
    assert main(["generate", str(folder), "--prompt", "a banana muffin", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "12 new tokens" in out.err


def test_generate_batch_stream_stdin_and_distribution(capsys, monkeypatch, tiny_checkpoint):
    folder, model, tokenizer = tiny_checkpoint
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.8, seed=3)
    expected = [c.text for c in generate(model, ["The baker", "A girl asked"], config, tokenizer)]
    args = ["generate", str(folder), "--no-chat", "--max-new-tokens", "10", "--do-sample", "--temperature", "0.8",
            "--seed", "3"]
    assert main([*args, "--prompt", "The baker", "--prompt", "A girl asked"]) == 0
    assert capsys.readouterr().out == f"--- prompt 1 ---\n{expected[0]}\n--- prompt 2 ---\n{expected[1]}\n"

    monkeypatch.setattr("sys.stdin", io.StringIO("A girl asked"))
    assert main([*args, "--stream", "--show-distribution", "3"]) == 0
    out = capsys.readouterr().out
    table, text = out.split("\n\n", 1)
    assert table.splitlines()[0].split() == ["next", "token", "model", "temperature", "0.8"]
    assert len(table.splitlines()) == 1 + 3 + 1 + 1
    assert text == generate(model, "A girl asked", config, tokenizer)[0].text + "\n"


def test_chat_keeps_the_conversation_in_the_window(capsys, monkeypatch, tiny_checkpoint):
    folder, _, _ = tiny_checkpoint
    lines = ["bread and cakes", "a banana muffin", "/reset", "donuts", "cinnamon " * 60, "a paper bag", "/exit",
             "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 4  # one reply per message that fits
    assert "(new conversation)" in out.err
    assert "lmlab: error: this message is too long" in out.err
    assert "oldest messages to stay within the 64-token context window" in out.err


def test_chat_needs_a_chat_template(capsys):
    assert main(["chat", "tiny-llama"]) == 1
    assert "no chat template" in capsys.readouterr().err


def test_stop_strings_read_backslash_n_as_a_new_line():
    from lmlab.cli.generate import generation_config
    from lmlab.cli.main import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "hi", "--stop", "\\n", "--stop", "END"])
    assert generation_config(args).stop == ("\n", "END")


def test_threads_option_sets_torch_threads_and_refuses_zero(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "inspect", "params", "tiny-gpt2"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["--threads", "0", "inspect", "params", "tiny-gpt2"]) == 1
    assert capsys.readouterr().err == "lmlab: error: --threads must be at least 1, got 0\n"
