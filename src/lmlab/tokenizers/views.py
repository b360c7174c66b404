"""Teaching views of a tokenizer: each token of a text with the bytes it covers, and a summary table."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.tokenizers.base import ROLES, TokenizerProtocol
from lmlab.tokenizers.huggingface import Tokenizer


@dataclass
class TokenPiece:
    """One token of an encoded text: its position, id, spelling in the vocabulary, and the bytes it covers."""

    position: int
    id: int
    token: str
    text_bytes: bytes


def explain(tokenizer: TokenizerProtocol, text: str, add_special_tokens: bool = False) -> list[TokenPiece]:
    """Encode `text` and show each token with the bytes of text it stands for."""
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return [TokenPiece(n, i, tokenizer.id_to_token(i) or "", tokenizer.token_bytes(i)) for n, i in enumerate(ids)]


def describe(tokenizer: TokenizerProtocol) -> list[tuple[str, str]]:
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
