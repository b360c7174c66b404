"""Does llama.cpp run what `lmlab export --format gguf` writes the way lmlab runs it?

Three models: a tiny Llama-style and a tiny GPT-2-style decoder (pre-trained here for 30 steps
on the shipped corpus, so their next-token choices are not coin flips), and the embedded SmolLM2-135M-Instruct
with a LoRA fine-tune (a few steps on the shipped dialogues) merged into it. Each is exported to GGUF f32 and
f16, and llama-cpp-python (`pip install -e .[bench]`) continues 10 prompts greedily for 32 tokens from the
same token ids lmlab uses; the script prints how many of the 10 are identical to lmlab's. Where f16 differs,
it prints the first differing step and lmlab's own margin there (top-1 minus top-2 logit): a margin smaller
than f16's rounding of the weights moves is a divergence explained by rounding. The q8_0 and q4_0 exports
report perplexity on a shipped text next to lmlab's fp32 perplexity on the same tokens (and f32, f16).

Correctness, not speed: a loaded machine is fine. Takes a few minutes on 2 cores. On CPUs with AMX, build
llama-cpp-python without its AMX kernels (docs/inference.md says how): the native build crashes (SIGSEGV)
evaluating batches of more than one token, quantized files of the tiny models included.

    .venv/bin/python benchmarks/check_gguf_export.py [--out /tmp/gguf-check] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch

from lmlab.data.corpus import default_documents
from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune
from lmlab.generation import GenerationConfig, generate
from lmlab.hub.export import export_model, load_for_export
from lmlab.hub.resolve import load_model
from lmlab.resources import resource_path
from lmlab.training.pretrain import PretrainSettings, pretrain
from lmlab.training.trainer import TrainConfig

NEW_TOKENS = 32
QUANTIZED = ("q8_0", "q4_0")
QUESTIONS = ["What is the capital of France?", "Give me three tips for staying focused.", "Explain photosynthesis "
             "in one sentence.", "Write a haiku about autumn.", "What is 12 times 7?", "Name two uses of a paperclip.",
             "How do I boil an egg?", "Translate 'good morning' into Spanish.", "Why is the sky blue?",
             "Summarize: Anna missed the bus, so she called a taxi and arrived ten minutes late to work."]


def tiny_model(out: Path, preset: str, overrides: dict) -> Path:
    """Pre-train a tiny decoder briefly on the shipped corpus (BPE 1024) so its predictions are not coin flips."""
    train = TrainConfig(steps=30, batch_size=8, lr=5e-3, warmup=5, eval_every=30, progress=False)
    pretrain(PretrainSettings(out=out, preset=preset, overrides=overrides, seq_len=64, train=train, progress=False))
    return out / "model"


def smollm2_lora(out: Path) -> Path:
    """A LoRA fine-tune of SmolLM2 on 24 shipped dialogues, 2 steps, all linear layers: the adapter folder."""
    records = [json.loads(line) for line in resource_path("dialogues.jsonl").read_text().splitlines()][:24]
    data = out.parent / "dialogues24.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = FinetuneSettings(model="smollm2-135m-instruct", data=data, out=out, method="lora",
                                lora_targets="all-linear", lora_rank=8, steps=2, batch_size=2, lr=2e-3,
                                format=DataFormat(prompt_field="dialogue", completion_field="summary", max_length=160,
                                                  template="Summarize this dialogue.\n\n{dialogue}"),
                                progress=False)
    finetune(settings)
    return out / "adapter"


def prompts_for(tok, chat: bool) -> list[list[int]]:
    if chat:
        return [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    docs = default_documents(10)
    return [tok.encode(doc)[:24] for doc in docs]


def until_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


def llama_greedy(llm, prompt: list[int], eos: int | None) -> list[int]:
    out: list[int] = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == eos or len(out) == NEW_TOKENS:
            break
    return out


def margin_at(model, prompt: list[int], ours: list[int], step: int) -> float:
    """lmlab's top-1 minus top-2 logit before new token `step`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours[:step]])).logits[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def nll_llama(llm, ids: list[int]) -> float:
    """Mean negative log-likelihood of ids[1:] given their prefixes, from llama.cpp's logits."""
    llm.reset()
    llm.eval(ids)
    scores = torch.tensor(llm.scores[: len(ids)], dtype=torch.float64)
    return float(torch.nn.functional.cross_entropy(scores[:-1], torch.tensor(ids[1:])))


def nll_lmlab(model, ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])))


def check(name: str, reference: str, chat: bool, out: Path, threads: int, ppl_text: str) -> list[str]:
    import llama_cpp

    model, tok, _ = load_for_export(reference)  # an adapter folder: merged into its base, as the export does
    eos = tok.eos_id
    prompts = prompts_for(tok, chat)
    ours = [until_eos(c.tokens, eos) for c in generate(model, prompts, GenerationConfig(max_new_tokens=NEW_TOKENS),
                                                       tokenizer=tok)]
    ppl_ids = tok.encode(ppl_text)[: min(256, model.config.max_seq_len)]
    lines = [f"\n== {name} ({sum(p.numel() for p in model.parameters()):,} parameters; perplexity text: "
             f"{len(ppl_ids)} tokens)",
             f"  lmlab fp32                      perplexity {math.exp(nll_lmlab(model, ppl_ids)):.4f}"]
    for outtype in ("f32", "f16", "q8_0", "q4_0"):
        try:
            path = export_model(reference, out / f"{name}-{outtype}", "gguf", outtype, overwrite=True)
        except Exception as err:  # an outtype the model cannot take is reported, not fatal
            lines.append(f"  {outtype:5} export refused: {err}")
            continue
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=min(model.config.max_seq_len, 1024), n_threads=threads,
                              logits_all=True, verbose=False)
        same_tokens = sum(llm.tokenize(tok.decode(p, skip_special_tokens=False).encode(), add_bos=False,
                                       special=True) == p for p in prompts)
        ppl = math.exp(nll_llama(llm, ppl_ids))
        if outtype in ("f32", "f16"):
            theirs = [until_eos(llama_greedy(llm, p, eos), eos) for p in prompts]
            identical = sum(a == b for a, b in zip(ours, theirs))
            lines.append(f"  llama.cpp {outtype:5} greedy {identical}/10 identical to lmlab ({NEW_TOKENS} new tokens); "
                         f"perplexity {ppl:.4f}; llama.cpp's tokenizer gives lmlab's ids for {same_tokens}/10 prompts")
            for i, (a, b) in enumerate(zip(ours, theirs)):
                if a != b:
                    step = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                    lines.append(f"    prompt {i}: first difference at new token {step} (lmlab {a[step:step + 1]}, "
                                 f"llama.cpp {b[step:step + 1]}); lmlab's top-1 - top-2 logit margin there "
                                 f"{margin_at(model, prompts[i], a, step):.4f}")
        else:
            lines.append(f"  llama.cpp {outtype:5} perplexity {ppl:.4f}")
        llm.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="gguf-check-"))
    out.mkdir(parents=True, exist_ok=True)
    ppl_text = "\n\n".join(default_documents(40)[20:])  # stories the tiny models did train on, in part
    dialogue_text = "\n".join(json.loads(line)["dialogue"] for line in
                              resource_path("dialogues.jsonl").read_text().splitlines()[30:40])
    models = []
    if not (out / "tiny-llama" / "model").is_dir():
        tiny_model(out / "tiny-llama", "tiny-llama", {"d_ff": 192})  # rows of 192: q8_0/q4_0 blocks of 32 fit
    models.append(("tiny-llama", str(out / "tiny-llama" / "model"), False, ppl_text))
    if not (out / "tiny-gpt2" / "model").is_dir():
        tiny_model(out / "tiny-gpt2", "tiny-gpt2", {})
    models.append(("tiny-gpt2", str(out / "tiny-gpt2" / "model"), False, ppl_text))
    if not (out / "smollm2-lora" / "adapter").is_dir():
        smollm2_lora(out / "smollm2-lora")
    base = load_model("smollm2-135m-instruct").model.state_dict()
    merged = load_model(str(out / "smollm2-lora" / "model")).model.state_dict()
    changed = max(float((merged[k] - base[k]).abs().max()) for k in base if k in merged)
    print(f"SmolLM2 LoRA merge: largest weight change {changed:.3g} (the merged model differs from the base)")
    models.append(("smollm2-lora", str(out / "smollm2-lora" / "adapter"), True, dialogue_text))
    report = []
    for name, reference, chat, text in models:
        lines = check(name, reference, chat, out, args.threads, text)
        print("\n".join(lines), flush=True)
        report += lines
    (out / "report.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"\nreport: {out / 'report.txt'}")


if __name__ == "__main__":
    main()
