"""Aligning SmolLM2-135M-Instruct on Anthropic's HH-RLHF harmless pairs (../shared/data/preferences).

The first pairs train, the last --val (300) are held out. Two runs, each through the same call the CLI makes:

1. a reward model (`lmlab finetune --task reward`, LoRA): pairwise accuracy and margin on the held-out pairs
   (the issue asks >= 0.60);
2. DPO (`lmlab align --method dpo`, LoRA): implicit-reward accuracy on the held-out pairs (>= 0.60), then
   the base and the aligned model answer held-out prompts (greedy) and the reward model of run 1 scores
   both: mean reward and win rate of the aligned model.

Prints each run's scores, wall time and peak memory. Sizes are bounded by the options (defaults: a few
minutes each on 2 CPU cores). PPO is not part of it yet.

    nice -n 19 python benchmarks/align_hh.py --steps 60 --out runs/align_hh
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmlab.alignment.reward import score_texts
from lmlab.finetuning.datasets import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune
from lmlab.generation import GenerationConfig
from lmlab.generation.engine import Engine, EngineRequest
from lmlab.hub.checkpoint import load_checkpoint
from lmlab.hub.resolve import load_model
from lmlab.alignment.preferences import PairEncoder, split_conversations

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "preferences" / "hh_harmless.jsonl"  # ../shared
MODEL = "smollm2-135m-instruct"


def split(data: Path, n_val: int, n_train: int | None, out: Path) -> tuple[Path, Path]:
    lines = data.read_text(encoding="utf-8").splitlines()
    train, val = lines[:-n_val], lines[-n_val:]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(train[:n_train]) + "\n", encoding="utf-8")
    (out / "val.jsonl").write_text("\n".join(val) + "\n", encoding="utf-8")
    return out / "train.jsonl", out / "val.jsonl"


def answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    engine = Engine(model, tokenizer, slots=8, max_len=1024)
    handles = [engine.submit(EngineRequest(p, GenerationConfig(max_new_tokens=max_new_tokens))) for p in prompts]
    engine.run_until_idle()
    return [h.result().tokens for h in handles]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--val", type=int, default=300, help="held-out pairs, the last of the file")
    p.add_argument("--train", type=int, default=None, help="training pairs used (default: all the others)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--prompts", type=int, default=50, help="held-out prompts answered by base and aligned model")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("runs/align_hh"))
    a = p.parse_args()
    torch.manual_seed(0)
    train, val = split(a.data, a.val, a.train, a.out / "data")
    common = dict(validation=val, method="lora", lora_targets="all-linear", lora_rank=16, lora_alpha=32,
                  steps=a.steps, batch_size=a.batch_size, eval_metric="accuracy", eval_samples=10**9,
                  progress=True)
    report = {}
    start = time.perf_counter()
    rm = finetune(FinetuneSettings(model=MODEL, data=train, out=a.out / "reward", lr=2e-4,
                                   format=DataFormat(task="reward", max_length=a.max_length), **common))
    report["reward"] = {"scores": rm.scores, "wall_s": time.perf_counter() - start, "peak_bytes": rm.peak_memory_bytes}
    print(json.dumps(report["reward"]), flush=True)
    start = time.perf_counter()
    dpo = finetune(FinetuneSettings(model=MODEL, data=train, out=a.out / "dpo", lr=2e-4, beta=0.1,
                                    format=DataFormat(task="dpo", max_length=a.max_length), **common))
    report["dpo"] = {"scores": dpo.scores, "wall_s": time.perf_counter() - start, "peak_bytes": dpo.peak_memory_bytes}
    print(json.dumps(report["dpo"]), flush=True)

    base = load_model(MODEL)
    encoder = PairEncoder(base.tokenizer, None, base.model.config.eos_token_id)
    records = [json.loads(line) for line in val.read_text(encoding="utf-8").splitlines()][:a.prompts]
    prompts = [encoder.prompt(split_conversations(r["chosen"], r["rejected"], "val")[0])[0] for r in records]
    reward_model = load_checkpoint(rm.model_dir).eval()
    aligned = load_checkpoint(dpo.model_dir).eval()
    pad = base.model.config.eos_token_id
    scores = {}
    for name, model in (("base", base.model.eval()), ("dpo", aligned)):
        outs = answers(model, base.tokenizer, prompts, a.max_new_tokens)
        scores[name] = score_texts(reward_model, [pr + o for pr, o in zip(prompts, outs)], pad)
    report["reward_of_answers"] = {"base_mean": float(scores["base"].mean()), "dpo_mean": float(scores["dpo"].mean()),
                                   "dpo_win_rate": float((scores["dpo"] > scores["base"]).float().mean())}
    print(json.dumps(report["reward_of_answers"]), flush=True)
    (a.out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
