"""Bad input and options that would do nothing: one clear line and a non-zero exit, before any work.

Covers issue 15's case 5 (tracebacks on input), case 8 (options silently ignored) and the limits checked
before work (numbers that would need more memory than the machine has).
"""

from __future__ import annotations

import json

import pytest

from lmlab.cli.main import main
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.planning import limits
from lmlab.planning.limits import available_memory_bytes, check_fits
from tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny", max_seq_len=64))


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f"{i}", "text": f"t {i}",
                                        "label": "ab"[i % 2]}) + "\n" for i in range(20)))
    return str(path)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmlab: error: "), err
    return err


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "n_layer must be an integer, not 'abc'"),
    ("1.5", "n_layer must be an integer, not 1.5"),
    ("true", "n_layer must be an integer, not True"),
    ("[2]", "n_layer must be an integer, not [2]"),
])
def test_set_with_a_value_of_the_wrong_type(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert message in one_line_error(capsys, ["pretrain", "--set", f"n_layer={value}", "--out", str(out)])
    assert not out.exists()


def test_model_config_fields_are_typed():
    with pytest.raises(LmlabError, match="dropout must be a finite number, not nan"):
        ModelConfig.from_dict({"dropout": float("nan")})
    with pytest.raises(LmlabError, match="extra must be a JSON object"):
        ModelConfig.from_dict({"extra": 3})
    with pytest.raises(LmlabError, match="a JSON object of fields, not list"):
        ModelConfig.from_dict([1, 2])
    assert ModelConfig.from_dict({"dropout": 0, "n_layer": 3}).n_layer == 3  # an int is a fine float


def test_encoder_cannot_be_finetuned_for_generation(tmp_path, capsys, records):
    err = one_line_error(capsys, ["finetune", "tiny-bert", "--data", records, "--out", str(tmp_path / "ft")])
    assert "tiny-bert is an encoder (BERT-like) model" in err and "--task classification" in err
    assert not (tmp_path / "ft").exists()


def test_more_steps_than_memory_is_refused_with_the_estimate(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(capsys, ["pretrain", "--steps", "1000000000000", "--out", str(out)])
    # the data order keeps 25 bytes per drawn sequence: 10^12 steps x 32 sequences x 25 B = 800 TB
    assert "1,000,000,000,000 steps x 32 sequences needs about 800 TB of memory" in err
    assert not out.exists()


def test_a_model_larger_than_memory_is_refused(capsys):
    err = one_line_error(capsys, ["generate", "gpt3-175b", "--prompt", "hi"])
    # 174.6B parameters (Brown et al. 2020) x 4 bytes
    assert "gpt3-175b preset (174,604,259,328 fp32 weights) needs about 698 GB" in err


def test_beams_beyond_memory_are_refused(capsys, tiny):
    err = one_line_error(capsys, ["generate", tiny, "--prompt", "hi", "--num-beams", "10000000"])
    assert "the KV cache of 10,000,000 sequence(s)" in err


def test_check_fits_compares_with_the_memory_available(monkeypatch):
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 2_000_000_000)
    check_fits("this", 1_999_999_999)
    with pytest.raises(LmlabError, match=r"this needs about 2.5 GB of memory, more than the 2 GB .*: do less"):
        check_fits("this", 2.5e9, "do less")


def test_available_memory_is_read_from_the_machine():
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < available_memory_bytes() <= total


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--prompt", "hi", "--temperature", "0.5"], "--temperature does nothing without --do-sample"),
    (["generate", "--prompt", "hi", "--top-p", "0.9"], "--top-p does nothing without --do-sample"),
    (["generate", "--prompt", "hi", "--seed", "3"], "--seed does nothing without --do-sample"),
    (["generate", "--prompt", "hi", "--length-penalty", "2"], "--length-penalty ranks beam-search hypotheses"),
    (["chat", "--top-k", "5"], "--top-k does nothing without --do-sample"),
    (["icl", "--temperature", "0.5"], "add --do-sample (or --sweep it), or drop it"),
    (["icl", "--temperature", "0.5", "--sweep", "temperature=1,2"], "--temperature is replaced by the values of "
                                                                    "--sweep temperature"),
    (["evaluate", "--data", "x.txt", "--template", "{x}"], "--template only applies when the model answers"),
    (["evaluate", "--data", "x.jsonl", "--metric", "rouge", "--stride", "4"], "--stride only applies to --metric "
                                                                               "perplexity"),
    (["evaluate", "--data", "x.jsonl", "--metric", "accuracy", "--average", "micro"], "--average only applies to "
                                                                                       "--metric f1"),
    (["evaluate", "--data", "x.jsonl", "--metric", "f1", "--positive-label", "a"], "--positive-label only applies"),
    (["evaluate", "tiny-llama", "--data", "x.jsonl", "--metric", "f1", "--prediction-field", "p"],
     "MODEL is not used with --prediction-field"),
    (["finetune", "--data", "x.csv", "--task", "classification", "--template", "{x}", "--out", "o"],
     "--template only applies to --task generation"),
    (["finetune", "--data", "x.csv", "--text-field", "t", "--out", "o"], "--text-field only applies to --task "
                                                                         "classification"),
    (["finetune", "--data", "x.csv", "--method", "full", "--lora-rank", "4", "--out", "o"],
     "--lora-rank only applies to --method lora"),
    (["finetune", "--data", "x.csv", "--max-new-tokens", "9", "--out", "o"], "--max-new-tokens sets the length"),
    (["finetune", "--data", "x.csv", "--val", "v.csv", "--val-fraction", "0.2", "--out", "o"],
     "--val-fraction does nothing with --val"),
    (["quantize", "--group-size", "32", "--out", "o"], "--group-size only applies to --granularity group"),
    (["quantize", "--no-eval", "--eval-tokens", "9", "--out", "o"], "--eval-tokens does nothing with --no-eval"),
    (["pretrain", "--tokenizer", "char", "--vocab-size", "99", "--out", "o"], "--vocab-size sizes the BPE"),
    (["pretrain", "--txt-split", "paragraph", "--out", "o"], "--txt-split only applies to raw corpus files"),
])
def test_an_option_that_would_do_nothing_is_refused(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(capsys, argv)
    assert not (tmp_path / "o").exists()


def test_an_option_at_its_default_is_not_refused(capsys, tiny):
    assert main(["generate", tiny, "--no-chat", "--prompt", "hi", "--temperature", "1.0", "--max-new-tokens", "2"]) == 0


def test_max_new_tokens_beyond_the_context_window_gets_a_note(capsys, tiny):
    assert main(["generate", tiny, "--no-chat", "--prompt", "hello there", "--max-new-tokens", "500"]) == 0
    err = capsys.readouterr().err
    assert "not --max-new-tokens 500: the prompt and the new tokens filled the model's 64-token context window" in err
    assert main(["generate", tiny, "--no-chat", "--prompt", "hello there", "--max-new-tokens", "5"]) == 0
    assert "note" not in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "{tiny}", "--prompt", "hi", "--show-distribution", "-5"], "must be at least 1, not -5"),
    (["evaluate", "{tiny}", "--data", "{text}", "--stride", "0"], "the stride must be at least 1 token, not 0"),
    (["evaluate", "{tiny}", "--data", "{text}", "--max-length", "0"], "must be at least 1 token, not 0"),
    (["evaluate", "{tiny}", "--data", "{records}", "--metric", "rouge", "--template", "{prompt.x}"],
     "cannot fill the template"),
    (["evaluate", "{tiny}", "--data", "{records}", "--metric", "rouge", "--template", "{prompt!z}"],
     "without !conversion or :format"),
    (["pretrain", "--seq-len", "0", "--out", "{out}"], "sequence length must be at least 2, not 0"),
    (["pretrain", "--checkpoint-every", "0", "--out", "{out}"], "checkpoint every must be at least 1, not 0"),
    (["pretrain", "--nproc", "0", "--out", "{out}"], "--nproc must be at least 1, not 0"),
    (["finetune", "{tiny}", "--data", "{records}", "--batch-size", "0", "--out", "{out}"],
     "batch size must be at least 1, not 0"),
    (["finetune", "{tiny}", "--data", "{records}", "--grad-accum", "0", "--out", "{out}"],
     "grad accum must be at least 1, not 0"),
    (["finetune", "{tiny}", "--data", "{records}", "--eval-every", "0", "--out", "{out}"],
     "eval every must be at least 1, not 0"),
    (["finetune", "{tiny}", "--data", "{records}", "--steps", "1000000000000", "--out", "{out}"],
     "the data order of 1,000,000,000,000 steps x 8 sequences needs about 200 TB"),
])
def test_bad_numbers_give_one_line(tmp_path, capsys, tiny, records, argv, message):
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is a text. " * 5)
    values = {"{tiny}": tiny, "{records}": records, "{text}": str(text), "{out}": str(tmp_path / "out")}
    assert message in one_line_error(capsys, [values.get(a, a) for a in argv])
    assert not (tmp_path / "out").exists()
