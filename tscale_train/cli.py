"""`tscale`: the command line.

    tscale ses --model black-forest-labs/FLUX.2-klein-4B --prompt "sketch, a cat" --budget 50 --out cat.png
    tscale ses --model tiny --prompt "sketch, a cat" --budget 20 --out cat.png      # offline, CPU
    tscale plan --config recipes/configs/flux2_klein_4b.yaml --gpu-memory 80          # memory, no weights loaded
    tscale tiny --out DIR                                                            # build the tiny kit

Under `accelerate launch`, `tscale ses` splits each search's candidates across the processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .loading import DEFAULT_MODEL

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _add_ses_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local pipeline dir, or offline 'tiny' / 'tiny-base' / 'shapes-klein-4b' (real widths)")
    model.add_argument("--lora", default=None, help="LoRA dir/file (diffusers format) or hub id, loaded with load_lora_weights")
    model.add_argument("--lora-scale", type=float, default=1.0)
    model.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    model.add_argument("--device", default=None, help="default: the accelerate process's device (cuda if available)")
    prompts = parser.add_argument_group("prompts").add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", default=None)
    prompts.add_argument("--prompts-file", default=None, help=".txt (one per line), .jsonl or .csv with a 'prompt' field")
    search = parser.add_argument_group("search")
    search.add_argument("--reward", default="pickscore", help="pickscore, hpsv2, clip, or package.module:callable")
    search.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a reward loading argument, e.g. model_name_or_path=DIR (repeatable)")
    search.add_argument("--budget", type=int, default=50, help="candidates scored per prompt, the base noise included")
    search.add_argument("--popsize", type=int, default=10)
    search.add_argument("--k-elites", type=int, default=5)
    search.add_argument("--wavelet", default="db1")
    search.add_argument("--level", type=int, default=4)
    search.add_argument("--preview-steps", type=int, default=None, help="sampler steps while searching (default: model default)")
    search.add_argument("--eval-batch-size", type=int, default=8, help="candidates generated (and decoded) per batch")
    search.add_argument("--reward-batch-size", type=int, default=None, help="images per reward forward (default: eval batch size)")
    search.add_argument("--search-group-size", type=int, default=8,
                        help="prompts of a --prompts-file searched in lockstep at once (bounds memory)")
    render = parser.add_argument_group("image")
    render.add_argument("--steps", type=int, default=None, help="sampler steps of the final image (default: model default)")
    render.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (undistilled models only)")
    render.add_argument("--height", type=int, default=None)
    render.add_argument("--width", type=int, default=None)
    render.add_argument("--seed", type=int, default=0, help="seed of the base noise (prompt i of a file uses seed + i)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="image path for --prompt; a directory for --prompts-file")
    output.add_argument("--save-trace", action="store_true", help="also write scores JSON, a reward plot and base-vs-SES image")
    output.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tscale", description="Spectral Evolution Search and search-to-training tools.")
    subcommands = parser.add_subparsers(dest="command", required=True)
    ses = subcommands.add_parser("ses", help="search the initial noise for a prompt and save the best image")
    _add_ses_arguments(ses)
    from .plan import add_plan_parser

    add_plan_parser(subcommands)
    tiny = subcommands.add_parser("tiny", help="build the tiny offline model kit")
    tiny.add_argument("--out", default=None, help="default: $TSCALE_TINY_DIR or ~/.cache/tscale_train/tiny-v1")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _parse_reward_args(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--reward-arg {pair!r} is not KEY=VALUE, e.g. --reward-arg model_name_or_path=/models/pickscore.")
        overrides[key] = value
    return overrides


def _validate_ses_args(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Every check that needs no model, so bad input fails in a second with a one-line fix."""
    from rewards import check_reward_name
    from search import SESConfig

    from .loading import check_lora_source, check_model_source
    from .prompts import load_prompts
    from .ses import validate_search_args

    prompts = [args.prompt] if args.prompt is not None else load_prompts(args.prompts_file)
    if any(not prompt.strip() for prompt in prompts):
        raise ValueError("a prompt is empty; pass non-empty text with --prompt or remove empty lines from --prompts-file.")
    config = SESConfig(wavelet=args.wavelet, level=args.level, popsize=args.popsize, k_elites=args.k_elites)
    validate_search_args(args.budget, config)
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 16):
            raise ValueError(f"--{name} {value} is not a positive multiple of 16; use e.g. --{name} {max(16, value // 16 * 16)}.")
    for name in ("steps", "preview_steps", "eval_batch_size", "reward_batch_size", "search_group_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    check_model_source(args.model)
    if args.lora:
        check_lora_source(args.lora)
    check_reward_name(args.reward)
    out = Path(args.out)
    if args.prompt is not None and out.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ValueError(f"--out {args.out!r} should be an image path ending in one of {', '.join(_IMAGE_SUFFIXES)}.")
    return prompts, {"config": config, "reward_overrides": _parse_reward_args(args.reward_arg)}


def run_ses(args: argparse.Namespace) -> list[dict]:
    import torch
    from accelerate import PartialState

    from .distributed import run_on_cpu
    from .generation import generator_for_pipeline
    from .io_utils import atomic_save_image, atomic_write_json
    from .loading import load_lora, load_pipeline, load_reward_for, parse_dtype
    from .ses import plot_trace, render_result, search_prompts, side_by_side

    prompts, extra = _validate_ses_args(args)
    # cpu=True where there is no CUDA: otherwise 2 CPU processes each think they are rank 0 of 1.
    state = PartialState(cpu=run_on_cpu())
    device = torch.device(args.device) if args.device else state.device
    dtype = parse_dtype(args.dtype) if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe = load_pipeline(args.model, dtype=dtype, device=device)
    if args.lora:
        load_lora(pipe, args.lora, scale=args.lora_scale)
    reward_batch_size = args.reward_batch_size or args.eval_batch_size
    reward = load_reward_for(args.reward, args.model, device=device, batch_size=reward_batch_size, **extra["reward_overrides"])
    generator = generator_for_pipeline(
        pipe, height=args.height, width=args.width, guidance_scale=args.guidance_scale, eval_batch_size=args.eval_batch_size
    )
    seeds = [args.seed + index for index in range(len(prompts))]
    results = search_prompts(
        generator,
        reward,
        prompts,
        seeds,
        budget=args.budget,
        config=extra["config"],
        preview_steps=args.preview_steps,
        split_across=state,
        group_size=args.search_group_size,
        progress=not args.no_progress,
    )
    summaries = []
    out = Path(args.out)
    for index, result in enumerate(results):
        summary = {
            "prompt": result.prompt,
            "seed": result.seed,
            "best_score": result.search.best_score,
            "base_score": float(result.search.scores[0]),
            "best_index": result.search.best_index,
            "budget": args.budget,
        }
        summaries.append(summary)
        if not state.is_main_process:
            continue  # every process holds the same results; only the main one renders and writes
        rendered = render_result(generator, result, args.steps)
        image_path = out if args.prompt is not None else out / f"{index:04d}.png"
        atomic_save_image(rendered.image, image_path)
        summary["image"] = str(image_path)
        if args.save_trace:
            stem = image_path.with_suffix("")
            trace = dict(summary, scores=[float(score) for score in result.search.scores], trace=result.search.trace)
            atomic_write_json(f"{stem}_trace.json", trace)
            plot_trace(result.search, f"{stem}_reward.png", title=result.prompt)
            atomic_save_image(side_by_side(rendered.base_image, rendered.image), f"{stem}_base_vs_ses.png")
        print(
            f"[{index}] base {summary['base_score']:.4f} -> SES {summary['best_score']:.4f} "
            f"(best candidate #{summary['best_index']} of {args.budget}) -> {image_path}"
        )
    if state.is_main_process and args.prompts_file:
        atomic_write_json(out / "results.json", summaries)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "ses":
            run_ses(args)
        elif args.command == "plan":
            from .plan import run_plan

            return run_plan(args)
        elif args.command == "tiny":
            from .tiny import default_kit_dir, ensure_tiny_kit

            path = ensure_tiny_kit(args.out or default_kit_dir(), seed=args.seed)
            print(json.dumps({"kit_dir": str(path)}))
    except (ValueError, FileNotFoundError) as error:
        print(f"tscale {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
