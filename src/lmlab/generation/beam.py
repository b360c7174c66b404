"""Beam search: keep the `num_beams` most probable partial sequences instead of one.

Greedy decoding commits to the best token at each step; a sequence that starts
with a slightly less probable token but continues much better is lost. Beam
search (as used for translation since Sutskever et al. 2014, and in the
original Transformer, Vaswani et al. 2017, section 6.1) keeps `num_beams`
hypotheses. Each step, every hypothesis is extended by every token, scored by
its summed log-probability, and the best ones survive. A hypothesis that writes
the end-of-sequence token (or reaches max_new_tokens) is finished, and ranked by
score / length ** length_penalty, so that longer answers are not penalized just
for having more terms (length_penalty 1.0: mean log-probability per token).

This follows transformers' `generate(num_beams=...)` with its defaults
(early_stopping=False), step for step, so the results are the same:
- candidates: the 2 * num_beams best extensions over all beams, so that enough
  of them do not end and can continue;
- the best num_beams candidates that did not end are the next beams; those among
  the first num_beams that ended join the finished list (best num_beams kept);
- the search stops once every prompt has num_beams finished hypotheses and the
  best running beam, scored at its current length, cannot beat the worst finished one.
"""

from __future__ import annotations

import torch

from lmlab.generation.incremental import (Prompts, check_generative, end_of_sequence_ids, fit_context, make_runner,
                                          padding_id, prompt_ids, room_for_new_tokens)
from lmlab.generation.sampling import GenerationConfig, apply_repetition_penalty
from lmlab.models import Transformer
from lmlab.tokenizers.base import TokenizerProtocol


def beam_search(
    model: Transformer,
    prompts: Prompts,
    config: GenerationConfig,
    tokenizer: TokenizerProtocol | None = None,
    attention_mask: torch.Tensor | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Return (prompt tokens, best hypothesis's new tokens) per prompt; the new tokens end with the
    end-of-sequence token when the hypothesis ended with one."""
    check_generative(model, config, tokenizer)
    c = model.config
    rows = fit_context(prompt_ids(prompts, tokenizer, attention_mask), c.max_seq_len, config, c.arch)
    max_new = min(config.max_new_tokens, room_for_new_tokens(rows, c.max_seq_len, c.arch))
    with torch.inference_mode():
        best = _search(model, rows, config, max_new, end_of_sequence_ids(model, tokenizer), padding_id(model, tokenizer))
    return list(zip(rows, best))


def _search(model: Transformer, rows: list[list[int]], config: GenerationConfig, max_new: int, eos_ids: set[int],
            pad_id: int) -> list[list[int]]:
    n, n_beams = len(rows), config.num_beams
    n_candidates = max(2, 1 + len(eos_ids)) * n_beams
    runner = make_runner(model, [row for row in rows for _ in range(n_beams)], pad_id, max_new)
    device = runner.input_ids.device
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    first_beams = torch.arange(n_candidates, device=device) < n_beams
    beam_offset = torch.arange(n, device=device)[:, None] * n_beams

    beams = torch.full((n, n_beams, max_new), pad_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(n, n_beams, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: extend only the first
    finished = beams.clone()
    finished_scores = torch.full((n, n_beams), float("-inf"), device=device)
    finished_lengths = torch.zeros(n, n_beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(n, n_beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(n, 1, dtype=torch.bool, device=device)
    seen = runner.seen_tokens() if config.repetition_penalty != 1 else None

    logits = runner.start()
    for step in range(max_new):
        log_probs = logits.float().log_softmax(dim=-1)
        if seen is not None:
            log_probs = apply_repetition_penalty(log_probs, seen, config.repetition_penalty)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(n, n_beams, vocab) + beam_scores[..., None]).view(n, n_beams * vocab)
        scores, index = totals.topk(n_candidates, dim=-1)
        source, token = index // vocab, index % vocab
        candidates = beams.gather(1, source[..., None].expand(-1, -1, max_new))
        candidates[:, :, step] = token
        last_step = step == max_new - 1
        ends = torch.isin(token, eos) | last_step

        # the next beams: the best candidates that go on
        going_on = scores.masked_fill(ends, float("-inf"))
        keep = going_on.topk(n_beams, dim=-1).indices
        beams = candidates.gather(1, keep[..., None].expand(-1, -1, max_new))
        beam_scores = going_on.gather(1, keep)
        beam_source = source.gather(1, keep)

        # the finished list: the best of the old finished hypotheses and the candidates that just ended
        ranked = (scores / (step + 1) ** config.length_penalty).masked_fill(~(ends & first_beams & can_improve),
                                                                            float("-inf"))
        merged_scores = torch.cat([finished_scores, ranked], dim=1)
        best = merged_scores.topk(n_beams, dim=-1).indices
        finished_scores = merged_scores.gather(1, best)
        finished = torch.cat([finished, candidates], dim=1).gather(1, best[..., None].expand(-1, -1, max_new))
        finished_lengths = torch.cat([finished_lengths, torch.full_like(token, step + 1)], dim=1).gather(1, best)
        is_finished = torch.cat([is_finished, ends & first_beams & can_improve], dim=1).gather(1, best)

        best_running = beam_scores[:, :1] / (step + 1) ** config.length_penalty
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, float("-inf"))
        can_improve &= (best_running > worst_finished).any(dim=1, keepdim=True)
        if last_step or not can_improve.any():
            break
        next_tokens = beams[:, :, step].reshape(-1)
        runner.reorder((beam_source + beam_offset).reshape(-1))
        if seen is not None:
            seen = seen[(beam_source + beam_offset).reshape(-1)].scatter_(1, next_tokens[:, None], True)
        logits = runner.step(next_tokens)
    return [finished[b, 0, : finished_lengths[b, 0]].tolist() for b in range(n)]
