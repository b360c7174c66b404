"""Run a model over data and score it: perplexity of a text, or generate answers to prompts and score them.

An evaluation harness (as in EleutherAI's lm-evaluation-harness) puts a model
and a dataset together: it renders each record as a prompt, lets the model
answer, and compares the answers with the references using a metric.

- Generation: each prompt is text, or chat messages rendered with the model's
  chat template (the format an instruction-tuned model was trained on). A prompt
  must leave `max_new_tokens` of the context window for the answer; prompts too
  long are fitted by `lmlab.prompting.build_prompt` (examples dropped, then the
  input cut), and the run reports how many were, once. Prompts are generated
  through the continuous-batching engine: a finished answer's slot goes to the next prompt.
- Metrics on the answers: ROUGE and BLEU for free text; accuracy and F1 for
  labels, compared after normalizing (the first line of an answer counts, without
  surrounding spaces, a final period or letter case: " Positive." equals "positive").
- Perplexity of a text, with the sliding window of `lmlab.evaluation.perplexity`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from lmlab.errors import LmlabError
from lmlab.evaluation.metrics import accuracy, bleu, precision_recall_f1, rouge
from lmlab.evaluation.perplexity import PerplexityResult, perplexity
from lmlab.generation import GenerationConfig
from lmlab.generation.engine import Engine, EngineRequest
from lmlab.generation.chat import chat_ids
from lmlab.models import Transformer
from lmlab.prompting import Prompt, PromptResult, PromptTemplate, Record, build_prompt
from lmlab.tokenizers.base import TokenizerProtocol

TEXT_METRICS = ("rouge", "bleu")
LABEL_METRICS = ("accuracy", "f1")
METRICS = (*TEXT_METRICS, *LABEL_METRICS, "perplexity")


@dataclass
class PromptedModel:
    """A language model and its tokenizer, prompted with plain text or with chat messages."""

    model: Transformer
    tokenizer: TokenizerProtocol
    chat: bool

    @classmethod
    def create(cls, model: Transformer, tokenizer: TokenizerProtocol, chat: bool | None = None) -> PromptedModel:
        """`chat=None` uses the chat template when the tokenizer has one."""
        if model.config.head != "lm" or not model.config.has_decoder:
            raise LmlabError(f"this model cannot write text: it is an {model.config.arch} with the "
                             f"{model.config.head!r} head, and generation needs a language-modelling head")
        if tokenizer is None:
            raise LmlabError("this model has no tokenizer, so it cannot read text prompts; "
                             "give a checkpoint saved with its tokenizer")
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat and not has_template:
            raise LmlabError("this model has no chat template; prompt it with plain text (--no-chat)")
        return cls(model, tokenizer, has_template if chat is None else chat)

    def ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt (with the tokenizer's special tokens) or of chat messages."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return chat_ids(self.tokenizer, prompt)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.ids(prompt))

    def budget(self, max_new_tokens: int) -> int:
        """How many prompt tokens fit: a decoder's window holds the prompt and the answer; an
        encoder-decoder reads the whole window and writes the answer in its decoder."""
        context = self.model.config.max_seq_len
        return context - max_new_tokens if self.model.config.arch == "decoder" else context

    def fit(self, query: Record, examples: Sequence[Record], template: PromptTemplate,
            max_new_tokens: int) -> PromptResult:
        """The prompt for `query` after `examples`, fitted to the context window."""
        return build_prompt(query, examples, template, chat=self.chat, count_tokens=self.count_tokens,
                            budget=self.budget(max_new_tokens))

    def complete(self, prompts: Sequence[list[int]], config: GenerationConfig, batch_size: int = 4,
                 bar: tqdm | None = None) -> list[str]:
        """The model's answer to each prompt (token ids), stripped of surrounding whitespace.

        The prompts run through the continuous-batching engine, `batch_size` at a time, longest first;
        prompt i samples with config.seed + i, so a run is reproducible whatever the batch size.
        """
        if batch_size < 1:
            raise LmlabError(f"batch size must be at least 1, got {batch_size}")
        if not prompts:
            return []
        window = self.model.config.max_seq_len
        engine = Engine(self.model, self.tokenizer, slots=min(batch_size, len(prompts)),
                        max_len=min(window, max(map(len, prompts)) + config.max_new_tokens))
        handles = {}
        for i in sorted(range(len(prompts)), key=lambda i: -len(prompts[i])):
            seeded = config if config.seed is None else replace(config, seed=config.seed + i)
            done = (lambda event: bar.update(1) if event.finish_reason else None) if bar is not None else None
            handles[i] = engine.submit(EngineRequest(prompts[i], seeded, on_event=done))
        engine.run_until_idle()
        return [handles[i].result().text.strip() for i in range(len(prompts))]


def fitting_notice(results: Sequence[PromptResult], context: int, input_field: str) -> str | None:
    """One line saying how many prompts had to be shortened to leave room for the answer in a
    `context`-token window, or None when all fitted."""
    affected = sum(1 for r in results if r.warnings)
    if not affected:
        return None
    dropped = sum(1 for r in results if any(w.startswith("dropped") for w in r.warnings))
    cut = sum(1 for r in results if r.truncated)
    parts = [f"examples dropped from {dropped}"] if dropped else []
    parts += [f"the {input_field!r} cut short in {cut}"] if cut else []
    return (f"{affected} of {len(results)} prompts did not fit in the {context}-token context window with room "
            f"for max_new_tokens: {' and '.join(parts)}")


def references_of(record: Record, fields: Sequence[str]) -> list[str]:
    """The reference texts of a record: each field's value, or its values when it holds a list."""
    references = []
    for name in fields:
        value = record[name]
        references += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return references


def label_key(value: Hashable) -> str:
    """A label as accuracy and F1 compare it: its first non-blank line, without surrounding spaces, a
    final period, or letter case (a model's " Positive.\nBecause..." counts as "positive")."""
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return (lines[0] if lines else "").removesuffix(".").strip().casefold()


@dataclass(frozen=True)
class Scores:
    """Metric name -> value (ROUGE and accuracy/F1 in 0..1, BLEU in 0..100), over `n` examples."""

    values: dict[str, float]
    n: int


def score(metrics: Sequence[str], predictions: Sequence[Any], references: Sequence[Any],
          average: str = "macro", positive_label: Hashable = 1) -> Scores:
    """Score predictions against references (a string or a list of strings for text metrics; a label
    for accuracy and F1) with each of `metrics`."""
    values: dict[str, float] = {}
    for metric in metrics:
        if metric == "rouge":
            values.update(rouge(list(predictions), list(references)))
        elif metric == "bleu":
            result = bleu(list(predictions), list(references))
            values.update({"bleu": result.score, "bleu brevity penalty": result.brevity_penalty})
        elif metric in LABEL_METRICS:
            predicted = [label_key(p) for p in predictions]
            expected = [label_key(r) for r in references]
            if metric == "accuracy":
                values["accuracy"] = accuracy(predicted, expected)
            else:
                prf = precision_recall_f1(predicted, expected, average, label_key(positive_label))
                values.update({f"precision ({average})": prf.precision, f"recall ({average})": prf.recall,
                               f"f1 ({average})": prf.f1})
        else:
            raise LmlabError(f"cannot score answers with {metric!r}; use one of {', '.join(METRICS[:-1])}")
    return Scores(values, len(predictions))


def text_perplexity(model: Transformer, tokenizer: TokenizerProtocol, text: str, max_length: int | None = None,
                    stride: int | None = None, batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """Perplexity of a causal model on `text`, in windows of `max_length` tokens (default: the context
    window, at most 1024) every `stride` tokens (default: half a window)."""
    if model.config.arch != "decoder" or model.config.head != "lm":
        raise LmlabError("perplexity here needs a causal (decoder-only) language model; "
                         f"this one is an {model.config.arch} with the {model.config.head!r} head")
    if tokenizer is None:
        raise LmlabError("this model has no tokenizer, so it cannot read the text")
    for name, value in (("window (max_length)", max_length), ("stride", stride)):
        if value is not None and value < 1:
            raise LmlabError(f"the {name} must be at least 1 token, not {value}")
    max_length = max_length or min(model.config.max_seq_len, 1024)
    if max_length > model.config.max_seq_len:
        raise LmlabError(f"the window ({max_length} tokens) is longer than the model's context window "
                         f"({model.config.max_seq_len} tokens)")
    ids = tokenizer.encode(text, add_special_tokens=True)
    return perplexity(model, ids, max_length, stride or max(1, max_length // 2), batch_size, progress)


@dataclass
class RecordsEvaluation:
    """The scores of a dataset's predictions, the predictions themselves, and notes about the prompts."""

    scores: Scores
    predictions: list[Any]
    notices: list[str]


def evaluate_records(
    records: Sequence[Record],
    metrics: Sequence[str],
    reference_fields: Sequence[str],
    prompted: PromptedModel | None = None,
    template: PromptTemplate | None = None,
    generation: GenerationConfig = GenerationConfig(),
    prediction_field: str | None = None,
    batch_size: int = 4,
    average: str = "macro",
    positive_label: Hashable = 1,
    progress: bool = True,
) -> RecordsEvaluation:
    """Score each record's prediction against its reference field(s) with `metrics`.

    The predictions are the records' `prediction_field` when given; otherwise the model writes them,
    prompted (zero-shot) with each record rendered by `template`.
    """
    unknown = [m for m in metrics if m not in TEXT_METRICS + LABEL_METRICS]
    if unknown:
        raise LmlabError(f"cannot score answers with {unknown[0]!r}; use {', '.join(TEXT_METRICS + LABEL_METRICS)}")
    if any(m in LABEL_METRICS for m in metrics) and len(reference_fields) != 1:
        raise LmlabError("accuracy and F1 compare each prediction with one label: give one reference field")
    if any(m in LABEL_METRICS for m in metrics):
        references = [record[reference_fields[0]] for record in records]
    else:
        references = [references_of(record, reference_fields) for record in records]
    notices = []
    if prediction_field is not None:
        predictions = [record[prediction_field] for record in records]
    else:
        if prompted is None or template is None:
            raise LmlabError("to generate the predictions, give a model and a prompt template")
        fitted = [prompted.fit(record, [], template, generation.max_new_tokens) for record in records]
        notice = fitting_notice(fitted, prompted.model.config.max_seq_len, template.input_field)
        notices += [notice] if notice else []
        with tqdm(total=len(records), desc="generate", unit="prompt", disable=not progress) as bar:
            predictions = prompted.complete([prompted.ids(r.prompt) for r in fitted], generation, batch_size, bar)
    return RecordsEvaluation(score(metrics, predictions, references, average, positive_label), predictions, notices)
