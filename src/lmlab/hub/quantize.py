"""Quantize a model end to end: load, score, quantize, save, reload, score again, and measure sizes.

This is what `lmlab quantize` runs. Perplexity (evaluation.perplexity) is
measured on the same tokens before and after, on the model as it comes back
from the written folder, so the figures describe the checkpoint, not an
in-memory copy. The text is scored in windows of min(512, max_seq_len) tokens
every half window. By default it is the first `eval_tokens` tokens of the
dialogues that ship with lmlab (resources/dialogues.jsonl, written for lmlab).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.evaluation.perplexity import PerplexityResult, perplexity
from lmlab.hub.resolve import EMBEDDED, LoadedModel, embedded_path, load_model
from lmlab.io import MODEL_KIND, claim_folder
from lmlab.models import Transformer
from lmlab.hub.quantized_checkpoint import (TORCH_DTYPES, check_dtype, is_quantized_checkpoint, load_quantized,
                                           save_quantized)
from lmlab.quantization.int4 import Int4Spec
from lmlab.quantization.quantized_linear import check_int4_shapes, quantize_model
from lmlab.quantization.schemes import QuantSpec
from lmlab.resources import resource_path

DEFAULT_EVAL_TOKENS = 1024
MAX_WINDOW = 512


@dataclass(frozen=True)
class QuantizeResult:
    """Sizes in bytes and perplexities before (fp32, as loaded) and after (as reloaded from `out`)."""

    reference: str
    out: Path
    dtype: str
    spec: QuantSpec | Int4Spec | None
    include_embeddings: bool
    source: Path | None  # the file or folder the model was loaded from (None for presets and hub ids)
    source_bytes: int | None
    weight_bytes_before: int  # tensors of the fp32 model, tied weights once
    weight_bytes_after: int
    file_bytes_after: int  # every file of the written folder
    perplexity_before: PerplexityResult | None
    perplexity_after: PerplexityResult | None
    eval_source: str | None

    @property
    def size_ratio(self) -> float:
        """Written folder over the fp32 weights: what the checkpoint costs against an fp32 one."""
        return self.file_bytes_after / self.weight_bytes_before

    @property
    def perplexity_change(self) -> float | None:
        """Relative change of perplexity, (after - before) / before."""
        if self.perplexity_before is None or self.perplexity_after is None:
            return None
        return self.perplexity_after.ppl / self.perplexity_before.ppl - 1


def files_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers in the state dict, counting a shared (tied) tensor once."""
    seen: set[int] = set()
    total = 0
    for tensor in model.state_dict().values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def default_eval_text() -> str:
    """The dialogues that ship with lmlab, one after another."""
    lines = resource_path("dialogues.jsonl").read_text(encoding="utf-8").splitlines()
    return "\n\n".join(json.loads(line)["dialogue"] for line in lines if line.strip())


def _source(reference: str) -> Path | None:
    path = embedded_path(reference) if reference in EMBEDDED else Path(reference).expanduser()
    return path if path.exists() else None


def _eval_ids(loaded: LoadedModel, eval_text: Path | None, eval_tokens: int) -> tuple[list[int], str]:
    config, tokenizer = loaded.model.config, loaded.tokenizer
    if config.arch != "decoder" or config.head != "lm" or tokenizer is None:
        raise LmlabError(f"perplexity needs a decoder language model with a tokenizer, and {loaded.reference} is "
                         "not one: skip the evaluation (--no-eval)")
    if eval_tokens < 2:
        raise LmlabError(f"the evaluation needs at least 2 tokens, not {eval_tokens}")
    if eval_text is None:
        text, source = default_eval_text(), "lmlab's shipped dialogues"
    else:
        try:
            text, source = Path(eval_text).read_text(encoding="utf-8"), str(eval_text)
        except (OSError, UnicodeDecodeError) as err:
            raise LmlabError(f"cannot read the evaluation text {eval_text} ({err})") from None
    ids = list(tokenizer.encode(text))[:eval_tokens]
    if len(ids) < 2:
        raise LmlabError(f"the evaluation text {source} has fewer than 2 tokens")
    return ids, f"{len(ids)} tokens of {source}"


def _perplexity(model: Transformer, ids: list[int], progress: bool) -> PerplexityResult:
    window = min(MAX_WINDOW, model.config.max_seq_len)
    return perplexity(model, ids, max_length=window, stride=max(1, window // 2), progress=progress)


def quantize_checkpoint(
    reference: str,
    out: Path,
    dtype: str = "int8",
    spec: QuantSpec | Int4Spec | None = None,
    include_embeddings: bool = True,
    evaluate: bool = True,
    eval_text: Path | None = None,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
) -> QuantizeResult:
    """Quantize the model `reference` to `dtype` (int8 or int4 with `spec`, or an fp16 / bf16 cast) into folder
    `out`."""
    check_dtype(dtype)
    default = {"int8": QuantSpec(), "int4": Int4Spec()}.get(dtype)
    spec = (spec or default).validate() if default is not None else None
    if Path(reference).expanduser().is_dir() and is_quantized_checkpoint(Path(reference).expanduser()):
        raise LmlabError(f"{reference} is already quantized; quantize the original model instead")
    if Path(reference).expanduser().resolve() == Path(out).expanduser().resolve():
        raise LmlabError(f"--out {out} is the model being quantized; choose another folder")
    claim_folder(out, MODEL_KIND, overwrite)  # refuse before the work, not after it
    loaded = load_model(reference)
    model = loaded.model
    if isinstance(spec, Int4Spec):
        check_int4_shapes(model, spec)  # before the minutes of perplexity
    ids, eval_source = _eval_ids(loaded, eval_text, eval_tokens) if evaluate else ([], None)
    before = _perplexity(model, ids, progress) if evaluate else None
    weight_bytes_before = tensor_bytes(model)
    if spec is not None:
        quantize_model(model, spec, include_embeddings)
    else:
        model.to(TORCH_DTYPES[dtype])
    save_quantized(model, out, loaded.tokenizer, overwrite)
    reloaded = load_quantized(out, torch.float32 if spec is not None else TORCH_DTYPES[dtype])
    after = _perplexity(reloaded, ids, progress) if evaluate else None
    source = _source(reference)
    return QuantizeResult(reference, Path(out), dtype, spec, include_embeddings, source,
                          files_bytes(source) if source else None, weight_bytes_before, tensor_bytes(reloaded),
                          files_bytes(out), before, after, eval_source)
