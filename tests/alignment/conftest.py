"""The tiny chat model of the fine-tuning tests, and small preference files."""

from __future__ import annotations

from tests.finetuning.conftest import ANIMALS, COLOURS, one_thread, tiny_model, write_jsonl  # noqa: F401


def colour_pairs(n: int) -> list[dict]:
    """'the cat is red. colour?': the colour the prompt names is chosen, another one rejected."""
    return [{"prompt": f"the {ANIMALS[i % 4]} is {COLOURS[(i // 4) % 4]}. colour?",
             "chosen": COLOURS[(i // 4) % 4], "rejected": COLOURS[(i // 4 + 1 + i % 3) % 4]} for i in range(n)]


def hh(*turns: str) -> str:
    """An HH-RLHF conversation: Human and Assistant turns in turn."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))
