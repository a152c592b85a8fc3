"""Does training on searched pairs teach the model? The online loop on the shapes world, against controls.

Every arm trains the shipped shapes model's LoRA with the demo's settings (`recipes/configs/shapes.yaml`:
4 rounds x 32 training prompts, SES budget 12 with `shapes-clip`, best vs worst, rank 8, beta 50, lr 1e-4,
4 epochs a round) on one process, for `--seeds` seeds, at the same compute (the same images generated and
the same DPO steps per round); only where the pairs come from differs:

- SES pairs: the loop as shipped (SES with `shapes-clip`, best vs worst);
- best-of-N pairs: best vs worst of i.i.d. samples (the base noise and 11 fresh ones), as Flow-Factory and
  offline Diffusion-DPO datasets make them;
- random pairs: i.i.d. samples ranked by a coin flip (`rewards.synthetic:coin_flip`): pairs with no direction;
- reversed pairs: SES with minus `shapes-clip` (`shapes_common:minus_shapes_clip`): trained away from the proxy;
- no training.

Each trained LoRA is judged by the verifier (ground truth, never seen in training) at budget 0 on held-out
(prompt, seed) items (`--eval-per-family` per task family; every arm the same noises). Reported, per task
family, with standard errors over seeds:

- the verifier gain at budget 0 of each arm over no training (and the proxy's);
- the amortisation ratio R = (budget-0 gain after training) / (gain of SES at the training budget B over
  budget 0 before training), on `--stack-per-family` items per family;
- stacking: the trained model searched at B against the untrained model searched at 2B (same items).

Usage: python bench/shapes_training.py [--quick] [--seeds 3] [--workers 2] [--eval-per-family 40]
[--stack-per-family 20] [--arms ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from shapes_common import (
    correct,
    families_and_overall,
    final_scores,
    fmt,
    held_out_items,
    load_generator,
    load_judges,
    machine_line,
    searched_scores,
)
from tiny_loop import run_jobs

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "recipes" / "configs" / "shapes.yaml"
ARMS: dict[str, dict[str, Any] | None] = {
    "SES pairs": {},
    "best-of-N pairs": dict(search="random"),
    "random pairs": dict(search="random", reward="rewards.synthetic:coin_flip"),
    "reversed pairs": dict(reward="shapes_common:minus_shapes_clip"),
    "no training": None,
}


# --quick: the smallest search and training that still run every code path (a smoke run, not a result).
QUICK_SETTINGS = dict(budget=4, popsize=2, k_elites=1, epochs_per_round=1, eval_ses_every=0)


def demo_settings(quick: bool = False) -> dict[str, Any]:
    """The demo's loop settings, without its in-loop evals and guards (this benchmark judges afterwards);
    with `quick`, `QUICK_SETTINGS`'s smaller search and training."""
    from tscale_train.parsing import read_yaml_config

    settings = read_yaml_config(DEMO_CONFIG)
    for name in ("prompts", "eval_prompts"):
        settings[name] = str(ROOT / settings[name])
    for name in (
        "guard_rewards",
        "eval_prompts",
        "max_eval_prompts",
        "eval_ses_every",
        "eval_budget",
        "output_dir",
    ):
        settings.pop(name, None)
    if quick:
        settings.update(QUICK_SETTINGS)
    return dict(settings, eval_every=0, eval_fraction=0.0, progress=False, report_to="none")


def train_and_judge(job: dict[str, Any]) -> dict[str, Any]:
    """One arm and seed: train (unless `settings` is None), then judge at budget 0 and searched."""
    from search import SESConfig
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.trainer import OnlineDPOTrainer

    started = time.perf_counter()
    quiet = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        lora = None
        if job["settings"] is not None:
            config = OnlineDPOConfig(**job["settings"], seed=job["seed"], output_dir=str(Path(tmp) / "run"))
            lora = str(OnlineDPOTrainer(config).train())
        generator = load_generator(lora=lora)
        judges = load_judges()
        search_config = SESConfig(level=None, popsize=job["popsize"], k_elites=job["k_elites"])
        result = {
            "budget0": final_scores(generator, judges, held_out_items(job["eval_per_family"])),
            "searched": {
                budget: searched_scores(
                    generator,
                    judges,
                    held_out_items(job["stack_per_family"]),
                    budget,
                    "shapes-clip",
                    search_config,
                )
                for budget in job["search_budgets"]
            },
        }
    return dict(result, seconds=time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    parser.add_argument(
        "--eval-per-family", type=int, default=40, help="budget-0 judged items per task family"
    )
    parser.add_argument(
        "--stack-per-family", type=int, default=20, help="searched items per task family (R, stacking)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every arm (default: the demo's)")
    parser.add_argument("--prompts-per-round", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (one torch thread each)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 1 round of 4 prompts, 1 item per family, the search and training of QUICK_SETTINGS",
    )
    args = parser.parse_args(argv)
    args.arms = [name.strip() for name in args.arms.split(",") if name.strip()]
    if args.quick:
        args.seeds, args.rounds, args.prompts_per_round, args.eval_per_family, args.stack_per_family = (
            1,
            1,
            4,
            1,
            1,
        )
    if not 1 <= args.stack_per_family <= args.eval_per_family:
        parser.error("--stack-per-family must be between 1 and --eval-per-family (its items are a subset)")
    unknown = [name for name in args.arms if name not in ARMS]
    if unknown or "no training" not in args.arms:
        parser.error(
            f"--arms must be among {', '.join(ARMS)} and include 'no training' (got unknown {unknown})"
        )
    return args


def accuracy_gain(after: dict, before: dict, index: list[int]) -> float:
    """Verifier accuracy of `after` minus that of `before` (scores of the same items) over the items `index`."""
    after_correct, before_correct = correct(after["verifier"]), correct(before["verifier"])
    return sum(after_correct[i] - before_correct[i] for i in index) / len(index)


def subset(scores: dict, positions: list[int]) -> dict:
    """The scores of the items at `positions`."""
    return {name: [values[i] for i in positions] for name, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = demo_settings(quick=args.quick)
    for name in ("rounds", "prompts_per_round"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    budget = int(settings["budget"])
    common = dict(
        eval_per_family=args.eval_per_family,
        stack_per_family=args.stack_per_family,
        popsize=int(settings["popsize"]),
        k_elites=int(settings["k_elites"]),
    )
    jobs, keys = [], []
    for arm in args.arms:
        overrides = ARMS[arm]
        for seed in range(args.seeds if overrides is not None else 1):
            searched = [budget, 2 * budget] if overrides is None else [budget] if arm == "SES pairs" else []
            jobs.append(
                dict(
                    common,
                    settings=None if overrides is None else dict(settings, **overrides),
                    seed=seed,
                    search_budgets=searched,
                )
            )
            keys.append((arm, seed))
    started = time.perf_counter()
    outputs = run_jobs(jobs, args.workers, train_and_judge)
    seconds = time.perf_counter() - started
    runs: dict[str, list[dict]] = {}
    for (arm, _), output in zip(keys, outputs, strict=True):
        runs.setdefault(arm, []).append(output)

    base = runs["no training"][0]
    eval_items, stack_items = held_out_items(args.eval_per_family), held_out_items(args.stack_per_family)
    eval_families = [family for family, _, _ in eval_items]
    stack_families = [family for family, _, _ in stack_items]
    position = {item: index for index, item in enumerate(eval_items)}
    stack_positions = [position[item] for item in stack_items]  # the stacking items are among the eval items
    print(
        f"shapes world, the demo's loop ({settings['rounds']} rounds x {settings['prompts_per_round']} prompts, budget {budget}, "
        f"lr {settings['learning_rate']}, beta {settings['beta']}, {settings['epochs_per_round']} epochs a round), "
        f"{args.seeds} seeds; {len(jobs)} runs in {seconds:.0f} s ({args.workers} workers); {machine_line()}\n"
    )

    rows = families_and_overall(eval_families)
    print(
        f"Verifier accuracy at budget 0 on {len(eval_families)} held-out items; trained arms: gain over no training "
        "(mean ± se over seeds)"
    )
    print("| arm | " + " | ".join(label for label, _ in rows) + " | shapes-clip gain |")
    print("|---|" + "---:|" * (len(rows) + 1))
    base_correct = correct(base["budget0"]["verifier"])
    print(
        "| no training (accuracy) | "
        + " | ".join(fmt([base_correct[i] for i in index]) for _, index in rows)
        + " | |"
    )
    base_proxy = base["budget0"]["shapes-clip"]
    for arm in args.arms:
        if arm == "no training":
            continue
        cells = [
            fmt([accuracy_gain(run["budget0"], base["budget0"], index) for run in runs[arm]], signed=True)
            for _, index in rows
        ]
        proxy = [
            sum(run["budget0"]["shapes-clip"]) / len(base_proxy) - sum(base_proxy) / len(base_proxy)
            for run in runs[arm]
        ]
        print(f"| {arm} | " + " | ".join(cells) + f" | {fmt(proxy, 2, signed=True)} |")

    stack_rows = families_and_overall(stack_families)
    untrained = base["searched"]
    budget0_stack = subset(base["budget0"], stack_positions)
    ses_gain = {label: accuracy_gain(untrained[budget], budget0_stack, index) for label, index in stack_rows}
    print(
        f"\nAmortisation ratio R = budget-0 gain after training / SES@{budget} gain before training "
        f"(verifier accuracy, {len(stack_families)} items; mean ± se over seeds)"
    )
    print("| arm | " + " | ".join(label for label, _ in stack_rows) + " |")
    print("|---|" + "---:|" * len(stack_rows))
    print(
        f"| SES@{budget} gain before training | "
        + " | ".join(f"{ses_gain[label]:+.3f}" for label, _ in stack_rows)
        + " |"
    )
    for arm in args.arms:
        if arm == "no training":
            continue
        cells = []
        for label, index in stack_rows:
            gains = [
                accuracy_gain(subset(run["budget0"], stack_positions), budget0_stack, index)
                for run in runs[arm]
            ]
            cells.append(
                fmt([gain / ses_gain[label] for gain in gains], 2, signed=True)
                if ses_gain[label] > 0
                else "n/a"
            )
        print(f"| R, {arm} | " + " | ".join(cells) + " |")

    if "SES pairs" in runs and all(budget in run["searched"] for run in runs["SES pairs"]):
        print(
            f"\nStacking: SES@{budget} on the model trained on SES pairs vs SES@{2 * budget} on the untrained model "
            f"(verifier accuracy, {len(stack_families)} items; trained: mean ± se over seeds)"
        )
        print("| | " + " | ".join(label for label, _ in stack_rows) + " |")
        print("|---|" + "---:|" * len(stack_rows))
        for name, scores in (
            ("untrained, budget 0", [budget0_stack]),
            (f"untrained, SES@{budget}", [untrained[budget]]),
            (f"untrained, SES@{2 * budget}", [untrained[2 * budget]]),
            (f"trained, SES@{budget}", [run["searched"][budget] for run in runs["SES pairs"]]),
        ):
            cells = []
            for _, index in stack_rows:
                means = [sum(correct(s["verifier"])[i] for i in index) / len(index) for s in scores]
                cells.append(fmt(means))
            print(f"| {name} | " + " | ".join(cells) + " |")
        overall = stack_rows[-1][1]
        differences = [
            accuracy_gain(run["searched"][budget], untrained[2 * budget], overall)
            for run in runs["SES pairs"]
        ]
        print(
            f"| trained SES@{budget} - untrained SES@{2 * budget} (overall) | {fmt(differences, signed=True)} |"
        )
    print(
        "\nseconds per run: "
        + ", ".join(f"{arm} {sum(r['seconds'] for r in rs) / len(rs):.0f}" for arm, rs in runs.items())
    )


if __name__ == "__main__":
    main()
