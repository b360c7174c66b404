"""Options that do nothing in the combination given are refused, not silently ignored.

A user who writes `--temperature 0.5` without `--do-sample` believes the text
was sampled at temperature 0.5; it was decoded greedily. Each command lists
its `Applies` rules (an option, when it has an effect, and why); `check_applies`
wraps the command's function and, before it runs, refuses every option the user
changed from its default whose rule says it has no effect here, in one line
that says what to do instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class Applies:
    """`option` (its argparse dest is derived) has an effect only when `when(args)`; `otherwise` says why not."""

    option: str
    when: Callable[[argparse.Namespace], bool]
    otherwise: str
    name: str | None = None  # the argparse dest, when it is not the option's name

    @property
    def dest(self) -> str:
        return self.name or self.option.lstrip("-").replace("-", "_")


def field_default(owner: type | Callable[..., Any], name: str) -> Any:
    """The default of dataclass `owner`'s field `name` (or of function `owner`'s parameter `name`): a CLI option
    that fills the field takes its default from here, so the default is written once, with the field
    (tests/test_cli_defaults.py walks the parsers)."""
    if not dataclasses.is_dataclass(owner):
        return inspect.signature(owner).parameters[name].default
    field = next(f for f in dataclasses.fields(owner) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def given(args: argparse.Namespace, parser: argparse.ArgumentParser, dest: str) -> bool:
    """True when the user set the option to something other than its default."""
    return getattr(args, dest) != parser.get_default(dest)


def unused_options(args: argparse.Namespace, parser: argparse.ArgumentParser, rules: Sequence[Applies]) -> list[str]:
    """One line per option the user gave that has no effect with the rest of `args`."""
    return [f"{rule.option} {rule.otherwise}" for rule in rules
            if given(args, parser, rule.dest) and not rule.when(args)]


def check_applies(parser: argparse.ArgumentParser, rules: Sequence[Applies],
                  run: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int | None]:
    """`run`, preceded by the refusal of the first option of `rules` that would do nothing."""
    def checked(args: argparse.Namespace) -> int | None:
        unused = unused_options(args, parser, rules)
        if unused:
            raise LmlabError(unused[0])
        return run(args)

    return checked


def sampling(args: argparse.Namespace) -> bool:
    """Sampling is on, or (generate) the next-token table shows what the sampling parameters do."""
    return args.do_sample or bool(getattr(args, "show_distribution", None))


def beams(args: argparse.Namespace) -> bool:
    return args.num_beams > 1


GREEDY = "does nothing without --do-sample (greedy decoding takes the most probable token): add --do-sample, or drop it"
SAMPLING_RULES = (
    *(Applies(option, sampling, GREEDY) for option in ("--temperature", "--top-k", "--top-p")),
    Applies("--seed", lambda a: a.do_sample, "does nothing without --do-sample: greedy decoding draws nothing at random"),
    Applies("--length-penalty", beams, "ranks beam-search hypotheses: it does nothing without --num-beams 2 or more"),
)
