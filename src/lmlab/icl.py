"""The in-context-learning lab: zero-, one- and few-shot prompts, inference settings, scored with ROUGE.

In-context learning (Brown et al. 2020, "Language Models are Few-Shot Learners")
adapts a model with the prompt alone: zero-shot gives the instruction and the
input, one-shot adds one solved example, few-shot several. The course's lab
(DeepLearning.AI & AWS, "Generative AI with Large Language Models", week 1,
"Summarize dialogue") prompts a model to summarize DialogSum dialogues (Chen et
al. 2021) with 0, 1 and a few examples, tries several inference settings, and
compares the summaries with human ones using ROUGE (Lin 2004).

`run_icl` does that for any model and dataset: for each inference setting and
each shot count it prompts the model with each of the first `n` records and
scores its answer with ROUGE against one or several reference fields (with
several, the best-matching reference counts, as Hugging Face `evaluate` does).
The examples of a prompt are drawn (seeded) from the records after the first
`n` - from the other evaluated records when the file has too few beyond them -
and never include the query; a k-shot prompt uses the first k examples of its
query's draw, so prompts grow by one example at a time and the shot counts are
compared on the same examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lmlab.errors import LmlabError, did_you_mean
from lmlab.evaluation.harness import PromptedModel, fitting_notice, references_of
from lmlab.evaluation.metrics import ROUGE_TYPES, rouge_scores
from lmlab.generation import GenerationConfig
from lmlab.io import claim_folder, replace_folder, save_figure, write_json, write_jsonl
from lmlab.prompting import PromptTemplate, Record, choose_examples, template_fields
from lmlab.records import read_records

REPORT_KIND = "icl-report"  # the kind of output folder lmlab.io marks
ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
# The inference parameters a sweep may vary, with their types. Sweeping a sampling parameter turns sampling on.
SWEEPABLE = {"temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "max_new_tokens": int}
SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p")


@dataclass(frozen=True)
class Setting:
    """One inference setting of the run: a label for tables and the parameters it generates with."""

    label: str
    generation: GenerationConfig


@dataclass(frozen=True)
class IclConfig:
    """What the lab runs: the prompt format, the shot counts, how many records, the inference settings.

    `sweep` is (parameter, values): one setting per value, the other parameters from `generation`.
    """

    template: PromptTemplate = field(default_factory=PromptTemplate)
    target_fields: tuple[str, ...] = ("summary",)
    shots: tuple[int, ...] = (0, 1, 2)
    n: int = 10
    seed: int = 0
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=50))
    sweep: tuple[str, tuple[float, ...]] | None = None
    batch_size: int = 4
    id_field: str = "id"


@dataclass
class Prediction:
    """One answer: which record, with how many examples, in which setting, and its ROUGE."""

    id: str
    shots: int
    shots_used: int  # fewer than `shots` when examples were dropped to fit the context window
    examples: list[str]  # the ids of the examples in the prompt
    setting: str
    prompt_tokens: int
    truncated: bool  # the query's input was cut short to fit
    prediction: str
    references: list[str]
    rouge: dict[str, float]


@dataclass
class Row:
    """The mean scores of one shot count in one setting."""

    shots: int
    setting: str
    rouge: dict[str, float]
    mean_words: float  # mean prediction length in words
    mean_prompt_tokens: float
    seconds: float  # wall time of the generation
    n: int


@dataclass
class IclReport:
    rows: list[Row]
    predictions: list[Prediction]
    settings: list[Setting]
    notices: list[str]
    chat: bool
    seconds: float

    def table(self) -> str:
        """The rows as an aligned text table: one line per shot count (and setting), ROUGE in 0..1."""
        swept = len(self.settings) > 1
        header = ["shots", *(["setting"] if swept else []), *ROUGE_NAMES.values(), "words", "prompt tokens",
                  "seconds"]
        lines = [[str(row.shots), *([row.setting] if swept else []),
                  *(f"{row.rouge[name]:.3f}" for name in ROUGE_TYPES),
                  f"{row.mean_words:.1f}", f"{row.mean_prompt_tokens:.0f}", f"{row.seconds:.1f}"]
                 for row in self.rows]
        widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in [header, *lines])


def parse_shots(text: str) -> tuple[int, ...]:
    """'0,1,3' -> (0, 1, 3): the shot counts to run, each a whole number of examples >= 0."""
    shots = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise LmlabError(f"--shots takes whole numbers of examples >= 0 separated by commas, like 0,1,3; "
                             f"got {item!r}")
        if int(item) not in shots:
            shots.append(int(item))
    return tuple(shots)


def parse_sweep(text: str) -> tuple[str, tuple[float, ...]]:
    """'temperature=0.2,0.8,1.5' -> ('temperature', (0.2, 0.8, 1.5)); the values are checked later."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise LmlabError(f"--sweep takes PARAMETER=V1,V2,..., like temperature=0.2,0.8,1.5; got {text!r}")
    if name not in SWEEPABLE:
        raise LmlabError(f"cannot sweep {name!r}{did_you_mean(name, SWEEPABLE)}: choose one of "
                         f"{', '.join(SWEEPABLE)}")
    kind = SWEEPABLE[name]
    parsed = []
    for value in values.split(","):
        try:
            parsed.append(kind(value.strip()))
        except ValueError:
            raise LmlabError(f"--sweep {name}: {value.strip()!r} is not {'an integer' if kind is int else 'a number'}"
                             ) from None
    return name, tuple(parsed)


def describe(generation: GenerationConfig) -> str:
    """A short label for an inference setting, e.g. 'greedy' or 'sampling temperature=0.8 top_p=0.9'."""
    if generation.greedy:
        return "greedy"
    parts = [f"temperature={generation.temperature:g}"]
    parts += [f"top_k={generation.top_k}"] if generation.top_k else []
    parts += [f"top_p={generation.top_p:g}"] if generation.top_p < 1 else []
    return "sampling " + " ".join(parts)


def inference_settings(generation: GenerationConfig, sweep: tuple[str, Sequence[float]] | None,
                       seed: int = 0) -> list[Setting]:
    """The settings of a run: `generation` alone, or one per sweep value. Sampling is seeded with
    `seed` unless `generation` has its own seed."""
    if generation.seed is None:
        generation = replace(generation, seed=seed)
    if sweep is None:
        return [Setting(describe(generation), generation)]
    name, values = sweep
    sampling = {"do_sample": True} if name in SAMPLING_PARAMETERS else {}
    return [Setting(f"{name}={value:g}", replace(generation, **sampling, **{name: value})) for value in values]


def load_records(path: str | Path, template: PromptTemplate, target_fields: Sequence[str]) -> list[dict[str, Any]]:
    """The records of a data file, each checked to have the template's fields and the reference fields."""
    return read_records(path, [*template_fields(template.input_template), *target_fields])


def record_id(record: Record, id_field: str, index: int) -> str:
    """The record's id field, else its position in the file (1-based), as text."""
    return str(record[id_field]) if id_field in record else str(index + 1)


def check_report_folder(out: str | Path) -> None:
    """Refuse an output folder that holds anything but an earlier report, which is replaced
    (lmlab.io.claim_folder: new, empty, or a report lmlab wrote)."""
    claim_folder(out, REPORT_KIND, overwrite=True)


def run_icl(
    prompted: PromptedModel,
    records: Sequence[Record],
    config: IclConfig = IclConfig(),
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> IclReport:
    """Prompt the model with the first `config.n` records for each shot count and setting; score with ROUGE.

    `notify` receives, once, a line saying how many prompts had to be shortened to fit the context
    window (also kept in `IclReport.notices`).
    """
    if config.n < 1:
        raise LmlabError(f"n must be at least 1, got {config.n}")
    if not config.shots:
        raise LmlabError("give at least one shot count")
    if not config.target_fields:
        raise LmlabError("give at least one reference (target) field")
    started = time.perf_counter()
    queries = list(records[: config.n])
    most = max(config.shots)
    pool = records[config.n :] if len(records) - config.n >= most else records
    draws = [choose_examples(pool, most, seed=config.seed + i, exclude=query) for i, query in enumerate(queries)]
    references = [references_of(query, config.target_fields) for query in queries]
    names = {id(record): record_id(record, config.id_field, i) for i, record in enumerate(records)}
    ids = [names[id(query)] for query in queries]
    settings = inference_settings(config.generation, config.sweep, config.seed)

    jobs = []  # (setting, shots, fitted prompts): all prompts are built first, to warn once
    for setting in settings:
        for k in config.shots:
            fitted = [prompted.fit(query, draw[:k], config.template, setting.generation.max_new_tokens)
                      for query, draw in zip(queries, draws)]
            jobs.append((setting, k, fitted))
    notices = []
    notice = fitting_notice([r for _, _, fitted in jobs for r in fitted], prompted.model.config.max_seq_len,
                            config.template.input_field)
    if notice:
        notices.append(notice)
        if notify:
            notify(notice)

    rows, predictions = [], []
    with tqdm(total=len(jobs) * len(queries), desc="icl", unit="prompt", disable=not progress) as bar:
        for setting, k, fitted in jobs:
            bar.set_postfix_str(f"{k}-shot {setting.label}")
            prompt_ids = [prompted.ids(result.prompt) for result in fitted]
            begin = time.perf_counter()
            answers = prompted.complete(prompt_ids, setting.generation, config.batch_size, bar)
            seconds = time.perf_counter() - begin
            scores = rouge_scores(answers, references)
            predictions += [
                Prediction(id_, k, result.n_shots_used, [names[id(e)] for e in result.examples],
                           setting.label, len(tokens), result.truncated, answer, refs, example_scores)
                for id_, result, tokens, answer, refs, example_scores
                in zip(ids, fitted, prompt_ids, answers, references, scores)
            ]
            rows.append(Row(
                shots=k,
                setting=setting.label,
                rouge={name: sum(s[name] for s in scores) / len(scores) for name in ROUGE_TYPES},
                mean_words=sum(len(answer.split()) for answer in answers) / len(answers),
                mean_prompt_tokens=sum(len(tokens) for tokens in prompt_ids) / len(prompt_ids),
                seconds=seconds,
                n=len(queries),
            ))
    return IclReport(rows, predictions, settings, notices, prompted.chat, time.perf_counter() - started)


def plot_rouge(report: IclReport, path: str | Path, title: str = "ROUGE by number of examples") -> None:
    """Grouped bars: one group per shot count (and setting), one bar per ROUGE type, values on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = len(report.settings) > 1
    labels = [f"{row.shots}-shot" + (f"\n{row.setting}" if swept else "") for row in report.rows]
    width = 0.8 / len(ROUGE_TYPES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.5))
    for j, name in enumerate(ROUGE_TYPES):
        positions = [i + (j - (len(ROUGE_TYPES) - 1) / 2) * width for i in range(len(labels))]
        values = [row.rouge[name] for row in report.rows]
        bars = ax.bar(positions, values, width, label=ROUGE_NAMES[name])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    if swept:  # a faint line between the settings
        for i in range(1, len(report.rows)):
            if report.rows[i].setting != report.rows[i - 1].setting:
                ax.axvline(i - 0.5, color="0.8", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("F-measure (0-1)")
    top = max(row.rouge[name] for row in report.rows for name in ROUGE_TYPES)
    ax.set_ylim(0, max(0.1, top * 1.25))
    ax.set_title(title, fontsize=11)
    ax.legend(ncols=len(ROUGE_TYPES), loc="upper left", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_report(report: IclReport, out: str | Path, info: dict[str, Any]) -> Path:
    """Write predictions.jsonl, summary.json (the rows, the run's `info`, notices) and rouge.png into
    `out`, all at once: the files are written in a temporary folder renamed into place."""
    out = Path(out)
    with replace_folder(out, REPORT_KIND, overwrite=True) as tmp:
        write_jsonl(tmp / "predictions.jsonl", (asdict(prediction) for prediction in report.predictions))
        summary = {
            **info,
            "chat": report.chat,
            "settings": [{"label": s.label, **asdict(s.generation)} for s in report.settings],
            "rows": [asdict(row) for row in report.rows],
            "notices": report.notices,
            "seconds": report.seconds,
        }
        write_json(tmp / "summary.json", summary)
        swept = f" and {report.settings[0].label.partition('=')[0]}" if len(report.settings) > 1 else ""
        plot_rouge(report, tmp / "rouge.png", f"{info.get('model', 'model')}\nROUGE by number of examples{swept}, "
                                              f"{report.rows[0].n} records")
    return out
