"""Search quality judged by ground truth: default SES, published SES and best-of-N on the shapes world.

For every held-out (prompt, seed) item (`--per-family` per task family, 100 items by default) each method searches
the seed's noise of the shipped shapes model with one reward, scoring previews (`--preview-steps`), and the
noise it returns at each budget is rendered at the full 16 steps and judged by the OTHER reward: search with
`shapes-clip` (the learned proxy), judge with the `verifier` (ground truth), and the other way round.

Methods, all as `tscale ses` runs them (`tscale_train.ses.search_prompts`, the same seeds and base noises):

- default SES (`--search ses`: the surrogate variant, automatic wavelet level, popsize 10, 5 elites);
- published SES (`--search ses-published`: DiffSynth-Studio's algorithm at the same level and popsize);
- best-of-N (`--search random`: the base noise, then fresh Gaussian noises): random search over the noise.

Budget 0 is the base noise. The best at budget b is read from one budget-`max` search per item as the best
of its first b candidates (ties to the earlier): for best-of-N that is exactly a budget-b search; for SES
the first b candidates are exactly a budget-b search's where b is a multiple of the popsize, and otherwise
the last, partial generation is drawn from the same distribution (the same search in law, not in draws).
The noise of a candidate is recovered by replaying the search with its recorded scores
(`tscale_train.ses.start_search`), without generating again.

Tables, per search reward: the judge per task family (verifier: accuracy, the share of images with every
clause right; shapes-clip: mean score), the search's own reward on the final image, the best preview score
the search saw, and how often the returned image is worse than the base image (by the judge, and by the
search's reward on the final image); then the yardsticks: default@25 - published@50 and default - best-of-N
at every budget, as paired differences ± standard error over items. The plot
(`bench/results/shapes_search.png`) shows judge and search reward against the budget.

Usage: python bench/shapes_search.py [--quick] [--per-family 20] [--budgets 10,25,50,100]
[--search-rewards shapes-clip,verifier] [--preview-steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from shapes_common import (
    REWARDS,
    correct,
    families_and_overall,
    final_scores,
    fmt,
    held_out_items,
    load_generator,
    load_judges,
    machine_line,
    setup,
)

from search import SESConfig, published_variant
from search.result import ranking_scores

RESULTS = Path(__file__).parent / "results"
METHODS = {"default SES": "ses", "published SES": "ses-published", "best-of-N": "random"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--per-family", type=int, default=20, help="held-out (prompt, seed) items per task family"
    )
    parser.add_argument(
        "--budgets", default="10,25,50,100", help="comma-separated budgets (0, the base noise, is added)"
    )
    parser.add_argument(
        "--search-rewards",
        default=",".join(REWARDS),
        help="rewards to search with (each judged by the other)",
    )
    parser.add_argument(
        "--preview-steps", type=int, default=None, help="steps of a search preview (default: the model's)"
    )
    parser.add_argument("--plot", type=Path, default=RESULTS / "shapes_search.png")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 item per family, budgets 10,20")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_family, args.budgets = 1, "10,20"
    args.budgets = sorted({int(value) for value in args.budgets.split(",")})
    args.search_rewards = [value.strip() for value in args.search_rewards.split(",") if value.strip()]
    unknown = [name for name in args.search_rewards if name not in REWARDS]
    if unknown or min(args.budgets) < 1 or args.per_family < 1:
        parser.error(
            f"--search-rewards must name {' or '.join(REWARDS)} (got {unknown}), budgets >= 1, --per-family >= 1"
        )
    return args


def best_indices(scores: torch.Tensor, budgets: list[int]) -> dict[int, int]:
    """The index of the best of the first b scores for each budget b (0: the base noise)."""
    ranked = ranking_scores(scores)
    return {0: 0, **{budget: int(ranked[:budget].argmax()) for budget in budgets}}


def returned_noises(
    generator, result, config: SESConfig, method: str, budgets: list[int]
) -> dict[int, torch.Tensor]:
    """Each budget's returned noise, by replaying the finished search with its recorded scores."""
    from tscale_train.ses import start_search

    scores = result.search.scores
    replay = start_search(generator, result.seed, len(scores), config, method)
    told = 0
    while not replay.done:
        size = replay.ask().shape[0]
        replay.tell(scores[told : told + size])
        told += size
    replayed = replay.result()
    if not torch.equal(replayed.best_noise, result.search.best_noise):
        raise RuntimeError("the replayed search does not return the recorded search's noise")
    return {
        budget: replay.noise_at(index).reshape(generator.noise_shape)
        for budget, index in best_indices(scores, budgets).items()
    }


def run_reward(args, generator, judges, items, search_reward: str) -> dict:
    """Every method's searches with `search_reward`; per (method, budget) the final images' scores."""
    from tscale_train.ses import search_prompts

    prompts = [prompt for _, prompt, _ in items]
    seeds = [seed for _, _, seed in items]
    embeds = {prompt: generator.encode_prompt(prompt) for prompt in dict.fromkeys(prompts)}
    max_budget = max(args.budgets)
    config = SESConfig(level=None)
    out: dict = {"methods": {}, "seconds": {}}
    for label, method in METHODS.items():
        started = time.perf_counter()
        results = search_prompts(
            generator,
            judges[search_reward],
            prompts,
            seeds,
            budget=max_budget,
            config=config,
            preview_steps=args.preview_steps,
            embeds=[embeds[p] for p in prompts],
            group_size=None,
            progress=False,
            method=method,
        )
        search_seconds = time.perf_counter() - started
        replay_config = published_variant(config) if method == "ses-published" else config
        noises = [
            returned_noises(generator, result, replay_config, method, args.budgets) for result in results
        ]
        previews = [ranking_scores(result.search.scores) for result in results]
        per_budget = {}
        for budget in [0, *args.budgets]:
            scores = final_scores(generator, judges, items, torch.stack([noise[budget] for noise in noises]))
            scores["preview"] = [float(row[:budget].max()) if budget else float(row[0]) for row in previews]
            per_budget[budget] = scores
        out["methods"][label] = per_budget
        out["seconds"][label] = search_seconds
        print(
            f"  searched with {search_reward}: {label} in {search_seconds:.0f} s "
            f"({len(items) * max_budget / search_seconds:.1f} candidates/s)",
            flush=True,
        )
    return out


def judged_values(scores: dict, judge: str) -> list[float]:
    """The judge's per-item values: verifier accuracy (0/1), or the shapes-clip score."""
    return correct(scores["verifier"]) if judge == "verifier" else scores[judge]


def print_tables(args, items, search_reward: str, out: dict) -> None:
    judge = next(name for name in REWARDS if name != search_reward)
    families = [family for family, _, _ in items]
    rows = families_and_overall(families)
    digits = 3 if judge == "verifier" else 2
    what = "verifier accuracy" if judge == "verifier" else "shapes-clip score"
    budgets = [0, *args.budgets]
    base = out["methods"]["default SES"][0]  # every method's budget 0 is the same base noise
    print(
        f"\nSearched with {search_reward}, judged by the {judge} ({what} of the final image, mean ± se over items)"
    )
    print("| method | budget | " + " | ".join(label for label, _ in rows) + " |")
    print("|---|---:|" + "---:|" * len(rows))
    for label, per_budget in out["methods"].items():
        for budget in budgets:
            if budget == 0 and label != "default SES":
                continue
            values = judged_values(per_budget[budget], judge)
            name = "base noise" if budget == 0 else label
            print(
                f"| {name} | {budget} | "
                + " | ".join(fmt([values[i] for i in index], digits) for _, index in rows)
                + " |"
            )

    print(
        f"\nSearched with {search_reward}: its own score (best preview seen, final image), and how often the "
        f"final image is worse than the base image's (all {len(items)} items)"
    )
    print(
        f"| method | budget | best preview ({search_reward}) | final image ({search_reward}) | final image ({judge}) | "
        f"worse than base by the {judge} | worse than base by {search_reward} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| base noise | 0 | {fmt(base['preview'], 3)} | {fmt(base[search_reward], 3)} | {fmt(judged_values(base, judge), digits)} | | |"
    )
    for label, per_budget in out["methods"].items():
        for budget in args.budgets:
            scores = per_budget[budget]
            worse_judge = [float(a < b - 1e-9) for a, b in zip(scores[judge], base[judge], strict=True)]
            worse_own = [
                float(a < b - 1e-9) for a, b in zip(scores[search_reward], base[search_reward], strict=True)
            ]
            judged = judged_values(scores, judge)
            print(
                f"| {label} | {budget} | {fmt(scores['preview'], 3)} | {fmt(scores[search_reward], 3)} | "
                f"{fmt(judged, digits)} | {fmt(worse_judge, 2)} | {fmt(worse_own, 2)} |"
            )

    def paired(first: list[float], second: list[float]) -> str:
        return fmt([a - b for a, b in zip(first, second, strict=True)], 3, signed=True)

    default, published, best_of_n = (out["methods"][name] for name in METHODS)
    print(f"\nYardsticks, searched with {search_reward} (paired differences ± se over items)")
    print(
        f"| comparison | best preview ({search_reward}) | final image ({search_reward}) | final image ({judge}) |"
    )
    print("|---|---:|---:|---:|")
    pairs = []
    if 25 in args.budgets and 50 in args.budgets:
        pairs.append(("default@25 - published@50", default[25], published[50]))
    pairs += [(f"default@{b} - best-of-N@{b}", default[b], best_of_n[b]) for b in args.budgets]
    pairs += [(f"published@{b} - best-of-N@{b}", published[b], best_of_n[b]) for b in args.budgets]
    for name, first, second in pairs:
        print(
            f"| {name} | {paired(first['preview'], second['preview'])} | {paired(first[search_reward], second[search_reward])} | "
            f"{paired(judged_values(first, judge), judged_values(second, judge))} |"
        )


def plot(args, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [0, *args.budgets]
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), squeeze=False)
    for row, (search_reward, out) in enumerate(results.items()):
        judge = next(name for name in REWARDS if name != search_reward)
        for column, (metric, title) in enumerate(
            ((judge, f"judge: {judge}"), (search_reward, f"own reward: {search_reward}"))
        ):
            axis = axes[row][column]
            for label, per_budget in out["methods"].items():
                series = [
                    correct(per_budget[b]["verifier"]) if metric == "verifier" else per_budget[b][metric]
                    for b in budgets
                ]
                means = torch.tensor([sum(v) / len(v) for v in series])
                ses = torch.tensor([torch.tensor(v).std().item() / math.sqrt(len(v)) for v in series])
                axis.plot(budgets, means, marker="o", label=label)
                axis.fill_between(budgets, means - ses, means + ses, alpha=0.2)
            axis.set_title(f"searched with {search_reward}; {title}")
            axis.set_xlabel("budget (previews scored)")
            axis.set_ylabel("verifier accuracy" if metric == "verifier" else "shapes-clip score")
            axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup(args.threads)
    generator = load_generator()
    judges = load_judges()
    items = held_out_items(args.per_family)
    preview = args.preview_steps or generator.preview_steps
    print(
        f"shapes world: {len(items)} held-out (prompt, seed) items; previews {preview} steps, final images "
        f"{generator.num_inference_steps} steps; {machine_line()}",
        flush=True,
    )
    started = time.perf_counter()
    results = {reward: run_reward(args, generator, judges, items, reward) for reward in args.search_rewards}
    print(f"searches and final images in {time.perf_counter() - started:.0f} s")
    for reward, out in results.items():
        print_tables(args, items, reward, out)
    plot(args, results, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
