"""Fit a scaling law to a sweep's runs, check it on held-out runs, and predict the compute-optimal size.

Approach 3 of Hoffmann et al. 2022 ("Training Compute-Optimal Large Language
Models", section 3.3 and appendix D.2): model the final loss as
L(N, D) = E + A/N^α + B/D^β and minimise, over (a, b, e, α, β) with
A = exp(a), B = exp(b), E = exp(e),

    Σ_runs Huber_δ( LSE(a − α·log N, b − β·log D, e) − log L ),   δ = 1e-3,

with L-BFGS from every point of the grid α, β ∈ {0, 0.5, ..., 2},
e ∈ {−1, −0.5, ..., 1}, a, b ∈ {0, 5, ..., 25} (4,500 starts), keeping the
best minimum. Residuals in log L weigh every run by its relative error; the
Huber loss is quadratic only below δ (a 0.1% miss) and linear above, so one
bad run cannot drag the fit. The compute-optimal N, D of a budget then follow
in closed form (eq. 4, :meth:`lmlab.planning.scaling.ChinchillaFit.optimal`).

Approach 2 on the same runs (section 3.2): a parabola in log N through each
budget's losses; its vertex is that budget's loss-optimal size, and a line
through log N_opt against log C gives the exponent a of N_opt ∝ C^a.

Held-out runs (the largest budget, or every k-th run) are left out of the
fit and predicted by it: the honest test of a law fitted on a handful of points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.io import save_figure
from lmlab.planning.scaling import ChinchillaFit
from lmlab.planning.units import format_count, require_positive, scientific
from lmlab.scaling.sweep import RunRecord, read_results

DELTA = 1e-3
HOFFMANN_GRID: dict[str, tuple[float, ...]] = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
MIN_RUNS = 6  # five coefficients need more than five runs to be tested by their own residuals


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                    delta: float = DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Σ_runs Huber_δ(LSE(a − α log N, b − β log D, e) − log L) and its gradient, for θ = (a, b, e, α, β).

    `theta` is one point (5,) or a batch of points (P, 5); the value has shape () or (P,).
    """
    theta = np.asarray(theta, dtype=np.float64)
    a, b, e, alpha, beta = (theta[..., k, None] for k in range(5))
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e))
    top = terms.max(axis=0)
    exp = np.exp(terms - top)
    total = exp.sum(axis=0)
    residual = top + np.log(total) - log_loss
    weights = exp / total  # d LSE / d term
    value = np.where(np.abs(residual) <= delta, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum(-1)
    slope = np.clip(residual, -delta, delta)  # d Huber / d residual
    grad = np.stack([
        (slope * weights[0]).sum(-1),
        (slope * weights[1]).sum(-1),
        (slope * weights[2]).sum(-1),
        -(slope * weights[0] * log_n).sum(-1),
        -(slope * weights[1] * log_d).sum(-1),
    ], axis=-1)
    return value, grad


def lbfgs(objective: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], x: np.ndarray,
          iterations: int = 1000, memory: int = 10, tolerance: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Minimise P independent problems at once with L-BFGS (Nocedal & Wright 2006, algorithms 7.4 and 7.5).

    `objective` maps points (P, K) to values (P,) and gradients (P, K). Each
    problem keeps its own last `memory` steps s and gradient changes y; the
    two-loop recursion turns the gradient into a quasi-Newton direction,
    scaled by s·y / y·y of the newest pair, and a backtracking line search
    (Armijo condition, c1 = 1e-4, halving the step) picks how far to go. A
    pair with s·y ≤ 0 (no positive curvature) gets weight 0, which leaves it
    out. A problem stops when a step lowers its value by less than
    `tolerance` (relative), or when no step along its direction lowers it.
    Returns the final points and values.
    """
    x = np.array(x, dtype=np.float64)
    value, grad = objective(x)
    out_x, out_value = x.copy(), value.copy()
    ids = np.flatnonzero(np.isfinite(value))
    x, value, grad = x[ids], value[ids], grad[ids]
    s_hist, y_hist = np.zeros((memory, *x.shape)), np.zeros((memory, *x.shape))
    rho = np.zeros((memory, len(ids)))
    for it in range(iterations):
        if not len(ids):
            break
        newest = (it - 1) % memory
        order = [(newest - j) % memory for j in range(memory)]  # newest first
        q = grad.copy()
        alphas = np.zeros((memory, len(ids)))
        for j in order:
            alphas[j] = rho[j] * (s_hist[j] * q).sum(-1)
            q -= alphas[j, :, None] * y_hist[j]
        yy = (y_hist[newest] ** 2).sum(-1)
        curved = (rho[newest] > 0) & (yy > 0)
        gamma = np.ones(len(ids))
        gamma[curved] = 1 / (rho[newest, curved] * yy[curved])  # s·y / y·y
        r = gamma[:, None] * q
        for j in reversed(order):
            beta = rho[j] * (y_hist[j] * r).sum(-1)
            r += s_hist[j] * (alphas[j] - beta)[:, None]
        direction = -r
        slope = (grad * direction).sum(-1)
        uphill = ~(slope < 0)
        direction[uphill] = -grad[uphill]
        slope[uphill] = -(grad[uphill] ** 2).sum(-1)
        step = np.ones(len(ids))
        new_x, new_value, new_grad = x.copy(), value.copy(), grad.copy()
        searching = np.arange(len(ids))
        for _ in range(40):
            trial = x[searching] + step[searching, None] * direction[searching]
            trial_value, trial_grad = objective(trial)
            ok = trial_value <= value[searching] + 1e-4 * step[searching] * slope[searching]
            done = searching[ok]
            new_x[done], new_value[done], new_grad[done] = trial[ok], trial_value[ok], trial_grad[ok]
            searching = searching[~ok]
            if not len(searching):
                break
            step[searching] *= 0.5
        slot = it % memory
        s_hist[slot], y_hist[slot] = new_x - x, new_grad - grad
        sy = (s_hist[slot] * y_hist[slot]).sum(-1)
        rho[slot] = np.where(sy > 0, 1 / np.where(sy > 0, sy, 1), 0.0)
        gain = value - new_value
        x, value, grad = new_x, new_value, new_grad
        going = gain > tolerance * np.abs(value)
        going[searching] = False
        out_x[ids], out_value[ids] = x, value
        ids, x, value, grad = ids[going], x[going], value[going], grad[going]
        s_hist, y_hist, rho = s_hist[:, going], y_hist[:, going], rho[:, going]
    return out_x, out_value


@dataclass(frozen=True)
class LawFit:
    """The fitted law, the objective at its minimum, and what it was fitted on."""

    law: ChinchillaFit
    objective: float
    n_runs: int
    n_starts: int


def fit_law(n_params: np.ndarray, n_tokens: np.ndarray, losses: np.ndarray, delta: float = DELTA,
            grid: dict[str, tuple[float, ...]] | None = None, name: str = "fitted") -> LawFit:
    """Fit E, A, B, α, β to runs (N, D, L) by Huber-on-log-L with L-BFGS from a grid of starts (see module doc)."""
    n_params, n_tokens, losses = (np.asarray(x, dtype=np.float64) for x in (n_params, n_tokens, losses))
    if len(losses) < MIN_RUNS:
        raise LmlabError(f"fitting E, A, B, alpha and beta needs at least {MIN_RUNS} runs, not {len(losses)}")
    if (n_params <= 0).any() or (n_tokens <= 0).any() or (losses <= 0).any():
        raise LmlabError("every run needs a positive parameter count, token count and loss")
    grid = grid or HOFFMANN_GRID
    log_n, log_d, log_loss = np.log(n_params), np.log(n_tokens), np.log(losses)
    starts = np.array(list(itertools.product(*(grid[k] for k in ("a", "b", "e", "alpha", "beta")))))
    with np.errstate(over="ignore", invalid="ignore"):  # wild trial steps overflow; the line search rejects them
        points, values = lbfgs(lambda theta: huber_objective(theta, log_n, log_d, log_loss, delta), starts)
    best = int(np.nanargmin(values))
    a, b, e, alpha, beta = points[best]
    law = ChinchillaFit(name, math.exp(e), math.exp(a), math.exp(b), float(alpha), float(beta),
                        f"Huber (delta {delta:g}) on log L over {len(losses)} runs, L-BFGS from {len(starts)} starts "
                        "(Hoffmann et al. 2022, appendix D.2)")
    return LawFit(law, float(values[best]), len(losses), len(starts))


@dataclass(frozen=True)
class IsoFlopMinimum:
    """Approach 2: the vertex of the parabola in log N through one budget's losses."""

    budget: float
    n_opt: float
    loss: float
    inside: bool  # the vertex lies between the smallest and largest size trained

    @property
    def d_opt(self) -> float:
        return self.budget / (6 * self.n_opt)


def isoflop_minima(records: list[RunRecord]) -> list[IsoFlopMinimum]:
    """The loss-optimal size of every budget with three sizes or more whose profile curves upwards."""
    minima = []
    for budget in sorted({r.budget for r in records}):
        runs = [r for r in records if r.budget == budget]
        if len({r.n_params for r in runs}) < 3:
            continue
        x = np.log([r.n_params for r in runs])
        c2, c1, c0 = np.polyfit(x, [r.val_loss for r in runs], 2)
        if c2 <= 0:
            continue
        vertex = -c1 / (2 * c2)
        minima.append(IsoFlopMinimum(budget, math.exp(vertex), c0 - c1**2 / (4 * c2),
                                     bool(x.min() <= vertex <= x.max())))
    return minima


def optimal_size_exponent(minima: list[IsoFlopMinimum]) -> float | None:
    """a in N_opt ∝ C^a from the minima inside their profiles (a least-squares line in log-log)."""
    inside = [m for m in minima if m.inside]
    if len(inside) < 2:
        return None
    slope, _ = np.polyfit(np.log([m.budget for m in inside]), np.log([m.n_opt for m in inside]), 1)
    return float(slope)


def split_holdout(records: list[RunRecord], holdout: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """(runs to fit, runs held out). `holdout`: 'largest' (the largest budget), 'every:K' (every K-th run
    in budget and size order), or 'none'."""
    ordered = sorted(records, key=lambda r: (r.budget, r.n_params))
    if holdout == "none":
        return ordered, []
    if holdout == "largest":
        top = max(r.budget for r in ordered)
        return [r for r in ordered if r.budget != top], [r for r in ordered if r.budget == top]
    if holdout.startswith("every:"):
        try:
            k = int(holdout.removeprefix("every:"))
        except ValueError:
            k = 0
        if k < 2:
            raise LmlabError(f"--holdout every:K needs a whole K of at least 2, not {holdout.removeprefix('every:')!r}")
        return ([r for i, r in enumerate(ordered) if i % k != k - 1],
                [r for i, r in enumerate(ordered) if i % k == k - 1])
    raise LmlabError(f"--holdout must be 'largest', 'every:K' or 'none', not {holdout!r}")


@dataclass(frozen=True)
class Prediction:
    """A run's measured final loss next to what the fitted law predicts for its N and D."""

    record: RunRecord
    predicted: float
    held_out: bool

    @property
    def error(self) -> float:
        """Relative error of the prediction: predicted / measured − 1."""
        return self.predicted / self.record.val_loss - 1


@dataclass(frozen=True)
class FitReport:
    """Everything `lmlab scaling fit` reports."""

    fit: LawFit
    holdout: str
    predictions: list[Prediction]
    minima: list[IsoFlopMinimum]
    size_exponent: float | None
    predict_budget: float
    corpus_tokens: int | None

    @property
    def held_out(self) -> list[Prediction]:
        return [p for p in self.predictions if p.held_out]

    @property
    def max_held_out_error(self) -> float | None:
        return max((abs(p.error) for p in self.held_out), default=None)

    @property
    def optimum(self) -> tuple[float, float, float]:
        """(N_opt, D_opt, predicted loss) for `predict_budget`."""
        n_opt, d_opt = self.fit.law.optimal(self.predict_budget)
        return n_opt, d_opt, self.fit.law.loss(n_opt, d_opt)


def _corpus_tokens(folder: Path) -> int | None:
    """Training tokens of the sweep's prepared corpus, if it is there."""
    from lmlab.data.packing import read_manifest

    try:
        return int(read_manifest(folder / "data")["splits"]["train"]["tokens"])
    except (LmlabError, KeyError, TypeError, ValueError):
        return None


def fit_sweep(folder: str | Path, holdout: str = "largest", predict_budget: float = 1e15,
              delta: float = DELTA) -> FitReport:
    """Fit L(N, D) to a sweep folder's runs minus the held-out ones; predict every run and the optimum."""
    require_positive("prediction budget", predict_budget)
    require_positive("Huber delta", delta)
    records = read_results(folder)
    train, held = split_holdout(records, holdout)
    fit = fit_law(np.array([r.n_params for r in train]), np.array([r.tokens for r in train]),
                  np.array([r.val_loss for r in train]), delta, name=Path(folder).name)
    held_names = {r.name for r in held}
    predictions = [Prediction(r, fit.law.loss(r.n_params, r.tokens), r.name in held_names)
                   for r in sorted(records, key=lambda r: (r.budget, r.n_params))]
    minima = isoflop_minima(records)
    return FitReport(fit, holdout, predictions, minima, optimal_size_exponent(minima), predict_budget,
                     _corpus_tokens(Path(folder)))


def format_report(report: FitReport) -> str:
    """The report as text: the law, each run measured vs predicted, the IsoFLOP minima, the prediction."""
    law = report.fit.law
    lines = [
        f"L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g}",
        f"  fitted on {report.fit.n_runs} runs ({law.source}); Huber objective {report.fit.objective:.3g}",
        f"  E = {law.E:.4g}, A = {law.A:.4g}, B = {law.B:.4g}, alpha = {law.alpha:.4g}, beta = {law.beta:.4g}",
        "",
        f"{'run':<16} {'N':>7} {'D':>7} {'measured':>9} {'predicted':>9} {'error':>7}",
    ]
    for p in report.predictions:
        r = p.record
        mark = "  held out" if p.held_out else ""
        lines.append(f"{r.name:<16} {format_count(r.n_params):>7} {format_count(r.tokens):>7} {r.val_loss:>9.4f} "
                     f"{p.predicted:>9.4f} {p.error:>+7.2%}{mark}")
    held = report.held_out
    if held:
        errors = [abs(p.error) for p in held]
        lines.append(f"held-out runs ({report.holdout}): {len(held)}, mean |error| {np.mean(errors):.2%}, "
                     f"max |error| {max(errors):.2%}")
    else:
        lines.append("no held-out runs (--holdout none): the errors above are in-sample")
    lines.append("")
    if report.minima:
        lines.append("IsoFLOP minima (approach 2, a parabola in log N per budget):")
        for m in report.minima:
            where = "" if m.inside else " (outside the sizes trained: extrapolated)"
            lines.append(f"  C = {scientific(m.budget)}: N_opt {format_count(m.n_opt)}, D_opt {format_count(m.d_opt)}, "
                         f"loss {m.loss:.4f}{where}")
        if report.size_exponent is not None:
            lines.append(f"  N_opt ∝ C^{report.size_exponent:.3f} (Chinchilla: 0.49 by approach 2, 0.46 by approach 3)")
    n_opt, d_opt, loss = report.optimum
    a = law.beta / (law.alpha + law.beta)
    lines += ["", f"compute-optimal for C = {scientific(report.predict_budget)} FLOPs (law: N_opt ∝ C^{a:.3f}): "
                  f"N = {format_count(n_opt)} parameters, D = {format_count(d_opt)} tokens "
                  f"({d_opt / n_opt:.1f} tokens per parameter), predicted loss {loss:.4f}"]
    if report.corpus_tokens:
        epochs = d_opt / report.corpus_tokens
        if epochs > 1:
            lines.append(f"  that is {epochs:.1f} passes over this corpus's {format_count(report.corpus_tokens)} "
                         "training tokens: repeated data is worth less than new data, so the law is optimistic there")
    return "\n".join(lines)


def plot_fit(report: FitReport, path: str | Path) -> Path:
    """Left: loss vs N per budget, measured runs and the fitted law along each IsoFLOP line, its optimum starred.
    Right: loss-optimal N vs compute, approach 2's minima and the law's frontier up to the prediction budget."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    law = report.fit.law
    figure = Figure(figsize=(13, 5.2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    budgets = sorted({p.record.budget for p in report.predictions})
    colors = colormaps["viridis"](np.linspace(0, 0.85, len(budgets)))
    n_all = [p.record.n_params for p in report.predictions]
    sizes = np.logspace(np.log10(min(n_all) / 2), np.log10(max(n_all) * 2), 200)
    for budget, color in zip(budgets, colors):
        runs = [p for p in report.predictions if p.record.budget == budget]
        left.plot(sizes, law.loss(sizes, budget / (6 * sizes)), color=color, linewidth=1.5,
                  label=f"C = {scientific(budget)}")
        for p in runs:
            left.plot(p.record.n_params, p.record.val_loss, "o", color=color, markersize=7,
                      markerfacecolor="white" if p.held_out else color)
        n_opt, d_opt = law.optimal(budget)
        left.plot(n_opt, law.loss(n_opt, d_opt), "*", color=color, markersize=14, markeredgecolor="black")
    losses = [p.record.val_loss for p in report.predictions]
    left.set_ylim(min(losses) - 0.1, max(losses) + 0.2)
    left.set_xscale("log")
    left.set_xlabel("parameters N")
    left.set_ylabel("final validation loss (nats per token)")
    left.set_title("IsoFLOP profiles: runs (hollow = held out), fitted law, its optimum (star)", fontsize=10)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    compute = np.logspace(np.log10(min(budgets) / 2), np.log10(max(report.predict_budget, max(budgets)) * 2), 200)
    right.plot(compute, law.optimal(compute)[0], color="tab:blue", linewidth=2,
               label=f"fitted law: N_opt ∝ C^{law.beta / (law.alpha + law.beta):.2f}")
    right.plot(compute, np.sqrt(compute / 120), color="tab:orange", linestyle="--", label="20 tokens per parameter")
    for inside, label in ((True, "IsoFLOP minima (approach 2)"), (False, "IsoFLOP minima beyond the sizes trained")):
        chosen = [m for m in report.minima if m.inside == inside]
        if chosen:
            right.plot([m.budget for m in chosen], [m.n_opt for m in chosen], "s", color="tab:red", label=label,
                       markerfacecolor="tab:red" if inside else "white")
    n_opt, d_opt, loss = report.optimum
    right.plot(report.predict_budget, n_opt, "*", color="tab:green", markersize=16, markeredgecolor="black",
               label=f"C = {scientific(report.predict_budget)}: N = {format_count(n_opt)}, "
                     f"D = {format_count(d_opt)}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("training compute C = 6ND (FLOPs)")
    right.set_ylabel("compute-optimal parameters N_opt")
    right.set_title(f"L = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3g} + {law.B:.3g}/D^{law.beta:.3g}", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, dpi=110)
