"""How much memory a model needs: to serve it, and to train it, per device.

Serving holds the weights (Ψ parameters × bytes per parameter of the format)
and the KV cache: every decoder layer keeps the keys and values of all tokens
seen so far, 2 · layers · n_kv_head · d_head · seq · batch elements.

Training holds four things (Rajbhandari et al. 2020, "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models", section 3):

- weights: Ψ · b (b = 2 for fp16/bf16 compute, 4 for fp32);
- gradients: one per weight, Ψ · b;
- optimizer states: Adam keeps a momentum and a variance per weight; with
  mixed precision (Micikevicius et al. 2018) also an fp32 master copy, so
  K = 4 + 4 + 4 = 12 bytes per parameter: (2 + 2 + K)Ψ = 16Ψ in all;
- activations: what the forward pass saves for the backward pass
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", eq. 1: s·b·h·(34 + 5·a·s/h) bytes per layer).

ZeRO shards the model states over N_d data-parallel devices: stage 1 the
optimizer states (4Ψ + KΨ/N_d), stage 2 also the gradients (2Ψ + (2+K)Ψ/N_d),
stage 3 also the weights ((2+2+K)Ψ/N_d). A sharding factor F < N_d shards
within groups of F devices and replicates across groups (PyTorch FSDP's
HYBRID_SHARD, Zhao et al. 2023). CPU offload moves the optimizer states to
host memory (ZeRO-Offload, Ren et al. 2021), and with stage 3 the weights too
(ZeRO-Infinity, Rajbhandari et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError, did_you_mean
from lmlab.planning.accelerators import Accelerator, accelerators_that_fit
from lmlab.planning.units import check_dtype, dtype_bytes, require_positive

# Optimizer states kept per parameter. SGD is SGD with momentum (one buffer);
# Adafactor (Shazeer & Stern 2018) keeps only row and column sums of the second
# moment, rows + cols numbers per weight matrix instead of rows × cols, which
# is negligible next to Ψ: we count it as 0.
OPTIMIZER_STATES: dict[str, int] = {"adam": 2, "adamw": 2, "sgd": 1, "adafactor": 0}
TRAINING_DTYPES = ("fp32", "fp16", "bf16")
MASTER_WEIGHT_BYTES = 4.0
LOGITS_BYTES = 4.0  # the loss is computed on fp32 logits (Korthikanti et al. 2022, section 4.3)


@dataclass(frozen=True)
class Term:
    """One part of a memory plan: its bytes, the formula, and the formula with numbers in."""

    name: str
    bytes: float
    formula: str
    numbers: str


@dataclass(frozen=True)
class Parallelism:
    """How training is spread: `gpus` data-parallel devices, a ZeRO stage, a sharding factor, offload."""

    gpus: int = 1
    zero: int = 0
    sharding_factor: int | None = None
    offload: str | None = None

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise LmlabError(f"the number of GPUs must be at least 1, not {self.gpus}")
        if self.zero not in (0, 1, 2, 3):
            raise LmlabError(f"ZeRO stage must be 0, 1, 2 or 3, not {self.zero}")
        if self.sharding_factor is not None:
            if self.sharding_factor < 1:
                raise LmlabError(f"sharding factor must be at least 1, not {self.sharding_factor}")
            if self.gpus % self.sharding_factor:
                raise LmlabError(f"sharding factor {self.sharding_factor} does not divide the {self.gpus} GPUs "
                                 f"(shards are groups of equal size)")
        if self.offload not in (None, "cpu"):
            raise LmlabError(f"offload target must be 'cpu', not {self.offload!r}")
        if self.offload and self.zero == 0:
            raise LmlabError("CPU offload needs ZeRO stage 1, 2 or 3 (it moves the sharded optimizer states)")

    @property
    def shards(self) -> int:
        """Devices each sharded tensor is split over: the sharding factor, or all GPUs."""
        return self.sharding_factor or self.gpus


class _Plan:
    """What both plans share: the device total of their `terms` (a property of each), and where it fits."""

    @property
    def total_bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    def fits_on(self) -> list[Accelerator]:
        return accelerators_that_fit(self.total_bytes)


@dataclass(frozen=True)
class InferencePlan(_Plan):
    """Memory to serve a model: weights plus, for a decoder, its KV cache."""

    n_params: float
    dtype: str
    weights: Term
    kv_cache: Term | None
    notes: tuple[str, ...] = ()

    @property
    def terms(self) -> list[Term]:
        return [t for t in (self.weights, self.kv_cache) if t is not None]


@dataclass(frozen=True)
class TrainingPlan(_Plan):
    """Memory per device to train a model, part by part; `host` is what offload moved to CPU memory.

    `bytes_per_param` is weights + gradients + optimizer states per parameter
    before any sharding (16 for mixed-precision Adam).
    """

    n_params: float
    dtype: str
    optimizer: str
    mixed_precision: bool
    parallelism: Parallelism
    bytes_per_param: float
    weights: Term
    gradients: Term
    optimizer_states: Term
    activations: Term | None
    host: Term | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def terms(self) -> list[Term]:
        return [t for t in (self.weights, self.gradients, self.optimizer_states, self.activations) if t is not None]

    @property
    def model_states_bytes(self) -> float:
        """Weights + gradients + optimizer states on one device (what the ZeRO paper tabulates)."""
        return self.weights.bytes + self.gradients.bytes + self.optimizer_states.bytes


@dataclass(frozen=True)
class RuleOfThumb:
    """A bytes-per-parameter shortcut for training memory, with where it comes from."""

    name: str
    bytes_per_param: float
    source: str

    def bytes_for(self, n_params: float) -> float:
        return self.bytes_per_param * n_params


RULES_OF_THUMB = (
    RuleOfThumb("course, itemised (fp32 Adam)", 24.0,
                "4 B weights + 8 B Adam states + 4 B gradients + ~8 B activations and temporaries "
                "= 4 B + ~20 extra B per parameter"),
    RuleOfThumb("course, ~20x the weights (fp32)", 80.0,
                "'memory to train is ~20x the memory of the weights': 1B params, 4 GB of weights -> 80 GB"),
    RuleOfThumb("ZeRO model states (mixed-precision Adam)", 16.0,
                "2 B fp16 weights + 2 B fp16 gradients + K = 12 B fp32 copy, momentum, variance "
                "(Rajbhandari et al. 2020, sec. 3.1); activations come on top"),
)


def kv_cache_layers(config: ModelConfig) -> int:
    """Attention layers that cache keys and values while generating.

    A decoder caches every layer's self-attention; an encoder-decoder's decoder
    caches its self-attention and the cross-attention keys/values of the
    encoder output (2 per decoder layer); an encoder generates nothing.
    """
    if config.arch == "decoder":
        return config.n_layer
    if config.arch == "encoder-decoder":
        return 2 * config.n_decoder_layer
    return 0


def _check_sizes(n_params: float, batch: int, seq_len: int | None) -> None:
    require_positive("parameter count", n_params)
    require_positive("batch size", batch)
    if seq_len is not None:
        require_positive("sequence length", seq_len)


def plan_inference_memory(n_params: float, dtype: str = "fp16", config: ModelConfig | None = None,
                          batch: int = 1, seq_len: int | None = None) -> InferencePlan:
    """Weights in `dtype`, and the KV cache for `batch` sequences of `seq_len` tokens when `config` is given.

    The KV cache is kept in the compute format: the weight format for fp32,
    fp16 and bf16; fp16 for int8/int4 weights, which are dequantized to 16
    bits for the matrix multiplies (weight-only quantization).
    """
    _check_sizes(n_params, batch, seq_len)
    b = dtype_bytes(dtype)
    weights = Term("weights", n_params * b, f"Ψ × {b:g} B ({dtype})", f"{n_params:,.0f} × {b:g}")
    notes: list[str] = []
    kv_cache = None
    if config is None:
        notes.append("KV cache: name a model (not just --params) to size it from its layers and heads")
    elif kv_cache_layers(config) == 0:
        notes.append(f"KV cache: none, an {config.arch} model reads its whole input at once")
    else:
        seq = seq_len or config.max_seq_len
        kv_dtype = dtype if dtype in TRAINING_DTYPES else "fp16"
        kv_b = dtype_bytes(kv_dtype)
        layers = kv_cache_layers(config)
        n_bytes = 2 * layers * config.n_kv_head * config.d_head * seq * batch * kv_b
        kv_cache = Term(f"KV cache ({kv_dtype})", n_bytes,
                        "2 (K and V) × layers × n_kv_head × d_head × seq × batch × bytes",
                        f"2 × {layers} × {config.n_kv_head} × {config.d_head} × {seq} × {batch} × {kv_b:g}")
    return InferencePlan(n_params, dtype, weights, kv_cache, tuple(notes))


def _layer_coefficients(config: ModelConfig, p: float, cross_attention: bool,
                        flash_attention: bool) -> tuple[float, float]:
    """(X, Y) with one layer's activations = s·b·h·(X + Y·a·s/h) bytes, p bytes per element.

    Korthikanti et al. 2022, section 4.1, counted for 16-bit elements, dropout
    and d_ff = 4h: attention 11sbh + 5as²b (inputs of the QKV and output
    projections, Q, K, V, softmax output, dropout mask and output, projection
    dropout mask), MLP 19sbh (inputs of both linears and of the activation,
    dropout mask), two norms 4sbh: X = 34, Y = 5. Here each element takes p
    bytes (masks 1 byte, and none without dropout), K and V take
    n_kv_head·d_head columns (grouped-query attention), the MLP saves 2·d_ff
    columns (4·d_ff for a gated unit: both projections, the activation and the
    product), and FlashAttention (Dao et al. 2022) saves no s×s scores.
    """
    h, d_attn = config.d_model, config.n_head * config.d_head
    d_kv = config.n_kv_head * config.d_head
    mask = 1.0 if config.dropout > 0 else 0.0
    attention_x = p * (h + 2 * d_attn + 2 * d_kv) / h + mask
    attention_y = 0.0 if flash_attention else p * (2 if mask else 1) + mask
    mlp_x = p * (h + (4 if config.gated else 2) * config.d_ff) / h + mask
    blocks = 2 if cross_attention else 1
    return blocks * attention_x + mlp_x + p * (blocks + 1), blocks * attention_y


def activation_term(config: ModelConfig, batch: int, seq_len: int, bytes_per_element: float,
                    checkpointing: bool = False, flash_attention: bool = False) -> Term:
    """Activations one device keeps for the backward pass of one micro-batch.

    Layers as in `_layer_coefficients`; encoder-decoder decoder layers carry a
    cross-attention block too (counted like self-attention, with the source as
    long as the target). Outside the layers (Korthikanti et al. 2022, section
    4.3): the input-embedding dropout mask, the input of each final norm and
    of the output projection, and the fp32 logits over the vocabulary.
    Full activation checkpointing keeps only each layer's input (their 2sbh per
    layer at 16 bits) plus one layer's activations while it is recomputed.
    """
    s, b, h, a, p = seq_len, batch, config.d_model, config.n_head, bytes_per_element
    stacks = []
    if config.has_encoder:
        stacks.append(("encoder", config.n_layer, *_layer_coefficients(config, p, False, flash_attention)))
    if config.arch == "decoder":
        stacks.append(("decoder", config.n_layer, *_layer_coefficients(config, p, False, flash_attention)))
    if config.arch == "encoder-decoder":
        stacks.append(("decoder", config.n_decoder_layer, *_layer_coefficients(config, p, True, flash_attention)))
    outside_x = (1.0 if config.dropout > 0 else 0.0) + p * (len(stacks) + 1)
    vocab = config.vocab_size if config.head in ("lm", "mlm") else 0
    outside = s * b * (outside_x * h + LOGITS_BYTES * vocab)
    outside_text = f"s·b·({outside_x:g}·h + {LOGITS_BYTES:g}·V)"
    outside_numbers = f"{s}·{b}·({outside_x:g}·{h} + {LOGITS_BYTES:g}·{vocab})"
    if checkpointing:
        name, _, x, y = max(stacks, key=lambda st: st[2] + st[3] * a * s / h)
        layers = sum(st[1] for st in stacks)
        n_bytes = layers * p * s * b * h + s * b * h * (x + y * a * s / h) + outside
        formula = f"layers × {p:g}·s·b·h (layer inputs) + s·b·h·(X + Y·a·s/h) (one {name} layer recomputed) + "
        numbers = f"{layers} × {p:g}·{s}·{b}·{h} + {s}·{b}·{h}·({x:.4g} + {y:g}·{a}·{s}/{h}) + "
    else:
        n_bytes = sum(n * s * b * h * (x + y * a * s / h) for _, n, x, y in stacks) + outside
        formula = " + ".join(f"{name} layers × s·b·h·(X + Y·a·s/h)" for name, *_ in stacks) + " + "
        numbers = " + ".join(f"{n} × {s}·{b}·{h}·({x:.4g} + {y:g}·{a}·{s}/{h})" for _, n, x, y in stacks) + " + "
    formula += outside_text + " (Korthikanti et al.: X = 34, Y = 5 at 16 bits with dropout and d_ff = 4h)"
    return Term("activations", n_bytes, formula, numbers + outside_numbers)


def plan_training_memory(
    n_params: float,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    mixed_precision: bool = False,
    parallelism: Parallelism | None = None,
    config: ModelConfig | None = None,
    batch: int = 1,
    seq_len: int | None = None,
    activation_checkpointing: bool = False,
    flash_attention: bool = False,
) -> TrainingPlan:
    """Memory per device to train `n_params` parameters (activations too when `config` is given).

    `dtype` is the format of the weights the forward pass uses; with
    `mixed_precision` it must be fp16 or bf16 and the optimizer keeps an fp32
    master copy. Without it, everything (states included) is in `dtype`.
    `batch` is the micro-batch per device.
    """
    _check_sizes(n_params, batch, seq_len)
    check_dtype(dtype, TRAINING_DTYPES)
    if optimizer not in OPTIMIZER_STATES:
        raise LmlabError(f"unknown optimizer {optimizer!r}{did_you_mean(optimizer, OPTIMIZER_STATES)}; "
                         f"choose from {', '.join(OPTIMIZER_STATES)}")
    if mixed_precision and dtype == "fp32":
        raise LmlabError("mixed precision computes in 16 bits: give --dtype fp16 or bf16 with it")
    par = parallelism or Parallelism()
    psi, n = f"{n_params:,.0f}", par.shards
    b = dtype_bytes(dtype)
    n_states = OPTIMIZER_STATES[optimizer]
    state_b = MASTER_WEIGHT_BYTES if mixed_precision else b
    k = (MASTER_WEIGHT_BYTES if mixed_precision else 0.0) + n_states * state_b
    k_text = (f"{MASTER_WEIGHT_BYTES:g} (fp32 copy) + " if mixed_precision else "") + f"{n_states} × {state_b:g}"

    def sharded(name: str, per_param: float, formula: str, stage: int) -> Term:
        if par.zero >= stage and n > 1:
            return Term(name, per_param * n_params / n, f"{formula} / {n} (ZeRO-{par.zero}, sharded over {n} devices)",
                        f"{psi} × {per_param:g} / {n}")
        return Term(name, per_param * n_params, formula, f"{psi} × {per_param:g}")

    weights = sharded("weights", b, f"Ψ × {b:g} B ({dtype})", 3)
    gradients = sharded("gradients", b, f"Ψ × {b:g} B ({dtype})", 2)
    states = sharded("optimizer states", k, f"Ψ × K, K = {k_text} = {k:g} B ({optimizer})", 1)
    notes: list[str] = []
    host = None
    if par.offload == "cpu":
        moved = [states] + ([weights] if par.zero == 3 else [])
        host = Term("host (CPU) memory", sum(t.bytes for t in moved),
                    " + ".join(t.formula for t in moved), " + ".join(t.numbers for t in moved))
        states = Term(states.name, 0.0, "offloaded to CPU", "0")
        if par.zero == 3:
            weights = Term(weights.name, 0.0, "offloaded to CPU (fetched layer by layer)", "0")
    activations = None
    if config is None:
        notes.append("activations: name a model (not just --params) to size them from its layers")
    else:
        seq = seq_len or config.max_seq_len
        activations = activation_term(config, batch, seq, b, activation_checkpointing, flash_attention)
    return TrainingPlan(n_params, dtype, optimizer, mixed_precision, par, 2 * b + k, weights, gradients, states,
                        activations, host, tuple(notes))
