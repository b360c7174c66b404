"""Checkpoint folders on disk: lmlab's own format, and Hugging Face folders in and out.

An lmlab checkpoint is a folder with
    lmlab.json          the ModelConfig
    model.safetensors   the weights (tied weights stored once)
    tokenizer files     when the model has a tokenizer
A Hugging Face folder is config.json + model.safetensors (or shards) + tokenizer
files; `export_hf` writes one that `transformers` loads with no network.
Folders are written through lmlab.io: staged under a temporary name and
swapped in at the end, so an interrupted save never leaves a half-written
checkpoint, and only folders lmlab wrote are ever replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.hub.convert import (config_from_hf, family_of, guess_family, hf_config_from_lmlab, state_dict_from_hf,
                               state_dict_to_hf)
from lmlab.io import HF_MODEL_KIND, MODEL_KIND, read_safetensors, replace_folder, save_safetensors, write_json
from lmlab.models import Transformer
from lmlab.tokenizers.base import TokenizerProtocol

LMLAB_CONFIG = "lmlab.json"
WEIGHTS = "model.safetensors"


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


def save_checkpoint(model: Transformer, out: Path, tokenizer: TokenizerProtocol | None = None, overwrite: bool = False,
                    card=None) -> Path:
    """Write an lmlab checkpoint folder (config + safetensors + tokenizer, and a model card when `card`,
    lmlab.hub.model_card.CardFacts, is given), replacing it as a whole (lmlab.io.replace_folder: `out` must be
    new, empty, or an lmlab model folder with `overwrite`)."""
    with replace_folder(out, MODEL_KIND, overwrite) as tmp:
        write_checkpoint(model, tmp, tokenizer)
        if card is not None:
            from lmlab.hub.model_card import write_model_card

            write_model_card(tmp, card)
    return Path(out)


def _add_to_json(path: Path, fields: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**data, **fields})


def write_checkpoint(model: Transformer, folder: Path, tokenizer: TokenizerProtocol | None = None) -> None:
    """Write the checkpoint's files (config, weights, tokenizer) into the existing `folder`."""
    model.config.save(folder / LMLAB_CONFIG)
    save_safetensors(_unique_tensors(model), folder / WEIGHTS)
    if tokenizer is not None:
        tokenizer.save(folder)


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


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the weights of the checkpoint `folder` into `model` in place; `model` may be a Transformer that
    carries more than its config says (LoRA adapters, a new head), as a training run's checkpoints do."""
    folder = Path(folder)
    missing, unexpected = model.load_state_dict(read_safetensors(folder / WEIGHTS), strict=False)
    _check_keys(model, missing, unexpected, str(folder))


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


def export_hf(model: Transformer, out: Path, tokenizer: TokenizerProtocol | None = None, overwrite: bool = False,
              card=None) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer) for `transformers` to load,
    with a model card (README.md) when `card` (lmlab.hub.model_card.CardFacts) is given."""
    config = model.config
    family = guess_family(config)
    hf_config = hf_config_from_lmlab(config, family)
    hf_config["dtype"] = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    state = state_dict_to_hf({k: v for k, v in model.state_dict().items()}, config, family)
    with replace_folder(out, HF_MODEL_KIND, overwrite) as tmp:
        write_json(tmp / "config.json", hf_config)
        if config.has_decoder and family != "bert":
            generation = {k: v for k, v in (("bos_token_id", config.bos_token_id), ("eos_token_id", config.eos_token_id),
                                            ("pad_token_id", config.pad_token_id),
                                            ("decoder_start_token_id", config.decoder_start_token_id)) if v is not None}
            write_json(tmp / "generation_config.json", generation)
        save_safetensors({k: v.detach().contiguous().clone() for k, v in state.items()}, tmp / WEIGHTS)
        if tokenizer is not None:
            tokenizer.save(tmp)
            if family == "bert":  # BERT reads segment ids; transformers' generic fast tokenizer omits them unless told
                _add_to_json(tmp / "tokenizer_config.json",
                             {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
        if card is not None:
            from lmlab.hub.model_card import write_model_card

            write_model_card(tmp, card)
    return Path(out)
