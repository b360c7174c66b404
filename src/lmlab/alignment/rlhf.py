"""RLHF with PPO, the loop (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
Stiennon et al. 2020; Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", section 3.5). The formulas it applies are in `lmlab.alignment.ppo`.

Four models take part:

- the policy pi_theta: the language model being aligned, LoRA adapters on its frozen weights (Hu et al. 2021);
- the reference pi_ref: the policy as it started; with LoRA, the same model with its adapters off
  (`lmlab.models.lora.adapters_disabled`), so no second copy is kept in memory;
- the reward model r(x, y): a scalar head (`lmlab.alignment.reward`, `lmlab finetune --task reward`), frozen;
- the value function V(s_t): a value head, a linear layer on the hidden state a model with a scalar head
  computes at each answer position, started as that scalar head. The model is the reward model unless
  another is named: Ouyang et al. 2022 and Stiennon et al. 2020 start the value function from the reward
  model. Its trunk stays frozen and only the value head trains (TRL trains a whole value model; one more
  backward pass through a second model would cost as much as the policy's own), so the reward model's one
  forward pass per rollout gives both the score and the values.

One PPO iteration (a step):

1. rollouts: `batch_size` prompts, each answered by sampling from the policy (temperature 1, at most
   `max_new_tokens` tokens) with lmlab's generation (the continuous-batching engine);
2. scoring: the reward model reads each prompt and answer, the answer closed as a turn of its training
   data closes (the chat template's end of turn), and scores it; the policy (log pi_old) and the reference
   (adapters off) read the answers: per-token log-probabilities, the KL divergence KL(pi || pi_ref) of each
   position over the vocabulary, and the entropy;
3. per-token rewards r_t = -kl_coef * (log pi_old - log pi_ref), plus the score on the last token
   (`ppo.kl_penalized_rewards`); advantages and returns by GAE (`ppo.gae`), the advantages whitened over
   the batch (as lm-human-preferences and TRL do);
4. `ppo_epochs` passes over the rollouts in `mini_batches` parts, one AdamW step each, on
   loss = clipped policy loss + vf_coef * clipped value loss (`ppo.clipped_policy_loss`, `ppo.clipped_value_loss`);
5. the KL coefficient moves towards keeping the KL near `target_kl` (`ppo.AdaptiveKL`, Ziegler et al.
   2019), or stays fixed (`target_kl` 0).

Every `checkpoint_every` steps (and after the last) the run writes a checkpoint (`lmlab.alignment.ppo_checkpoint`);
`resume` continues the run in `out` from its last one, as the trainer's --resume does, with the same steps an
uninterrupted run takes (the number of steps may change).

The KL reported (and controlled) is that of whole answers: the sum over an answer's tokens of the
exact KL at each position, averaged over the batch (TRL reports the sum of the sampled log-ratios, an
estimate of the same quantity). OUT gets run.json, metrics.jsonl (one record per step, with one sampled
answer), ppo.png (mean reward and KL per step), ppo.json (settings, history, times, memory), model/ (the
adapters merged), adapter/ and value_head/.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.alignment.dpo import check_policy
from lmlab.alignment.ppo_checkpoint import PPOState, load_ppo_checkpoint, save_ppo_checkpoint
from lmlab.alignment.ppo import AdaptiveKL, clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards, masked_mean
from lmlab.alignment.preferences import CHOSEN, REJECTED, PairEncoder, Prompt, split_conversations
from lmlab.alignment.reward import check_reward_model, is_reward_model
from lmlab.data.finetune_data import _check_messages, _pad, _Records
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate
from lmlab.generation.incremental import end_of_sequence_ids, padding_id
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.hub.adapters import base_reference
from lmlab.hub.resolve import load_model
from lmlab.io import json_line, replace_folder, save_figure, save_safetensors, write_json
from lmlab.models.lora import adapters_disabled, apply_lora, count_parameters, merge_lora, save_adapter
from lmlab.planning.measure import PeakMemory
from lmlab.training.run_folder import open_run
from lmlab.training.trainer import DTYPES

SUMMARY_FILE = "ppo.json"
PLOT_FILE = "ppo.png"
VALUE_HEAD_KIND = "value-head"
DEFAULT_LR = 1e-4  # LoRA; TRL's PPO examples use 3e-6 for full fine-tuning, adapters take about 10x more


@dataclass
class PPOSettings:
    """Everything `lmlab align --method ppo` takes. `steps`, when given, replaces `epochs` (passes over the
    prompts, `batch_size` prompts a step); `lr=None` takes DEFAULT_LR; `target_kl` 0 keeps kl_coef fixed."""

    model: str
    reward: str
    prompts: str | Path
    out: str | Path
    value: str | None = None  # the model whose scalar head starts the value head (default: the reward model)
    prompt_field: str = "prompt"
    chat: bool | None = None
    max_prompt_length: int = 256  # longer prompts keep their end
    max_new_tokens: int = 48
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 8  # prompts (rollouts) per step
    mini_batches: int = 1  # optimizer steps per PPO epoch (TRL's num_mini_batches)
    ppo_epochs: int = 4  # passes over each batch of rollouts (TRL's num_ppo_epochs)
    lr: float | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q,v"
    kl_coef: float = 0.05  # TRL's default
    target_kl: float = 6.0  # nats per answer (Ziegler et al. 2019 use 6 to 10 for their runs); 0: fixed coefficient
    kl_horizon: int = 10000  # samples over which the coefficient moves at most 20% (Ziegler et al. 2019)
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    dtype: str = "fp32"  # or bf16 autocast (rollouts, scoring and updates)
    seed: int = 0
    checkpoint_every: int = 10  # steps between checkpoints (and one after the last step)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    progress: bool = True

    def check(self) -> None:
        for name in ("max_prompt_length", "max_new_tokens", "batch_size", "mini_batches", "ppo_epochs", "lora_rank",
                     "kl_horizon", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise LmlabError(f"steps must be at least 1, not {self.steps}")
        if self.steps is None and not 0 < self.epochs < math.inf:
            raise LmlabError(f"epochs must be positive, not {self.epochs:g}")
        if self.batch_size % self.mini_batches:
            raise LmlabError(f"batch size ({self.batch_size}) must be a multiple of mini-batches ({self.mini_batches})")
        if self.kl_coef < 0 or self.target_kl < 0:
            raise LmlabError(f"kl coefficient and target must be >= 0, not {self.kl_coef:g} and {self.target_kl:g}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise LmlabError(f"gamma must be in (0, 1] and lambda in [0, 1], not {self.gamma:g} and {self.lam:g}")
        if self.clip_range <= 0 or self.value_clip_range <= 0:
            raise LmlabError("clip ranges must be positive")
        if self.dtype not in DTYPES:
            raise LmlabError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")


@dataclass
class PPOResult:
    """How the run went and where its outputs are."""

    out: Path
    model_dir: Path
    adapter_dir: Path
    value_head_dir: Path
    steps: int
    history: list[dict[str, Any]]
    kl_coef: float  # at the end
    train_seconds: float
    wall_seconds: float
    peak_memory_bytes: int  # resident memory above the process's before the models were loaded (0: unknown)


def check_value_model(config, name: str) -> None:
    """The value head starts as a scalar head reading every position: a model without one cannot give it."""
    if not is_reward_model(config) or config.arch != "decoder":
        raise LmlabError(f"{name} has no value head (a scalar head on a decoder, head {config.head!r} here) to "
                         "estimate returns from; give --value a reward model (lmlab finetune MODEL --task reward), or "
                         "leave --value out to start from the reward model")


def read_prompts(path: str | Path, prompt_field: str) -> list[Prompt]:
    """The prompts of a .jsonl/.json/.csv file: the `prompt_field` of each record (text or chat messages), or,
    for preference records without it, the turns their `chosen` and `rejected` conversations share."""
    records = _Records.read(path, [])
    prompts: list[Prompt] = []
    for i, record in enumerate(records.records):
        where = records.where(i)
        if prompt_field in record:
            prompt = record[prompt_field]
            if isinstance(prompt, list):
                prompt = _check_messages(prompt, prompt_field, where)
            elif not isinstance(prompt, str) or not prompt.strip():
                raise LmlabError(f"{where}: field {prompt_field!r} must be non-empty text or a list of messages")
        elif isinstance(record.get(CHOSEN), str) and isinstance(record.get(REJECTED), str):
            prompt = split_conversations(record[CHOSEN], record[REJECTED], where)[0]
        else:
            raise LmlabError(f"{where}: no {prompt_field!r} field (nor HH-RLHF 'chosen'/'rejected' conversations to "
                             "take the prompt from)")
        prompts.append(prompt)
    if not prompts:
        raise LmlabError(f"{Path(path).name}: holds no prompts")
    return prompts


def encode_prompts(prompts: Sequence[Prompt], encoder: PairEncoder, max_length: int) -> list[list[int]]:
    """Each prompt's tokens as the policy reads it (chat template when it has one), its last `max_length`."""
    return [encoder.prompt(p)[0][-max_length:] for p in prompts]


@dataclass
class Rollouts:
    """Prompts and sampled answers, collated for the policy: input_ids = (prompt + answer)[:-1], `positions`
    marks the positions whose next token is an answer token (row-major order = `targets`); `mask` [B, T] is
    1 on the first len(answer) columns of each row: the grid per-token quantities live on."""

    prompts: list[list[int]]
    answers: list[list[int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def collate(cls, prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int) -> Rollouts:
        rows = [(p + a)[:-1] for p, a in zip(prompts, answers)]
        positions = _pad([[0] * (len(p) - 1) + [1] * len(a) for p, a in zip(prompts, answers)], 0).bool()
        width = max(len(a) for a in answers)
        mask = torch.tensor([[1.0] * len(a) + [0.0] * (width - len(a)) for a in answers])
        return cls(list(prompts), list(answers), _pad(rows, pad_id), _pad([[1] * len(r) for r in rows], 0), positions,
                   torch.tensor([t for a in answers for t in a]), mask)

    def grid(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-token values in answer order [N, ...] as a [B, T, ...] grid, zero beyond each answer."""
        out = flat.new_zeros((*self.mask.shape, *flat.shape[1:]))
        out[self.mask.bool()] = flat
        return out

    def logits(self, model: nn.Module) -> torch.Tensor:
        """The model's logits at the answer positions, [N, V] float32."""
        return model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                     logits_mask=self.positions).logits.float()


def answer_logps(model: nn.Module, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(a_t|s_t) of each answer token [B, T], log_softmax over the vocabulary [N, V])."""
    logp_all = F.log_softmax(rollouts.logits(model), -1)
    token = logp_all.gather(1, rollouts.targets[:, None])[:, 0]
    return rollouts.grid(token), logp_all


class ValueHead(nn.Module):
    """V(s_t) = w . h_t: a linear layer on the hidden state a frozen scalar-head model computes at the last
    token of s_t, started as that model's scalar head."""

    def __init__(self, scalar_model: nn.Module) -> None:
        super().__init__()
        self.linear = copy.deepcopy(scalar_model.head.classifier).float().requires_grad_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)[..., 0]


@torch.no_grad()
def read_rollouts(model: nn.Module, rollouts: Rollouts, closings: Sequence[list[int]], eos_ids: set[int],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A scalar-head model reads each prompt + answer, the answer closed as a turn (`closings`: the tokens that
    end an answer to each prompt in the reward model's training data, end-of-sequence first): (its score at
    the last token [B]; its hidden states at the states before each answer token [B, T, d], which the value
    head reads)."""
    rows, states = [], []
    for prompt, answer, closing in zip(rollouts.prompts, rollouts.answers, closings):
        text = answer[:-1] if answer[-1] in eos_ids else answer
        rows.append(prompt + text + closing)
        states.append([0] * (len(prompt) - 1) + [1] * len(answer))  # the state s_t ends at position P - 1 + t
    out = model(input_ids=_pad(rows, pad_id), attention_mask=_pad([[1] * len(r) for r in rows], 0))
    width = out.hidden_states.shape[1]
    states_mask = torch.tensor([m + [0] * (width - len(m)) for m in states], dtype=torch.bool)
    return out.logits[:, 0].float(), rollouts.grid(out.hidden_states.float()[states_mask])


def kl_and_entropy(r: Rollouts, logp_all: torch.Tensor, ref_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(pi || pi_ref) of each answer: the sum over its positions of the exact KL over the vocabulary [B];
    the mean entropy of pi per answer token [B]), from both log_softmax [N, V] at the answer positions."""
    probs = logp_all.exp()
    kl = r.grid((probs * (logp_all - ref_all)).sum(-1)).sum(1)
    return kl, r.grid(-(probs * logp_all).sum(-1)).sum(1) / r.mask.sum(1)


@torch.no_grad()
def score_rollouts(policy: nn.Module, reward: nn.Module, tokenizer: Any, prompts: Sequence[list[int]],
                   closings: Sequence[list[int]], max_new_tokens: int, seed: int, reference: nn.Module | None = None,
                   batch_size: int = 16) -> dict[str, Any]:
    """Sample an answer to each prompt from `policy` and score it with the reward model: the scores, their mean,
    and (given the `reference` model) the mean KL(policy || reference) per answer, as the PPO loop measures it."""
    eos_ids, pad_id = end_of_sequence_ids(policy, tokenizer), padding_id(policy, tokenizer)
    scores, kls = [], []
    for first in range(0, len(prompts), batch_size):
        part = list(prompts[first:first + batch_size])
        answers = sample_answers(policy, tokenizer, part, max_new_tokens, seed + first)
        r = Rollouts.collate(part, answers, pad_id)
        scores.append(read_rollouts(reward, r, closings[first:first + batch_size], eos_ids, pad_id)[0])
        if reference is not None:
            kls.append(kl_and_entropy(r, answer_logps(policy, r)[1], answer_logps(reference, r)[1])[0])
    score = torch.cat(scores)
    report: dict[str, Any] = {"mean_reward": float(score.mean()), "scores": score.tolist()}
    if kls:
        report["kl"] = float(torch.cat(kls).mean())
    return report


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the positions `mask` marks (zero elsewhere)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


@dataclass
class Experience:
    """One batch of rollouts and what PPO computes from them before its updates ([B, T] on the answer grid)."""

    rollouts: Rollouts
    scores: torch.Tensor  # [B] the reward model's
    logps: torch.Tensor  # log pi_old
    ref_logps: torch.Tensor
    kl: torch.Tensor  # [B] KL(pi || pi_ref) of each answer: the sum over its tokens of the exact KL per position
    entropy: torch.Tensor  # [B] mean entropy per answer token
    features: torch.Tensor  # [B, T, d] what the value head reads
    values: torch.Tensor
    advantages: torch.Tensor  # whitened
    returns: torch.Tensor


@dataclass
class Models:
    """The models of a PPO run (see the module docstring) and how their text is closed and padded."""

    policy: nn.Module  # with LoRA adapters: adapters off is the reference
    reward: nn.Module
    value: nn.Module  # the frozen scalar-head model the value head reads (the reward model by default)
    value_head: ValueHead
    tokenizer: Any
    eos_ids: set[int]
    pad_id: int


def sample_answers(policy: nn.Module, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                   seed: int) -> list[list[int]]:
    """One answer per prompt, sampled from the policy at temperature 1 (lmlab's engine; row b seeded seed + b), in
    the model's own dtype (the engine's KV cache has it: no autocast)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, seed=seed)
    with torch.autocast(next(policy.parameters()).device.type, enabled=False):
        return [c.tokens for c in generate(policy, list(prompts), config, tokenizer)]


@torch.no_grad()
def experience(m: Models, prompts: Sequence[list[int]], closings: Sequence[list[int]], answers: Sequence[list[int]],
               kl_coef: float, gamma: float = 1.0, lam: float = 0.95) -> Experience:
    """Score, per-token KL-penalized rewards, values, GAE advantages and returns of a batch of rollouts."""
    r = Rollouts.collate(prompts, answers, m.pad_id)
    logps, logp_all = answer_logps(m.policy, r)
    with adapters_disabled(m.policy):
        ref_logps, ref_all = answer_logps(m.policy, r)
    kl, entropy = kl_and_entropy(r, logp_all, ref_all)
    scores, features = read_rollouts(m.reward, r, closings, m.eos_ids, m.pad_id)
    if m.value is not m.reward:
        features = read_rollouts(m.value, r, closings, m.eos_ids, m.pad_id)[1]
    values = m.value_head(features) * r.mask
    rewards = kl_penalized_rewards(logps, ref_logps, scores, kl_coef, r.mask)
    advantages, returns = gae(rewards, values, r.mask, gamma, lam)
    return Experience(r, scores, logps, ref_logps, kl, entropy, features, values, whiten(advantages, r.mask), returns)


def ppo_loss(m: Models, e: Experience, rows: Sequence[int], s: PPOSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO loss of some rollouts of `e` (clipped policy loss + vf_coef * clipped value loss), and its parts."""
    sub = Rollouts.collate([e.rollouts.prompts[i] for i in rows], [e.rollouts.answers[i] for i in rows], m.pad_id)
    idx, width = torch.tensor(list(rows)), sub.mask.shape[1]
    mask, old = sub.mask, e.logps[idx, :width]
    logps, _ = answer_logps(m.policy, sub)
    policy_loss = clipped_policy_loss(logps, old, e.advantages[idx, :width], mask, s.clip_range)
    values = m.value_head(e.features[idx, :width]) * mask
    value_loss = clipped_value_loss(values, e.values[idx, :width], e.returns[idx, :width], mask, s.value_clip_range)
    with torch.no_grad():
        ratio = torch.exp(logps - old)
        parts = {"policy_loss": float(policy_loss), "value_loss": float(value_loss),
                 "clip_fraction": float(masked_mean(((ratio - 1).abs() > s.clip_range).float(), mask)),
                 "approx_kl": float(masked_mean(0.5 * (logps - old) ** 2, mask))}
    return policy_loss + s.vf_coef * value_loss, parts


def ppo_step(m: Models, s: PPOSettings, step: int, prompts: Sequence[list[int]], closings: Sequence[list[int]],
             controller: AdaptiveKL, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
             generator: torch.Generator) -> dict[str, Any]:
    """One PPO iteration on a batch of prompts (see the module docstring); its record for metrics.jsonl."""
    answers = sample_answers(m.policy, m.tokenizer, prompts, s.max_new_tokens, s.seed * 1_000_003 + step)
    e = experience(m, prompts, closings, answers, controller.coef, s.gamma, s.lam)
    parts: list[dict[str, float]] = []
    size = len(prompts) // s.mini_batches
    for _ in range(s.ppo_epochs):
        shuffled = torch.randperm(len(prompts), generator=generator).tolist()
        for first in range(0, len(prompts), size):
            loss, part = ppo_loss(m, e, shuffled[first:first + size], s)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            optimizer.step()
            parts.append(part)
    record = {"step": step, "reward": float(e.scores.mean()), "kl": float(e.kl.mean()), "kl_coef": controller.coef,
              "entropy": float(e.entropy.mean()), "answer_tokens": float(e.rollouts.mask.sum(1).mean()),
              **{k: sum(p[k] for p in parts) / len(parts) for k in parts[0]},
              "sample": m.tokenizer.decode(answers[0], skip_special_tokens=True)}
    if s.target_kl > 0:
        controller.update(record["kl"], len(prompts))
    return record


class PromptOrder:
    """Batches of prompt indices: passes over all prompts, each pass in a new seeded order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator, self.queue = n, batch_size, generator, []

    def next(self) -> list[int]:
        while len(self.queue) < self.batch_size:
            self.queue += torch.randperm(self.n, generator=self.generator).tolist()
        rows, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
        return rows


def closing_tokens(encoder: PairEncoder, prompt: Prompt) -> list[int]:
    """The tokens that close an answer to `prompt` in preference data (the chat template's end of turn, or the
    end-of-sequence token): what the reward model read after each answer it learned from."""
    return encoder.answer(prompt, "")


def load_models(s: PPOSettings) -> tuple[Models, Any]:
    """The policy with LoRA adapters, the reward model, the value model and its value head; one clear line for a
    model that cannot play its part. Returns the models and the LoRA report."""
    loaded = load_model(s.model)
    policy, tokenizer = loaded.model, loaded.tokenizer
    check_policy(policy.config, s.model, "PPO")
    if tokenizer is None:
        raise LmlabError(f"{s.model} has no tokenizer, so it cannot read prompts; use a checkpoint saved with one")
    reward = load_model(s.reward).model
    check_reward_model(reward, s.reward)
    value = reward if s.value in (None, s.reward) else load_model(s.value).model
    check_value_model(value.config, s.value or s.reward)
    for name, other in ((s.reward, reward), (s.value, value)):
        if other.config.vocab_size != policy.config.vocab_size:
            raise LmlabError(f"{name} reads the policy's tokens, but its vocabulary ({other.config.vocab_size:,}) is "
                             f"not the policy's ({policy.config.vocab_size:,}); train it from the same base model")
    for model in (reward, value):
        model.eval().requires_grad_(False)
    report = apply_lora(policy, s.lora_targets, s.lora_rank, s.lora_alpha, dropout=0.0, seed=s.seed)
    policy.eval()  # no dropout anywhere: the ratio pi / pi_old is 1 before the first update
    models = Models(policy, reward, value, ValueHead(value), tokenizer, end_of_sequence_ids(policy, tokenizer),
                    padding_id(policy, tokenizer))
    return models, report


def align_ppo(s: PPOSettings) -> PPOResult:
    """Run RLHF with PPO as `s` says (see the module docstring) and write its outputs to `s.out`."""
    start = time.perf_counter()
    s.check()
    memory = PeakMemory()
    say = (lambda text: tqdm.write(text)) if s.progress else (lambda text: print(text, flush=True))
    prompts_text = read_prompts(s.prompts, s.prompt_field)
    m, report = load_models(s)
    encoder = PairEncoder(m.tokenizer, s.chat, m.policy.config.eos_token_id)
    prompts = encode_prompts(prompts_text, encoder, s.max_prompt_length)
    closings = [closing_tokens(encoder, p) for p in prompts_text]
    if max(map(len, prompts)) + s.max_new_tokens + max(map(len, closings)) > m.policy.config.max_seq_len:
        raise LmlabError(f"--max-prompt-length {s.max_prompt_length} + --max-new-tokens {s.max_new_tokens} exceed the "
                         f"model's context window of {m.policy.config.max_seq_len} tokens")
    n_trainable, n_total = count_parameters(m.policy)
    say(f"{report.format()}\n{len(prompts):,} prompts; value head on {s.value or s.reward}")
    steps = s.steps or max(1, round(s.epochs * math.ceil(len(prompts) / s.batch_size)))
    params = [p for p in m.policy.parameters() if p.requires_grad] + list(m.value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=s.lr or DEFAULT_LR, eps=1e-5, weight_decay=0.0)
    controller = AdaptiveKL(s.kl_coef, s.target_kl, s.kl_horizon)
    generator = torch.Generator().manual_seed(s.seed)
    order = PromptOrder(len(prompts), s.batch_size, generator)
    identity = {"kind": "ppo", **json.loads(json.dumps(asdict(s), default=str))}
    for how_long in ("steps", "epochs", "checkpoint_every", "resume", "progress"):  # not what decides a step
        identity.pop(how_long)
    with open_run(s.out, identity, resume=s.resume) as run:
        state = PPOState(0, s.kl_coef, [], 0.0)
        latest = run.latest_checkpoint() if run.resume else None
        if latest is not None:
            state, order.queue = load_ppo_checkpoint(latest, m.policy, m.value_head, optimizer, generator)
            controller.coef = state.kl_coef
            say(f"resumed from {latest} (step {state.step} of {steps})")
        history = state.history
        run.metrics.write_text("".join(json_line(r) for r in history), encoding="utf-8")
        with open(run.metrics, "a", encoding="utf-8", buffering=1) as log:
            bar = tqdm(range(state.step + 1, steps + 1), desc="PPO", unit="step", disable=not s.progress,
                       dynamic_ncols=True, initial=state.step, total=steps)
            train_start = time.perf_counter() - state.train_seconds
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.dtype == "bf16")
            for step in bar:
                with autocast:
                    rows = order.next()
                    record = ppo_step(m, s, step, [prompts[i] for i in rows], [closings[i] for i in rows], controller,
                                      optimizer, params, generator)
                log.write(json_line(record))
                history.append(record)
                bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.2f}", coef=f"{controller.coef:.3f}")
                say(f"step {step}: reward {record['reward']:.3f}, KL {record['kl']:.3f}, entropy {record['entropy']:.2f}; "
                    f"sample: {record['sample'][:100]!r}")
                if step % s.checkpoint_every == 0 or step == steps:
                    save_ppo_checkpoint(run.checkpoints, PPOState(step, controller.coef, history,
                                                                  time.perf_counter() - train_start),
                                        m.policy, m.value_head, optimizer, generator, order.queue)
            bar.close()
        train_seconds = time.perf_counter() - train_start
        plot_ppo(history, run.path / PLOT_FILE, s.target_kl)
        adapter_dir = save_adapter(m.policy, run.path / "adapter", base_reference(s.model), report, overwrite=True)
        value_head_dir = save_value_head(m.value_head, run.path / "value_head", s.value or s.reward)
        model_dir = save_checkpoint(merge_lora(m.policy), run.path / "model", m.tokenizer, overwrite=True)
        result = PPOResult(run.path, model_dir, adapter_dir, value_head_dir, steps, history, controller.coef,
                           train_seconds, time.perf_counter() - start, memory.peak_bytes() or 0)
        write_json(run.path / SUMMARY_FILE, json.loads(json.dumps(
            {**asdict(result), "settings": identity, "trainable_parameters": n_trainable,
             "total_parameters": n_total}, default=str)))
    return result


def save_value_head(head: ValueHead, out: Path, scalar_model: str) -> Path:
    """value_head/: the head's weights and the model whose hidden states it reads."""
    with replace_folder(out, VALUE_HEAD_KIND, overwrite=True) as tmp:
        save_safetensors({k: v.detach().contiguous() for k, v in head.state_dict().items()}, tmp / "value_head.safetensors")
        write_json(tmp / "value_head.json", {"reads": scalar_model})
    return out


def plot_ppo(history: list[dict[str, Any]], path: Path, target_kl: float) -> Path:
    """Mean reward of the rollouts and their KL to the reference, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, [r["reward"] for r in history], "o-", ms=3)
    left.set_ylabel("mean reward-model score of the rollouts")
    right.plot(steps, [r["kl"] for r in history], "o-", ms=3, label="KL(policy || reference)")
    if target_kl > 0:
        right.axhline(target_kl, color="grey", ls="--", label=f"target {target_kl:g}")
    right.set_ylabel("KL per answer (nats)")
    right.legend()
    for ax in (left, right):
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.suptitle("RLHF with PPO")
    try:
        return save_figure(fig, path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
