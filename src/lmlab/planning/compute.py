"""Training compute: FLOPs, petaflop/s-days, GPU time, cost and energy.

- C ≈ 6·N·D (Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
  section 2.1): the forward pass costs about 2 FLOPs per parameter per token
  (a multiply and an add), the backward pass twice that.
- The exact count of Hoffmann et al. 2022 ("Training Compute-Optimal Large
  Language Models", appendix F) adds what 6ND leaves out: the embedding and
  logits matrices, the attention scores (which grow with the context) and the
  softmax; the backward pass is again twice the forward pass.
- One petaflop/s-day is 10^15 FLOP/s for a day, 8.64e19 FLOPs (the unit of
  Brown et al. 2020, GPT-3, appendix D: 175B trained on 300B tokens is
  3.14e23 FLOPs, 3,640 PF/s-days).
- Time at a model FLOPs utilization (MFU: model FLOPs per second over the
  hardware peak; Chowdhery et al. 2022, PaLM, section 4.1, reached 46.2%);
  energy from board power (or a measured system power per accelerator) times
  the data centre's PUE (power usage effectiveness: facility power over IT
  power), and CO2e from the grid's carbon intensity (`lmlab.planning.energy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.planning.accelerators import Accelerator, get_accelerator
from lmlab.planning.energy import Footprint, Grid
from lmlab.planning.units import require_positive

PF_DAY = 1e15 * 86400
SECONDS_PER_HOUR = 3600.0


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6·N·D training FLOPs (Kaplan et al. 2020, section 2.1)."""
    return 6.0 * require_positive("parameter count", n_params) * require_positive("token count", n_tokens)


def pf_days(flops: float) -> float:
    """FLOPs in petaflop/s-days (1e15 FLOP/s for 86,400 s)."""
    return flops / PF_DAY


def _attention_flops(config: ModelConfig, s: int) -> float:
    """One attention block's forward FLOPs on s tokens (Hoffmann et al. 2022, appendix F).

    Key/query/value projections 2·s·d·(d_attn + 2·d_kv) (the paper's
    2·3·s·d·d_attn when K and V have as many heads as Q), Q·K logits
    2·s²·d_attn, softmax 3·a·s², softmax·V 2·s²·d_attn, output 2·s·d_attn·d.
    """
    d, a = config.d_model, config.n_head
    d_attn, d_kv = a * config.d_head, config.n_kv_head * config.d_head
    return (2 * s * d * (d_attn + 2 * d_kv) + 2 * s * s * d_attn + 3 * a * s * s
            + 2 * s * s * d_attn + 2 * s * d_attn * d)


def forward_flops(config: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward-pass FLOPs on one sequence of `seq_len` tokens, by component (Hoffmann et al. 2022, appendix F).

    Embeddings 2·s·V·d (counted as a one-hot matrix multiply, as the paper
    does); per layer attention (see `_attention_flops`) and the dense block
    2·s·2·d·d_ff (2·s·3·d·d_ff for a gated unit, which has three matrices);
    final logits 2·s·d·V (BERT's masked-LM head first applies a d×d transform,
    Devlin et al. 2018, another 2·s·d²). Encoder-decoder models run the encoder over a
    source as long as the target, and each decoder layer adds cross-attention.
    The softmax line counts 3 FLOPs per score, as the paper does.
    """
    s, d, vocab = int(require_positive("sequence length", seq_len)), config.d_model, config.vocab_size
    dense = 2 * s * (3 if config.gated else 2) * d * config.d_ff
    attention = _attention_flops(config, s)
    if config.arch == "encoder-decoder":
        attention_total = config.n_layer * attention + config.n_decoder_layer * 2 * attention
        dense_total = (config.n_layer + config.n_decoder_layer) * dense
    else:
        attention_total, dense_total = config.n_layer * attention, config.n_layer * dense
    return {
        "embeddings": 2.0 * s * vocab * d,
        "attention": float(attention_total),
        "dense": float(dense_total),
        "logits": 2.0 * s * d * vocab + (2.0 * s * d * d if config.head == "mlm" else 0.0)
        if config.head in ("lm", "mlm") else 0.0,
    }


def exact_training_flops(config: ModelConfig, n_tokens: float, seq_len: int | None = None) -> float:
    """Training FLOPs for `n_tokens` tokens in sequences of `seq_len`: 3 × forward (backward = 2 × forward)."""
    seq = config.max_seq_len if seq_len is None else seq_len
    per_sequence = sum(forward_flops(config, seq).values())
    return 3.0 * per_sequence * require_positive("token count", n_tokens) / seq


@dataclass(frozen=True)
class ComputePlan:
    """How long, how much and how many kWh `flops` of training take on `gpus` accelerators."""

    flops: float
    accelerator: Accelerator
    dtype: str
    gpus: int
    mfu: float
    usd_per_gpu_hour: float
    pue: float
    watts: float | None = None  # average power per accelerator; None: the datasheet's board power

    @property
    def power_watts(self) -> float:
        return self.accelerator.watts if self.watts is None else self.watts

    @property
    def pf_days(self) -> float:
        return pf_days(self.flops)

    @property
    def achieved_flops_per_gpu(self) -> float:
        return self.accelerator.peak_flops(self.dtype) * self.mfu

    @property
    def gpu_hours(self) -> float:
        return self.flops / self.achieved_flops_per_gpu / SECONDS_PER_HOUR

    @property
    def days(self) -> float:
        """Wall-clock days with all `gpus` working."""
        return self.gpu_hours / self.gpus / 24.0

    @property
    def cost_usd(self) -> float:
        return self.gpu_hours * self.usd_per_gpu_hour

    @property
    def energy_kwh(self) -> float:
        """Power for every GPU-hour, times PUE (with board power, CPUs, network and storage are not counted)."""
        return self.gpu_hours * self.power_watts / 1000.0 * self.pue

    def footprint(self, grid: Grid) -> Footprint:
        """Energy and CO2e of the run on `grid`."""
        return Footprint(self.gpu_hours, self.power_watts, self.pue, grid)


def plan_compute(flops: float, accelerator: str = "A100-80GB", dtype: str = "bf16", gpus: int = 1,
                 mfu: float = 0.4, usd_per_gpu_hour: float = 2.0, pue: float = 1.2,
                 watts: float | None = None) -> ComputePlan:
    """Time, cost and energy of `flops` training FLOPs at `mfu` of `accelerator`'s `dtype` peak; `watts`
    replaces the datasheet board power by a measured average (Patterson et al. 2021 measured 330 W per V100)."""
    require_positive("FLOPs", flops)
    acc = get_accelerator(accelerator)
    acc.peak_flops(dtype)
    if gpus < 1:
        raise LmlabError(f"the number of GPUs must be at least 1, not {gpus}")
    if not 0 < mfu <= 1:
        raise LmlabError(f"MFU (model FLOPs utilization) must be in (0, 1], not {mfu:g}")
    if usd_per_gpu_hour < 0:
        raise LmlabError(f"price per GPU-hour must not be negative, not {usd_per_gpu_hour:g}")
    if pue < 1:
        raise LmlabError(f"PUE is facility power over IT power, at least 1, not {pue:g}")
    if watts is not None and watts <= 0:
        raise LmlabError(f"power per accelerator must be positive, not {watts:g} W")
    return ComputePlan(flops, acc, dtype, gpus, mfu, usd_per_gpu_hour, pue, watts)
