"""Every CLI option that fills a dataclass field has that field's default (issue 16: a default is written once).

The test walks each command's parser below and compares every option whose destination is a field of the
dataclasses (or a parameter of the function) the command fills; the options named in RENAMED fill a field of
another name, those in NEGATED fill the opposite of a flag.
"""

import argparse
import dataclasses
import inspect

import pytest

from lmlab.cli.main import build_parser
from lmlab.alignment.rlhf import PPOSettings
from lmlab.data.cleaning import QualityRules
from lmlab.data.mixture import load_mixture
from lmlab.data.pipeline import PrepareSettings
from lmlab.pipelines.base import Pipeline
from lmlab.planning.compute import plan_compute
from lmlab.planning.memory import Parallelism, plan_inference_memory, plan_training_memory
from lmlab.tokenizers import train_bpe
from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings
from lmlab.generation.sampling import GenerationConfig
from lmlab.hub.export import export_model
from lmlab.inspect.attention import attention_map
from lmlab.inspect.floats import inspect_float
from lmlab.hub.quantize import quantize_checkpoint
from lmlab.icl import IclConfig
from lmlab.quantization.schemes import QuantSpec
from lmlab.scaling.fit import fit_sweep
from lmlab.scaling.sweep import SweepSettings
from lmlab.serving import ServerLimits, ServeSettings
from lmlab.training.fsdp import ParallelConfig
from lmlab.training.pretrain import PretrainSettings
from lmlab.training.trainer import TrainConfig

FILLS = {  # command: the dataclasses (or the function) its options fill
    "pretrain": (TrainConfig, PretrainSettings, ParallelConfig),
    "data prepare": (PrepareSettings, QualityRules),
    "generate": (GenerationConfig,),
    "chat": (GenerationConfig,),
    "evaluate": (GenerationConfig,),
    "align": (PPOSettings, FinetuneSettings, DataFormat),  # PPO's and DPO's shared options take PPO's defaults
    "finetune": (FinetuneSettings, DataFormat, ParallelConfig),
    "quantize": (quantize_checkpoint, QuantSpec),
    "serve": (ServeSettings, ServerLimits),
    "scaling sweep": (SweepSettings,),
    "scaling fit": (fit_sweep,),
    "export": (export_model,),
    "data mix": (load_mixture,),
    "inspect attention": (attention_map,),
    "inspect float": (inspect_float,),
    "run": (Pipeline.__init__,),
    "plan memory": (plan_training_memory, plan_inference_memory, Parallelism),
    "plan compute": (plan_compute,),
    "tokenizer train": (train_bpe,),
    "icl": (IclConfig, IclConfig().generation, IclConfig().template),  # the lab's own generation and template
}
RENAMED = {"near_dup_threshold": "near_dedup_threshold", "weights": "method", "val": "validation",
           "val_fraction": "validation_fraction", "grad_checkpointing": "gradient_checkpointing",
           "cors_origin": "cors_origins"}  # option dest: field
NEGATED = {"no_progress": "progress", "skip_embeddings": "include_embeddings", "no_eval": "evaluate"}
OTHER_MEANING = {"align": {"method"}}  # align's --method is dpo/ppo, not FinetuneSettings.method (that is --weights)
CONVERTED = {"overrides", "data", "budgets", "shots", "stop", "target_field", "template"}  # --set FIELD=VALUE
# strings become a dict; no --data is the empty list; --budgets and --shots are parsed from "C,C,..." (None:
# DEFAULT_BUDGETS); icl's --stop None is one line, --target-field repeats (None: IclConfig's), --template is the
# text of a PromptTemplate, not one
LEFT_UNSAID = {"quantize": {"scheme", "granularity", "group_size"}, "plan memory": {"dtype"}}  # None: the dataclass's default (int8's
# QuantSpec or int4's Int4Spec), so that int8 options given with --dtype int4 are refused
# plan memory's --dtype None: fp32, or bf16 with --mixed-precision


def subparser(path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def defaults_of(owners: tuple[object, ...]) -> dict[str, object]:
    out = {}
    for owner in reversed(owners):  # the first one named wins a name both have
        if dataclasses.is_dataclass(owner) and not isinstance(owner, type):  # an instance: its values
            out |= {field.name: getattr(owner, field.name) for field in dataclasses.fields(owner)}
            continue
        if not dataclasses.is_dataclass(owner):
            out |= {name: p.default for name, p in inspect.signature(owner).parameters.items()
                    if p.default is not inspect.Parameter.empty}
            continue
        for field in dataclasses.fields(owner):
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
        field = RENAMED.get(action.dest, NEGATED.get(action.dest, action.dest))
        if field not in fields or action.dest in CONVERTED or action.dest in OTHER_MEANING.get(command, ()):
            continue
        compared.append(field)
        default = not action.default if action.dest in NEGATED else action.default
        expected = list(fields[field]) if isinstance(fields[field], tuple) else fields[field]
        if field in LEFT_UNSAID.get(command, ()):
            expected = None
        if default != expected:
            differ[action.option_strings[0] if action.option_strings else action.dest] = (default, expected)
    assert compared  # the walk reaches the options (a guard against matching nothing)
    assert differ == {}, "CLI default vs dataclass default: " + repr(differ)
