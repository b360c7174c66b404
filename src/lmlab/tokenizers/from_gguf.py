"""The tokenizer of a GGUF file (llama.cpp's format), which lives in its metadata under `tokenizer.ggml.*`:
byte-level BPE ("gpt2") or sentencepiece-style BPE ("llama"), rebuilt as a Hugging Face tokenizer."""

from __future__ import annotations

from pathlib import Path

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from lmlab.errors import LmlabError
from lmlab.gguf_file import gguf_metadata, open_gguf
from lmlab.tokenizers.huggingface import BYTE_TO_UNICODE, UNICODE_TO_BYTE, Tokenizer

# llama.cpp's token types (gguf.TokenType); control, unknown and user-defined tokens are matched
# whole in the text before any splitting, the first two as special tokens.
GGUF_SPECIAL_TYPES = {gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN}
GGUF_ROLE_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "cls": "tokenizer.ggml.cls_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # llama.cpp's spelling
    "mask": "tokenizer.ggml.mask_token_id",
}

# How a byte-level BPE vocabulary splits text into words before merging, by `tokenizer.ggml.pre`:
# each regex in turn cuts the pieces of the previous one (llama.cpp `llm_tokenizer_bpe`).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SINGLE_DIGITS = r"\p{N}"
GGUF_PRE_SPLITS = {
    **dict.fromkeys(["gpt-2", "mpt", "olmo", "jais"], [GPT2_SPLIT]),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"], [SINGLE_DIGITS, GPT2_SPLIT]),
    **dict.fromkeys(["llama-bpe", "llama3", "dbrx", "smaug-bpe"], [LLAMA3_SPLIT]),
    **dict.fromkeys(["qwen2", "stablelm2"], [QWEN2_SPLIT]),
}


def tokenizer_from_gguf(reader: gguf.GGUFReader | str | Path) -> Tokenizer:
    """Build the tokenizer a GGUF file describes: `tokenizer.ggml.model` "gpt2" is byte-level BPE,
    "llama" is sentencepiece-style BPE (merges ranked by token score, bytes as <0xNN> tokens)."""
    if not isinstance(reader, gguf.GGUFReader):
        reader = open_gguf(reader)
    model = gguf_metadata(reader, "tokenizer.ggml.model")
    tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise LmlabError(f"{reader.data.filename} has no tokenizer in its metadata")  # data: the np.memmap
    token_types = gguf_metadata(reader, "tokenizer.ggml.token_type") or [gguf.TokenType.NORMAL] * len(tokens)
    if model == "gpt2":
        merges = gguf_metadata(reader, "tokenizer.ggml.merges") or []
        backend = _byte_level_bpe(tokens, token_types, merges, gguf_metadata(reader, "tokenizer.ggml.pre"))
        add_bos = gguf_metadata(reader, "tokenizer.ggml.add_bos_token", False)
    elif model == "llama":
        scores = gguf_metadata(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        add_space_prefix = gguf_metadata(reader, "tokenizer.ggml.add_space_prefix", True)
        backend = _sentencepiece_bpe(tokens, token_types, scores, add_space_prefix)
        add_bos = gguf_metadata(reader, "tokenizer.ggml.add_bos_token", True)  # llama.cpp's sentencepiece default
    else:
        raise LmlabError(f"GGUF tokenizer model {model!r} is not supported (supported: gpt2, llama)")
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, token_types) if k in GGUF_SPECIAL_TYPES]
    )
    backend.add_tokens(
        [AddedToken(t, normalized=False) for t, k in zip(tokens, token_types) if k == gguf.TokenType.USER_DEFINED]
    )
    special_tokens = {}
    for role, key in GGUF_ROLE_KEYS.items():
        token_id = gguf_metadata(reader, key)
        if token_id is not None and 0 <= token_id < len(tokens):
            special_tokens[role] = tokens[token_id]
    backend.post_processor = _wrap_with(
        special_tokens.get("bos") if add_bos else None,
        special_tokens.get("eos") if gguf_metadata(reader, "tokenizer.ggml.add_eos_token", False) else None,
        backend,
    )
    return Tokenizer(backend, special_tokens, gguf_metadata(reader, "tokenizer.chat_template"))


def _byte_level_bpe(
    tokens: list[str], token_types: list[int], merges: list[str], pre: str | None
) -> tokenizers.Tokenizer:
    """GPT-2-style BPE over bytes. Vocabulary tokens are spelled in GPT-2's byte alphabet; a token
    written in plain UTF-8 instead is respelled, except the control and user-defined tokens, which
    are matched whole in the text."""
    alphabet = set(UNICODE_TO_BYTE)
    vocab = {}
    for i, (token, kind) in enumerate(zip(tokens, token_types)):
        if kind in GGUF_SPECIAL_TYPES or kind == gguf.TokenType.USER_DEFINED or set(token) <= alphabet:
            vocab[token] = i
        else:
            vocab["".join(BYTE_TO_UNICODE[b] for b in token.encode())] = i
    pairs = [tuple(merge.split(" ")) for merge in merges]
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    splits = GGUF_PRE_SPLITS.get(pre or "", [GPT2_SPLIT])  # unknown: GPT-2's split, as transformers does
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(
    tokens: list[str], token_types: list[int], scores: list[float], add_space_prefix: bool
) -> tokenizers.Tokenizer:
    """Sentencepiece BPE as llama.cpp runs it: spaces become '▁' (one is put in front of the text),
    then the adjacent pair whose concatenation is the highest-scoring vocabulary token is merged,
    again and again; bytes no token covers become <0xNN> tokens (byte fallback)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    unk = next((t for t, k in zip(tokens, token_types) if k == gguf.TokenType.UNKNOWN), None)
    merges = _merges_by_score(tokens, token_types, scores)
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    space = [normalizers.Replace(" ", "\u2581")]
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), *space] if add_space_prefix else space)
    strip_prefix = [decoders.Strip(" ", 1, 0)] if add_space_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip_prefix]
    )
    return backend


def _merges_by_score(tokens: list[str], token_types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """The merge list a sentencepiece vocabulary implies: every split of a normal token into two
    normal tokens, best first by the score of the token the merge makes."""
    normal = {t: i for i, (t, k) in enumerate(zip(tokens, token_types)) if k == gguf.TokenType.NORMAL}
    ranked = []
    for token, i in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[i], normal[left], normal[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _wrap_with(bos: str | None, eos: str | None, backend: tokenizers.Tokenizer) -> processors.PostProcessor | None:
    """What `encode(..., add_special_tokens=True)` puts around a text: BOS before, EOS after."""
    if bos is None and eos is None:
        return None
    ends = [t for t in (bos, eos) if t is not None]
    single = " ".join([*([bos] if bos else []), "$A", *([eos] if eos else [])])
    return processors.TemplateProcessing(single=single, special_tokens=[(t, backend.token_to_id(t)) for t in ends])

