"""The fifteen task names, the pipeline each builds, its default model and the method that default uses."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from lmlab.errors import LmlabError, did_you_mean
from lmlab.hub.resolve import LoadedModel, load_model
from lmlab.pipelines.base import Pipeline, finetune_hint
from lmlab.pipelines.classification import (SENTIMENT_LABELS, TextClassificationPipeline,
                                            ZeroShotClassificationPipeline)
from lmlab.pipelines.embeddings import FeatureExtractionPipeline, SentenceSimilarityPipeline
from lmlab.pipelines.fill_mask import FillMaskPipeline
from lmlab.pipelines.generation import (ConversationalPipeline, SummarizationPipeline, TableQuestionAnsweringPipeline,
                                        Text2TextGenerationPipeline, TextGenerationPipeline, TranslationPipeline)
from lmlab.pipelines.question_answering import QuestionAnsweringPipeline
from lmlab.pipelines.token_classification import TokenClassificationPipeline

GENERATOR = "smollm2-135m-instruct"
ENCODER = "minilm-l6"


@dataclass(frozen=True)
class Task:
    """A task: its pipeline class, the model used when none is named, how that default works, and the
    options it starts with."""

    pipeline: type[Pipeline]
    default_model: str | None
    method: str
    options: dict[str, Any] = field(default_factory=dict)


_SENTIMENT = Task(TextClassificationPipeline, GENERATOR,
                  "a classification head if the model has one; by default SmolLM2 scores the labels negative/"
                  "positive by their likelihood, with contextual calibration (Zhao et al. 2021)",
                  {"labels": SENTIMENT_LABELS})
_TOKENS = Task(TokenClassificationPipeline, None,
               f"a token-classification head: {finetune_hint('token-classification', ENCODER)}")

TASKS: dict[str, Task] = {
    "sentiment-analysis": _SENTIMENT,
    "text-classification": _SENTIMENT,
    "zero-shot-classification": Task(
        ZeroShotClassificationPipeline, GENERATOR,
        "an NLI model's entailment (Yin et al. 2019) when the model is a pair classifier with an 'entailment' "
        "label; by default SmolLM2's calibrated label likelihood (Zhao et al. 2021)"),
    "token-classification": _TOKENS,
    "ner": _TOKENS,
    "question-answering": Task(
        QuestionAnsweringPipeline, GENERATOR,
        "a start/end head if the model has one (extractive, `lmlab finetune minilm-l6 --task question-answering`); "
        "by default SmolLM2 writes the answer after three examples, reading the context's sentence closest to the "
        "question (MiniLM-L6 cosine + word overlap, Min et al. 2018; --option sentences=K for K, 0 for all), its "
        "greedy decoding constrained to spans of it and cut to its most likely prefix (Castel et al. 2022; "
        "--option best_prefix=false keeps the whole span, --option constrained=false writes freely, "
        "--option shots=N for N examples)"),
    "fill-mask": Task(FillMaskPipeline, GENERATOR,
                      "a masked-LM head if the model has one; by default SmolLM2 scores its top next-token candidates "
                      "with the text right of the mask"),
    "text-generation": Task(TextGenerationPipeline, GENERATOR, "continuation (chat template for a conversation)"),
    "text2text-generation": Task(Text2TextGenerationPipeline, GENERATOR,
                                 "the text as an instruction (chat turn; T5 reads it as is)"),
    "summarization": Task(SummarizationPipeline, GENERATOR, "an instruction to summarize (T5: 'summarize: ')"),
    "translation": Task(TranslationPipeline, GENERATOR,
                        "an instruction to translate, src_lang -> tgt_lang (default en -> fr; T5: 'translate ...')"),
    "conversational": Task(ConversationalPipeline, GENERATOR, "the chat template; the reply is appended"),
    "table-question-answering": Task(TableQuestionAnsweringPipeline, GENERATOR,
                                     "the table serialized as Markdown into the prompt"),
    "feature-extraction": Task(FeatureExtractionPipeline, ENCODER,
                               "MiniLM-L6's token vectors; pooling='mean' gives mean-pooled, L2-normalized sentence "
                               "embeddings (Sentence-BERT)"),
    "sentence-similarity": Task(SentenceSimilarityPipeline, ENCODER,
                                "cosine of MiniLM-L6's mean-pooled, L2-normalized embeddings"),
}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
_TRANSLATION = re.compile(r"^translation_([a-z]{2,3})_to_([a-z]{2,3})$")


def resolve_task(task: str) -> tuple[Task, dict[str, Any]]:
    """The task for a name (with options the name carries, e.g. translation_en_to_fr), or one line with close
    names."""
    found = _TRANSLATION.match(task)
    if found:
        return TASKS["translation"], {"src_lang": found[1], "tgt_lang": found[2]}
    if task not in TASKS:
        raise LmlabError(f"unknown task {task!r}{did_you_mean(task, TASKS)}; the tasks are {', '.join(TASKS)}")
    return TASKS[task], {}


def _constructor_options(cls: type[Pipeline]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "loaded", "kwargs")}
    return names


def pipeline(task: str, model: str | LoadedModel | None = None, **options: Any) -> Pipeline:
    """A callable for `task` on `model` (default: the task's default model), as transformers' `pipeline`.

    Options the pipeline's constructor takes (batch_size, aggregation_strategy, pooling, method, src_lang, ...)
    set it up; any other option becomes a default of every call (candidate_labels, top_k, max_new_tokens, ...).
    """
    spec, named = resolve_task(task)
    if model is None:
        if spec.default_model is None:
            raise LmlabError(f"{task} has no default model: it needs {spec.method}")
        model = spec.default_model
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    given = {**spec.options, **named, **options}
    accepted = _constructor_options(spec.pipeline)
    made = spec.pipeline(loaded, **{k: v for k, v in given.items() if k in accepted})
    made.defaults = {k: v for k, v in given.items() if k not in accepted}
    return made


__all__ = ["ALIASES", "TASKS", "Task", "pipeline", "resolve_task"]
