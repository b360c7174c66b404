"""Every CLI option that fills a dataclass field has that field's default (issue 16: a default is written once).

The test walks each command's parser below and compares every option whose destination is a field of the
dataclasses the command fills; the options named in RENAMED fill a field of another name.
"""

import argparse
import dataclasses

import pytest

from lmlab.cli.main import build_parser
from lmlab.training.pretrain import PretrainSettings
from lmlab.training.trainer import TrainConfig

FILLS = {"pretrain": (TrainConfig, PretrainSettings)}
RENAMED = {"no_progress": None, "overrides": "overrides"}  # --no-progress fills `progress` as its negation


def subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def defaults_of(classes: tuple[type, ...]) -> dict[str, object]:
    out = {}
    for cls in reversed(classes):  # the first class named wins a name both have
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                out[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                out[field.name] = field.default_factory()
    return out


@pytest.mark.parametrize("command", sorted(FILLS))
def test_cli_defaults_equal_the_dataclass_defaults(command):
    parser, fields = subparser(command), defaults_of(FILLS[command])
    compared, differ = [], {}
    for action in parser._actions:
        if action.dest in fields and action.dest not in RENAMED:
            compared.append(action.dest)
            if action.default != fields[action.dest] and not (action.default is None and fields[action.dest] == []):
                differ[action.option_strings[0]] = (action.default, fields[action.dest])
    assert len(compared) >= 15, compared  # the walk reaches the options (a guard against matching nothing)
    assert differ == {}, "CLI default vs dataclass default: " + repr(differ)
    no_progress = parser.get_default("no_progress")
    assert (not no_progress) == fields["progress"]
