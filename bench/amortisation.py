"""What training amortises: how much of the search's gain one unsearched sample keeps after training.

On the tiny loop, for each reward and search budget B (the training search and the eval search both at B):

    R = (budget-0 reward after training - budget-0 before) / (SES@B reward before training - budget-0 before)

per round, read from the loop's own `eval/amortisation_ratio` in `metrics.jsonl` (what users see on real
runs). R = 0: training moved nothing; R = 1: one sample of the trained model is as good as a search of B
candidates was on the untrained one. The coin-flip control trains on pairs ranked by a reward with no
direction (`rewards.synthetic:coin_flip`) and is evaluated on the same reward, so its R is what noise alone
gives; it is trained once per seed (at the middle budget) and divided by each budget's SES gain.

Stacking: SES@B on the trained model against SES@2B on the untrained one (all on the same held-out prompts
and seeds: the eval split and its seeds depend only on the run's seed), i.e. whether training plus search
beats spending twice the search. SES@2B untrained comes from the same seed's run at budget 2B where there is
one, else from one extra eval of the untrained model.

Means ± sd over seeds; rewards in eval standard deviations (the spread of the held-out prompts' budget-0
rewards before training). Usage: python bench/amortisation.py [--seeds 3] [--budgets 8,16,32]
[--rewards brightness,redness] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="8,16,32")
    add_loop_arguments(parser)
    args = parser.parse_args()
    budgets = [int(value) for value in args.budgets.split(",")]
    rewards = [value.strip() for value in args.rewards.split(",") if value.strip()]
    seeds = list(range(args.seeds))
    control_budget = budgets[len(budgets) // 2]
    loop = loop_overrides(args)

    jobs, keys = [], []
    for reward in rewards:
        for seed in seeds:
            for budget in budgets:
                jobs.append(
                    dict(loop, reward=synthetic(reward), budget=budget, eval_budget=budget, seed=seed)
                )
                keys.append(("train", reward, budget, seed))
            jobs.append(
                dict(
                    loop,
                    reward=synthetic("coin_flip"),
                    eval_reward=synthetic(reward),
                    budget=control_budget,
                    eval_budget=control_budget,
                    seed=seed,
                )
            )
            keys.append(("control", reward, control_budget, seed))
            for budget in budgets:
                if 2 * budget not in budgets:
                    jobs.append(
                        dict(reward=synthetic(reward), budget=budget, only_eval_budget=2 * budget, seed=seed)
                    )
                    keys.append(("untrained", reward, 2 * budget, seed))
    started = time.perf_counter()
    results = dict(zip(keys, run_jobs(jobs, args.workers), strict=True))
    seconds = time.perf_counter() - started

    print(describe(args, len(jobs), seconds) + "\n")
    print(
        "Amortisation ratio R per round (mean ± sd over seeds); SES gain = SES@B before training, in eval sd"
    )
    rounds = list(range(args.rounds))
    print(
        "| reward | trained on | B | SES gain before (sd) | "
        + " | ".join(f"R after round {r}" for r in rounds)
        + " |"
    )
    print("|---|---|---:|---:|" + "---:|" * len(rounds))
    for reward in rewards:
        for budget in budgets:
            runs = [eval_rows(results[("train", reward, budget, seed)]) for seed in seeds]
            gains = [in_sd(run[-1]["eval/reward_ses"], run[-1]) for run in runs]
            ratios = [[run.get(r, {}).get("eval/amortisation_ratio") for run in runs] for r in rounds]
            print(
                f"| {reward} | {reward} | {budget} | {mean_spread(gains)} | "
                + " | ".join(mean_spread(v) for v in ratios)
                + " |"
            )
        for budget in budgets:
            # The control's budget-0 change over each budget's SES gain (same seed: same eval prompts and seeds).
            ratios = []
            for r in rounds:
                values = []
                for seed in seeds:
                    control = eval_rows(results[("control", reward, control_budget, seed)])
                    before = eval_rows(results[("train", reward, budget, seed)])[-1]
                    gain = before["eval/reward_ses"] - before["eval/reward_budget0"]
                    after = control.get(r, {}).get("eval/reward_budget0")
                    values.append(
                        (after - before["eval/reward_budget0"]) / gain
                        if after is not None and gain > 0
                        else None
                    )
                ratios.append(values)
            print(
                f"| {reward} | coin flip (control) | {budget} | | "
                + " | ".join(mean_spread(v) for v in ratios)
                + " |"
            )

    print(
        "\nStacking: SES@B on the trained model vs SES@2B on the untrained one (eval sd from the untrained budget 0)"
    )
    print(
        "| reward | B | budget 0 trained | SES@B trained | SES@2B untrained | SES@B trained - SES@2B untrained |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for reward in rewards:
        for budget in budgets:
            trained, untrained_2b, budget0 = [], [], []
            for seed in seeds:
                run = eval_rows(results[("train", reward, budget, seed)])
                before, after = run[-1], run[max(run)]
                source = (
                    ("train", reward, 2 * budget, seed)
                    if 2 * budget in budgets
                    else ("untrained", reward, 2 * budget, seed)
                )
                doubled = eval_rows(results[source])[-1]
                budget0.append(in_sd(after["eval/reward_budget0"], before))
                trained.append(in_sd(after["eval/reward_ses"], before))
                untrained_2b.append(in_sd(doubled["eval/reward_ses"], before))
            difference = [a - b for a, b in zip(trained, untrained_2b, strict=True)]
            print(
                f"| {reward} | {budget} | {mean_spread(budget0)} | {mean_spread(trained)} | {mean_spread(untrained_2b)} | "
                f"{mean_spread(difference)} |"
            )


if __name__ == "__main__":
    main()
