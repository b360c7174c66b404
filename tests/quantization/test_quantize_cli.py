"""`lmlab quantize` end to end on a tiny checkpoint with a tokenizer, and one clear line for bad input."""

from __future__ import annotations

import pytest
import torch

from lmlab.cli.main import main
from lmlab.config import get_preset
from lmlab.evaluation.perplexity import perplexity
from lmlab.hub.checkpoint import load_checkpoint, save_checkpoint
from lmlab.models import Transformer
from lmlab.hub.quantized_checkpoint import load_quantized
from lmlab.hub.quantize import default_eval_text
from lmlab.tokenizers import train_bpe

TEXT = ("The lighthouse keeper counted the ships every evening. Some nights there were three, some nights none, "
        "and once, in a storm, a small boat with a red sail that never came back into view.\n") * 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    text = folder.parent / "text.txt"
    text.write_text(TEXT)
    tokenizer = train_bpe([text], vocab_size=300, show_progress=False)
    model = Transformer(get_preset("tiny-llama")).init_weights(seed=0).eval()
    save_checkpoint(model, folder, tokenizer=tokenizer)
    return folder, text, tokenizer


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_int8_prints_sizes_and_the_perplexity_of_the_written_checkpoint(capsys, checkpoint, tmp_path):
    folder, text, tokenizer = checkpoint
    out_dir = tmp_path / "int8"
    code, out, _ = run(capsys, "quantize", folder, "--out", out_dir, "--eval-text", text, "--eval-tokens", 300,
                       "--scheme", "zeropoint", "--granularity", "group", "--group-size", 32)
    assert code == 0, out
    ids = tokenizer.encode(TEXT)[:300]
    before = perplexity(load_checkpoint(folder), ids, max_length=256, stride=128, progress=False).ppl
    after = perplexity(load_quantized(out_dir), ids, max_length=256, stride=128, progress=False).ppl
    assert "before (fp32)" in out and "after (int8 zeropoint, per group of 32)" in out
    assert f"{before:.4f}" in out and f"{after:.4f} ({after / before - 1:+.2%})" in out
    assert "perplexity on 300 tokens of" in out and f"wrote {out_dir}" in out
    fp32_bytes = 4 * sum(p.numel() for p in load_checkpoint(folder).parameters())  # the tied head once
    assert f"weights     {fp32_bytes / 1e3:.3g} KB" in out
    assert f"({folder.name})" in out  # the source files' size


def test_bf16_is_a_cast_and_defaults_to_the_shipped_dialogues(capsys, tmp_path):
    code, out, _ = run(capsys, "quantize", "tiny-llama", "--dtype", "bf16", "--out", tmp_path / "bf16", "--no-eval")
    assert code == 0
    assert "after (bf16)" in out and "perplexity" not in out
    assert load_quantized(tmp_path / "bf16", torch.bfloat16).tok_emb.weight.dtype == torch.bfloat16
    assert "#Person1#:" in default_eval_text()


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "int3"], "unknown quantization dtype 'int3' (did you mean: int8, int4?); choose from fp16, bf16, "
                          "int8, int4"),
    (["--dtype", "int4"], "int4 cannot quantize layer decoder.layers.0.ffn"),
    (["--dtype", "int4", "--group-size", "48"], "int4 group size must be one of 32, 64, 128, not 48"),
    (["--dtype", "int4", "--scheme", "absmax"], "--scheme only applies to --dtype int8"),
    (["--dtype", "bf8"], "unknown quantization dtype 'bf8' (did you mean: bf16"),
    (["--scheme", "absmx"], "unknown quantization scheme 'absmx' (did you mean: absmax?)"),
    (["--granularity", "row"], "unknown granularity 'row'"),
    (["--granularity", "group", "--group-size", "0"], "group size must be a positive number of columns, not 0"),
    (["--dtype", "bf16", "--scheme", "zeropoint"], "--scheme only applies to --dtype int8"),
    (["--eval-tokens", "1"], "the evaluation needs at least 2 tokens"),
    (["--eval-text", "missing.txt"], "cannot read the evaluation text missing.txt"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, checkpoint, tmp_path, argv, message):
    folder, _, _ = checkpoint
    code, out, err = run(capsys, "quantize", folder, "--out", tmp_path / "q", *argv)
    assert code == 1
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "q").exists()


def test_a_model_without_a_tokenizer_needs_no_eval_and_a_quantized_folder_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "quantize", "tiny-llama", "--out", tmp_path / "q")
    assert code == 1 and "tiny-llama is not one: skip the evaluation (--no-eval)" in err
    assert run(capsys, "quantize", "tiny-llama", "--out", tmp_path / "q", "--no-eval")[0] == 0
    code, _, err = run(capsys, "quantize", tmp_path / "q", "--out", tmp_path / "again", "--no-eval")
    assert code == 1 and "already quantized" in err
