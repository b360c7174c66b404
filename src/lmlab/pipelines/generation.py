"""Tasks whose answer is written: text generation, text2text, summarization, translation, conversation,
table question answering.

A causal LM continues text (text-generation with a string: the prompt and its
continuation, as transformers returns them). Every other task here is an
instruction: an instruction-tuned model (the default, SmolLM2-135M-Instruct)
reads it as a user turn of its chat template and answers in the assistant's
turn; an encoder-decoder (T5, FLAN-T5) reads it with T5's task prefix
("summarize: ", "translate English to French: ", Raffel et al. 2020,
appendix D). Table question answering serializes the table into the prompt as a
Markdown table (rows as lines, cells between bars; the serialization of e.g.
Chen 2023, "Large Language Models are few(1)-shot Table Reasoners") and reports
the cells the answer names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmlab.errors import LmlabError, did_you_mean
from lmlab.generation import GenerationConfig, generate
from lmlab.generation.chat import chat_ids, user_message
from lmlab.hub.resolve import LoadedModel
from lmlab.pipelines.base import Pipeline, check_text

GENERATION_OPTIONS = {f.name for f in dataclasses.fields(GenerationConfig)}
LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ar": "Arabic", "ro": "Romanian",
             "eng": "English", "fra": "French", "deu": "German", "spa": "Spanish", "ita": "Italian",
             "por": "Portuguese", "nld": "Dutch", "rus": "Russian", "zho": "Chinese", "jpn": "Japanese",
             "arb": "Arabic", "ron": "Romanian"}


def language(code: str) -> str:
    """A language name from an ISO code ("fr", "fra", FLORES' "fra_Latn") or a name ("French")."""
    key = code.split("_")[0].lower()
    if key in LANGUAGES:
        return LANGUAGES[key]
    if code.capitalize() in LANGUAGES.values():
        return code.capitalize()
    raise LmlabError(f"unknown language {code!r}{did_you_mean(key, LANGUAGES)}; give an ISO code such as fr or de")


class WritingPipeline(Pipeline):
    """A pipeline whose answer the model writes: prompts in, generated text out."""

    instruction = "{text}"  # the user turn for an instruction-tuned decoder
    t5_prefix = ""  # what an encoder-decoder reads before the text
    output_key = "generated_text"

    def __init__(self, loaded: LoadedModel, max_new_tokens: int = 128, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        c = loaded.model.config
        if c.head != "lm" or not c.has_decoder:
            raise LmlabError(f"{loaded.reference} cannot write text (it is an {c.arch} with the {c.head!r} head); "
                             f"{self.task} needs a generative model such as smollm2-135m-instruct")
        self.chat = c.arch == "decoder" and getattr(self.tokenizer, "chat_template", None) is not None
        self.max_new_tokens = max_new_tokens

    def describe(self) -> str:
        how = "chat prompt" if self.chat else ("T5 task prefix" if self.model.config.arch != "decoder" else "prompt")
        return f"{self.loaded.reference}, {how}, greedy unless sampling is asked"

    def config(self, options: dict[str, Any]) -> GenerationConfig:
        unknown = set(options) - GENERATION_OPTIONS - {"return_full_text"}
        if unknown:
            raise LmlabError(f"unknown generation option(s) {', '.join(sorted(unknown))}; use "
                             f"{', '.join(sorted(GENERATION_OPTIONS))}")
        given = {k: v for k, v in options.items() if k in GENERATION_OPTIONS}
        if "stop" in given and isinstance(given["stop"], str):
            given["stop"] = (given["stop"],)
        return GenerationConfig(**{"max_new_tokens": self.max_new_tokens, "truncate": True, **given})

    def prompt_ids(self, content: str) -> list[int]:
        if self.chat:
            return chat_ids(self.tokenizer, user_message(content))
        return self.tokenizer.encode(content, add_special_tokens=True)

    def instruct(self, text: str, options: dict[str, Any]) -> str:
        if self.model.config.arch == "encoder-decoder" or not self.chat:
            return self.t5_prefix.format(**self.names(options)) + text
        return self.instruction.format(text=text, **self.names(options))

    def names(self, options: dict[str, Any]) -> dict[str, str]:
        return {}

    def write(self, prompts: list[list[int]], options: dict[str, Any]) -> list[str]:
        return [c.text.strip() for c in generate(self.model, prompts, self.config(options), self.tokenizer)]

    def predict(self, items: list[str], **options: Any) -> list[Any]:
        task_options = {k: options.pop(k) for k in list(options) if k in ("src_lang", "tgt_lang")}
        prompts = [self.prompt_ids(self.instruct(text, task_options)) for text in items]
        return [[{self.output_key: text}] for text in self.write(prompts, options)]


class Text2TextGenerationPipeline(WritingPipeline):
    """`[{"generated_text"}]`: the answer to an instruction (the text is the instruction)."""

    task = "text2text-generation"


class SummarizationPipeline(WritingPipeline):
    """`[{"summary_text"}]`."""

    task = "summarization"
    instruction = "Summarize the following text in one or two sentences.\n\n{text}"
    t5_prefix = "summarize: "
    output_key = "summary_text"


class TranslationPipeline(WritingPipeline):
    """`[{"translation_text"}]`; the languages from `src_lang`/`tgt_lang` or the task name
    (`translation_en_to_fr`)."""

    task = "translation"
    instruction = "Translate the following text from {src} to {tgt}. Answer with the translation only.\n\n{text}"
    t5_prefix = "translate {src} to {tgt}: "
    output_key = "translation_text"

    def __init__(self, loaded: LoadedModel, src_lang: str = "en", tgt_lang: str = "fr", **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        self.src, self.tgt = language(src_lang), language(tgt_lang)

    def names(self, options: dict[str, Any]) -> dict[str, str]:
        return {"src": language(options["src_lang"]) if "src_lang" in options else self.src,
                "tgt": language(options["tgt_lang"]) if "tgt_lang" in options else self.tgt}


class TextGenerationPipeline(WritingPipeline):
    """`[{"generated_text"}]`: a string is continued (the prompt and its continuation, unless
    return_full_text=False); a chat (a list of {"role", "content"}) gets the assistant's reply appended."""

    task = "text-generation"

    def describe(self) -> str:
        return f"{self.loaded.reference}, continuation (chat template for messages), greedy unless sampling is asked"

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, str) or (isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], dict))

    def check(self, item: Any) -> Any:
        if isinstance(item, list):
            return check_messages(item)
        return check_text(item, "prompt")

    def predict(self, items: list[Any], return_full_text: bool = True, **options: Any) -> list[Any]:
        prompts = [chat_ids(self.tokenizer, item) if isinstance(item, list)
                   else self.tokenizer.encode(item, add_special_tokens=True) for item in items]
        completions = generate(self.model, prompts, self.config(options), self.tokenizer)
        results = []
        for item, completion in zip(items, completions):
            if isinstance(item, list):
                results.append([{"generated_text": [*item, {"role": "assistant", "content": completion.text.strip()}]}])
            else:
                results.append([{"generated_text": (item if return_full_text else "") + completion.text}])
        return results


def check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise LmlabError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise LmlabError(f"message {number} of the conversation must be {{'role': ..., 'content': text}}")
    if not any(m["content"].strip() for m in messages):
        raise LmlabError("the conversation is empty: every message's content is blank")
    return messages


class ConversationalPipeline(WritingPipeline):
    """`[{"generated_text": messages + [the assistant's reply]}]` for a conversation (a list of messages, or
    one user message as a string): transformers' chat output since its Conversation class was retired."""

    task = "conversational"

    def __init__(self, loaded: LoadedModel, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        if not self.chat:
            raise LmlabError(f"{loaded.reference} has no chat template; a conversation needs an instruction-tuned "
                             "model such as smollm2-135m-instruct")

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, str) or (isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], dict))

    def check(self, item: Any) -> list[dict[str, str]]:
        return user_message(check_text(item)) if isinstance(item, str) else check_messages(item)

    def predict(self, items: list[list[dict[str, str]]], **options: Any) -> list[Any]:
        replies = self.write([chat_ids(self.tokenizer, messages) for messages in items], options)
        return [[{"generated_text": [*messages, {"role": "assistant", "content": reply}]}]
                for messages, reply in zip(items, replies)]


def table_rows(table: Any) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a table given as {column: [values]}, a list of {column: value} rows, or a list of
    rows whose first row is the header; refuses a table whose rows or columns differ in length."""
    if isinstance(table, dict):
        header = [str(c) for c in table]
        columns = [list(v) if isinstance(v, (list, tuple)) else None for v in table.values()]
        if any(c is None for c in columns):
            raise LmlabError("a table given as a dict maps each column name to a list of cells")
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise LmlabError(f"the table is not rectangular: its columns have {sorted(lengths)} cells")
        return header, [[str(c[i]) for c in columns] for i in range(lengths.pop() if lengths else 0)]
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        header = [str(c) for c in table[0]]
        for number, row in enumerate(table, start=1):
            if [str(c) for c in row] != header:
                raise LmlabError(f"the table is not rectangular: row {number} has columns {list(row)}, "
                                 f"not {header}")
        return header, [[str(v) for v in row.values()] for row in table]
    if isinstance(table, list) and table and all(isinstance(r, (list, tuple)) for r in table):
        width = len(table[0])
        for number, row in enumerate(table[1:], start=1):
            if len(row) != width:
                raise LmlabError(f"the table is not rectangular: row {number} has {len(row)} cells, the header "
                                 f"{width}")
        return [str(c) for c in table[0]], [[str(c) for c in row] for row in table[1:]]
    raise LmlabError("a table is {column: [cells]}, a list of {column: cell} rows, or a list of rows with the "
                     "header first")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


class TableQuestionAnsweringPipeline(WritingPipeline):
    """`{"answer", "coordinates", "cells", "aggregator"}` per {"table", "query"}: the answer written by the
    model from the table in its prompt, the (row, column) of each cell that equals the answer or one of its
    comma-separated parts, and aggregator "NONE" (the model does any counting or summing itself)."""

    task = "table-question-answering"
    instruction = ("Answer the question using the table. Answer with the value only, no sentence.\n\n{table}\n\n"
                   "Question: {query}")

    def describe(self) -> str:
        return f"{self.loaded.reference}, table serialized as Markdown into the prompt"

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, dict)

    def check(self, item: Any) -> tuple[list[str], list[list[str]], str]:
        if not isinstance(item, dict) or "table" not in item:
            raise LmlabError("table question answering takes {'table': ..., 'query': ...}")
        header, rows = table_rows(item["table"])
        return header, rows, check_text(item.get("query"), "query")

    def __call__(self, inputs: Any = None, table: Any = None, query: Any = None, **options: Any) -> Any:
        if inputs is None:
            if isinstance(query, list):
                inputs = [{"table": table, "query": q} for q in query]
            else:
                inputs = {"table": table, "query": query}
        return super().__call__(inputs, **options)

    def predict(self, items: list[tuple[list[str], list[list[str]], str]], **options: Any) -> list[dict[str, Any]]:
        prompts = []
        for header, rows, query in items:
            content = self.instruction.format(table=markdown_table(header, rows), query=query)
            prompts.append(self.prompt_ids(content) if self.chat else
                           self.tokenizer.encode(content + "\nAnswer:", add_special_tokens=True))
        answers = self.write(prompts, options)
        results = []
        for (header, rows, _), answer in zip(items, answers):
            wanted = {part.strip().lower() for part in [answer, *answer.split(",")] if part.strip()}
            coordinates = [(r, c) for r, row in enumerate(rows) for c, cell in enumerate(row)
                           if cell.strip().lower() in wanted]
            results.append({"answer": answer, "coordinates": coordinates,
                            "cells": [rows[r][c] for r, c in coordinates], "aggregator": "NONE"})
        return results


__all__ = ["ConversationalPipeline", "SummarizationPipeline", "TableQuestionAnsweringPipeline",
           "Text2TextGenerationPipeline", "TextGenerationPipeline", "TranslationPipeline", "language", "table_rows"]
