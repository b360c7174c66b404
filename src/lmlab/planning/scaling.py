"""Scaling laws: how loss falls with parameters N, tokens D and compute C, and the best N, D for a budget.

- Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (WebText2,
  loss in nats per token, N without embeddings): L(N) = (N_c/N)^α_N,
  L(D) = (D_c/D)^α_D, L(C_min) = (C_c/C_min)^α_C with C in PF-days (eqs.
  1.1-1.3), L(N, D) (eq. 1.5, Table 2 constants), and the compute-efficient
  size N_opt = 1.3e9 · C_min^0.73 (Table 6).
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
  (Chinchilla): L(N, D) = E + A/N^α + B/D^β (section 3.3, approach 3), whose
  minimum under C = 6ND is N_opt = G·(C/6)^a, D_opt = (C/6)^b / G with
  G = (αA / βB)^(1/(α+β)), a = β/(α+β), b = α/(α+β) (eq. 4). Besiroglu et al.
  2024 ("Chinchilla Scaling: A replication attempt", Epoch AI) refit the same
  form to the paper's own data and found different coefficients.
- The rule of ~20 tokens per parameter: Chinchilla itself, 70B parameters on
  1.4T tokens. Table 3 of Hoffmann et al. lists approach 1's projections,
  whose exponents are a = b = 0.50: tokens grow in proportion to parameters,
  20.2 tokens per parameter at 1B (20.5 at 10B, drifting up to 21.6 at 10T
  because the unrounded exponents are not exactly 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import save_figure
from lmlab.planning.compute import PF_DAY, training_flops
from lmlab.planning.units import format_count, require_positive, scientific

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOKENS_PER_PARAM = 20.0
APPROACH1_TOKENS_PER_PARAM = 20.2


@dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A/N^α + B/D^β, loss in nats per token on MassiveText."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, n_params: float, n_tokens: float) -> float:
        return self.E + self.A / n_params**self.alpha + self.B / n_tokens**self.beta

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss under C = 6·N·D (Hoffmann et al. 2022, eq. 4)."""
        a = self.beta / (self.alpha + self.beta)
        b = self.alpha / (self.alpha + self.beta)
        return self.G * (flops / 6) ** a, (flops / 6) ** b / self.G

    def budget_for(self, n_params: float) -> tuple[float, float]:
        """(C, D) for which `n_params` is the compute-optimal size: eq. 4 solved for C."""
        flops = 6 * (n_params / self.G) ** ((self.alpha + self.beta) / self.beta)
        return flops, flops / (6 * n_params)


FITS: dict[str, ChinchillaFit] = {
    "hoffmann": ChinchillaFit("hoffmann", 1.69, 406.4, 410.7, 0.34, 0.28,
                              "Hoffmann et al. 2022, section 3.3 (approach 3) and appendix D.2"),
    "epoch": ChinchillaFit("epoch", 1.8172, 482.01, 2085.43, 0.3478, 0.3658,
                           "Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt' (Epoch AI refit)"),
}


def get_fit(name: str) -> ChinchillaFit:
    if name not in FITS:
        raise LmlabError(f"unknown scaling fit {name!r}{did_you_mean(name, FITS)}; choose from {', '.join(FITS)}")
    return FITS[name]


@dataclass(frozen=True)
class KaplanLaws:
    """Kaplan et al. 2020 constants (loss in nats per token on WebText2; N without embeddings)."""

    alpha_n: float = 0.076
    n_c: float = 8.8e13
    alpha_d: float = 0.095
    d_c: float = 5.4e13
    alpha_c: float = 0.050
    c_c_pf_days: float = 3.1e8
    joint_alpha_n: float = 0.076
    joint_alpha_d: float = 0.103
    joint_n_c: float = 6.4e13
    joint_d_c: float = 1.8e13
    optimal_n_scale: float = 1.3e9
    optimal_n_exponent: float = 0.73

    def loss_params(self, n_params: float) -> float:
        """L(N): data and compute unlimited (eq. 1.1)."""
        return (self.n_c / n_params) ** self.alpha_n

    def loss_tokens(self, n_tokens: float) -> float:
        """L(D): a large model trained on D tokens with early stopping (eq. 1.2)."""
        return (self.d_c / n_tokens) ** self.alpha_d

    def loss_compute(self, flops: float) -> float:
        """L(C_min): the best loss for C FLOPs at the compute-efficient size (eq. 1.3)."""
        return (self.c_c_pf_days / (flops / PF_DAY)) ** self.alpha_c

    def loss(self, n_params: float, n_tokens: float) -> float:
        """L(N, D) = ((N_c/N)^(α_N/α_D) + D_c/D)^α_D (eq. 1.5, Table 2)."""
        ratio = self.joint_alpha_n / self.joint_alpha_d
        return ((self.joint_n_c / n_params) ** ratio + self.joint_d_c / n_tokens) ** self.joint_alpha_d

    def optimal_params(self, flops: float) -> float:
        """N_opt = 1.3e9 · C_min^0.73, C in PF-days (Table 6)."""
        return self.optimal_n_scale * (flops / PF_DAY) ** self.optimal_n_exponent


KAPLAN = KaplanLaws()


def rule_optimal(flops: float, tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[float, float]:
    """(N, D) with D = r·N and 6·N·D = C: N = sqrt(C / 6r)."""
    require_positive("compute budget", flops)
    n_params = math.sqrt(flops / (6 * require_positive("tokens per parameter", tokens_per_param)))
    return n_params, tokens_per_param * n_params


def rule_budget(n_params: float, tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[float, float]:
    """(C, D) to train `n_params` compute-optimally under D = r·N: D = r·N, C = 6·N·D."""
    n_tokens = require_positive("tokens per parameter", tokens_per_param) * n_params
    return training_flops(n_params, n_tokens), n_tokens


@dataclass(frozen=True)
class Allocation:
    """A way to spend a compute budget: N parameters on D tokens, and where that split comes from."""

    method: str
    n_params: float
    n_tokens: float
    source: str


def compute_optimal(flops: float, tokens_per_param: float = TOKENS_PER_PARAM) -> list[Allocation]:
    """The compute-optimal (N, D) for `flops` by each law: both Chinchilla fits, the rule, and Kaplan."""
    require_positive("compute budget", flops)
    allocations = [Allocation(f"Chinchilla fit ({fit.name})", *fit.optimal(flops), fit.source)
                   for fit in FITS.values()]
    allocations.append(Allocation(f"{tokens_per_param:g} tokens per parameter", *rule_optimal(flops, tokens_per_param),
                                  "Chinchilla 70B on 1.4T tokens (Hoffmann et al. 2022)"))
    kaplan_n = KAPLAN.optimal_params(flops)
    allocations.append(Allocation("Kaplan N_opt = 1.3e9·C^0.73", kaplan_n, flops / (6 * kaplan_n),
                                  "Kaplan et al. 2020, Table 6 (C in PF-days; N without embeddings)"))
    return allocations


@dataclass(frozen=True)
class TokenCheck:
    """A model's training tokens against the compute-optimal r tokens per parameter."""

    n_params: float
    n_tokens: float
    tokens_per_param: float

    @property
    def optimal_tokens(self) -> float:
        return self.tokens_per_param * self.n_params

    @property
    def actual_tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params

    @property
    def verdict(self) -> str:
        ratio = self.n_tokens / self.optimal_tokens
        if ratio < 0.8:
            return f"undertrained: {1 / ratio:.1f}x fewer tokens than compute-optimal"
        if ratio > 1.25:
            return f"trained {ratio:.1f}x past compute-optimal (a smaller model served longer, or more data)"
        return "about compute-optimal"


def check_tokens(n_params: float, n_tokens: float, tokens_per_param: float = TOKENS_PER_PARAM) -> TokenCheck:
    """Compare `n_tokens` with `tokens_per_param` × `n_params` (GPT-3: 300B vs 3.5T for 175B params)."""
    require_positive("parameter count", n_params)
    require_positive("token count", n_tokens)
    return TokenCheck(n_params, n_tokens, require_positive("tokens per parameter", tokens_per_param))


def plot_loss_vs_compute(path: Path, fit: ChinchillaFit, tokens_per_param: float = TOKENS_PER_PARAM,
                         model: tuple[float, float] | None = None, budget: float | None = None) -> Path:
    """Draw loss vs training compute for fixed model sizes, with the fit's compute-optimal frontier.

    Each thin curve is one model size trained on more and more tokens
    (L(N, C/6N)); the frontier touches each at its best budget. `model` marks
    a (params, tokens) point, `budget` a compute budget in FLOPs. Written to a
    temporary file, then renamed.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    compute = np.logspace(17, 26, 200)
    figure = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for n_params in (1e8, 1e9, 1e10, 1e11):
        tokens = compute / (6 * n_params)
        keep = tokens >= n_params / 10
        ax.plot(compute[keep], fit.loss(n_params, tokens[keep]), color="0.6", linewidth=1)
        best_flops, best_tokens = fit.budget_for(n_params)
        ax.annotate(f"N = {format_count(n_params)}", (best_flops, fit.loss(n_params, best_tokens)),
                    fontsize=8, color="0.3", xytext=(0, 12), textcoords="offset points", ha="center",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    n_opt, d_opt = fit.optimal(compute)
    ax.plot(compute, fit.loss(n_opt, d_opt), color="tab:blue", linewidth=2.5,
            label=f"compute-optimal frontier ({fit.name} fit)")
    n_rule = np.sqrt(compute / (6 * tokens_per_param))
    ax.plot(compute, fit.loss(n_rule, tokens_per_param * n_rule), color="tab:orange", linestyle="--", linewidth=1.5,
            label=f"{tokens_per_param:g} tokens per parameter")
    if model is not None:
        n_params, n_tokens = model
        ax.plot([training_flops(n_params, n_tokens)], [fit.loss(n_params, n_tokens)], "o", color="tab:red",
                markersize=8, label=f"{format_count(n_params)} params on {format_count(n_tokens)} tokens")
    if budget is not None:
        n_best, d_best = fit.optimal(budget)
        ax.axvline(budget, color="tab:green", linestyle=":", linewidth=1.5,
                   label=f"budget {scientific(budget)} FLOPs: {format_count(n_best)} params, "
                         f"{format_count(d_best)} tokens")
    ax.set_xscale("log")
    ax.set_xlim(compute[0], compute[-1])
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("predicted loss (nats per token, MassiveText)")
    ax.set_title(f"L(N, D) = {fit.E:g} + {fit.A:g}/N^{fit.alpha:g} + {fit.B:g}/D^{fit.beta:g}  ({fit.name} fit)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right")
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)
