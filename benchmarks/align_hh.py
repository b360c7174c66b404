"""Aligning SmolLM2-135M-Instruct on Anthropic's HH-RLHF harmless pairs (../shared/data/preferences).

The first pairs train, the last --val (300) are held out. Three parts, each through the same call the CLI
makes, each best run in a process of its own (`--parts`) so its peak memory is its own:

1. reward: a reward model (`lmlab finetune --task reward`, LoRA): pairwise accuracy and margin on the held-out
   pairs (the issue asks >= 0.60);
2. dpo: DPO (`lmlab align --method dpo`, LoRA): implicit-reward accuracy on the held-out pairs (>= 0.60), then
   the base and the aligned model answer held-out prompts (sampled, same seeds) and the reward model of part 1
   scores both: mean reward and win rate of the aligned model, and its KL to the base;
3. ppo: RLHF with PPO (`lmlab align --method ppo`, LoRA) against the reward model of part 1, on prompts of the
   held-out pairs: the mean reward of sampled answers to other held-out prompts before and after, and the
   KL to the base model against its target.

Each part adds its scores, wall time and resident peak memory to OUT/report.json; the curves are
OUT/reward/loss.png, OUT/dpo/loss.png and OUT/ppo/ppo.png. Sizes are bounded by the options.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/align_hh.py --parts reward --out runs/align_hh
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/align_hh.py --parts dpo --out runs/align_hh
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/align_hh.py --parts ppo --out runs/align_hh

(One thread a process on a loaded machine: two OpenMP threads that wait for each other took 3.4x the wall
time of one for the same forward pass at a load of ~10.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmlab.alignment.dpo import cache_reference_logps, score_dpo
from lmlab.alignment.preferences import PairEncoder, load_preferences
from lmlab.alignment.reward import score_pairs
from lmlab.alignment.rlhf import (PPOSettings, align_ppo, closing_tokens, encode_prompts, read_prompts,
                                  score_rollouts)
from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneResult, FinetuneSettings, finetune
from lmlab.hub.checkpoint import load_checkpoint
from lmlab.hub.resolve import load_model
from lmlab.io import write_json, write_text
from lmlab.planning.measure import PeakMemory

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "preferences" / "hh_harmless.jsonl"  # ../shared
MODEL = "smollm2-135m-instruct"
PARTS = ("reward", "dpo", "ppo")


def split(data: Path, n_val: int, n_train: int, n_reward: int, n_ppo: int, n_eval: int, out: Path) -> tuple[Path, Path]:
    """train.jsonl: the first n_train pairs (DPO's); reward.jsonl: the first n_reward (the reward model's);
    val.jsonl: the last n_val (held out). From the held-out pairs:
    monitor.jsonl (8, the trainers' own cheap validation), ppo.jsonl (PPO's prompts: the first n_ppo) and
    eval.jsonl (the n_eval after those: prompts whose answers are compared)."""
    lines = data.read_text(encoding="utf-8").splitlines()
    train, val = lines[:-n_val], lines[-n_val:]
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": train[:n_train], "reward": train[:n_reward], "val": val, "monitor": val[:8], "ppo": val[:n_ppo],
             "eval": val[n_ppo:n_ppo + n_eval]}
    for name, rows in files.items():
        write_text(out / f"{name}.jsonl", "\n".join(rows) + "\n")
    return out / "train.jsonl", out / "val.jsonl"


def update_report(out: Path, part: str, entry: dict) -> None:
    path = out / "report.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    report[part] = entry
    write_json(path, report)
    print(json.dumps({part: entry}), flush=True)


def held_out_pairs(a: argparse.Namespace, val: Path, task: str, tokenizer, eos_id: int, max_length: int):
    """The first --scored held-out pairs (all by default)."""
    return load_preferences(val, DataFormat(task=task, max_length=max_length), tokenizer, validation=val,
                            eos_id=eos_id).validation[:a.scored]


def trained(out: Path) -> FinetuneResult | None:
    """The result of a fine-tune that finished in `out` (then only its scoring runs again), else None."""
    return FinetuneResult.load(out) if (out / "finetune.json").is_file() else None


def top_layers(n: int) -> str:
    """LoRA targets: every linear layer of the last n blocks (the backward pass stops below them)."""
    n_layer = load_model(MODEL).model.config.n_layer
    if not 0 < n < n_layer:
        return "all-linear"
    names = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ffn.up", "ffn.gate", "ffn.down")
    return ",".join(f"layers.{i}.{name}" for i in range(n_layer - n, n_layer) for name in names)


def run_reward(a: argparse.Namespace, train: Path, val: Path) -> None:
    """Train with a few held-out pairs as the trainer's validation (cheap), then score all the held-out pairs."""
    start = time.perf_counter()
    rm = trained(a.out / "reward") or finetune(FinetuneSettings(
        model=MODEL, data=a.out / "data" / "reward.jsonl", validation=a.out / "data" / "monitor.jsonl",
        out=a.out / "reward", lr=a.reward_lr, format=DataFormat(task="reward", max_length=a.reward_max_length),
        **{**common(a, a.reward_steps), "lora_targets": top_layers(a.reward_layers)}))
    model = load_checkpoint(rm.model_dir).eval()
    pairs = held_out_pairs(a, val, "reward", load_model(MODEL).tokenizer, model.config.eos_token_id,
                           a.reward_max_length)
    with autocast(a):
        scores = score_pairs(model, pairs, pad_id=model.config.eos_token_id, batch_size=16)
    update_report(a.out, "reward", {"held_out": {"pairs": len(pairs), **scores.values()}, "steps": rm.steps,
                                    "wall_s": time.perf_counter() - start, "peak_bytes": rm.peak_memory_bytes})


def compare(a: argparse.Namespace, model, base, reward_model) -> dict:
    """Sampled answers of `model` and of the base model to held-out prompts (the pairs after the PPO prompts),
    scored by the reward model: mean rewards, win rate (a tie, the same answer, counts half), and the model's KL
    to the base."""
    texts = read_prompts(a.out / "data" / "eval.jsonl", "prompt")
    encoder = PairEncoder(base.tokenizer, None, base.model.config.eos_token_id)
    prompts = encode_prompts(texts, encoder, a.max_prompt)
    closings = [closing_tokens(encoder, t) for t in texts]
    before = score_rollouts(base.model, reward_model, base.tokenizer, prompts, closings, a.max_new_tokens, seed=1)
    after = score_rollouts(model, reward_model, base.tokenizer, prompts, closings, a.max_new_tokens, seed=1,
                           reference=base.model)
    wins = sum((x > y) + 0.5 * (x == y) for x, y in zip(after["scores"], before["scores"])) / len(prompts)  # a tie: half
    return {"prompts": len(prompts), "base_mean_reward": before["mean_reward"],
            "aligned_mean_reward": after["mean_reward"], "win_rate": wins, "kl_to_base": after["kl"]}


def run_dpo(a: argparse.Namespace, train: Path, val: Path) -> None:
    start = time.perf_counter()
    dpo = trained(a.out / "dpo") or finetune(FinetuneSettings(
        model=MODEL, data=train, validation=a.out / "data" / "monitor.jsonl", out=a.out / "dpo", lr=a.dpo_lr, beta=0.1,
        format=DataFormat(task="dpo", max_length=a.max_length), **common(a, a.steps)))
    base = load_model(MODEL)
    pad = base.model.config.eos_token_id
    aligned = load_checkpoint(dpo.model_dir).eval()
    pairs = held_out_pairs(a, val, "dpo", base.tokenizer, pad, a.max_length)
    with autocast(a):
        cache_reference_logps(base.model, pairs, pad, batch_size=16, progress=False)
        scores = score_dpo(aligned, pairs, pad, beta=0.1, batch_size=16)
    entry = {"held_out": {"pairs": len(pairs), **scores.values()}, "steps": dpo.steps,
             "wall_s": time.perf_counter() - start, "peak_bytes": dpo.peak_memory_bytes}
    update_report(a.out, "dpo", entry)
    reward_dir = a.out / "reward" / "model"
    while not reward_dir.is_dir():  # part 1 running beside this one
        print(f"waiting for the reward model {reward_dir}", flush=True)
        time.sleep(60)
    entry["answers"] = compare(a, aligned, base, load_checkpoint(reward_dir).eval())
    update_report(a.out, "dpo", entry)


def autocast(a: argparse.Namespace):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")


def common(a: argparse.Namespace, steps: int) -> dict:
    return dict(method="lora", lora_targets="all-linear", lora_rank=16, lora_alpha=32, steps=steps,
                batch_size=a.batch_size, eval_metric="loss", eval_every=steps, dtype=a.dtype, progress=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help="which parts to run, in order (default: all three)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--val", type=int, default=300, help="held-out pairs, the last of the file")
    p.add_argument("--scored", type=int, default=None, help="held-out pairs scored, the first of them (default: all)")
    p.add_argument("--train", type=int, default=None, help="training pairs (default: --steps x --batch-size, the "
                   "pairs the steps see; DPO computes reference log-probabilities of all of them)")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps of DPO")
    p.add_argument("--reward-steps", type=int, default=120, help="optimizer steps of the reward model (it trains on "
                   "the first --reward-steps x --batch-size pairs)")
    p.add_argument("--reward-max-length", type=int, default=80, help="tokens of prompt + answer for the reward model")
    p.add_argument("--reward-layers", type=int, default=12, help="the reward model's LoRA adapts every linear layer "
                   "of its last N blocks (0: of all blocks)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="DPO's tokens of prompt + answer (prompts keep their end)")
    p.add_argument("--dtype", default="bf16", help="fp32, or bf16 autocast (fast with AMX)")
    p.add_argument("--reward-lr", type=float, default=3e-4)
    p.add_argument("--dpo-lr", type=float, default=3e-4)
    p.add_argument("--max-prompt", type=int, default=64, help="tokens of a held-out prompt kept (its end)")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts answered by base and aligned models")
    p.add_argument("--mini-batches", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--ppo-steps", type=int, default=20, help="PPO steps of 8 prompts")
    p.add_argument("--ppo-prompts", type=int, default=150, help="the first held-out pairs whose prompts PPO trains on")
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--ppo-lr", type=float, default=1e-4)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--target-kl", type=float, default=6.0)
    p.add_argument("--kl-horizon", type=int, default=PPOSettings.kl_horizon,
                   help="rollouts over which the KL coefficient moves at most 20%%")
    p.add_argument("--out", type=Path, default=Path("runs/align_hh"))
    a = p.parse_args()
    parts = a.parts.split(",")
    if not set(parts) <= set(PARTS):
        p.error(f"--parts takes {', '.join(PARTS)}")
    torch.manual_seed(0)
    train, val = split(a.data, a.val, a.train or a.steps * a.batch_size,
                       a.reward_steps * a.batch_size, a.ppo_prompts, a.prompts, a.out / "data")
    for part in parts:
        memory = PeakMemory()
        {"reward": run_reward, "dpo": run_dpo, "ppo": run_ppo}[part](a, train, val)
        print(f"{part}: resident peak {memory.peak_bytes() / 1e9:.2f} GB above the start", flush=True)


def run_ppo(a: argparse.Namespace, train: Path, val: Path) -> None:
    """PPO on the prompts of the first held-out pairs; answers to the next ones compared with the base model's."""
    settings = PPOSettings(model=MODEL, reward=str(a.out / "reward" / "model"), prompts=a.out / "data" / "ppo.jsonl",
                           out=a.out / "ppo", max_prompt_length=a.max_prompt, max_new_tokens=a.max_new_tokens,
                           steps=a.ppo_steps, batch_size=8, mini_batches=a.mini_batches, ppo_epochs=a.ppo_epochs,
                           lr=a.ppo_lr, lora_targets="all-linear", lora_rank=16, lora_alpha=32, kl_coef=a.kl_coef,
                           target_kl=a.target_kl, kl_horizon=a.kl_horizon, dtype=a.dtype)
    start = time.perf_counter()
    result = align_ppo(settings)
    wall = time.perf_counter() - start
    base = load_model(MODEL)
    reward_model = load_checkpoint(a.out / "reward" / "model").eval()
    answers = compare(a, load_checkpoint(result.model_dir).eval(), base, reward_model)
    update_report(a.out, "ppo", {
        "steps": result.steps, "wall_s": wall, "peak_bytes": result.peak_memory_bytes, "target_kl": a.target_kl,
        "first_step_reward": result.history[0]["reward"], "last_step_reward": result.history[-1]["reward"],
        "max_step_kl": max(r["kl"] for r in result.history), "answers": answers})


if __name__ == "__main__":
    main()
