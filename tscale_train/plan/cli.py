"""`tscale plan` on the command line: the table, the argument parser, `run_plan`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .estimate import DEFAULT_GPU_MEMORY_GIB, MemoryPlan, _show, plan_ses, plan_training

PHASE_LABELS = {
    "encode": "encode prompts",
    "search": "search",
    "dpo": "DPO step",
    "eval": "eval",
}


def format_plan_table(plan: MemoryPlan) -> str:
    """The plan as a table: phase | GPU GiB | what dominates, CPU per process, fits, suggestions."""
    what = "training run" if plan.kind == "train" else "tscale ses"
    lines = [
        f"memory plan of a {what}: {plan.model} ({plan.model_source}), {plan.height}x{plan.width}, {plan.dtype}, "
        f"{plan.num_processes} process{'es' if plan.num_processes > 1 else ''}, per process",
        "",
        f"{'phase':<16} {'GPU GiB':>8}  what dominates (GiB)",
        f"{'-' * 16} {'-' * 8}  {'-' * 50}",
    ]
    for phase, value in plan.phases.items():
        lines.append(f"{PHASE_LABELS.get(phase, phase):<16} {value:>8.1f}  {plan.dominant(phase)}")
    lines.append(f"{'peak':<16} {plan.peak_gib:>8.1f}  ({PHASE_LABELS.get(plan.peak_phase, plan.peak_phase)})")
    lines.append("")
    cpu = sorted(plan.cpu_breakdown.items(), key=lambda item: -item[1])[:3]
    lines.append(f"{'CPU per process':<16} {plan.cpu_gib:>8.1f}  {', '.join(f'{name} {_show(value)}' for name, value in cpu)}")
    lines.append("")
    card = f"{plan.gpu_memory_gib:g}"
    article = "an" if card.startswith("8") or card.split(".")[0] in ("11", "18") else "a"
    lines.append(f"fits {article} {card} GiB card: {'yes' if plan.fits else 'no'}")
    if not plan.fits:
        if plan.suggestions and plan.suggestion_fits:
            lines.append(f"to fit, override: {' '.join(plan.suggestions)}   (peak {plan.suggested_peak_gib:.1f} GiB)")
        elif plan.suggestions:
            lines.append(
                f"no combination of the usual levers fits; the lowest: {' '.join(plan.suggestions)} "
                f"(peak {plan.suggested_peak_gib:.1f} GiB); use a larger card or DeepSpeed"
            )
        else:
            lines.append("no lever left to try; use a larger card")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append(f"(planned in {plan.seconds:.1f} s)")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------------------
def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Add `tscale plan` to an argparse subparsers object; `run_plan(args)` runs it."""
    from ..loading import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "plan",
        help="estimate the peak GPU/CPU memory of a training run or a ses command, without loading weights",
        description=(
            "tscale plan --config recipes/configs/flux2_klein_4b.yaml [--gpu-memory 80] [--num-processes N] [--json] "
            "[-- --train_batch_size 2 ...]   or   tscale plan --ses --model ... --eval-batch-size 8"
        ),
    )
    parser.add_argument("--config", default=None, help="OnlineDPOConfig YAML (default: the OnlineDPOConfig defaults)")
    parser.add_argument("--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GIB, help="GiB of the card (default 80)")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (GPUs) of the run")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--no-suggest", action="store_true", help="do not search for settings that fit")
    ses = parser.add_argument_group("a tscale ses command (with --ses)")
    ses.add_argument("--ses", action="store_true", help="plan `tscale ses` instead of a training run")
    ses.add_argument("--model", default=None, help=f"hub id, local pipeline dir or 'tiny' (default {DEFAULT_MODEL})")
    ses.add_argument("--height", type=int, default=None)
    ses.add_argument("--width", type=int, default=None)
    ses.add_argument("--eval-batch-size", type=int, default=8)
    ses.add_argument("--reward-batch-size", type=int, default=None)
    ses.add_argument("--guidance-scale", type=float, default=None)
    ses.add_argument("--reward", default="pickscore")
    ses.add_argument("--dtype", default="auto")
    ses.add_argument("--lora", default=None)
    parser.add_argument(
        "overrides", nargs="*", metavar="-- --field VALUE",
        help="OnlineDPOConfig overrides after `--`, e.g. -- --train_batch_size 2",
    )
    return parser


def _training_config(args: argparse.Namespace):
    from ..config import OnlineDPOConfig, parse_config

    overrides = [item for item in args.overrides if item != "--"]
    fields = {f.name for f in dataclasses.fields(OnlineDPOConfig)}
    for item in overrides:
        if item.startswith("--"):
            name = item[2:].split("=", 1)[0]
            if name not in fields:
                raise ValueError(f"unknown OnlineDPOConfig field {item!r}; see `tscale_train.config.OnlineDPOConfig`.")
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"config file {args.config!r} does not exist.")
    if args.model is not None:
        overrides = ["--model", args.model, *overrides]
    try:
        return parse_config((["--config", args.config] if args.config else []) + overrides)
    except SystemExit as exit_:
        raise ValueError(f"bad config overrides {' '.join(overrides)!r}") from exit_


def run_plan(args: argparse.Namespace) -> int:
    """`tscale plan`: print the table (or `--json`); 0 if it fits, 1 if not, 2 on bad input."""
    try:
        if args.gpu_memory <= 0:
            raise ValueError(f"--gpu-memory must be > 0 GiB, got {args.gpu_memory:g}.")
        if args.num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
        if args.ses:
            from rewards import check_reward_name

            from ..loading import DEFAULT_MODEL

            if args.config is not None or [item for item in args.overrides if item != "--"]:
                raise ValueError("--ses plans a ses command from its flags; drop --config and the config overrides.")
            check_reward_name(args.reward)
            for name in ("height", "width"):
                value = getattr(args, name)
                if value is not None and (value <= 0 or value % 16):
                    raise ValueError(f"--{name} {value} is not a positive multiple of 16.")
            plan = plan_ses(
                args.model or DEFAULT_MODEL, height=args.height, width=args.width, eval_batch_size=args.eval_batch_size,
                guidance_scale=args.guidance_scale, reward=args.reward, reward_batch_size=args.reward_batch_size,
                dtype=args.dtype, lora=args.lora, num_processes=args.num_processes, gpu_memory_gib=args.gpu_memory,
                suggest=not args.no_suggest,
            )
        else:
            config = _training_config(args)
            plan = plan_training(config, args.num_processes, args.gpu_memory, suggest=not args.no_suggest)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"tscale plan: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan_table(plan))
    return 0 if plan.fits else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m tscale_train.plan ...`: the same as `tscale plan ...`."""
    parser = argparse.ArgumentParser(prog="tscale")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    return run_plan(parser.parse_args(argv))
