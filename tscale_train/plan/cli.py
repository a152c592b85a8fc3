"""`tscale plan` on the command line: the table, the argument parser, `run_plan`."""

from __future__ import annotations

import argparse
import json
import math
import sys

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
    lines.append(
        f"{'peak':<16} {plan.peak_gib:>8.1f}  ({PHASE_LABELS.get(plan.peak_phase, plan.peak_phase)})"
    )
    lines.append("")
    cpu = sorted(plan.cpu_breakdown.items(), key=lambda item: -item[1])[:3]
    lines.append(
        f"{'CPU per process':<16} {plan.cpu_gib:>8.1f}  {', '.join(f'{name} {_show(value)}' for name, value in cpu)}"
    )
    lines.append("")
    card = f"{plan.gpu_memory_gib:g}"
    article = "an" if card.startswith("8") or card.split(".")[0] in ("11", "18") else "a"
    lines.append(f"fits {article} {card} GiB card: {'yes' if plan.fits else 'no'}")
    if not plan.fits:
        if plan.suggestions and plan.suggestion_fits:
            lines.append(
                f"to fit, override: {' '.join(plan.suggestions)}   (peak {plan.suggested_peak_gib:.1f} GiB)"
            )
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
def add_plan_parser(subparsers) -> None:
    """List `tscale plan` among the commands; `run_plan(argv)` parses and runs it."""
    subparsers.add_parser("plan", help=PLAN_HELP, add_help=False)


PLAN_HELP = "estimate the peak GPU/CPU memory of a training run or a ses command, without loading weights"
# Bounds of the plan's own options: far above any machine, low enough to catch a typo.
MAX_GPU_MEMORY_GIB = 4096.0
MAX_PROCESSES = 65_536


def plan_option_parser() -> argparse.ArgumentParser:
    """The options of the plan itself; every other flag is a setting of the planned run. Its errors are
    one-line `ValueError`s (`OneLineArgumentParser`)."""
    from ..families import iter_families, known_models
    from ..parsing import OneLineArgumentParser

    parser = OneLineArgumentParser(
        prog="tscale plan",
        description=PLAN_HELP,
        epilog=(
            "Every other flag is a setting of the planned run, in the vocabulary of `tscale train` "
            "(e.g. --config recipes/configs/flux2_klein_4b.yaml --train_batch_size 2), or with --ses of "
            "`tscale ses` (e.g. --model black-forest-labs/FLUX.2-klein-4B --eval-batch-size 8). "
            f"Configs bundled for planning offline: {', '.join(known_models())}; any other model of a planned "
            f"family ({', '.join(family.name for family in iter_families() if family.plan is not None)}) plans "
            "from a local pipeline dir or the local HF cache."
        ),
    )
    parser.add_argument(
        "--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GIB, help="GiB of the card (default 80), > 0"
    )
    parser.add_argument(
        "--num-processes", type=int, default=1, help=f"processes (GPUs) of the run, 1 to {MAX_PROCESSES}"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--no-suggest", action="store_true", help="do not search for settings that fit")
    parser.add_argument("--ses", action="store_true", help="plan `tscale ses` instead of a training run")
    return parser


def run_plan(argv: list[str]) -> int:
    """`tscale plan`: print the table (or `--json`); 0 if it fits, 1 if not, 2 on bad input."""
    from ..config import ModelConfig, OnlineDPOConfig, SearchConfig, SESArguments, parse_args, parse_config

    try:
        parser = plan_option_parser()
        parser.typed_args = argv
        options, settings = parser.parse_known_args(argv)
        settings = [item for item in settings if item != "--"]  # `tscale plan -- --flag` still reads
        if not (math.isfinite(options.gpu_memory) and 0 < options.gpu_memory <= MAX_GPU_MEMORY_GIB):
            raise ValueError(
                f"--gpu-memory must be > 0 and at most {MAX_GPU_MEMORY_GIB:g} GiB, got {options.gpu_memory:g}; "
                "e.g. --gpu-memory 80 for an 80 GB card."
            )
        if not 1 <= options.num_processes <= MAX_PROCESSES:
            raise ValueError(
                f"--num-processes must be >= 1 and at most {MAX_PROCESSES}, got {options.num_processes}; e.g. --num-processes 8."
            )
        if options.ses:
            # A ses or training YAML plans too: their other settings do not change the memory of the search.
            model, search = parse_args(
                [ModelConfig, SearchConfig],
                settings,
                prog="tscale plan --ses",
                also_known=[OnlineDPOConfig, SESArguments],
            )
            plan = plan_ses(
                model.model,
                height=model.height,
                width=model.width,
                eval_batch_size=search.eval_batch_size,
                guidance_scale=model.guidance_scale,
                reward=search.reward,
                reward_batch_size=search.reward_batch_size,
                dtype=model.dtype,
                quantize_base=model.quantize_base,
                num_processes=options.num_processes,
                gpu_memory_gib=options.gpu_memory,
                suggest=not options.no_suggest,
            )
        else:
            config = parse_config(settings, prog="tscale plan")
            plan = plan_training(
                config, options.num_processes, options.gpu_memory, suggest=not options.no_suggest
            )
    except (ValueError, FileNotFoundError, OSError) as error:
        message = " ".join(str(error).split())  # one line, as every tscale command's errors
        print(f"tscale plan: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if options.json else format_plan_table(plan))
    return 0 if plan.fits else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m tscale_train.plan ...`: the same as `tscale plan ...`."""
    return run_plan(list(sys.argv[1:] if argv is None else argv))
