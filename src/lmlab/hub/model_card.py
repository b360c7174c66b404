"""Model cards: the README.md a model folder carries on the Hugging Face Hub.

A card is a YAML header (the Hub's metadata: license, base_model, datasets,
language, pipeline_tag, tags, library_name, and `model-index` with the results
the run measured) and Markdown sections, after Mitchell et al. 2019 ("Model
Cards for Model Reporting", arXiv:1810.03993): what the model is, how it was
trained, how good it is, what it is for and not for, its biases, risks and
limitations, and its environmental impact (Lacoste et al. 2019). lmlab keeps
the facts as `model_card.json` beside the README, so an export can re-render
the card for its own format.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.config import ModelConfig
from lmlab.io import write_json, write_text
from lmlab.planning.energy import DEFAULT_GRID, GRIDS, Footprint, this_hardware

CARD_FILE = "README.md"
FACTS_FILE = "model_card.json"

# The Hub ids and licences of models lmlab ships or names, for `base_model` and `license`.
KNOWN_BASES = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
}


@dataclass
class EvalResult:
    """One number the run measured, on which data: a `model-index` metric."""

    metric: str  # e.g. "loss", "perplexity", "rouge1"
    value: float
    dataset: str
    split: str = "validation"


@dataclass
class CardFacts:
    """Everything a card says, gathered by the run (or by an export that has no run behind it)."""

    name: str
    config: dict[str, Any]
    n_params: int
    base_model: str | None = None
    license: str = "other"
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=lambda: ["en"])
    tags: list[str] = field(default_factory=list)
    method: str = "unknown"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    tokens: int | None = None
    wall_seconds: float | None = None
    hardware: str = "unknown"
    devices: int = 1
    watts: float | None = None
    power_source: str = ""
    results: list[EvalResult] = field(default_factory=list)
    library_name: str = "lmlab"
    formats: list[str] = field(default_factory=list)  # lines about the files (e.g. "GGUF, q8_0")

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)


def pipeline_tag(config: ModelConfig) -> str:
    """The Hub's task for a model of this shape."""
    if config.head == "sequence-classification":
        return "text-classification"
    if config.head == "token-classification":
        return "token-classification"
    if config.head == "question-answering":
        return "question-answering"
    if config.head == "mlm":
        return "fill-mask"
    if config.arch == "encoder-decoder":
        return "text2text-generation"
    return "text-generation" if config.head == "lm" else "feature-extraction"


def base_model_id(reference: str | None) -> tuple[str | None, str]:
    """(the Hub id of a base model reference, its licence) — the reference itself when lmlab knows no better."""
    if reference is None:
        return None, "other"
    return KNOWN_BASES.get(reference, (reference, "other"))


def footprint(facts: CardFacts, grid: str = DEFAULT_GRID) -> Footprint | None:
    if facts.wall_seconds is None or facts.watts is None:
        return None
    return Footprint(facts.wall_seconds / 3600 * facts.devices, facts.watts, 1.0, GRIDS[grid])


def _slug(text: str) -> str:
    """A dataset name as the Hub's dataset `type` field spells ids: lower case, letters, digits, dashes."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "unknown"


def card_metadata(facts: CardFacts) -> dict[str, Any]:
    """The YAML header, in the Hub's keys."""
    config = facts.model_config
    task = pipeline_tag(config)
    meta: dict[str, Any] = {"license": facts.license, "library_name": facts.library_name}
    if facts.base_model:
        meta["base_model"] = facts.base_model
    if facts.datasets:
        meta["datasets"] = facts.datasets
    meta |= {"language": facts.language, "pipeline_tag": task, "tags": ["lmlab", *facts.tags]}
    if facts.results:
        meta["model-index"] = [{"name": facts.name, "results": [
            {"task": {"type": task}, "dataset": {"name": r.dataset, "type": _slug(r.dataset), "split": r.split},
             "metrics": [{"type": r.metric, "value": r.value, "name": f"{r.split} {r.metric}"}]}
            for r in facts.results]}]
    return meta


def _architecture(config: ModelConfig) -> str:
    return (f"{config.arch} transformer, {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads "
            f"({config.n_kv_head} key/value), d_ff {config.d_ff}, {config.pos_encoding} positions, {config.norm}, "
            f"{config.activation}, context {config.max_seq_len}, vocabulary {config.vocab_size}")


def render_card(facts: CardFacts, grid: str = DEFAULT_GRID) -> str:
    """The README.md: YAML header, then the sections of a model card."""
    header = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True)
    config = facts.model_config
    base = (f"built on `{facts.base_model}`" if facts.base_model else
            "trained from scratch" if facts.steps is not None else "its training not recorded by lmlab,")
    lines = [f"---\n{header}---", "", f"# {facts.name}", "",
             f"A {facts.n_params:,}-parameter {pipeline_tag(config)} model, {base} with "
             f"[lmlab](https://pypi.org/project/lmlab/).", "",
             "## Model details", "", f"- Architecture: {_architecture(config)}",
             f"- Parameters: {facts.n_params:,}", f"- License: {facts.license}"]
    lines += [f"- Files: {f}" for f in facts.formats]
    lines += ["", "## Training details", "",
              f"- Data: {', '.join(facts.datasets) or 'not recorded'}",
              f"- Method: {facts.method}"]
    if facts.hyperparameters:
        lines.append("- Hyperparameters: " + ", ".join(f"{k} {v}" for k, v in facts.hyperparameters.items()))
    lines += [f"- Steps: {facts.steps if facts.steps is not None else 'not recorded'}",
              f"- Tokens seen: {f'{facts.tokens:,}' if facts.tokens is not None else 'not recorded'}",
              f"- Wall time: {_duration(facts.wall_seconds)} (measured)" if facts.wall_seconds is not None
              else "- Wall time: not recorded",
              f"- Hardware: {facts.hardware}", "", "## Evaluation", ""]
    if facts.results:
        lines += ["| data | split | metric | value |", "|---|---|---|---|"]
        lines += [f"| {r.dataset} | {r.split} | {r.metric} | {r.value:.4f} |" for r in facts.results]
    else:
        lines.append("No evaluation was recorded for this model.")
    lines += ["", "## Intended use", "",
              "Research and teaching: studying how a language model is built, trained and adapted. "
              "It is not meant for decisions about people, for medical, legal or financial advice, or for "
              "any use where a wrong or harmful answer does damage.", "",
              "## Limitations, bias, risks and privacy", "",
              "- Hallucination: it generates fluent text that can be false; check every fact it states.",
              "- Toxic or biased output: it learned from text written by people and can repeat the stereotypes, "
              "slurs and one-sided views found there, or produce them when prompted.",
              "- Personal data: text in its training data (including any names, addresses or conversations) "
              "can be reproduced verbatim; do not train it on personal data you may not publish.",
              f"- Small models and short training runs are weak: its evaluation above is the measure of what it "
              f"does, on data like its training data only.", "",
              "## Environmental impact", ""]
    lines += _environment(facts, grid)
    return "\n".join(lines) + "\n"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 3600:.2f} h"


def _environment(facts: CardFacts, grid: str) -> list[str]:
    print_ = footprint(facts, grid)
    if print_ is None:
        return ["Not recorded for this model (no training run behind it)."]
    return [f"- Hardware: {facts.hardware}",
            f"- Hours: {print_.device_hours:.4f} device-hours (wall time measured × {facts.devices} device(s))",
            f"- Power: {facts.watts:g} W per device ({facts.power_source})",
            f"- Energy: {print_.energy_kwh:.4g} kWh (estimated: hours × power; PUE 1 for a machine outside a "
            f"data centre)",
            f"- Carbon: {print_.co2e_kg * 1000:.4g} g CO2e (estimated at {print_.grid.kg_per_kwh} kg CO2e per kWh, "
            f"{print_.grid.source})",
            "", "Estimated with the method of Lacoste et al. 2019 (arXiv:1910.09700); `lmlab plan compute "
            "--grid` estimates the same before a run."]


def run_card_facts(name: str, config: ModelConfig, n_params: int, method: str, hyperparameters: dict[str, Any],
                   steps: int, tokens: int | None, wall_seconds: float, datasets: list[str],
                   results: list[EvalResult], base_model: str | None = None, world_size: int = 1) -> CardFacts:
    """The facts of a training run that just finished on this machine (hardware and power from `this_hardware`)."""
    hardware = this_hardware(world_size=world_size)
    base, licence = base_model_id(base_model)
    return CardFacts(name=name, config=config.to_dict(), n_params=n_params, base_model=base, license=licence,
                     datasets=datasets, method=method, hyperparameters=hyperparameters, steps=steps, tokens=tokens,
                     wall_seconds=wall_seconds, hardware=hardware.description, devices=hardware.devices,
                     watts=hardware.watts, power_source=hardware.power_source, results=results)


def write_model_card(folder: Path, facts: CardFacts) -> Path:
    """Write README.md (the card) and model_card.json (its facts) into `folder`."""
    folder = Path(folder)
    write_json(folder / FACTS_FILE, asdict(facts))
    write_text(folder / CARD_FILE, render_card(facts))
    return folder / CARD_FILE


def read_card_facts(folder: Path) -> CardFacts | None:
    """The facts an lmlab model folder's card was written from, if it has them."""
    path = Path(folder) / FACTS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    data["results"] = [EvalResult(**r) for r in data.get("results", [])]
    return CardFacts(**data)


__all__ = ["CARD_FILE", "FACTS_FILE", "CardFacts", "EvalResult", "base_model_id", "card_metadata", "pipeline_tag",
           "read_card_facts", "render_card", "run_card_facts", "write_model_card"]
