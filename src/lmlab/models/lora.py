"""LoRA: low-rank adaptation of a frozen model (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", section 4.1).

A pre-trained weight W0 (d_out x d_in) stays frozen; the update is learned as a
product of two small matrices, B (d_out x r) and A (r x d_in), with r << d:

    h = W0 x + (alpha / r) · B A x

A starts random (Kaiming-uniform, as in the reference implementation `loralib`
and PEFT) and B at zero, so training starts from exactly the pre-trained
model. Each adapted matrix trains r·(d_in + d_out) parameters instead of
d_in·d_out. Dropout applies to the input of the low-rank path only (PEFT's
`lora_dropout`). After training, B A · alpha/r can be folded into W0
(`merge_lora`), so the fine-tuned model runs at the base model's cost; or the
adapter alone (A and B, a few MB) can be saved and loaded onto the base model.

Module names in lmlab: attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
cross_attn.* (encoder-decoders), ffn.up, ffn.gate, ffn.down, head.proj. The
short aliases q, k, v, o name the projection in every attention (self and
cross), up, gate, down the feed-forward matrices. The paper adapts q and v
(section 7.1); "all-linear" adapts every linear layer of the blocks (QLoRA,
Dettmers et al. 2023, section 4).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import read_json, read_safetensors, replace_folder, save_safetensors, write_json

ALIASES = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "up": "ffn.up", "gate": "ffn.gate", "down": "ffn.down",
}
ALL_LINEAR = "all-linear"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_FORMAT = "lmlab.lora-adapter"
ADAPTER_KIND = "adapter"  # the kind of output folder lmlab.io marks


class LoRALinear(nn.Linear):
    """An nn.Linear whose frozen weight W0 gets a trainable low-rank update (alpha/r) · B A.

    It keeps the wrapped layer's own `weight` and `bias` tensors (so the base
    weights keep their names in a state dict) and adds `lora_A` (r x d_in) and
    `lora_B` (d_out x r).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def delta_weight(self) -> torch.Tensor:
        """The learned update (alpha/r) · B A, shaped like the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        if not self.enabled:
            return base
        update = nn.functional.linear(nn.functional.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W0 + (alpha/r) · B A (computed in float32)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight.float() + self.delta_weight().float())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


@dataclass
class LoRAReport:
    """What `apply_lora` did: trainable and total parameters, and the adapted modules."""

    n_trainable: int
    n_total: int
    share: float
    modules: list[str]
    rank: int
    alpha: float
    dropout: float
    targets: list[str]

    def format(self) -> str:
        return (f"LoRA rank {self.rank}, alpha {self.alpha:g} on {len(self.modules)} matrices "
                f"({', '.join(sorted({short_name(m) for m in self.modules}))}): "
                f"{self.n_trainable:,} trainable of {self.n_total:,} parameters ({self.share:.2%})")


def short_name(module_name: str) -> str:
    """The part of a module name that is the same in every layer: 'decoder.layers.3.attn.q_proj' -> 'attn.q_proj'."""
    parts = module_name.split(".")
    if "layers" in parts:
        return ".".join(parts[parts.index("layers") + 2:])
    return module_name


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """'q,v' or ['q', 'v'] -> ['q_proj', 'v_proj']; 'all-linear' stays as it is."""
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise LmlabError("no LoRA target modules given; name some, e.g. q,v or all-linear")
    return [ALIASES.get(n, n) for n in names]


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _matches(module_name: str, target: str) -> bool:
    if target == ALL_LINEAR:
        return ".layers." in f".{module_name}"
    return module_name == target or module_name.endswith("." + target)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def apply_lora(
    model: nn.Module,
    targets: str | Sequence[str] = "q,v",
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    trainable: Sequence[str] = (),
    seed: int | None = 0,
) -> LoRAReport:
    """Freeze `model` and put a LoRALinear in place of every linear layer a target names.

    `targets`: comma-separated names or a list (full names such as attn.q_proj,
    suffixes such as q_proj, aliases q,k,v,o,up,gate,down) or "all-linear".
    `trainable`: module-name prefixes that stay fully trainable (a new task
    head, e.g. "head"). `seed` fixes the random init of the A matrices.
    Raises LmlabError for a target that matches no linear layer and for a rank
    outside [1, min(d_in, d_out)].
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise LmlabError("this model already has LoRA adapters; merge them first (merge_lora)")
    if rank < 1:
        raise LmlabError(f"LoRA rank must be at least 1, not {rank}")
    if alpha <= 0:
        raise LmlabError(f"LoRA alpha must be positive, not {alpha:g}")
    if not 0.0 <= dropout < 1.0:
        raise LmlabError(f"LoRA dropout must be in [0, 1), not {dropout:g}")
    wanted = parse_targets(targets)
    linears = _linear_layers(model)
    chosen: dict[str, nn.Linear] = {}
    for target in wanted:
        found = {name: m for name, m in linears.items() if _matches(name, target)}
        if not found:
            known = sorted({short_name(n) for n in linears} | set(ALIASES))
            raise LmlabError(f"LoRA target {target!r} matches no linear layer of this model"
                             f"{did_you_mean(target, known)}; the layers are: {', '.join(sorted(map(short_name, linears)))}")
        chosen.update(found)
    for name, linear in chosen.items():
        limit = min(linear.in_features, linear.out_features)
        if rank > limit:
            raise LmlabError(f"LoRA rank {rank} exceeds {short_name(name)}'s smaller dimension "
                             f"({linear.out_features} x {linear.in_features}); choose a rank of at most {limit}")
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for name, linear in chosen.items():
        _replace_module(model, name, LoRALinear(linear, rank, alpha, dropout, generator))
    for prefix in trainable:
        for name, param in model.named_parameters():
            if name == prefix or name.startswith(prefix + "."):
                param.requires_grad_(True)
    n_trainable, n_total = count_parameters(model)
    return LoRAReport(n_trainable, n_total, n_trainable / n_total, sorted(chosen), rank, alpha, dropout, wanted)


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its frozen base: every adapter off inside the block (PEFT's `disable_adapter`). DPO and
    PPO use the base of a LoRA model as their reference this way, without a second copy of the weights."""
    adapted = lora_modules(model).values()
    for module in adapted:
        module.enabled = False
    try:
        yield model
    finally:
        for module in adapted:
            module.enabled = True


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (W0 + alpha/r · B A) and put plain nn.Linear layers back.

    A LoRA'd output head tied to the token embedding is untied first, so the
    embedding keeps its pre-trained values. Every parameter is trainable again afterwards.
    """
    adapted = lora_modules(model)
    if not adapted:
        raise LmlabError("this model has no LoRA adapters to merge")
    embedding = getattr(model, "tok_emb", None)
    for name, module in adapted.items():
        if embedding is not None and module.weight is embedding.weight:
            model.config = model.config.replace(tie_embeddings=False)
        _replace_module(model, name, module.merged())
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a LoRA fine-tune changed: every A and B, and the fully trainable modules (e.g. a new head)."""
    return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}


@dataclass
class AdapterConfig:
    """adapter.json: how to rebuild the adapted model from its base."""

    base_model: str
    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    modules: list[str]
    trainable: list[str]
    base_config: dict
    format: str = ADAPTER_FORMAT

    @classmethod
    def load(cls, folder: Path) -> AdapterConfig:
        path = Path(folder) / ADAPTER_CONFIG
        if not path.is_file():
            raise LmlabError(f"{folder} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
        data = read_json(path, ADAPTER_FORMAT, "an lmlab LoRA adapter")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def save_adapter(model: nn.Module, out: Path, base_model: str, report: LoRAReport, trainable: Sequence[str] = (),
                 overwrite: bool = False) -> Path:
    """Write the adapter alone: adapter.safetensors (A, B and fully trained modules) and adapter.json
    (rank, alpha, targets, the base model's reference and config)."""
    config = AdapterConfig(base_model, report.rank, report.alpha, report.dropout, report.targets, report.modules,
                           list(trainable), model.config.to_dict())
    with replace_folder(out, ADAPTER_KIND, overwrite) as tmp:
        save_safetensors(lora_state_dict(model), tmp / ADAPTER_WEIGHTS)
        write_json(tmp / ADAPTER_CONFIG, asdict(config))
    return Path(out)


def load_adapter(model: nn.Module, folder: Path) -> LoRAReport:
    """Put the adapter saved in `folder` onto `model` (the base model, with the same config the adapter was
    trained on) and load its weights; returns the report of the re-applied LoRA."""
    folder = Path(folder)
    config = AdapterConfig.load(folder)
    if config.base_config != model.config.to_dict():
        changed = sorted(k for k in config.base_config if config.base_config[k] != model.config.to_dict().get(k))
        raise LmlabError(f"{folder}: the adapter was trained on a model with another config "
                         f"(it differs in: {', '.join(changed)})")
    report = apply_lora(model, config.modules, config.rank, config.alpha, config.dropout,
                        config.trainable)
    tensors = read_safetensors(folder / ADAPTER_WEIGHTS)
    expected = set(lora_state_dict(model))
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise LmlabError(f"{folder}: the adapter's tensors do not fit the model ({odd[:3]})")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    report.targets = config.targets
    return report
