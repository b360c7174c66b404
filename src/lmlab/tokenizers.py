"""Tokenizers: text to token ids and back, the first and last step of every language model.

- Byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
  Units", arXiv:1508.07909, applied to the 256 byte values by GPT-2, Radford et al. 2019): start
  from single bytes and repeatedly merge the most frequent adjacent pair into a new token.
  `train_bpe` learns the merges with the Hugging Face `tokenizers` trainer.
- Whatever a Hugging Face folder describes in `tokenizer.json` (WordPiece for BERT, Unigram for T5,
  BPE for GPT-2 and Llama), and what a GGUF file describes in llama.cpp's `tokenizer.ggml.*`
  metadata: `load_tokenizer`, `tokenizer_from_gguf`.
- One token per character (`CharTokenizer`), as nanoGPT's `shakespeare_char` run does.

Chat templates are Jinja2 programs that instruction-tuned models ship to turn a list of messages
into the one string they were trained on. They come from model files, so they run in Jinja2's
sandbox, with the same settings and helpers transformers' `apply_chat_template` gives them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import gguf
import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmlab.errors import LmlabError
from lmlab.io import replace_folder, write_text

TOKENIZER_FILE = "tokenizer.json"
LMLAB_TOKENIZER_FILE = "lmlab_tokenizer.json"
CHAR_TOKENIZER_FILE = "lmlab_char_tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_KIND = "tokenizer"  # the kind of output folder lmlab.io marks

ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")

# The role a special token plays, recognised by its usual spelling. The first listed token wins a role.
SPECIAL_TOKEN_ROLES = {
    "<|endoftext|>": ("bos", "eos"),  # GPT-2: one token marks where a document ends and the next begins
    "<|pad|>": ("pad",),
    "<s>": ("bos",),
    "</s>": ("eos",),
    "<pad>": ("pad",),
    "<unk>": ("unk",),
    "<mask>": ("mask",),
    "[CLS]": ("cls",),
    "[SEP]": ("sep",),
    "[PAD]": ("pad",),
    "[UNK]": ("unk",),
    "[MASK]": ("mask",),
}


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (Radford et al. 2019, `encoder.py`).

    Printable Latin-1 bytes stand for themselves; the others (controls, space) are moved to 256 + n,
    so a space becomes 'Ġ' and a newline 'Ċ'. BPE then works on strings with no invisible characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


BYTE_TO_UNICODE = _gpt2_byte_alphabet()
UNICODE_TO_BYTE = {char: byte for byte, char in BYTE_TO_UNICODE.items()}
BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's token for a raw byte


@dataclass
class Tokenizer:
    """A `tokenizers.Tokenizer`, which tokens play which role (bos, eos, pad, ...), and the chat template."""

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token text, e.g. {"eos": "</s>"}
    chat_template: str | None = None

    def __post_init__(self) -> None:
        # A tokenizer.json may pad or cut every text to a fixed length (MiniLM's pads to 128). Lengths
        # are the caller's business: encode returns exactly the tokens of the text.
        self.backend.no_padding()
        self.backend.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def kind(self) -> str:
        """The tokenization algorithm, in the field's words."""
        model = self.backend.model
        if isinstance(model, models.BPE):
            if isinstance(self.backend.decoder, decoders.ByteLevel):
                return "byte-level BPE"
            return "BPE with byte fallback" if model.byte_fallback else "BPE"
        return type(model).__name__

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, wrapped as the model expects (BOS, [CLS] ... [SEP])."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)  # ints, not tensors

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def token_bytes(self, i: int) -> bytes:
        """The bytes of text token `i` stands for; a special token stands for its own spelling."""
        token = self.backend.id_to_token(i)
        if token is None:
            raise LmlabError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        if i in self.backend.get_added_tokens_decoder():
            return token.encode()
        if isinstance(self.backend.decoder, decoders.ByteLevel) and all(c in UNICODE_TO_BYTE for c in token):
            return bytes(UNICODE_TO_BYTE[c] for c in token)
        if byte := BYTE_FALLBACK_TOKEN.fullmatch(token):
            return bytes([int(byte[1], 16)])
        if isinstance(self.backend.model, models.WordPiece):
            token = token.removeprefix(self.backend.model.continuing_subword_prefix)
        return token.replace("\u2581", " ").encode()  # sentencepiece writes a space as '▁'

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the one string the model was trained on; ends with the assistant's
        header when `add_generation_prompt`, so the model's next tokens are its reply."""
        return render_chat_template(self.chat_template, messages, add_generation_prompt, self.special_tokens)

    def save(self, folder: Path) -> None:
        """Write `tokenizer.json`, `lmlab_tokenizer.json` (roles, chat template), and a `tokenizer_config.json`
        so that transformers' `AutoTokenizer.from_pretrained(folder)` loads the same tokenizer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        own = {"special_tokens": self.special_tokens, "chat_template": self.chat_template}
        write_text(folder / LMLAB_TOKENIZER_FILE, json.dumps(own, indent=2, ensure_ascii=False))
        hf_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **{f"{role}_token": token for role, token in self.special_tokens.items()},
            **({"chat_template": self.chat_template} if self.chat_template else {}),
        }
        write_text(folder / HF_CONFIG_FILE, json.dumps(hf_config, indent=2, ensure_ascii=False))


@dataclass
class CharTokenizer:
    """One token per character, ids in sorted character order (nanoGPT's `shakespeare_char/prepare.py`).

    The vocabulary is every character of the training text and nothing else: no special tokens, and a
    character it never saw cannot be encoded.
    """

    chars: list[str]

    bos_id = eos_id = pad_id = unk_id = cls_id = sep_id = mask_id = None
    chat_template = None
    special_tokens: dict[str, str] = field(default_factory=dict, init=False)
    kind = "character-level"

    def __post_init__(self) -> None:
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise LmlabError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        data = _read_json(path)
        chars = data.get("chars")
        if data.get("kind") != "char" or not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise LmlabError(f"{path} is not a character-level tokenizer file")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        unknown = sorted(set(text) - self._index.keys())
        if unknown:
            raise LmlabError(f"characters not in this character-level vocabulary: {''.join(unknown)!r}")
        return [self._index[c] for c in text]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.chars[i] if 0 <= i < len(self.chars) else None

    def token_bytes(self, i: int) -> bytes:
        token = self.id_to_token(i)
        if token is None:
            raise LmlabError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return token.encode()

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat_template(None, messages, add_generation_prompt, {})

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"kind": "char", "chars": self.chars}
        write_text(folder / CHAR_TOKENIZER_FILE, json.dumps(data, indent=1, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------
# Chat templates


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """Jinja2's own `tojson` escapes HTML characters; chat templates expect plain JSON."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise LmlabError(f"the chat template does not parse: {err.message} (line {err.lineno})") from None


def render_chat_template(
    template: str | None,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    special_tokens: dict[str, str],
) -> str:
    """Render `messages` ([{"role": "user", "content": "..."}, ...]) with a chat template.

    The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (None) and each
    special token as `bos_token`, `eos_token`, ..., as in transformers' `apply_chat_template`.
    """
    if template is None:
        raise LmlabError("this tokenizer has no chat template, so it cannot format a conversation")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise LmlabError(f"a chat message must have a 'role' and a 'content', got {message!r}")
    messages = [{key: value for key, value in m.items() if value is not None} for m in messages]
    tokens = {f"{role}_token": token for role, token in special_tokens.items()}
    try:
        return _compile_chat_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None, **tokens
        )
    except jinja2.TemplateError as err:
        raise LmlabError(f"the chat template refused this conversation: {err}") from None
    except LmlabError:
        raise
    except Exception as err:  # the template is code the model's author wrote: whatever it raises is its failure
        raise LmlabError(f"the chat template failed on this conversation ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(path: str | Path) -> Tokenizer | CharTokenizer:
    """Load a tokenizer from a folder (Hugging Face `tokenizer.json` + `tokenizer_config.json`, one
    saved by lmlab, or a folder with one .gguf file), a `tokenizer.json` file, or a .gguf file."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"no such tokenizer file or folder: {path}")
    if path.is_dir():
        if (path / CHAR_TOKENIZER_FILE).is_file():
            return CharTokenizer.load(path / CHAR_TOKENIZER_FILE)
        if (path / TOKENIZER_FILE).is_file():
            return _load_tokenizer_folder(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return tokenizer_from_gguf(ggufs[0])
        raise LmlabError(
            f"{path} holds no tokenizer: expected {TOKENIZER_FILE}, {CHAR_TOKENIZER_FILE} or one .gguf file"
        )
    if path.suffix == ".gguf":
        return tokenizer_from_gguf(path)
    if path.name == CHAR_TOKENIZER_FILE:
        return CharTokenizer.load(path)
    if path.name == TOKENIZER_FILE:
        return _load_tokenizer_folder(path.parent)
    if path.suffix == ".json":
        return Tokenizer(_read_backend(path))
    raise LmlabError(f"{path} is not a tokenizer: expected a folder, a .json tokenizer file or a .gguf file")


def _load_tokenizer_folder(folder: Path) -> Tokenizer:
    backend = _read_backend(folder / TOKENIZER_FILE)
    own = folder / LMLAB_TOKENIZER_FILE
    if own.is_file():
        data = _read_json(own)
        return Tokenizer(backend, dict(data.get("special_tokens") or {}), data.get("chat_template"))
    config = _read_json(folder / HF_CONFIG_FILE) if (folder / HF_CONFIG_FILE).is_file() else {}
    special_map_file = folder / "special_tokens_map.json"
    special_map = _read_json(special_map_file) if special_map_file.is_file() else {}
    special_tokens = {}
    for role in ROLES:
        token = config.get(f"{role}_token") or special_map.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token  # an AddedToken written out
        if isinstance(token, str):
            special_tokens[role] = token
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return Tokenizer(backend, special_tokens, template)


def _read_backend(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises a bare Exception for any malformed file
        raise LmlabError(f"{path} is not a tokenizer.json the tokenizers library reads ({_first_line(err)})") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LmlabError(f"cannot read {path} as JSON: {_first_line(err)}") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path} does not hold a JSON object")
    return data


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's format): the tokenizer lives in the metadata, under `tokenizer.ggml.*`

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


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Memory-map a GGUF file and parse its metadata and tensor table; tensor data is not read."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"no such GGUF file: {path}")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise LmlabError(f"{path} is not a readable GGUF file ({_first_line(err)})") from None


def tokenizer_from_gguf(reader: gguf.GGUFReader | str | Path) -> Tokenizer:
    """Build the tokenizer a GGUF file describes: `tokenizer.ggml.model` "gpt2" is byte-level BPE,
    "llama" is sentencepiece-style BPE (merges ranked by token score, bytes as <0xNN> tokens)."""
    if not isinstance(reader, gguf.GGUFReader):
        reader = open_gguf(reader)
    meta = _GgufMetadata(reader)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise LmlabError(f"{reader.data.filename} has no tokenizer in its metadata")  # data: the np.memmap
    token_types = meta.get("tokenizer.ggml.token_type") or [gguf.TokenType.NORMAL] * len(tokens)
    if model == "gpt2":
        merges = meta.get("tokenizer.ggml.merges") or []
        backend = _byte_level_bpe(tokens, token_types, merges, meta.get("tokenizer.ggml.pre"))
        add_bos = meta.get("tokenizer.ggml.add_bos_token", False)
    elif model == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        backend = _sentencepiece_bpe(tokens, token_types, scores, meta.get("tokenizer.ggml.add_space_prefix", True))
        add_bos = meta.get("tokenizer.ggml.add_bos_token", True)  # llama.cpp's default for sentencepiece
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
        token_id = meta.get(key)
        if token_id is not None and 0 <= token_id < len(tokens):
            special_tokens[role] = tokens[token_id]
    backend.post_processor = _wrap_with(
        special_tokens.get("bos") if add_bos else None,
        special_tokens.get("eos") if meta.get("tokenizer.ggml.add_eos_token", False) else None,
        backend,
    )
    return Tokenizer(backend, special_tokens, meta.get("tokenizer.chat_template"))


class _GgufMetadata:
    """Read access to a GGUF reader's key/value metadata (values decoded, arrays as lists)."""

    def __init__(self, reader: gguf.GGUFReader):
        self.reader = reader

    def get(self, key: str, default=None):
        found = self.reader.get_field(key)
        return default if found is None else found.contents()


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


# ---------------------------------------------------------------------------------------------
# Training


def train_bpe(
    files: list[Path],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens from text files (Sennrich et al. 2016).

    The vocabulary starts as the special tokens plus the 256 byte values; each merge then adds the
    most frequent adjacent pair (seen at least `min_frequency` times) as a new token, until the
    vocabulary is full or no pair is frequent enough. Text is first split GPT-2's way, so merges
    never cross a word boundary.
    """
    files = [Path(f) for f in files]
    if not files:
        raise LmlabError("no training files given")
    for path in files:
        if not path.is_file():
            raise LmlabError(f"no such training file: {path}")
    special_tokens = list(special_tokens)
    smallest = 256 + len(special_tokens)
    if vocab_size < smallest:
        raise LmlabError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs the 256 byte values "
            f"plus {len(special_tokens)} special tokens, so at least {smallest}"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    corpus = _Corpus(files)
    backend.train_from_iterator(corpus.lines(), trainer=trainer)
    if corpus.characters == 0:
        raise LmlabError(f"the training corpus is empty: no text in {', '.join(map(str, files))}")
    roles: dict[str, str] = {}
    for token in special_tokens:
        for role in SPECIAL_TOKEN_ROLES.get(token, ()):
            roles.setdefault(role, token)
    return Tokenizer(backend, roles)


@dataclass
class _Corpus:
    """The lines of some UTF-8 text files, counting the non-blank characters seen."""

    files: list[Path]
    characters: int = 0

    def lines(self) -> Iterator[str]:
        for path in self.files:
            try:
                with path.open(encoding="utf-8") as f:
                    for line in f:
                        self.characters += len(line.strip())
                        yield line
            except UnicodeDecodeError:
                raise LmlabError(f"{path} is not UTF-8 text") from None


def save_tokenizer_folder(tokenizer: Tokenizer | CharTokenizer, out: Path) -> None:
    """Make `out` a folder holding just `tokenizer`, written in full and swapped in (lmlab.io.replace_folder),
    so no reader ever sees a half-written tokenizer. Replaces a tokenizer lmlab wrote there before."""
    with replace_folder(out, TOKENIZER_KIND, overwrite=True) as staging:
        tokenizer.save(staging)


# ---------------------------------------------------------------------------------------------
# Teaching views


@dataclass
class TokenPiece:
    """One token of an encoded text: its position, id, spelling in the vocabulary, and the bytes it covers."""

    position: int
    id: int
    token: str
    text_bytes: bytes


def explain(tokenizer: Tokenizer | CharTokenizer, text: str, add_special_tokens: bool = False) -> list[TokenPiece]:
    """Encode `text` and show each token with the bytes of text it stands for."""
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return [TokenPiece(n, i, tokenizer.id_to_token(i) or "", tokenizer.token_bytes(i)) for n, i in enumerate(ids)]


def describe(tokenizer: Tokenizer | CharTokenizer) -> list[tuple[str, str]]:
    """(label, value) rows summarising a tokenizer: algorithm, vocabulary, special tokens, chat template."""
    rows = [("kind", tokenizer.kind), ("vocab size", f"{tokenizer.vocab_size:,}")]
    for role in ROLES:
        token = tokenizer.special_tokens.get(role)
        if token is not None:
            rows.append((f"{role} token", f"{token} (id {tokenizer.token_to_id(token)})"))
    if isinstance(tokenizer, Tokenizer):
        added = [tokenizer.id_to_token(i) for i in tokenizer.encode("", add_special_tokens=True)]
        rows.append(("add_special_tokens adds", " ".join(added) if added else "nothing"))
    template = tokenizer.chat_template
    rows.append(("chat template", f"yes ({len(template):,} characters)" if template else "no"))
    return rows
