"""Checkpoint folders on disk: lmlab's own format, and Hugging Face folders in and out.

An lmlab checkpoint is a folder with
    lmlab.json          the ModelConfig
    model.safetensors   the weights (tied weights stored once)
    tokenizer files     when the model has a tokenizer
A Hugging Face folder is config.json + model.safetensors (or shards) + tokenizer
files; `export_hf` writes one that `transformers` loads with no network.
Folders are written under a temporary name and renamed at the end, so an
interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.hub.convert import (config_from_hf, family_of, guess_family, hf_config_from_lmlab, state_dict_from_hf,
                               state_dict_to_hf)
from lmlab.models import Transformer

LMLAB_CONFIG = "lmlab.json"
WEIGHTS = "model.safetensors"


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on failure it vanishes.

    An existing non-empty `out` is refused unless overwrite=True, so nothing the
    user had is lost by accident.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LmlabError(f"{out} already exists and is not empty (choose another folder or allow overwriting)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished folder gets the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        backup = out.with_name(f".{out.name}.old")
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared (tied) tensor kept once, under its first name."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if id(tensor) in seen or tensor.data_ptr() in seen:
            continue
        seen.update({id(tensor), tensor.data_ptr()})
        out[name] = tensor.detach().contiguous()
    return out


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise LmlabError(f"{path} is not a readable safetensors file ({err})") from None


def _check_keys(model: Transformer, missing: list[str], unexpected: list[str], source: str) -> None:
    missing = [k for k in missing if not (k == "head.proj.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise LmlabError(f"{source}: weights do not fit the model config ({detail})")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], source: str,
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A model holding exactly `state`, in eval mode.

    It is built on the meta device (no memory, no random initialization) and
    takes the loaded tensors as its parameters, which for a 135M model saves
    seconds over initializing weights only to overwrite them.
    """
    with torch.device("meta"):
        model = Transformer(config)
    expected = set(model.state_dict())
    _check_keys(model, sorted(expected - set(state)), sorted(set(state) - expected), source)
    model.load_state_dict(state, strict=False, assign=True)
    model.materialize(torch.device("cpu"))
    return model.to(dtype).eval()


def save_checkpoint(model: Transformer, out: Path, tokenizer=None, overwrite: bool = False, card=None) -> Path:
    """Write an lmlab checkpoint folder (config + safetensors + tokenizer, and a model card when `card`,
    lmlab.hub.model_card.CardFacts, is given)."""
    with atomic_folder(out, overwrite) as tmp:
        model.config.save(tmp / LMLAB_CONFIG)
        save_file(_unique_tensors(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
        if card is not None:
            from lmlab.hub.model_card import write_model_card

            write_model_card(tmp, card)
    return Path(out)


def _add_to_json(path: Path, fields: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **fields}, indent=2, ensure_ascii=False) + "\n")


def is_lmlab_checkpoint(folder: Path) -> bool:
    return (Path(folder) / LMLAB_CONFIG).is_file()


def is_hf_folder(folder: Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def load_checkpoint(folder: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    folder = Path(folder)
    config = ModelConfig.load(folder / LMLAB_CONFIG)
    if not (folder / WEIGHTS).is_file():
        raise LmlabError(f"{folder} has no {WEIGHTS}")
    return build_model(config, read_safetensors(folder / WEIGHTS), str(folder), dtype)


def _hf_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LmlabError(f"{folder} has no safetensors weights (lmlab never unpickles .bin files)")
    return files


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LmlabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def load_hf_folder(folder: Path, dtype: torch.dtype = torch.float32, head: str | None = None) -> Transformer:
    """A transformers checkpoint folder (Llama, GPT-2, BERT or T5) as an lmlab model."""
    folder = Path(folder)
    hf_config = read_hf_config(folder)
    config = config_from_hf(hf_config, head=head)
    state: dict[str, torch.Tensor] = {}
    for file in _hf_weight_files(folder):
        state.update(read_safetensors(file))
    return build_model(config, state_dict_from_hf(state, config, family_of(hf_config)), str(folder), dtype)


def export_hf(model: Transformer, out: Path, tokenizer=None, overwrite: bool = False, card=None) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer) for `transformers` to load,
    with a model card (README.md) when `card` (lmlab.hub.model_card.CardFacts) is given."""
    config = model.config
    family = guess_family(config)
    hf_config = hf_config_from_lmlab(config, family)
    hf_config["dtype"] = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    state = state_dict_to_hf({k: v for k, v in model.state_dict().items()}, config, family)
    with atomic_folder(out, overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if config.has_decoder and family != "bert":
            generation = {k: v for k, v in (("bos_token_id", config.bos_token_id), ("eos_token_id", config.eos_token_id),
                                            ("pad_token_id", config.pad_token_id),
                                            ("decoder_start_token_id", config.decoder_start_token_id)) if v is not None}
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
            if family == "bert":  # BERT reads segment ids; transformers' generic fast tokenizer omits them unless told
                _add_to_json(tmp / "tokenizer_config.json",
                             {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
        if card is not None:
            from lmlab.hub.model_card import write_model_card

            write_model_card(tmp, card)
    return Path(out)
