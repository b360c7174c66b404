"""`export_model`: hand a model to the tools people run, with its card.

- "hf": a Hugging Face folder (config.json, model.safetensors, tokenizer files),
  which `transformers` loads and the Hub hosts.
- "gguf": a folder with `<name>.<TYPE>.gguf` for llama.cpp, an Ollama
  `Modelfile` beside it (`ollama create NAME -f Modelfile`), and the card.

A LoRA adapter folder is loaded onto its base model and merged first
(W0 + alpha/r · B A), so the exported weights are the fine-tuned ones. The
folder is written under a temporary name and renamed when complete, and an
existing `out` is refused unless `overwrite`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from lmlab.errors import LmlabError
from lmlab.hub.adapters import load_adapted_model
from lmlab.hub.checkpoint import export_hf
from lmlab.hub.gguf_export import OUTTYPES, OutType, gguf_architecture, write_gguf
from lmlab.hub.model_card import CardFacts, base_model_id, read_card_facts, write_model_card
from lmlab.hub.resolve import EMBEDDED, load_model
from lmlab.io import GGUF_MODEL_KIND, HF_MODEL_KIND, claim_folder, replace_folder, write_text
from lmlab.models import Transformer
from lmlab.models.lora import ADAPTER_CONFIG, merge_lora

ExportFormat = Literal["hf", "gguf"]
FORMATS = ("hf", "gguf")
MODELFILE = "Modelfile"

# Ollama's Go template for ChatML (<|im_start|>role ... <|im_end|>), the format of SmolLM2-Instruct and others.
_CHATML_OLLAMA = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                  '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
                  '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')


def load_for_export(reference: str) -> tuple[Transformer, object, Path | None]:
    """The model to export (LoRA merged), its tokenizer, and the folder whose card facts describe it."""
    path = Path(reference).expanduser()
    if (path / ADAPTER_CONFIG).is_file():
        loaded, _ = load_adapted_model(path)
        return merge_lora(loaded.model).eval(), loaded.tokenizer, path.parent / "model"
    loaded = load_model(reference)
    return loaded.model, loaded.tokenizer, path if path.is_dir() else None


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None) -> str:
    """An Ollama Modelfile: the weights, and the prompt template and stop token when the chat format is known."""
    lines = [f"FROM ./{gguf_name}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += [f'TEMPLATE """{_CHATML_OLLAMA}"""', 'PARAMETER stop "<|im_end|>"']
    elif eos_token:
        lines.append(f'PARAMETER stop "{eos_token}"')
    return "\n".join(lines) + "\n"


def _facts(reference: str, model: Transformer, source: Path | None, name: str) -> CardFacts:
    facts = read_card_facts(source) if source is not None else None
    if facts is not None:
        return replace(facts, name=name, config=model.config.to_dict())
    base, licence = base_model_id(reference) if reference in EMBEDDED else (None, "other")
    return CardFacts(name=name, config=model.config.to_dict(), n_params=sum(p.numel() for p in model.parameters()),
                     base_model=base, license=licence,
                     method=f"exported as loaded from {reference} (no lmlab training run recorded)")


def export_model(reference: str, out: Path, format: ExportFormat = "gguf", outtype: OutType = "f16",
                 overwrite: bool = False, name: str | None = None, progress: bool = False) -> Path:
    """Export the model `reference` names to the folder `out` in `format`; returns the main file or folder."""
    if format not in FORMATS:
        raise LmlabError(f"unknown export format {format!r}; choose hf or gguf")
    if outtype not in OUTTYPES:
        raise LmlabError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if format == "hf" and outtype not in ("f32", "f16", "bf16"):
        raise LmlabError(f"a Hugging Face folder holds f32, f16 or bf16 weights, not {outtype}; q8_0 and q4_0 are "
                         "GGUF types (--format gguf)")
    out = Path(out)
    claim_folder(out, HF_MODEL_KIND if format == "hf" else GGUF_MODEL_KIND, overwrite)  # before the work
    model, tokenizer, source = load_for_export(reference)
    name = name or out.name
    facts = _facts(reference, model, source, name)
    if format == "hf":
        import torch

        model = model.to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[outtype])
        facts = replace(facts, library_name="transformers", formats=[f"model.safetensors ({outtype})"])
        return export_hf(model, out, tokenizer, overwrite=overwrite, card=facts)
    gguf_architecture(model.config)
    if tokenizer is None:
        raise LmlabError("llama.cpp reads the tokenizer from the GGUF file, and this model has none (a preset "
                         "with random weights?); export a trained model or checkpoint")
    gguf_name = f"{name}.{outtype.upper()}.gguf"
    facts = replace(facts, library_name="gguf", tags=[*facts.tags, "gguf", outtype],
                    formats=[f"{gguf_name} (GGUF {outtype}, for llama.cpp)",
                             f"{MODELFILE} (Ollama: `ollama create {name} -f {MODELFILE}`)"])
    with replace_folder(out, GGUF_MODEL_KIND, overwrite) as tmp:
        write_gguf(model, tokenizer, tmp / gguf_name, outtype, name=name, progress=progress)
        eos = tokenizer.special_tokens.get("eos") if hasattr(tokenizer, "special_tokens") else None
        write_text(tmp / MODELFILE, modelfile(gguf_name, tokenizer.chat_template, eos))
        write_model_card(tmp, facts)
    return out / gguf_name


__all__ = ["FORMATS", "MODELFILE", "export_model", "load_for_export", "modelfile"]
