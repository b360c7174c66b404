"""In-context learning prompts: an instruction, k solved examples, then the query.

In-context learning (Brown et al. 2020, "Language Models are Few-Shot Learners")
adapts a model without training it: the prompt shows the task. Zero-shot gives
only the instruction and the query, one-shot adds one solved example, few-shot
several. Each record (a dict, e.g. a line of a JSONL file) is rendered with
`PromptTemplate.input_template`, a Python format string with named fields; an
example adds its answer (the `target_field`) and a separator. The default
format is the one of the course's dialogue-summarization lab:

    Dialogue:

    {dialogue}

    What was going on?
    {summary}


For chat models the same pieces become messages: the instruction a system
turn, each example a user turn and an assistant turn, the query a last user
turn, ready for the model's chat template.

The prompt must leave room for the answer in the model's context window. Given
a token counter and a budget (context length minus max_new_tokens), examples
are dropped, last first, until the prompt fits; if the query alone is still too
long, its input field is cut to a head that fits and marked with "...". Each
step is reported in `PromptResult.warnings`.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmlab.errors import LmlabError, did_you_mean

Message = dict[str, str]
Prompt = str | list[Message]
Record = Mapping[str, Any]

DIALOGUE_TEMPLATE = "Dialogue:\n\n{dialogue}\n\nWhat was going on?\n"
TRUNCATION_MARK = "..."


@dataclass(frozen=True)
class PromptTemplate:
    """How records become a prompt.

    `input_template` renders a record's input (named fields, `{{` and `}}` for
    literal braces); an example is its input, then its `target_field` value,
    then `example_separator`. The `instruction` comes first, as written.
    `input_field` is the field cut short when the query does not fit.
    """

    instruction: str = ""
    input_template: str = DIALOGUE_TEMPLATE
    input_field: str = "dialogue"
    target_field: str = "summary"
    example_separator: str = "\n\n\n"

    def __post_init__(self) -> None:
        fields = template_fields(self.input_template)
        if self.input_field not in fields:
            raise LmlabError(
                f"input field {self.input_field!r} does not appear in the template "
                f"(its fields: {', '.join(fields) or 'none'})"
            )

    def format_input(self, record: Record, where: str = "record") -> str:
        """The record rendered with `input_template`."""
        for name in template_fields(self.input_template):
            if name not in record:
                raise LmlabError(
                    f"{where} has no field {name!r}, which the template uses{did_you_mean(name, record)}"
                )
        try:
            return self.input_template.format_map(record)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise LmlabError(f"{where}: cannot fill the template {self.input_template!r} ({type(err).__name__}: "
                             f"{err})") from None

    def target(self, record: Record, where: str = "record") -> str:
        """The record's answer; the first one when the field holds several."""
        if self.target_field not in record:
            raise LmlabError(
                f"{where} has no target field {self.target_field!r}{did_you_mean(self.target_field, record)}"
            )
        value = record[self.target_field]
        if isinstance(value, list):
            value = value[0] if value else ""
        return str(value)


def template_fields(template: str) -> list[str]:
    """The named fields a format string uses, in order, e.g. ['dialogue'] for 'Dialogue: {dialogue}'."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise LmlabError(f"bad template {template!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        root = name.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise LmlabError(f"bad template {template!r}: fields must be named, like {{dialogue}}")
        if spec or conversion:
            raise LmlabError(f"bad template {template!r}: write each field as {{name}}, without !conversion or "
                             ":format (write {{ and }} for literal braces)")
        if root not in names:
            names.append(root)
    return names


@dataclass
class PromptResult:
    """A prompt ready for a model: text, or chat messages for a chat template."""

    prompt: Prompt
    examples: list[Record]  # the examples that made it into the prompt
    truncated: bool  # the query's input was cut short to fit
    n_tokens: int | None  # the prompt's length by the token counter, when one was given
    warnings: list[str] = field(default_factory=list)

    @property
    def n_shots_used(self) -> int:
        return len(self.examples)


def choose_examples(
    pool: Sequence[Record], k: int, seed: int = 0, exclude: Record | None = None
) -> list[Record]:
    """Pick k examples from `pool` at random (seeded), never one equal to `exclude` (the query)."""
    if k < 0:
        raise LmlabError(f"the number of examples (shots) must be 0 or more, got {k}")
    candidates = [record for record in pool if exclude is None or record != exclude]
    if k > len(candidates):
        raise LmlabError(f"asked for {k} examples but the pool has only {len(candidates)} besides the query")
    return random.Random(seed).sample(candidates, k)


def build_prompt(
    query: Record,
    examples: Sequence[Record] = (),
    template: PromptTemplate = PromptTemplate(),
    chat: bool = False,
    count_tokens: Callable[[Prompt], int] | None = None,
    budget: int | None = None,
    truncate: bool = True,
) -> PromptResult:
    """The prompt for `query` with `examples` before it, fitted to `budget` tokens if one is given.

    `count_tokens` measures a whole prompt (a string, or the message list when
    `chat` is true, e.g. through the tokenizer's chat template). Without a
    budget the prompt is returned as built. With `truncate=False` a query too
    long for the budget is an error instead of being cut.
    """
    examples = list(examples)
    for number, example in enumerate(examples, start=1):
        template.format_input(example, f"example {number}")
        template.target(example, f"example {number}")
    template.format_input(query, "the query")

    def render(n_examples: int, query: Record) -> Prompt:
        return _render(template, examples[:n_examples], query, chat)

    if budget is None:
        prompt = render(len(examples), query)
        return PromptResult(prompt, examples, False, count_tokens(prompt) if count_tokens else None)
    if count_tokens is None:
        raise LmlabError("a token budget needs a token counter")
    if budget < 1:
        raise LmlabError(f"the token budget must be positive, got {budget} (context length minus max_new_tokens)")

    warnings = []
    for n_examples in range(len(examples), -1, -1):
        prompt = render(n_examples, query)
        n_tokens = count_tokens(prompt)
        if n_tokens <= budget:
            if n_examples < len(examples):
                warnings.append(
                    f"dropped the last {len(examples) - n_examples} of {len(examples)} examples "
                    f"to fit the prompt in {budget} tokens"
                )
            return PromptResult(prompt, examples[:n_examples], False, n_tokens, warnings)
    if examples:
        warnings.append(f"dropped all {len(examples)} examples to fit the prompt in {budget} tokens")
    if not truncate:
        raise LmlabError(
            f"the prompt needs {n_tokens} tokens even with no examples, more than the budget of {budget} "
            "(context length minus max_new_tokens); allow truncation or shorten the input"
        )
    cut_query, n_chars = _truncate_input(template, query, lambda q: count_tokens(render(0, q)) <= budget)
    if cut_query is None:
        raise LmlabError(
            f"the instruction and template alone do not fit in {budget} tokens "
            "(context length minus max_new_tokens); shorten them or lower max_new_tokens"
        )
    original = str(query[template.input_field])
    warnings.append(
        f"cut the query's {template.input_field!r} to its first {n_chars} of {len(original)} characters "
        f"to fit the prompt in {budget} tokens"
    )
    prompt = render(0, cut_query)
    return PromptResult(prompt, [], True, count_tokens(prompt), warnings)


def _render(template: PromptTemplate, examples: Sequence[Record], query: Record, chat: bool) -> Prompt:
    if chat:
        messages = [{"role": "system", "content": template.instruction}] if template.instruction else []
        for example in examples:
            messages.append({"role": "user", "content": template.format_input(example).strip()})
            messages.append({"role": "assistant", "content": template.target(example).strip()})
        messages.append({"role": "user", "content": template.format_input(query).strip()})
        return messages
    parts = [template.instruction + "\n\n"] if template.instruction else []
    for example in examples:
        parts.append(template.format_input(example) + template.target(example) + template.example_separator)
    parts.append(template.format_input(query))
    return "".join(parts)


def _truncate_input(
    template: PromptTemplate, query: Record, fits: Callable[[Record], bool]
) -> tuple[Record | None, int]:
    """The query with the longest head of its input field (plus '...') that fits, or None if none does."""
    text = str(query[template.input_field])

    def cut(n_chars: int) -> Record:
        return {**query, template.input_field: text[:n_chars] + TRUNCATION_MARK}

    if not fits(cut(0)):
        return None, 0
    fitting, too_long = 0, len(text)  # binary search: cut(fitting) fits, cut(too_long) does not
    while too_long - fitting > 1:
        middle = (fitting + too_long) // 2
        if fits(cut(middle)):
            fitting = middle
        else:
            too_long = middle
    return cut(fitting), fitting
