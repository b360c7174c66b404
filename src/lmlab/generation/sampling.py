"""How the next token is chosen from the model's logits: the inference parameters.

A language model gives a score (logit) per vocabulary token; softmax turns the
scores into a probability distribution. Decoding picks one token from it:

- greedy: the most probable token (argmax), always the same output;
- random sampling: a draw from the distribution, reproducible with a seeded generator.

Before sampling the distribution is reshaped, in the order transformers'
`generate` applies these steps:

- repetition penalty (Keskar et al. 2019, CTRL, section 4.1): a token already in
  the context has its logit divided by the penalty when positive, multiplied by
  it when negative, so it becomes less likely to repeat;
- temperature: logits / T before the softmax. T < 1 sharpens the distribution
  towards the top token, T > 1 flattens it, T = 1 leaves it unchanged, T -> 0 is greedy;
- top-k (Fan et al. 2018): keep only the k most probable tokens;
- top-p, nucleus sampling (Holtzman et al. 2020): keep the smallest set of most
  probable tokens whose cumulative probability reaches p.

A removed token gets the logit -inf, so the softmax renormalizes over the tokens kept.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError

LogitsStep = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GenerationConfig:
    """The inference parameters of one generation.

    temperature 0 means greedy. top_k 0 and top_p 1.0 switch those filters off.
    `stop` strings end a sequence when they appear in its text (the stop string is
    not part of the output). `truncate` lets a prompt longer than the context
    window lose its oldest tokens instead of being refused. `num_beams` > 1 runs
    beam search (deterministic), ranking finished hypotheses by their summed
    log-probability / length ** length_penalty.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    truncate: bool = False
    num_beams: int = 1
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise LmlabError(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise LmlabError(f"temperature must be >= 0 (0 means greedy), not {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise LmlabError(f"top_k must be an integer >= 0 (0 keeps every token), not {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1] (1 keeps every token), not {self.top_p}")
        if not self.repetition_penalty > 0:
            raise LmlabError(f"repetition_penalty must be > 0 (1 means no penalty), not {self.repetition_penalty}")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise LmlabError(f"num_beams must be an integer >= 1 (1: no beam search), not {self.num_beams!r}")
        if not math.isfinite(self.length_penalty):
            raise LmlabError(f"length_penalty must be a finite number, not {self.length_penalty}")
        if self.num_beams > 1 and self.do_sample:
            raise LmlabError("beam search keeps the most probable hypotheses, it does not sample: use num_beams "
                             "without do_sample")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise LmlabError("stop strings must be non-empty text")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax: no sampling, or sampling at temperature 0."""
        return not self.do_sample or self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on logits [B, V] of tokens already seen ([B, V] bool): divide positive logits
    by `penalty`, multiply negative ones, as transformers' RepetitionPenaltyLogitsProcessor does."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): T < 1 sharpens, T > 1 flattens."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits of each row (and any tied with the k-th), set the rest to -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most probable tokens whose probability sums to at least p.

    Sorted by probability, a token is kept when the tokens before it sum to less than p, so the
    most probable token is always kept.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs
    remove_sorted = before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def warping_steps(config: GenerationConfig) -> list[tuple[str, LogitsStep]]:
    """The distribution-reshaping steps the config switches on, named, in the order they apply."""
    steps: list[tuple[str, LogitsStep]] = []
    if config.temperature not in (0, 1):
        steps.append((f"temperature {config.temperature:g}", lambda x: apply_temperature(x, config.temperature)))
    if config.top_k:
        steps.append((f"top-k {config.top_k}", lambda x: top_k_filter(x, config.top_k)))
    if config.top_p < 1:
        steps.append((f"top-p {config.top_p:g}", lambda x: top_p_filter(x, config.top_p)))
    return steps


def next_token(
    logits: torch.Tensor,
    config: GenerationConfig,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose one token per row from logits [B, V]: penalty, then greedy argmax or a seeded draw
    from the warped distribution. Returns [B] token ids."""
    if config.repetition_penalty != 1 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float()
    for _, step in warping_steps(config):
        logits = step(logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
