"""Which pairs teach the most, at an equal number of generated images per round.

On the tiny loop, every source generates `budget` candidates per prompt for the same prompts each round
(same seeds, same base noises) and trains the same LoRA the same way; only where the pairs come from
differs:

- SES best vs worst: the search's best and worst candidates (the default);
- SES best vs base: the search's best against the unsearched base noise;
- best-of-N best vs worst: best and worst of i.i.d. samples (the base noise and budget - 1 fresh ones),
  what offline Diffusion-DPO datasets and other online trainers use;
- random pairs (control): i.i.d. samples ranked by a coin flip (`rewards.synthetic:coin_flip`), so the
  pairs carry no direction.

Reported: the budget-0 eval reward after each round, as a shift from the untrained model in eval standard
deviations (mean ± sd over seeds), and the mean reward margin of the pairs (in the trained reward). Usage:
python bench/pair_sources.py [--seeds 3] [--rounds 3] [--budget 16] [--rewards brightness] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tiny_loop import (
    add_loop_arguments,
    describe,
    eval_rows,
    in_sd,
    loop_overrides,
    mean_spread,
    run_jobs,
    synthetic,
)

SOURCES: dict[str, dict[str, str]] = {
    "SES best vs worst": dict(search="ses", pairing="best_vs_worst"),
    "SES best vs base": dict(search="ses", pairing="best_vs_base"),
    "best-of-N best vs worst": dict(search="random", pairing="best_vs_worst"),
    "random pairs (control)": dict(
        search="random", pairing="best_vs_worst", reward="rewards.synthetic:coin_flip"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget", type=int, default=16, help="images generated per prompt per round, for every source"
    )
    add_loop_arguments(parser)
    args = parser.parse_args()
    rewards = [value.strip() for value in args.rewards.split(",") if value.strip()]
    seeds = list(range(args.seeds))

    jobs, keys = [], []
    for reward in rewards:
        for source, settings in SOURCES.items():
            for seed in seeds:
                # The control ranks its pairs by its own reward (a coin flip); every source is evaluated on `reward`.
                jobs.append(
                    {
                        **loop_overrides(args),
                        "reward": synthetic(reward),
                        **settings,
                        "eval_reward": synthetic(reward),
                        "budget": args.budget,
                        "eval_budget": args.budget,
                        "seed": seed,
                    }
                )
                keys.append((reward, source, seed))
    started = time.perf_counter()
    results = dict(zip(keys, run_jobs(jobs, args.workers), strict=True))
    seconds = time.perf_counter() - started

    print(
        describe(args, len(jobs), seconds) + f"; {args.budget} images per prompt per round for every source\n"
    )
    rounds = list(range(args.rounds))
    print(
        "Budget-0 eval reward after each round, shift from the untrained model in eval sd (mean ± sd over seeds)"
    )
    print(
        "| eval reward | pairs | " + " | ".join(f"after round {r}" for r in rounds) + " | mean pair margin |"
    )
    print("|---|---|" + "---:|" * len(rounds) + "---:|")
    ranking = {}
    for reward in rewards:
        for source in SOURCES:
            runs = [eval_rows(results[(reward, source, seed)]) for seed in seeds]
            shifts = [
                [in_sd(run[r]["eval/reward_budget0"], run[-1]) for run in runs if r in run] for r in rounds
            ]
            margins = [
                row["train/reward_margin"]
                for seed in seeds
                for row in results[(reward, source, seed)]
                if row.get("train/reward_margin") is not None
            ]
            # Margins are in the reward the pairs were ranked by: the control's are coin-flip units.
            margin = (
                f"{statistics.mean(margins):.4f}" if margins and "reward" not in SOURCES[source] else "n/a"
            )
            print(
                f"| {reward} | {source} | "
                + " | ".join(mean_spread(values) for values in shifts)
                + f" | {margin} |"
            )
            ranking.setdefault(reward, {})[source] = shifts[-1]
    # Per reward: shifts of different rewards are not on one scale, so they are never pooled.
    for reward, by_source in ranking.items():
        order = sorted(by_source, key=lambda source: -statistics.mean(by_source[source]))
        print(
            f"\n{reward}, ranked by the shift after round {rounds[-1]}: "
            + " > ".join(f"{source} ({mean_spread(by_source[source])})" for source in order)
        )


if __name__ == "__main__":
    main()
