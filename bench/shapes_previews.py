"""Do previews rank final images? How well a k-step preview of a noise predicts its final image's score.

A search scores previews (the same noise sampled with fewer steps) and keeps the best; that only works if
previews rank noises as their final images would. On the shapes world, for every held-out prompt and
`--noises` seeds, each noise is sampled with k steps for every k of `--steps` and with the full schedule
(16 steps), and scored by the verifier (ground truth) and by `shapes-clip` (the learned proxy). Per k:

- Spearman's rank correlation between the preview's score and the final image's, within each prompt's
  noises (the ranking a search makes), averaged over prompts (± standard error over prompts), for
  verifier -> verifier, shapes-clip -> shapes-clip, and shapes-clip -> verifier (what a search with the
  proxy is judged by);
- what the ranking buys: the verifier accuracy of the final image of the noise whose k-step preview
  scores best by shapes-clip among the prompt's noises (best-of-N with k-step previews), against picking
  one noise at random (the mean) and the oracle (the best final image); seconds per preview.

The recommended preview length is the fewest steps whose shapes-clip -> verifier rank correlation is
within one standard error of the full-length one's (the pick's accuracy, one 0/1 per prompt, is too noisy
to choose by). Usage: python bench/shapes_previews.py [--quick] [--noises 8]
[--per-family 20] [--steps 1,2,3,4,6,8,12]
"""

from __future__ import annotations

import argparse
import time

import torch
from shapes_common import (
    final_scores,
    fmt,
    load_generator,
    load_judges,
    machine_line,
    mean_se,
    setup,
)

from rewards.shapes.world import evaluation_prompts
from tscale_train.shapes.evaluation import all_clauses_met, spearman


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--noises", type=int, default=8, help="noises per prompt (the ranking is within a prompt)"
    )
    parser.add_argument(
        "--per-family", type=int, default=20, help="prompts of each task family (held-out split)"
    )
    parser.add_argument(
        "--steps", default="1,2,3,4,6,8,12", help="preview lengths (the final length is added)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 prompts per family, 3 noises, steps 2,4"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.noises, args.per_family, args.steps = 3, 2, "2,4"
    args.steps = sorted({int(value) for value in args.steps.split(",")})
    if args.noises < 2 or args.per_family < 1 or min(args.steps) < 1:
        parser.error("--noises must be >= 2, --per-family >= 1 and every step count >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup(args.threads)
    generator = load_generator()
    judges = load_judges()
    final_steps = generator.num_inference_steps
    steps = [k for k in args.steps if k < final_steps] + [final_steps]
    prompt_list = [prompt for prompts in evaluation_prompts(args.per_family).values() for prompt in prompts]
    items = [
        (None, prompt, 9_000_000 + 1000 * index + noise)
        for index, prompt in enumerate(prompt_list)
        for noise in range(args.noises)
    ]
    noises = torch.cat([generator.initial_noise(seed) for _, _, seed in items])

    scores: dict[int, dict[str, torch.Tensor]] = {}
    seconds: dict[int, float] = {}
    started = time.perf_counter()
    for k in steps:
        tick = time.perf_counter()
        scores[k] = {
            name: torch.tensor(values)
            for name, values in final_scores(generator, judges, items, noises, k).items()
        }
        seconds[k] = (time.perf_counter() - tick) / len(items)
    total = time.perf_counter() - started

    groups = [list(range(i * args.noises, (i + 1) * args.noises)) for i in range(len(prompt_list))]
    final = scores[final_steps]
    final_correct = all_clauses_met(final["verifier"])
    random_pick = [final_correct[group].mean().item() for group in groups]
    oracle_pick = [final_correct[group].max().item() for group in groups]

    print(
        f"shapes world, {len(prompt_list)} held-out prompts x {args.noises} noises, final images {final_steps} steps; "
        f"{total:.0f} s; {machine_line()}\n"
    )
    print(
        "Rank correlation of a k-step preview's score with the final image's (Spearman within a prompt, mean ± se over prompts)"
    )
    print(
        "| preview steps | s / preview | verifier -> verifier | shapes-clip -> shapes-clip | shapes-clip -> verifier | "
        "accuracy of the pick (best of N by shapes-clip) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    picks: dict[int, list[float]] = {}
    for k in steps:
        rows = {}
        for label, (source, target) in {
            "vv": ("verifier", "verifier"),
            "cc": ("shapes-clip", "shapes-clip"),
            "cv": ("shapes-clip", "verifier"),
        }.items():
            rows[label] = [spearman(scores[k][source][g].tolist(), final[target][g].tolist()) for g in groups]
        picks[k] = [final_correct[g[int(scores[k]["shapes-clip"][g].argmax())]].item() for g in groups]
        print(
            f"| {k} | {seconds[k]:.3f} | {fmt(rows['vv'], 2)} | {fmt(rows['cc'], 2)} | {fmt(rows['cv'], 2)} | {fmt(picks[k])} |"
        )
    print(f"| random pick | | | | | {fmt(random_pick)} |")
    print(f"| oracle (best final image) | | | | | {fmt(oracle_pick)} |")

    # The pick's accuracy is too noisy to choose by (one 0/1 per prompt); the rank correlation that a
    # search with the proxy is judged by is not.
    proxy_to_judge = {
        k: [spearman(scores[k]["shapes-clip"][g].tolist(), final["verifier"][g].tolist()) for g in groups]
        for k in steps
    }
    full_mean, full_se = mean_se(proxy_to_judge[final_steps])
    choice = min(k for k in steps if mean_se(proxy_to_judge[k])[0] >= full_mean - full_se)
    print(
        f"\nfewest preview steps whose shapes-clip -> verifier rank correlation is within one standard error of the "
        f"full-length one's ({full_mean:.2f} ± {full_se:.2f}): {choice} of {final_steps}"
    )


if __name__ == "__main__":
    main()
