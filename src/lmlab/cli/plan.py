"""`lmlab plan memory|compute|scaling`: will it fit, how long will it take, how big should it be.

Each sub-command parses its options, makes one call into `lmlab.planning`,
and prints the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import field_default
from lmlab.config import PRESETS, ModelConfig
from lmlab.errors import LmlabError
from lmlab.planning.accelerators import ACCELERATORS, Accelerator
from lmlab.planning.compute import PF_DAY, exact_training_flops, plan_compute, training_flops
from lmlab.planning.energy import DEFAULT_GRID, GRIDS, parse_grid
from lmlab.planning.memory import OPTIMIZER_STATES, RULES_OF_THUMB, TRAINING_DTYPES, Parallelism, Term, plan_inference_memory, plan_training_memory
from lmlab.planning.params import count_parameters
from lmlab.planning.scaling import (
    APPROACH1_TOKENS_PER_PARAM,
    FITS,
    KAPLAN,
    TOKENS_PER_PARAM,
    check_tokens,
    compute_optimal,
    get_fit,
    plot_loss_vs_compute,
    rule_budget,
)
from lmlab.planning.units import DTYPE_BYTES, format_bytes, format_count, format_number, parse_count, scientific

RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="plan memory, compute and model size: will it fit, how long, how big",
        description="Plan memory, compute and model size, from the formulas of the papers (each one cited).",
    )
    sub = parser.add_subparsers(title="what to plan", metavar="<what>")
    parser.set_defaults(func=lambda _args: _print_help(parser))
    _add_memory(sub)
    _add_compute(sub)
    _add_scaling(sub)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help=f"a preset ({', '.join(PRESETS)}), embedded model, checkpoint folder, .gguf file "
                             f"or hub id; only its config is read, and its parameters are counted from it")
    parser.add_argument("--params", metavar="N", help="a parameter count instead of a model: 124M, 7.5B, 1e9")


def _model(args: argparse.Namespace) -> tuple[float, ModelConfig | None, str]:
    """(parameter count, config or None, label) from MODEL or --params."""
    if args.model and args.params:
        raise LmlabError("give a model or --params, not both")
    if args.model:
        from lmlab.hub.resolve import resolve_config

        config = resolve_config(args.model)
        n_params = count_parameters(config)
        return n_params, config, f"{args.model} ({format_count(n_params)} parameters)"
    if args.params:
        n_params = parse_count(args.params, "--params")
        return n_params, None, f"{format_count(n_params)} parameters"
    raise LmlabError("name a model (e.g. gpt2) or give --params N")


def _fits(fits: list[Accelerator], remedy: str) -> str:
    if not fits:
        largest = max(ACCELERATORS.values(), key=lambda a: a.memory_gb)
        return f"fits on none of the listed accelerators (largest: {largest.name}, {largest.memory_gb:g} GB): {remedy}"
    if len(fits) == len(ACCELERATORS):
        return f"fits on every listed accelerator (smallest: {fits[0].name}, {fits[0].memory_gb:g} GB)"
    return "fits on: " + ", ".join(a.name for a in fits)


def _term_lines(terms: list[Term], explain: bool) -> list[str]:
    lines = []
    for term in terms:
        lines.append(f"  {term.name:<24}{format_bytes(term.bytes):>10}")
        if explain:
            lines.append(f"      = {term.formula}")
            lines.append(f"      = {term.numbers}")
    return lines


# ----------------------------------------------------------------------------- memory


def _per_param_row(name: str, bytes_per_param: float, n_params: float) -> str:
    return f"  {name:<44}{bytes_per_param:>4g} B/param{format_bytes(bytes_per_param * n_params):>10}"


def _add_memory(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "memory", help="memory to serve and to train a model, per device", formatter_class=RAW,
        description=(
            "Memory to serve a model (weights + KV cache) and to train it (weights, gradients, optimizer\n"
            "states, activations), per device, and which accelerators it fits on.\n\n"
            "Mixed-precision Adam keeps 16 bytes per parameter (ZeRO paper: 2 fp16 weights + 2 fp16\n"
            "gradients + K = 12 for the fp32 copy, momentum and variance); ZeRO stages 1-3 shard the\n"
            "optimizer states, then the gradients, then the weights over the data-parallel devices.\n"
            "Activations follow Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) bytes per layer at 16 bits.\n\n"
            "examples:\n"
            "  lmlab plan memory --params 1B                       # the course's 1B figures\n"
            "  lmlab plan memory --params 7.5B --dtype fp16 --mixed-precision --optimizer adam \\\n"
            "      --gpus 64 --zero 3                              # the ZeRO paper's example\n"
            "  lmlab plan memory gpt2 --batch 8 --activation-checkpointing --explain"
        ),
    )
    _add_model_arguments(parser)
    parser.add_argument("--dtype", metavar="|".join(DTYPE_BYTES),
                        help="format of the weights: 4, 2, 2, 1 or 0.5 bytes per parameter (default fp32, "
                             "bf16 with --mixed-precision); int8/int4 plan serving only")
    parser.add_argument("--optimizer", default=field_default(plan_training_memory, "optimizer"), metavar="|".join(OPTIMIZER_STATES),
                        help="optimizer states per parameter: Adam/AdamW 2 (momentum, variance), SGD with "
                             "momentum 1, Adafactor ~0 (factored second moment); default %(default)s")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in fp16/bf16 and keep an fp32 master copy of the weights in the optimizer "
                             "(Micikevicius et al. 2018)")
    parser.add_argument("--batch", type=int, default=field_default(plan_inference_memory, "batch"),
                        help="sequences per micro-batch on each device (default %(default)s)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's context length)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="keep only each layer's input and recompute the rest in the backward pass")
    parser.add_argument("--flash-attention", action="store_true",
                        help="attention that does not store the s×s score matrices (Dao et al. 2022)")
    parser.add_argument("--gpus", type=int, default=field_default(Parallelism, "gpus"),
                        help="data-parallel devices (default %(default)s)")
    parser.add_argument("--zero", type=int, default=field_default(Parallelism, "zero"), metavar="{0,1,2,3}",
                        help="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights (FSDP)")
    parser.add_argument("--sharding-factor", type=int, metavar="K",
                        help="shard over groups of K devices and replicate across groups (hybrid sharding); "
                             "must divide --gpus (default: all GPUs)")
    parser.add_argument("--offload", metavar="cpu", help="move optimizer states (and, with ZeRO-3, weights) "
                                                         "to CPU memory (ZeRO-Offload)")
    parser.add_argument("--explain", action="store_true", help="show each formula with the numbers put in")
    parser.set_defaults(func=_run_memory)


def _run_memory(args: argparse.Namespace) -> int:
    n_params, config, label = _model(args)
    dtype = args.dtype or ("bf16" if args.mixed_precision else "fp32")
    parallelism = Parallelism(args.gpus, args.zero, args.sharding_factor, args.offload)
    serving = plan_inference_memory(n_params, dtype, config, args.batch, args.seq_len)
    lines = [f"Model: {label}", "", f"Serving, {dtype} weights:"]
    lines += _term_lines(serving.terms, args.explain)
    lines.append(f"  {'total':<24}{format_bytes(serving.total_bytes):>10}")
    lines.append(f"  {_fits(serving.fits_on(), 'split the layers over devices, or quantize')}")
    lines += [f"  note: {note}" for note in serving.notes]
    lines.append("")
    if dtype in TRAINING_DTYPES:
        plan = plan_training_memory(n_params, dtype, args.optimizer, args.mixed_precision, parallelism, config,
                                    args.batch, args.seq_len, args.activation_checkpointing, args.flash_attention)
        precision = f"mixed precision ({dtype} + fp32 master weights)" if plan.mixed_precision else dtype
        setup = f"{args.gpus} GPU{'s' if args.gpus > 1 else ''}, ZeRO-{args.zero}"
        if args.sharding_factor:
            setup += f", sharding factor {args.sharding_factor}"
        if args.offload:
            setup += ", CPU offload"
        lines.append(f"Training per device: {precision}, {args.optimizer}, {setup}, micro-batch {args.batch}:")
        lines += _term_lines(plan.terms, args.explain)
        lines.append(f"  {'total':<24}{format_bytes(plan.total_bytes):>10}")
        if plan.host is not None:
            lines += _term_lines([plan.host], args.explain)
        lines.append(f"  {_fits(plan.fits_on(), 'shard it (--gpus N --zero 3), checkpoint activations, or offload')}")
        lines += [f"  note: {note}" for note in plan.notes]
        lines += ["", f"Training memory rules of thumb for {format_count(n_params)} parameters, side by side:"]
        for rule in RULES_OF_THUMB:
            lines.append(_per_param_row(rule.name, rule.bytes_per_param, n_params))
            if args.explain:
                lines.append(f"      {rule.source}")
        lines.append(_per_param_row("this plan, before sharding and activations", plan.bytes_per_param, n_params))
    else:
        lines.append(f"Training: not planned in {dtype}, a serving format (quantize after training; "
                     f"train in fp32, or fp16/bf16 with --mixed-precision)")
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- compute


def _add_compute(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compute", help="training FLOPs, petaflop/s-days, GPU time, cost and energy", formatter_class=RAW,
        description=(
            "Training compute C ≈ 6·N·D FLOPs (N parameters, D tokens: 2 FLOPs per parameter per token\n"
            "forward, twice that backward), in petaflop/s-days (1e15 FLOP/s for a day), and the time,\n"
            "cost and energy on a chosen accelerator at a model FLOPs utilization (MFU).\n"
            "--exact counts embeddings, attention scores, softmax and logits as in the Chinchilla\n"
            "paper's appendix F (needs a MODEL).\n\n"
            "accelerators: " + ", ".join(ACCELERATORS) + "\n\n"
            "example: lmlab plan compute --params 174.6B --tokens 300B   # GPT-3: 3.14e23 FLOPs, 3,640 PF/s-days\n\n"
            "Energy = accelerator-hours × power × PUE, CO2e = energy × the grid's carbon intensity\n"
            "(Lacoste et al. 2019; Patterson et al. 2021). GPT-3 with Patterson et al.'s assumptions\n"
            "(10,000 V100s at 24.6 TFLOP/s each, 330 W measured per GPU, PUE 1.1, 0.429 kgCO2e/kWh):\n"
            "  lmlab plan compute gpt3-175b --tokens 300B --accelerator V100-32GB --dtype fp16 --gpus 10000 \\\n"
            "      --mfu 0.197 --watts 330 --pue 1.1 --grid us       # ~1,287 MWh, ~552 tCO2e\n\n"
            "grids (kg CO2e per kWh): " + "; ".join(f"{g.name} {g.kg_per_kwh} ({g.source})" for g in GRIDS.values())
        ),
    )
    _add_model_arguments(parser)
    parser.add_argument("--tokens", metavar="D", help=f"training tokens: 300B, 1.4T (default {TOKENS_PER_PARAM:g} "
                                                      f"per parameter, the Chinchilla rule)")
    parser.add_argument("--exact", action="store_true", help="also count FLOPs term by term (needs a MODEL)")
    parser.add_argument("--seq-len", type=int, help="sequence length for --exact (default: the model's context)")
    parser.add_argument("--accelerator", default=field_default(plan_compute, "accelerator"),
                        help="which accelerator (default %(default)s)")
    parser.add_argument("--dtype", default=field_default(plan_compute, "dtype"), metavar="fp32|fp16|bf16|int8",
                        help="whose peak rate to use (default %(default)s, mixed-precision training)")
    parser.add_argument("--gpus", type=int, default=field_default(plan_compute, "gpus"),
                        help="accelerators working together (default %(default)s)")
    parser.add_argument("--mfu", type=float, default=field_default(plan_compute, "mfu"),
                        help="model FLOPs utilization, achieved / peak (default %(default)s; PaLM reached 0.46)")
    parser.add_argument("--usd-per-gpu-hour", type=float, default=field_default(plan_compute, "usd_per_gpu_hour"),
                        help="rental price assumed per accelerator-hour (default %(default)s USD)")
    parser.add_argument("--pue", type=float, default=field_default(plan_compute, "pue"),
                        help="power usage effectiveness of the data centre, facility / IT power (default %(default)s)")
    parser.add_argument("--watts", type=float,
                        help="average power per accelerator, if measured (default: the datasheet's board power)")
    parser.add_argument("--grid", default=DEFAULT_GRID, metavar="NAME|KG_PER_KWH",
                        help=f"carbon intensity of the electricity: {', '.join(GRIDS)} or a number in kg CO2e per "
                             f"kWh (default {DEFAULT_GRID})")
    parser.add_argument("--explain", action="store_true", help="show each formula with the numbers put in")
    parser.set_defaults(func=_run_compute)


def _run_compute(args: argparse.Namespace) -> int:
    n_params, config, label = _model(args)
    if args.tokens:
        n_tokens = parse_count(args.tokens, "--tokens")
        tokens_text = f"{format_count(n_tokens)} tokens"
    else:
        n_tokens = TOKENS_PER_PARAM * n_params
        tokens_text = f"{format_count(n_tokens)} tokens ({TOKENS_PER_PARAM:g} per parameter)"
    flops = training_flops(n_params, n_tokens)
    lines = [f"Training {label} on {tokens_text}:",
             f"  6ND                 {scientific(flops)} FLOPs = {format_number(flops / PF_DAY)} PF/s-days"]
    if args.explain:
        lines.append(f"      = 6 × {n_params:,.0f} × {n_tokens:,.0f}; PF/s-day = 1e15 FLOP/s × 86,400 s")
    if args.exact:
        if config is None:
            raise LmlabError("--exact counts FLOPs layer by layer: name a model, not just --params")
        exact = exact_training_flops(config, n_tokens, args.seq_len)
        seq = args.seq_len or config.max_seq_len
        lines.append(f"  exact (appendix F)  {scientific(exact)} FLOPs = {format_number(exact / PF_DAY)} PF/s-days "
                     f"({exact / flops:.3f} × 6ND, sequences of {seq} tokens)")
        flops = exact
    grid = parse_grid(args.grid)
    plan = plan_compute(flops, args.accelerator, args.dtype, args.gpus, args.mfu, args.usd_per_gpu_hour, args.pue,
                        args.watts)
    footprint = plan.footprint(grid)
    acc, peak = plan.accelerator, plan.accelerator.peak_flops(plan.dtype)
    days = plan.days
    wall = f"{format_number(days)} days" if days >= 1 else f"{format_number(days * 24)} hours"
    lines += [
        "",
        f"On {plan.gpus} × {acc.name} at {plan.mfu:.0%} MFU of the {plan.dtype} peak "
        f"({peak / 1e12:g} TFLOP/s): {plan.achieved_flops_per_gpu / 1e12:.3g} TFLOP/s per accelerator",
        f"  accelerator-hours   {format_number(plan.gpu_hours)}",
        f"  wall-clock          {wall}",
        f"  cost                ${format_number(plan.cost_usd)} at ${plan.usd_per_gpu_hour:g} per accelerator-hour "
        f"(assumed)",
        f"  energy              {_energy(footprint.energy_kwh)} ({plan.power_watts:g} W "
        f"{'board power' if args.watts is None else 'per accelerator'} × PUE {plan.pue:g}"
        f"{'; CPUs, network and storage not counted' if args.watts is None else ''})",
        f"  carbon              {_mass(footprint.co2e_kg)} CO2e at {grid.kg_per_kwh:g} kg per kWh ({grid.name})",
    ]
    if args.explain:
        lines += [
            f"      hours = C / (peak × MFU) / 3600 = {flops:.4g} / ({peak:.4g} × {plan.mfu:g}) / 3600",
            f"      days = hours / GPUs / 24; cost = hours × price; kWh = hours × W / 1000 × PUE; "
            f"CO2e = kWh × kg/kWh",
            f"      grid: {grid.source}",
            f"      {acc.name}: {acc.source}",
        ]
    print("\n".join(lines))
    return 0


def _energy(kwh: float) -> str:
    return f"{format_number(kwh / 1000)} MWh" if kwh >= 10_000 else f"{format_number(kwh)} kWh"


def _mass(kg: float) -> str:
    return f"{format_number(kg / 1000)} t" if kg >= 10_000 else f"{format_number(kg)} kg"


# ----------------------------------------------------------------------------- scaling


def _add_scaling(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scaling", help="scaling laws: predicted loss, compute-optimal size and tokens", formatter_class=RAW,
        description=(
            "Scaling laws. Kaplan et al. 2020: L(N), L(D), L(C) power laws. Chinchilla (Hoffmann et al.\n"
            "2022): L(N, D) = E + A/N^α + B/D^β, with the paper's coefficients (hoffmann) and Epoch AI's\n"
            "refit (epoch), and the compute-optimal N and D for a budget C = 6ND. Also checks a model\n"
            "against the rule of ~20 training tokens per parameter.\n\n"
            "examples:\n"
            "  lmlab plan scaling --params 175B --tokens 300B     # GPT-3: ~3.5T tokens would be optimal\n"
            "  lmlab plan scaling --compute 5.76e23 --plot loss.png"
        ),
    )
    _add_model_arguments(parser)
    parser.add_argument("--tokens", metavar="D", help="tokens the model is (or was) trained on: 300B, 1.4T")
    parser.add_argument("--compute", metavar="C", help="a compute budget in FLOPs, e.g. 1e21")
    parser.add_argument("--tokens-per-param", type=float, default=TOKENS_PER_PARAM,
                        help=f"the rule's tokens per parameter (default {TOKENS_PER_PARAM:g})")
    parser.add_argument("--fit", default="hoffmann", metavar="|".join(FITS),
                        help="which Chinchilla coefficients to plot (default hoffmann)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw loss vs compute with the optimal frontier")
    parser.set_defaults(func=_run_scaling)


def _losses(n_params: float, n_tokens: float) -> str:
    return " / ".join(f"{fit.loss(n_params, n_tokens):.3f}" for fit in FITS.values())


def _run_scaling(args: argparse.Namespace) -> int:
    fit = get_fit(args.fit)
    has_model = bool(args.model or args.params)
    if not has_model and not args.compute:
        raise LmlabError("give a compute budget (--compute 1e21), or a model or --params to check")
    lines: list[str] = []
    model_point, budget = None, None
    fit_names = " / ".join(FITS)
    if args.compute:
        budget = flops = parse_count(args.compute, "--compute")
        lines += [f"Compute budget {scientific(flops)} FLOPs ({format_number(flops / PF_DAY)} PF/s-days), "
                  f"spent compute-optimally:",
                  f"  {'method':<34}{'params':>9}{'tokens':>9}{'tokens/param':>14}  loss ({fit_names} fit)"]
        for alloc in compute_optimal(flops, args.tokens_per_param):
            lines.append(f"  {alloc.method:<34}{format_count(alloc.n_params):>9}{format_count(alloc.n_tokens):>9}"
                         f"{alloc.n_tokens / alloc.n_params:>14.3g}  {_losses(alloc.n_params, alloc.n_tokens)}")
        lines.append(f"  Kaplan L(C_min) = {KAPLAN.loss_compute(flops):.3f} nats (WebText2, another tokenizer: "
                     f"not comparable with the Chinchilla losses)")
    if has_model:
        n_params, _, label = _model(args)
        if lines:
            lines.append("")
        rule_flops, rule_tokens = rule_budget(n_params, args.tokens_per_param)
        table3_flops, table3_tokens = rule_budget(n_params, APPROACH1_TOKENS_PER_PARAM)
        lines += [
            f"Model: {label}",
            f"  compute-optimal at {args.tokens_per_param:g} tokens/param: {format_count(rule_tokens)} tokens, "
            f"{scientific(rule_flops)} FLOPs",
            f"  Chinchilla approach 1 (Table 3, {APPROACH1_TOKENS_PER_PARAM:g} tokens/param): "
            f"{format_count(table3_tokens)} tokens, {scientific(table3_flops)} FLOPs",
        ]
        for each in FITS.values():
            best_flops, best_tokens = each.budget_for(n_params)
            lines.append(f"  Chinchilla fit ({each.name}): optimal for {format_count(n_params)} params at "
                         f"{format_count(best_tokens)} tokens, {scientific(best_flops)} FLOPs")
        lines.append(f"  Kaplan L(N) = {KAPLAN.loss_params(n_params):.3f} nats (WebText2; Kaplan's N excludes "
                     f"embeddings)")
        if args.tokens:
            n_tokens = parse_count(args.tokens, "--tokens")
            check = check_tokens(n_params, n_tokens, args.tokens_per_param)
            model_point = (n_params, n_tokens)
            lines += [
                f"  trained on {format_count(n_tokens)} tokens = {check.actual_tokens_per_param:.3g} tokens/param "
                f"vs ~{format_count(check.optimal_tokens)} optimal: {check.verdict}",
                f"  predicted loss L(N, D) = {_losses(n_params, n_tokens)} ({fit_names} fit); "
                f"Kaplan L(N, D) = {KAPLAN.loss(n_params, n_tokens):.3f}",
            ]
    if args.plot:
        plot_loss_vs_compute(args.plot, fit, args.tokens_per_param, model_point, budget)
        lines += ["", f"wrote {args.plot}"]
    print("\n".join(lines))
    return 0
