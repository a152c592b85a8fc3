"""`tscale`: the command line.

    tscale ses --model black-forest-labs/FLUX.2-klein-4B --prompt "sketch, a cat" --budget 50 --out cat.png
    tscale ses --model tiny --prompt "sketch, a cat" --budget 20 --out cat.png      # offline, CPU
    tscale ses --model tiny --prompt "a red cube" --budget 50 --compare random,ses --out cube.png   # best-of-N vs SES
    tscale ses --model Tongyi-MAI/Z-Image-Turbo --prompt "a cat" --budget 30 --out cat.png         # any supported family
    tscale train --config recipes/configs/tiny.yaml                                  # the training loop
    tscale plan --config recipes/configs/flux2_klein_4b.yaml --gpu-memory 80          # memory, no weights loaded
    tscale export runs/cat --repo-id me/klein-cat-dpo [--include-pairs me/klein-cat-pairs] [--dry-run]
    tscale tiny --out DIR                                                            # build the tiny kit

Under `accelerate launch`, `tscale ses --prompt` splits the search's candidates across the processes;
with `--prompts-file` each process searches its own share of the prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import SEARCH_METHODS, ModelConfig, SearchConfig, SESArguments, parse_args

if TYPE_CHECKING:
    from .config import OnlineDPOConfig
    from .trainer import OnlineDPOTrainer

COMMANDS = {
    "ses": "search the initial noise for a prompt (or a prompts file) and save the best image",
    "train": "the online SES -> Diffusion-DPO loop (the recipe's loop; accelerate launch -m tscale_train.cli train)",
    "export": "push a run's LoRA (with a model card) and optionally its pairs to the Hugging Face Hub",
    "plan": "estimate the peak GPU/CPU memory of a training run or a ses command, without loading weights",
    "tiny": "build the tiny offline model kit",
}


def build_parser() -> argparse.ArgumentParser:
    """The top level: `tscale COMMAND ...`; each command parses the rest itself."""
    parser = argparse.ArgumentParser(
        prog="tscale", description="Spectral Evolution Search and search-to-training tools."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("ses", "train", "export"):
        # Parsed by the settings dataclasses (`tscale_train.config`), so `tscale ses --help` shows their flags.
        subcommands.add_parser(name, help=COMMANDS[name], add_help=False)
    from .plan import add_plan_parser

    add_plan_parser(subcommands)
    tiny = subcommands.add_parser("tiny", help=COMMANDS["tiny"])
    tiny.add_argument(
        "--out", default=None, help="default: $TSCALE_TINY_DIR or ~/.cache/tscale_train/tiny-v1"
    )
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def parse_ses_args(argv: list[str]) -> tuple[ModelConfig, SearchConfig, SESArguments]:
    """`tscale ses` flags (or `--config file.yaml`) -> validated settings; nothing is loaded.

    A training YAML (`recipes/configs/tiny.yaml`) is accepted too: one settings vocabulary. Its
    training-only settings are ignored, and one line on stderr names them.
    """
    from .config import OnlineDPOConfig
    from .loading import check_reward_overrides

    model, search, ses = parse_args(
        [ModelConfig, SearchConfig, SESArguments], argv, prog="tscale ses", also_known=[OnlineDPOConfig]
    )
    check_reward_overrides(search.reward, ses.reward_overrides())  # a --reward-arg typo fails now
    return model, search, ses


def _load_for_ses(model_config: ModelConfig, search_config: SearchConfig, ses_args: SESArguments):
    """The process state, generator and reward of a `tscale ses` run (the only heavy part)."""
    import torch
    from accelerate import PartialState

    from .distributed import run_on_cpu, stop_with_launcher
    from .generation import generator_for_pipeline
    from .loading import load_lora, load_pipeline, load_reward_for
    from .progress import library_bars
    from .quantization import quantize_pipeline

    # cpu=True where there is no CUDA: otherwise 2 CPU processes each think they are rank 0 of 1.
    state = PartialState(cpu=run_on_cpu())
    stop_with_launcher(state)  # a killed `accelerate launch` takes its searching workers with it
    device = torch.device(ses_args.device) if ses_args.device else state.device
    dtype = model_config.torch_dtype(device)
    quantized = model_config.quantize_base != "none"
    # Loading bars only where the search's bar is drawn: on the main process, on a terminal.
    with library_bars(enabled=ses_args.progress, main=state.is_main_process):
        # A float8 base is stored in float8 (after its LoRA is loaded) before it moves to the GPU.
        pipe = load_pipeline(model_config.model, dtype=dtype, device="cpu" if quantized else device)
        if ses_args.lora:
            load_lora(pipe, ses_args.lora, scale=ses_args.lora_scale)
        if quantized:
            quantize_pipeline(pipe, model_config.quantize_base, compute_dtype=dtype)
            pipe.to(device)
        reward = load_reward_for(
            search_config.reward,
            model_config.model,
            device=device,
            batch_size=search_config.reward_batch_size or search_config.eval_batch_size,
            **ses_args.reward_overrides(),
        )
    generator = generator_for_pipeline(
        pipe,
        height=model_config.height,
        width=model_config.width,
        guidance_scale=model_config.guidance_scale,
        eval_batch_size=search_config.eval_batch_size,
        preview_steps=search_config.preview_steps,
    )
    return state, generator, reward


def run_ses(model_config: ModelConfig, search_config: SearchConfig, ses_args: SESArguments) -> list[dict]:
    from .io_utils import atomic_write_json
    from .progress import write
    from .ses.driver import search_prompts
    from .ses.scoring import component_summary, describe_nonfinite

    prompts = ses_args.load_prompts()  # a bad prompts file fails before anything loads
    state, generator, reward = _load_for_ses(model_config, search_config, ses_args)
    if ses_args.compare:
        return run_compare(state, generator, reward, prompts, search_config, ses_args)
    # Many prompts over many processes (one node or several): each process searches its own prompts,
    # so no generation waits on a gather. One prompt: its candidates are split over the processes.
    shard_prompts = ses_args.prompts_file is not None and state.num_processes > 1
    indices = (
        list(range(len(prompts)))[state.process_index :: state.num_processes]
        if shard_prompts
        else list(range(len(prompts)))
    )
    results = search_prompts(
        generator,
        reward,
        [prompts[index] for index in indices],
        [ses_args.seed + index for index in indices],  # prompt i keeps seed + i, whoever searches it
        budget=search_config.budget,
        config=search_config.ses_config(),
        preview_steps=search_config.preview_steps,
        split_across=None if shard_prompts else state,
        group_size=search_config.search_group_size,
        progress=ses_args.progress,
        method=search_config.search,
    )
    for result in results:
        if not math.isfinite(result.search.best_score):
            raise ValueError(
                f"the reward {search_config.reward!r} gave no finite score for {result.prompt!r}: "
                f"{describe_nonfinite(result.nonfinite or {})} of {search_config.budget} candidates; a reward must return "
                "finite numbers, so check it (call it on a few images)."
            )
    # Each image is written once: by the process that searched it, or by the main one.
    writes_images = shard_prompts or state.is_main_process
    summaries = []
    out = Path(ses_args.out)
    for index, result in zip(indices, results, strict=True):
        summary = {
            "index": index,
            "prompt": result.prompt,
            "seed": result.seed,
            "best_score": result.search.best_score,
            "base_score": result.search.base_score,
            "best_index": result.search.best_index,
            "budget": search_config.budget,
            "method": SEARCH_METHODS[search_config.search],
            "process_index": state.process_index if shard_prompts else 0,
        }
        components = component_summary(reward, result)
        if components is not None:
            # A weighted reward: its scores are standardised by the search; each reward's raw score too.
            summary["rewards"] = components
        summaries.append(summary)
        if writes_images:
            _write_result(generator, result, summary, ses_args, out)
            if not shard_prompts:  # one line per image as it is written (by the main process)
                write(_result_line(summary), main=state.is_main_process)
    if shard_prompts:
        from accelerate.utils import gather_object

        summaries = sorted(gather_object(summaries), key=lambda summary: summary["index"])
        # Every process's results, printed by the main process alone, in prompt order.
        for summary in summaries:
            write(_result_line(summary), main=state.is_main_process)
    if state.is_main_process and ses_args.prompts_file:
        atomic_write_json(out / "results.json", summaries)
    return summaries


def _write_result(generator, result, summary: dict, ses_args: SESArguments, out: Path) -> None:
    """The searched image (and with --save-trace its trace, reward plot and base-vs-SES image)."""
    from .io_utils import atomic_save_image, atomic_write_json
    from .ses.driver import render_result
    from .ses.images import side_by_side
    from .ses.plots import plot_trace

    rendered = render_result(generator, result, ses_args.steps)
    image_path = out if ses_args.prompt is not None else out / f"{summary['index']:04d}.png"
    atomic_save_image(rendered.image, image_path)
    summary["image"] = str(image_path)
    if ses_args.save_trace:
        stem = image_path.with_suffix("")
        trace = dict(
            summary, scores=[float(score) for score in result.search.scores], trace=result.search.trace
        )
        atomic_write_json(f"{stem}_trace.json", trace)
        plot_trace(result.search, f"{stem}_reward.png", title=result.prompt)
        atomic_save_image(
            side_by_side(rendered.base_image, rendered.image, caption=rendered.prompt),
            f"{stem}_base_vs_ses.png",
        )


def _result_line(summary: dict) -> str:
    """One search's line: `[0] base -7.2339 -> SES -6.3544 (best candidate #18 of 20) -> runs/ses/cat.png`."""
    return (
        f"[{summary['index']}] base {summary['base_score']:.4f} -> {summary['method']} {summary['best_score']:.4f} "
        f"(best candidate #{summary['best_index']} of {summary['budget']}) -> {summary['image']}"
    )


def run_compare(
    state, generator, reward, prompts: list[str], search_config: SearchConfig, ses_args: SESArguments
) -> list[dict]:
    """`tscale ses --compare random,ses`: every method from the same seeds at the same budget; the main
    process renders base and best images, writes the strip, the curves and a JSON, and prints the table."""
    from .compare import (
        compare_searches,
        comparison_rows,
        comparison_strip,
        format_table,
        plot_curves,
        render_comparison,
    )
    from .io_utils import atomic_save_image, atomic_write_json
    from .progress import write

    methods = ses_args.compare_methods()
    comparisons = compare_searches(
        generator,
        reward,
        prompts,
        [ses_args.seed + index for index in range(len(prompts))],
        methods,
        budget=search_config.budget,
        config=search_config.ses_config(),
        preview_steps=search_config.preview_steps,
        split_across=state,  # the candidates of each batch are split over the processes
        group_size=search_config.search_group_size,
        progress=ses_args.progress,
    )
    if not state.is_main_process:
        return []
    out = Path(ses_args.out)
    single = ses_args.prompt is not None
    # One prompt: cube.png, cube_curves.png, cube_compare.json; a prompts file: DIR/0000.png ..., DIR/curves.png, DIR/compare.json.
    curves_path = f"{out.with_suffix('')}_curves.png" if single else out / "curves.png"
    json_path = f"{out.with_suffix('')}_compare.json" if single else out / "compare.json"
    summaries = []
    for index, comparison in enumerate(comparisons):
        images = render_comparison(generator, reward, comparison, ses_args.steps)
        labels = [f"base {comparison.final_scores['base']:.4f}"] + [
            f"{SEARCH_METHODS[method]} {comparison.final_scores[method]:.4f}" for method in methods
        ]
        image_path = out if single else out / f"{index:04d}.png"
        atomic_save_image(comparison_strip(images, labels), image_path)
        summaries.append(
            {
                "index": index,
                "prompt": comparison.prompt,
                "seed": comparison.seed,
                "image": str(image_path),
                "budget": search_config.budget,
                "base_score": comparison.base_score,
                "final_scores": comparison.final_scores,
                **{
                    method: {
                        "best_score": item.search.best_score,
                        "best_index": item.search.best_index,
                        "scores": [float(score) for score in item.search.scores],
                    }
                    for method, item in comparison.searches.items()
                },
            }
        )
    rows = comparison_rows(comparisons)
    title = (
        f"{SEARCH_METHODS[methods[0]]} vs {', '.join(SEARCH_METHODS[m] for m in methods[1:])}: budget {search_config.budget}, "
        f"seed {ses_args.seed}, reward {search_config.reward}, preview {generator.preview_steps} steps, "
        f"final {ses_args.steps or generator.num_inference_steps} steps, {len(prompts)} prompt(s)"
    )
    plot_curves(
        comparisons, curves_path, title=comparisons[0].prompt if single else f"{len(prompts)} prompts"
    )
    atomic_write_json(json_path, {"title": title, "table": rows, "prompts": summaries})
    write(format_table(rows, title), main=True)
    write(f"images: {out}; curves: {curves_path}; scores: {json_path}", main=True)
    return summaries


def run_train(argv: list[str]) -> None:
    """`tscale train`: the recipe's loop, with the recipe's settings (`--config file.yaml` and flags)."""
    from .config import parse_config

    config = parse_config(argv, prog="tscale train")
    make_trainer(config).train()


def make_trainer(config: OnlineDPOConfig, accelerator=None) -> OnlineDPOTrainer:
    """The `OnlineDPOTrainer` of `tscale train` and the recipes: the loop's callbacks for `config`, and the
    Hub push with `--push_to_hub` (which checks for a token now, before the run starts)."""
    from .callbacks import default_callbacks
    from .export.callback import PushToHubCallback
    from .trainer import OnlineDPOTrainer

    callbacks = default_callbacks(config) + PushToHubCallback.from_config(config)
    return OnlineDPOTrainer(config, accelerator=accelerator, callbacks=callbacks)


def run_export(argv: list[str]) -> None:
    """`tscale export RUN --repo-id ID ...` (the run may also be given as --run)."""
    from .export.run import RUN_HELP, ExportArguments, export_run

    (args,) = parse_args([ExportArguments], argv, prog="tscale export", positional=("run", RUN_HELP))
    export_run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the usage, or the help, and exits
    command, rest = argv[0], argv[1:]
    try:
        if command == "ses":
            run_ses(*parse_ses_args(rest))
        elif command == "train":
            run_train(rest)
        elif command == "export":
            run_export(rest)
        elif command == "plan":
            from .plan import run_plan

            return run_plan(rest)
        else:
            from .tiny import default_kit_dir, ensure_tiny_kit

            args = parser.parse_args(argv)
            path = ensure_tiny_kit(args.out or default_kit_dir(), seed=args.seed)
            print(json.dumps({"kit_dir": str(path)}))
    except (ValueError, OSError) as error:
        # Expected failures (bad input, a model that cannot be fetched, a full disk) are one line;
        # anything else is a bug and keeps its traceback.
        message = " ".join(str(error).split())
        print(f"tscale {command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
