"""Question answering over a context: extractive (a span of the context) or generative (written).

- Extractive (Devlin et al. 2018, section 4.2, BERT on SQuAD): a head gives each
  token a start and an end logit (`lmlab finetune MODEL --task
  question-answering`). The question and the context are encoded as one pair,
  the context in windows of `max_seq_len` tokens overlapping by `doc_stride`.
  Tokens outside the context get -10000 before two softmaxes; the span score
  is p_start(i) * p_end(j) for i <= j < i + max_answer_len, and the best span's
  characters are cut from the context (transformers' question-answering
  pipeline, the same steps and defaults).
- Generative (the default, on SmolLM2-135M-Instruct): the model is asked to
  answer with a phrase copied from the context, after three written examples
  (`QA_DEMONSTRATIONS`). It reads only the `sentences` (default 1; 0: all)
  sentences of the context closest to the question (pipelines/
  sentence_selection.py, Min et al. 2018: MiniLM-L6 cosine + word overlap).
  By default its greedy decoding is constrained to spans
  of the context (generation/constrained.py, Castel et al. 2022), so the answer
  is extracted by the language model itself, and the answer is the prefix of the
  greedy span with the highest P(prefix, end) (`best_prefix=False`: the whole
  greedy span); last, words at either end of the answer that are stop words or
  words of the question are cut off (`trim=False` keeps them): an answer
  rarely repeats its question (the word-in-question feature of FastQA,
  Weissenborn et al. 2017), and a small model copying from the context
  often starts with the question's own words; with `constrained=False` it writes
  freely and the answer is the first line it writes. The answer's score is its
  probability under the model, P(answer | prompt), and start/end locate it in
  the context (both 0 when a free answer is not a span of it).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig
from lmlab.generation.chat import user_message
from lmlab.generation.constrained import greedy_span, most_likely_prefix
from lmlab.hub.resolve import LoadedModel, load_model
from lmlab.evaluation.harness import PromptedModel
from lmlab.pipelines.base import Pipeline, check_text, pad_id, truncating
from lmlab.pipelines.scoring import continuation_logprobs
from lmlab.pipelines.sentence_selection import content_words, select_sentences, split_sentences

QA_PROMPT = ("Answer the question with a short phrase copied from the context.\n\n"
             "Context: {context}\n\nQuestion: {question}")
# Written demonstrations before the question (Brown et al. 2020, few-shot), each a short phrase of its
# context: SmolLM2-135M then answers with a phrase more often than with a sentence. None is from a scored set.
# Chosen on 24 questions of XQuAD articles 1-12 (bench_tasks --xquad-select 24; articles 13-24 are scored):
# constrained decoding, SQuAD F1 0.215 (EM 0.083) after all three, 0.083 (EM 0) after the first alone.
QA_DEMONSTRATIONS = (
    ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It was designed by the engineering "
     "company of Gustave Eiffel.", "Whose company designed the Eiffel Tower?", "Gustave Eiffel"),
    ("Marie Curie moved to Paris in 1891. She won her first Nobel Prize in 1903, together with Pierre Curie "
     "and Henri Becquerel, for their work on radioactivity.", "When did Marie Curie win her first Nobel Prize?",
     "1903"),
    ("The Amazon flows for about 6,400 kilometres through Peru, Colombia and Brazil before it reaches the "
     "Atlantic Ocean.", "How long is the Amazon?", "about 6,400 kilometres"),
)


def qa_prompt(question: str, context: str, chat: bool, shots: int = 3) -> str | list[dict[str, str]]:
    """The generative QA prompt: the first `shots` demonstrations, then the question; chat turns or plain text."""
    demos = [(QA_PROMPT.format(context=c, question=q), a) for c, q, a in QA_DEMONSTRATIONS[:shots]]
    query = QA_PROMPT.format(context=context, question=question)
    if chat:
        turns = [t for demo, answer in demos for t in (*user_message(demo), {"role": "assistant", "content": answer})]
        return [*turns, *user_message(query)]
    return "".join(f"{demo}\nAnswer: {answer}\n\n" for demo, answer in demos) + f"{query}\nAnswer:"


def first_line(text: str) -> str:
    """The written answer: its first non-empty line, without a final full stop."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    return line.strip().rstrip(".").strip()


def trim_answer(answer: str, question: str) -> str:
    """`answer` without the words at its ends that are stop words or content words of `question` (at least one
    word is kept); still a span of whatever `answer` was a span of."""
    asked = content_words(question)
    words = list(re.finditer(r"\S+", answer))

    def repeats(word: re.Match) -> bool:
        own = content_words(word.group())
        return not own or bool(own & asked)
    while len(words) > 1 and repeats(words[0]):
        words.pop(0)
    while len(words) > 1 and repeats(words[-1]):
        words.pop()
    return answer[words[0].start():words[-1].end()] if words else answer


def select_spans(start: np.ndarray, end: np.ndarray, context_mask: np.ndarray, top_k: int,
                 max_answer_len: int) -> list[tuple[int, int, float]]:
    """The top_k (start token, end token, score) spans of one window (see the module docstring)."""
    start = np.where(context_mask, start, -10000.0)
    end = np.where(context_mask, end, -10000.0)
    start = np.exp(start - start.max()); start = start / start.sum()
    end = np.exp(end - end.max()); end = end / end.sum()
    start[0] = end[0] = 0.0  # the first token ([CLS]) stands for "no answer"
    outer = np.triu(np.outer(start, end))
    candidates = np.tril(outer, max_answer_len - 1).flatten()
    order = np.argsort(-candidates, kind="stable")[:top_k]
    allowed = set(np.flatnonzero(context_mask).tolist())
    spans = []
    for flat in order:
        i, j = divmod(int(flat), len(end))
        if i in allowed and j in allowed:
            spans.append((i, j, float(candidates[flat])))
    return spans


class QuestionAnsweringPipeline(Pipeline):
    """`{"score", "start", "end", "answer"}` per (question, context) (a list of top_k with top_k > 1)."""

    task = "question-answering"

    def __init__(self, loaded: LoadedModel, max_new_tokens: int = 32, constrained: bool = True, shots: int = 3,
                 sentences: int = 1, selector: str | LoadedModel = "minilm-l6", best_prefix: bool = True,
                 trim: bool = True, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        c = loaded.model.config
        self.extractive = c.head == "question-answering"
        if not self.extractive and (c.head != "lm" or not c.has_decoder):
            raise LmlabError(f"{loaded.reference} can neither extract answers (no question-answering head: "
                             f"`lmlab finetune {loaded.reference} --task question-answering --data train-squad.json "
                             "--out runs/qa`) nor write them (no language-modelling head)")
        self.max_new_tokens = max_new_tokens
        if not 0 <= shots <= len(QA_DEMONSTRATIONS):
            raise LmlabError(f"shots must be 0 to {len(QA_DEMONSTRATIONS)} (the written demonstrations), not {shots}")
        self.constrained, self.shots = constrained, shots
        if sentences < 0:
            raise LmlabError(f"sentences is how many sentences of the context to read (0: all), not {sentences}")
        self.sentences, self.selector, self.best_prefix, self.trim = sentences, selector, best_prefix, trim

    def describe(self) -> str:
        if self.extractive:
            return f"{self.loaded.reference}, extractive (start/end head)"
        reads = (f", reading the {self.sentences} sentence(s) of the context closest to the question "
                 f"(sentence selection: {getattr(self.selector, 'reference', self.selector)} cosine + word overlap)"
                 if self.sentences else "")
        if self.constrained:
            ending = (", the most likely of its prefixes" if self.best_prefix else "") + \
                (", question and stop words trimmed from its ends" if self.trim else "")
            return (f"{self.loaded.reference}, generative, greedy decoding constrained to spans of the "
                    f"context{ending}{reads}")
        return f"{self.loaded.reference}, generative (answer written, located in the context){reads}"

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, dict)

    def check(self, item: Any) -> tuple[str, str]:
        if not isinstance(item, dict) or "question" not in item:
            raise LmlabError("question answering takes {'question': ..., 'context': ...}")
        if not str(item.get("context") or "").strip():
            raise LmlabError("question answering needs a context to find the answer in (context=... in Python, "
                             "--context on the command line)")
        return check_text(item["question"], "question"), check_text(item["context"], "context")

    def __call__(self, inputs: Any = None, question: str | None = None, context: str | None = None,
                 **options: Any) -> Any:
        if inputs is None:
            if question is None:
                raise LmlabError("question answering needs a question")
            inputs = {"question": question, "context": context}
        return super().__call__(inputs, **options)

    def predict(self, items: list[tuple[str, str]], top_k: int = 1, max_answer_len: int = 15,
                doc_stride: int = 128, max_seq_len: int = 384, **_: Any) -> list[Any]:
        if self.extractive:
            answers = [self._extract(q, c, top_k, max_answer_len, doc_stride, max_seq_len) for q, c in items]
        else:
            answers = self._generate(items)
        return [a[0] if top_k == 1 and a else a for a in answers]

    def _extract(self, question: str, context: str, top_k: int, max_answer_len: int, doc_stride: int,
                 max_seq_len: int) -> list[dict[str, Any]]:
        length = min(max_seq_len, self.model.config.max_seq_len)
        with truncating(self.tokenizer, length, "only_second", stride=doc_stride) as backend:
            first = backend.encode(question, context, add_special_tokens=True)
        answers, cls = [], self.tokenizer.cls_id
        for encoding in [first, *first.overflowing]:
            ids = torch.tensor([encoding.ids])
            types = torch.tensor([encoding.type_ids]) if self.model.config.type_vocab_size else None
            logits = self.model(ids, token_type_ids=types).logits[0].float().numpy()
            # the context's tokens, and [CLS], which transformers keeps in the softmax as the "no answer" token
            desired = np.array([s == 1 or i == cls for s, i in zip(encoding.sequence_ids, encoding.ids)])
            for i, j, score in select_spans(logits[:, 0], logits[:, 1], desired, top_k, max_answer_len):
                start, end = encoding.offsets[i][0], encoding.offsets[j][1]
                answers.append({"score": score, "start": start, "end": end, "answer": context[start:end]})
        return sorted(answers, key=lambda a: -a["score"])[:top_k]

    def _read(self, question: str, context: str) -> list[tuple[int, int]]:
        """The (start, end) characters of the context the model reads: the selected sentences, or all of it."""
        if not self.sentences:
            return [(0, len(context))]
        spans = split_sentences(context)
        if len(spans) <= self.sentences:
            return spans
        if isinstance(self.selector, str):  # loaded on first use: a one-sentence context needs no encoder
            self.selector = load_model(self.selector)
        return select_sentences(self.selector, question, context, self.sentences)

    def _generate(self, items: list[tuple[str, str]]) -> list[list[dict[str, Any]]]:
        prompted = PromptedModel.create(self.model, self.tokenizer)
        regions = [self._read(q, c) for q, c in items]
        read = [" ".join(c[s:e] for s, e in spans) for (_, c), spans in zip(items, regions)]
        prompts = [prompted.ids(qa_prompt(q, r, prompted.chat, self.shots)) for (q, _), r in zip(items, read)]
        if self.constrained:
            answers = greedy_span(self.model, self.tokenizer, prompts, read, self.max_new_tokens)
            if self.best_prefix:
                answers = [most_likely_prefix(a, self.tokenizer) for a in answers]
            texts = [first_line(a.text) for a in answers]
            if self.trim:
                texts = [trim_answer(t, q) for (q, _), t in zip(items, texts)]
            return [[self._located(c, t, a.logprob, spans)]
                    for (_, c), t, a, spans in zip(items, texts, answers, regions)]
        texts = prompted.complete(prompts, GenerationConfig(max_new_tokens=self.max_new_tokens, truncate=True),
                                  self.batch_size)
        answers = [first_line(text) for text in texts]
        scored = continuation_logprobs(self.model, [(p, self.tokenizer.encode(a) or [pad_id(self.loaded)])
                                                    for p, a in zip(prompts, answers)], pad_id(self.loaded))
        return [[self._located(c, answer, logprob, spans)] for (_, c), answer, logprob, spans in
                zip(items, answers, scored, regions)]

    @staticmethod
    def _located(context: str, answer: str, logprob: float, regions: list[tuple[int, int]]) -> dict[str, Any]:
        """The answer with its probability and its characters in the context, found first in the regions the
        model read, then anywhere ((0, 0) when it is not there)."""
        start = -1
        for s, e in [*regions, (0, len(context))] if answer else []:
            found = context[s:e].lower().find(answer.lower())
            if found >= 0:
                start = s + found
                break
        span = (start, start + len(answer)) if start >= 0 else (0, 0)
        text = context[span[0]:span[1]] if start >= 0 else answer
        return {"score": float(np.exp(logprob)), "start": span[0], "end": span[1], "answer": text}


__all__ = ["QuestionAnsweringPipeline", "select_spans"]
