"""Seconds per SES candidate on each family's tiny kit, measured side by side in one run.

Each kit generates one batch of `--batch` previews at its default preview steps and resolution
(generation only: the reward is the same for every family); the figure is the median over
`--repeats` batches after a warm-up batch. Prints a markdown table.

Usage: python bench/families.py [--batch 8] [--repeats 5]
"""

import argparse
import statistics
import time

import torch

from tscale_train.generation import generator_for_pipeline
from tscale_train.loading import load_pipeline

KITS = ("tiny", "tiny-base", "tiny-flux2-dev", "tiny-flux1", "tiny-qwen-image", "tiny-sd3", "tiny-z-image")


def seconds_per_candidate(model: str, batch: int, repeats: int) -> tuple[object, float]:
    pipe = load_pipeline(model, dtype="float32", device="cpu")
    generator = generator_for_pipeline(pipe, eval_batch_size=batch)
    embeds = generator.encode_prompt("a red cube on a wooden table")
    noises = generator.initial_noise(0, batch_size=batch)
    generator.generate(noises, embeds, generator.preview_steps)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generator.generate(noises, embeds, generator.preview_steps)
        times.append((time.perf_counter() - started) / batch)
    return generator, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    print(
        f"tiny kits, CPU, float32, batches of {args.batch}, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print("| kit | pipeline | family | preview steps | CFG | size | ms / candidate |")
    print("|---|---|---|---:|---|---|---:|")
    for model in KITS:
        generator, seconds = seconds_per_candidate(model, args.batch, args.repeats)
        print(
            f"| `{model}` | `{type(generator.pipe).__name__}` | {generator.family} | {generator.preview_steps} | "
            f"{'yes' if generator.uses_cfg else 'no'} | {generator.height}x{generator.width} | {seconds * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
