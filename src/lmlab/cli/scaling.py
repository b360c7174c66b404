"""`lmlab scaling sweep|fit`: measure your own scaling law on a corpus, and fit it.

Each sub-command parses its options, makes one call into `lmlab.scaling`, and
prints the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import field_default
from lmlab.planning.units import scientific
from lmlab.scaling.fit import fit_sweep, format_report, plot_fit
from lmlab.scaling.sweep import DEFAULT_BUDGETS, DEFAULT_SHAPES, SweepSettings, parse_budgets, parse_shapes, run_sweep

RAW = argparse.RawDescriptionHelpFormatter

SWEEP_DESCRIPTION = f"""\
Train a grid of tiny decoders at a few fixed compute budgets (IsoFLOP profiles,
Hoffmann et al. 2022, "Chinchilla", approach 2) and record each run's final
validation loss.

For a budget of C FLOPs, a model of N parameters trains on D = C / (6N) tokens
(6 FLOPs per parameter per token: 2 forward, 4 backward). The sizes of a budget
spread from N*/spread to N*·spread around N* = sqrt(C / 6r), the size trained on
r tokens per parameter, each taken from a ladder of GPT-2 style decoders
(d_model x n_layer, 2 heads). Every other setting is the same for all runs, and
each run's cosine learning-rate schedule ends at its own last step.

The corpus is tokenized once into OUT/data; each run trains with `lmlab
pretrain`'s trainer into OUT/runs/<name> (its log in OUT/logs/). Finished runs
are written to OUT/results.jsonl. Run the same command again to resume: finished
runs are skipped, an interrupted one continues from its checkpoint; adding
budgets or sizes extends the sweep.

The defaults (18 runs, about 2e12 FLOPs in all on character-level
tinyshakespeare) take about ten minutes on a 2-core laptop CPU.

examples:
  lmlab scaling sweep --data input.txt --out sweeps/shakespeare
  lmlab scaling sweep --data input.txt --budgets 1e11,3e11,1e12 --sizes 32x2,48x2,64x3,96x4 --out sweeps/s2
  lmlab scaling fit sweeps/shakespeare --plot fit.png
"""

FIT_DESCRIPTION = """\
Fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep's final losses, as Hoffmann et
al. 2022 (section 3.3, appendix D.2): minimise the Huber loss (delta 1e-3) of
log L with L-BFGS from a grid of 4,500 starting points, and keep the best.

Held-out runs are left out of the fit and predicted by it (--holdout). The
report lists every run's measured and predicted loss, the loss-optimal size of
each budget from a parabola through its profile (approach 2), and the
compute-optimal N and D the law predicts for a larger budget:
N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G,
G = (alpha A / (beta B))^(1/(alpha+beta)) (eq. 4).

examples:
  lmlab scaling fit sweeps/shakespeare --plot fit.png
  lmlab scaling fit sweeps/shakespeare --holdout every:3 --predict-budget 1e16
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scaling", help="measure your own scaling law: IsoFLOP sweep and Chinchilla fit",
                                   description="Measure a scaling law on your corpus: `sweep` trains the runs, "
                                               "`fit` fits L(N, D) to them.")
    sub = parser.add_subparsers(title="steps", metavar="<step>")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    _add_sweep(sub)
    _add_fit(sub)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    defaults = SweepSettings(data=Path("."), out=Path("."))
    p = sub.add_parser("sweep", help="train tiny decoders at fixed compute budgets (IsoFLOP profiles)",
                       description=SWEEP_DESCRIPTION, formatter_class=RAW)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="the corpus: a text file or folder (.txt/.jsonl/.csv/.parquet), or a prepared dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (created, or resumed if it holds a sweep)")
    p.add_argument("--budgets", metavar="C,C,...",
                   help="training compute budgets in FLOPs, C = 6ND (default: "
                        + ",".join(scientific(b) for b in DEFAULT_BUDGETS) + ")")
    p.add_argument("--sizes", metavar="DxL,...",
                   help="the ladder of model sizes, d_model x n_layer, e.g. 32x2,64x3 (d_model even: 2 heads; "
                        "default: " + ",".join(s.label for s in DEFAULT_SHAPES) + ")")
    p.add_argument("--per-budget", type=int, default=defaults.per_budget,
                   help=f"model sizes per budget (default: {defaults.per_budget})")
    p.add_argument("--spread", type=float, default=defaults.spread,
                   help=f"sizes of a budget range from N*/spread to N*·spread (default: {defaults.spread:g})")
    p.add_argument("--tokens-per-param", type=float, default=defaults.tokens_per_param,
                   help="r: each budget's sizes are centred on N* = sqrt(C / 6r), the size trained on r tokens per "
                        f"parameter (Chinchilla: ~20; tiny character-level models: more; default: "
                        f"{defaults.tokens_per_param:g})")
    p.add_argument("--tokenizer", default=defaults.tokenizer,
                   help="'char' (one token per character, as nanoGPT's shakespeare_char) or a tokenizer file/folder "
                        f"(default: {defaults.tokenizer})")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len,
                   help=f"tokens per training sequence, the models' context (default: {defaults.seq_len})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"sequences per optimizer step (default: {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.lr,
                   help=f"peak learning rate of AdamW, the same for every run (default: {defaults.lr:g})")
    p.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction,
                   help="share of each run's steps spent warming the learning rate up linearly "
                        f"(default: {defaults.warmup_fraction:g})")
    p.add_argument("--eval-batches", type=int, default=defaults.eval_batches,
                   help="batches of the validation split each run's final loss is measured on (the same sample "
                        f"for every run; default: {defaults.eval_batches})")
    p.add_argument("--min-steps", type=int, default=defaults.min_steps,
                   help=f"leave out runs shorter than this many steps (default: {defaults.min_steps})")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"initialization and data-order seed "
                                                                    f"(default: {defaults.seed})")
    p.add_argument("--jobs", type=int, default=defaults.jobs,
                   help="runs trained at once, each in its own process with CPU cores / jobs threads "
                        f"(default: {defaults.jobs})")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    settings = SweepSettings(
        data=Path(args.data), out=Path(args.out),
        budgets=parse_budgets(args.budgets) if args.budgets else DEFAULT_BUDGETS,
        shapes=parse_shapes(args.sizes) if args.sizes else DEFAULT_SHAPES, per_budget=args.per_budget,
        spread=args.spread, tokens_per_param=args.tokens_per_param, tokenizer=args.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
        warmup_fraction=args.warmup_fraction, eval_batches=args.eval_batches, min_steps=args.min_steps,
        seed=args.seed, jobs=args.jobs)
    result = run_sweep(settings)
    for reason in result.skipped:
        print(f"left out {reason}")
    loads = " -> ".join(f"{load[0]:.1f}" for load in result.load_average)
    print(f"{len(result.trained)} run(s) trained, {len(result.records)} finished in {result.out} "
          f"({result.seconds / 60:.1f} min, {result.jobs} job(s) x {result.threads_per_job} thread(s); "
          f"1-minute load average {loads})")
    print(f"next: lmlab scaling fit {result.out} --plot {result.out / 'fit.png'}")
    return 0


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep (Chinchilla approach 3)",
                       description=FIT_DESCRIPTION, formatter_class=RAW)
    p.add_argument("sweep", metavar="DIR", help="a folder made by `lmlab scaling sweep`")
    p.add_argument("--holdout", default=field_default(fit_sweep, "holdout"),
                   help="runs left out of the fit and predicted: 'largest' (the largest budget), 'every:K' "
                        "(every K-th run), or 'none' (default: %(default)s)")
    p.add_argument("--predict-budget", type=float, default=field_default(fit_sweep, "predict_budget"), metavar="C",
                   help="a larger compute budget in FLOPs to predict the compute-optimal N and D for "
                        "(default: %(default)g)")
    p.add_argument("--delta", type=float, default=field_default(fit_sweep, "delta"),
                   help="Huber loss threshold on log-loss residuals (default: %(default)g, as Hoffmann et al.)")
    p.add_argument("--plot", metavar="PNG", help="draw the IsoFLOP profiles and the optimal-size frontier here")
    p.set_defaults(func=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    report = fit_sweep(args.sweep, args.holdout, args.predict_budget, args.delta)
    print(format_report(report))
    if args.plot:
        print(f"plot: {plot_fit(report, args.plot)}")
    return 0
