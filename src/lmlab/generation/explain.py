"""The sampler explained: the next-token distribution before and after each inference parameter.

The course shows sampling with a table of candidate next words ("cake 0.20,
donut 0.10, banana 0.02, ...") and how temperature reshapes it and top-k and
top-p cut it. `next_token_table` builds that table from a real model: one row
per candidate token, one column per step (the model's softmax, then the
repetition penalty, temperature, top-k, top-p, each applied on top of the
previous ones, as `sampling.next_token` applies them), and a last row with the
probability left to all other tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.generation.incremental import fit_context, next_token_logits, padding_id, prompt_ids
from lmlab.generation.sampling import GenerationConfig, apply_repetition_penalty, warping_steps
from lmlab.models import Transformer
from lmlab.tokenizers.base import TokenizerProtocol


@dataclass
class NextTokenTable:
    """probs[i][j] is the probability of candidate i after step j; 0 means the step removed it."""

    candidates: list[str]
    ids: list[int]
    steps: list[str]
    probs: list[list[float]]
    others: list[float]
    greedy_choice: str

    def format(self) -> str:
        """The table as aligned text, removed tokens shown as '-'."""
        header = ["next token", *self.steps]
        labels = [*self.candidates, "(all other tokens)"]
        cells = [[f"{p:.4f}" if p > 0 else "-" for p in row] for row in [*self.probs, self.others]]
        width = max(len(s) for s in [header[0], *labels])
        col = [max(len(header[j + 1]), 6) for j in range(len(self.steps))]
        lines = ["  ".join([header[0].ljust(width), *(h.rjust(w) for h, w in zip(header[1:], col))])]
        for label, row in zip(labels, cells):
            lines.append("  ".join([label.ljust(width), *(c.rjust(w) for c, w in zip(row, col))]))
        lines.append(f"greedy decoding picks {self.greedy_choice}; sampling draws from the last column")
        return "\n".join(lines)


def next_token_table(
    model: Transformer,
    prompt: str | Sequence[int],
    config: GenerationConfig | None = None,
    tokenizer: TokenizerProtocol | None = None,
    n_candidates: int = 10,
) -> NextTokenTable:
    """The top `n_candidates` next tokens of `prompt` by the model's probability, and their
    probability after each step of the sampler that `config` switches on."""
    config = config or GenerationConfig()
    rows = fit_context(prompt_ids([prompt] if isinstance(prompt, str) else [list(prompt)], tokenizer),
                       model.config.max_seq_len, config, model.config.arch)
    logits = next_token_logits(model, rows, padding_id(model, tokenizer))
    stages = [("model", logits)]
    if config.repetition_penalty != 1:
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen[0, rows[0]] = True
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
        stages.append((f"repetition penalty {config.repetition_penalty:g}", logits))
    chosen = int(logits[0].argmax())  # temperature, top-k and top-p never change the most probable token
    for name, step in warping_steps(config):
        logits = step(logits)
        stages.append((name, logits))
    probs = torch.stack([stage.softmax(dim=-1)[0] for _, stage in stages], dim=1)  # [V, n_steps]
    top = probs[:, 0].topk(min(n_candidates, probs.shape[0])).indices
    ids = top.tolist()

    def show(i: int) -> str:
        return repr(tokenizer.decode([i], skip_special_tokens=False)) if tokenizer is not None else f"id {i}"

    return NextTokenTable(
        candidates=[show(i) for i in ids],
        ids=ids,
        steps=[name for name, _ in stages],
        probs=probs[top].tolist(),
        others=probs.index_fill(0, top, 0).sum(dim=0).tolist(),
        greedy_choice=show(chosen),
    )
