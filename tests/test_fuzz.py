"""Property-based tests (Hypothesis) over the readers of everything users hand in.

Each input, however broken, either loads or raises LmlabError (one clear line in the CLI): never another
exception, never a hang. The inputs: GGUF files and safetensors checkpoints (small valid files written here,
then bytes overwritten, inserted or cut off), JSONL/JSON/CSV records and corpus files, chat-template messages
and templates, `--set FIELD=VALUE` values, and model configs (lmlab's and Hugging Face's config.json).
Example counts and deadlines are bounded so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.cli.pretrain import parse_overrides
from lmlab.config import ModelConfig, get_preset
from lmlab.data.readers import read_documents
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import load_checkpoint, save_checkpoint
from lmlab.hub.convert import config_from_hf
from lmlab.hub.gguf_export import write_gguf
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer
from lmlab.records import read_records
from lmlab.tokenizers import render_chat_template
from lmlab.training.pretrain import with_overrides
from tiny import CHATML, tiny_tokenizer

BOUNDED = settings(max_examples=40, deadline=2000, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def loads_or_says_why(read, *args):
    """Run a reader: a result or an LmlabError with a one-line message are both fine."""
    try:
        return read(*args)
    except LmlabError as err:
        assert str(err) and "\n" not in str(err).strip()
        return None


@st.composite
def damaged(draw, data: bytes, head: int) -> bytes:
    """`data` with a few bytes overwritten, inserted or cut, mostly within the first `head` bytes (the header)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, min(head, len(out)) - 1))
        kind = draw(st.sampled_from(["overwrite", "insert", "cut", "truncate"]))
        value = draw(st.binary(min_size=1, max_size=8))
        if kind == "overwrite":
            out[where: where + len(value)] = value
        elif kind == "insert":
            out[where:where] = value
        elif kind == "cut":
            del out[where: where + len(value)]
        else:
            del out[draw(st.integers(0, len(out) - 1)):]
    return bytes(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama-style model with a BPE tokenizer: (model, tokenizer, folder)."""
    folder = tmp_path_factory.mktemp("fuzz")
    tokenizer = tiny_tokenizer(folder / "tok", chat=True)
    config = get_preset("tiny-llama").replace(vocab_size=tokenizer.vocab_size, n_layer=1, d_model=32, n_head=2,
                                              n_kv_head=1, d_head=16, d_ff=64, max_seq_len=64)
    model = Transformer(config).init_weights(seed=0).eval()
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def gguf_bytes(tiny) -> bytes:
    model, tokenizer, folder = tiny
    path = folder / "tiny.gguf"
    write_gguf(model, tokenizer, path, "f32")
    return path.read_bytes()


def test_damaged_gguf_files_load_or_say_why(tmp_path, gguf_bytes):
    assert loads_or_says_why(load_model, str(_write(tmp_path / "ok.gguf", gguf_bytes))) is not None

    @settings(BOUNDED, max_examples=25)  # each example loads a model
    @given(damaged(gguf_bytes, head=4096))
    def check(data):
        loads_or_says_why(load_model, str(_write(tmp_path / "model.gguf", data)))

    check()


def test_damaged_safetensors_checkpoints_load_or_say_why(tmp_path, tiny):
    model, tokenizer, _ = tiny
    folder = save_checkpoint(model, tmp_path / "ckpt", tokenizer)
    weights = next(folder.glob("*.safetensors"))
    original = weights.read_bytes()
    assert loads_or_says_why(load_checkpoint, folder) is not None

    @BOUNDED
    @given(damaged(original, head=int.from_bytes(original[:8], "little") + 8))
    def check(data):
        weights.write_bytes(data)
        loads_or_says_why(load_checkpoint, folder)

    check()


RECORD_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.text(max_size=30), st.sampled_from(['{"prompt": "a", "completion": "b"}', "[1, 2]", "{",
                                                               '"x"', "null", '{"prompt": null}', "a,b", '"a,"b'])),
             max_size=6).map("\n".join),
)


@BOUNDED
@given(text=RECORD_TEXT, suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
       raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_record_files_load_or_say_why(tmp_path, text, suffix, raw):
    path = tmp_path / f"records{suffix}"
    path.write_bytes(raw if raw is not None else text.encode())
    loads_or_says_why(read_records, path, ["prompt"])
    loads_or_says_why(lambda: list(read_documents(path)))


@BOUNDED
@given(text=RECORD_TEXT, raw=st.one_of(st.none(), st.binary(max_size=64)),
       split=st.sampled_from(["file", "paragraph"]))
def test_text_files_load_or_say_why(tmp_path, text, raw, split):
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw if raw is not None else text.encode())
    loads_or_says_why(lambda: list(read_documents(path, txt_split=split)))


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
MESSAGES = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
                           "content": JSON_VALUES}),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), JSON_VALUES, max_size=3),
    JSON_VALUES), max_size=4)


@BOUNDED
@given(messages=MESSAGES, template=st.one_of(st.just(CHATML), st.text(max_size=60),
                                              st.sampled_from(["{{ messages[5]['content'] }}",
                                                               "{{ raise_exception('no') }}", "{% for m in x %}",
                                                               "{{ messages | tojson }}", "{{ 1 / 0 }}"])))
def test_chat_templates_render_or_say_why(messages, template):
    loads_or_says_why(render_chat_template, template, messages, True, {"eos": "<|endoftext|>"})


FIELDS = [name for name in ModelConfig.__dataclass_fields__]


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(FIELDS + ["n_layers", ""]),
                          st.one_of(st.text(string.printable, max_size=12), JSON_VALUES.map(json.dumps))),
                min_size=1, max_size=3))
def test_set_values_apply_or_say_why(items):
    def apply():
        return with_overrides(get_preset("tiny-gpt2"), parse_overrides([f"{name}={value}" for name, value in items]))

    config = loads_or_says_why(apply)
    if config is not None:
        assert config.validate() is config


@BOUNDED
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6))
def test_lmlab_model_configs_load_or_say_why(tmp_path, data):
    path = tmp_path / "lmlab.json"
    path.write_text(json.dumps(data))
    loads_or_says_why(ModelConfig.load, path)


HF_KEYS = ["model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "intermediate_size", "n_embd", "n_layer", "n_head", "n_positions", "d_model",
           "num_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj", "id2label", "head_dim", "rope_parameters"]


@BOUNDED
@given(base=st.sampled_from(["llama", "gpt2", "bert", "t5"]),
       changes=st.dictionaries(st.sampled_from(HF_KEYS), JSON_VALUES, max_size=4))
def test_hugging_face_configs_convert_or_say_why(base, changes):
    valid = {"llama": {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 64},
             "gpt2": {"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 1, "n_head": 2,
                      "n_positions": 64},
             "bert": {"model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "intermediate_size": 64},
             "t5": {"model_type": "t5", "vocab_size": 64, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_kv": 16,
                    "d_ff": 64}}[base]
    loads_or_says_why(config_from_hf, {**valid, **changes})


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_the_fuzzed_readers_accept_their_valid_inputs(tmp_path):
    """The properties above would hold for readers that refuse everything: check the valid inputs load."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n')
    assert read_records(path, ["prompt"]) == [{"prompt": "a", "completion": "b"}]
    assert with_overrides(get_preset("tiny-gpt2"), parse_overrides(["n_layer=3"])).n_layer == 3
    assert config_from_hf({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 1, "n_head": 2,
                           "n_positions": 64}).d_model == 32
    assert render_chat_template(CHATML, [{"role": "user", "content": "hi"}], True, {}).endswith("assistant\n")
    assert torch.is_tensor(torch.zeros(1))
