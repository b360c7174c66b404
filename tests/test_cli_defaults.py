"""Every CLI option that fills a dataclass field has that field's default (issue 16: a default is written once).

The test walks each command's parser below and compares every option whose destination is a field of the
dataclasses the command fills; the options named in RENAMED fill a field of another name.
"""

import argparse
import dataclasses

import pytest

from lmlab.cli.main import build_parser
from lmlab.alignment.rlhf import PPOSettings
from lmlab.data.cleaning import QualityRules
from lmlab.data.pipeline import PrepareSettings
from lmlab.finetuning.datasets import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings
from lmlab.generation.sampling import GenerationConfig
from lmlab.training.pretrain import PretrainSettings
from lmlab.training.trainer import TrainConfig

FILLS = {  # command: the dataclasses its options fill
    "pretrain": (TrainConfig, PretrainSettings),
    "data prepare": (PrepareSettings, QualityRules),
    "generate": (GenerationConfig,),
    "chat": (GenerationConfig,),
    "evaluate": (GenerationConfig,),
    "align": (PPOSettings, FinetuneSettings, DataFormat),  # PPO's and DPO's shared options take PPO's defaults
}
RENAMED = {"no_progress": "progress", "near_dup_threshold": "near_dedup_threshold", "weights": "method",
           "val_fraction": "validation_fraction"}  # option dest: field
OTHER_MEANING = {"align": {"method"}}  # align's --method is dpo/ppo, not FinetuneSettings.method (that is --weights)
CONVERTED = {"overrides", "data"}  # --set FIELD=VALUE strings become a dict; no --data is the empty list


def subparser(path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


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
        field = RENAMED.get(action.dest, action.dest)
        if field not in fields or action.dest in CONVERTED or action.dest in OTHER_MEANING.get(command, ()):
            continue
        compared.append(field)
        default = not action.default if action.dest == "no_progress" else action.default
        expected = list(fields[field]) if isinstance(fields[field], tuple) else fields[field]
        if default != expected:
            differ[action.option_strings[0]] = (default, expected)
    assert len(compared) >= 6, compared  # the walk reaches the options (a guard against matching nothing)
    assert differ == {}, "CLI default vs dataclass default: " + repr(differ)
