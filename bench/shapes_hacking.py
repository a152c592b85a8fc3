"""Reward hacking on the shapes world, and the guards that catch it.

The loop trains the shapes model on `shapes-clip` (the learned proxy) with the demo's settings except a
higher learning rate and more rounds (`--learning-rate`, `--rounds`), and judges every round, on the
held-out eval prompts at budget 0, the proxy (`eval/reward_budget0`) and the verifier (`guard/verifier`,
ground truth, never used for pairs). Three runs, one process each, seed 0:

- `warn`: the hacking run with `guard_policy=warn`: it trains to the end, so its curves show what an
  unguarded run does (the plot);
- `stop`: the same run with `guard_policy=stop` (tolerance `--tolerance`, patience 2): up to its stop it
  is the `warn` run; it must end with the LoRA of the last round whose guards held;
- `default`: the demo's own settings (`recipes/configs/shapes.yaml`) guarded with `guard_policy=stop`.

Afterwards every final LoRA and the base model are judged on `--eval-per-family` held-out items per task
family (not the loop's eval prompts' seeds), by verifier accuracy with its standard error, so "lost
verifier accuracy" means more than a standard error below the base model.

Usage: python bench/shapes_hacking.py [--quick] [--rounds 10] [--learning-rate 5e-4] [--eval-per-family 40]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from shapes_common import (
    correct,
    final_scores,
    fmt,
    held_out_items,
    load_generator,
    load_judges,
    machine_line,
)
from shapes_training import demo_settings
from tiny_loop import run_jobs

RESULTS = Path(__file__).parent / "results"


def run_loop(job: dict[str, Any]) -> dict[str, Any]:
    """One guarded loop run, then its final LoRA judged on the held-out items."""
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.trainer import OnlineDPOTrainer

    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        lora = None
        rows, report = [], None
        if job["settings"] is not None:
            out = OnlineDPOTrainer(
                OnlineDPOConfig(**job["settings"], output_dir=str(Path(tmp) / "run"))
            ).train()
            rows = [
                json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()
            ]
            report_file = out / "guard" / "report.json"
            report = json.loads(report_file.read_text()) if report_file.is_file() else None
            lora = str(out)
        judged = final_scores(
            load_generator(lora=lora), load_judges(), held_out_items(job["eval_per_family"])
        )
    return dict(
        rows=[row for row in rows if "guard/verifier" in row],
        report=report,
        judged=judged,
        seconds=time.perf_counter() - started,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument(
        "--epochs", type=int, default=8, help="DPO passes over a round's pairs in the hacking runs"
    )
    parser.add_argument("--tolerance", type=float, default=0.05, help="guard_tolerance of the guarded runs")
    parser.add_argument(
        "--eval-prompts", type=int, default=32, help="the loop's eval prompts (max_eval_prompts)"
    )
    parser.add_argument(
        "--eval-per-family", type=int, default=40, help="held-out items per family judging the final LoRAs"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=RESULTS / "shapes_hacking.png")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 rounds of 4 prompts, 1 epoch, 4 eval prompts, the search of shapes_training.QUICK_SETTINGS",
    )
    args = parser.parse_args(argv)
    args.prompts_per_round = None
    if args.quick:
        args.rounds, args.eval_prompts, args.eval_per_family, args.prompts_per_round = 2, 4, 1, 4
        args.epochs = 1
    return args


def plot(rows: list[dict[str, Any]], stop: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    figure, axis = plt.subplots(figsize=(7, 3.8), dpi=120)
    axis.plot(
        rounds,
        [row["eval/reward_budget0"] for row in rows],
        marker="o",
        color="tab:blue",
        label="shapes-clip (trained on)",
    )
    axis.set_xlabel("round (-1: before training)")
    axis.set_ylabel("shapes-clip, eval prompts, budget 0", color="tab:blue")
    twin = axis.twinx()
    twin.plot(
        rounds,
        [row["guard/verifier"] for row in rows],
        marker="s",
        color="tab:red",
        label="verifier (held out)",
    )
    twin.set_ylabel("verifier, eval prompts, budget 0", color="tab:red")
    report = stop["report"]
    if report:
        axis.axvline(
            report["stopped_at_round"],
            color="gray",
            linestyle=":",
            label=f"stop run stops: round {report['stopped_at_round']}",
        )
        axis.axvline(
            report["final_lora_round"],
            color="green",
            linestyle="--",
            label=f"stop run keeps: round {report['final_lora_round']}",
        )
    lines = axis.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    axis.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=7, loc="lower left")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    demo = demo_settings(quick=args.quick)
    guarded = dict(
        guard_rewards="verifier",
        eval_every=1,
        max_eval_prompts=args.eval_prompts,
        guard_tolerance=args.tolerance,
        eval_prompts=str(Path(demo["prompts"]).with_name("shapes_eval_prompts.txt")),
        seed=0,
    )
    if args.prompts_per_round:
        demo["prompts_per_round"] = args.prompts_per_round
    hacking = dict(
        demo, **guarded, rounds=args.rounds, learning_rate=args.learning_rate, epochs_per_round=args.epochs
    )
    default_rounds = min(demo["rounds"], args.rounds)
    runs = {
        "warn": dict(hacking, guard_policy="warn"),
        "stop": dict(hacking, guard_policy="stop", checkpoint_every=1, checkpoints_total_limit=0),
        "default": dict(
            demo,
            **guarded,
            rounds=default_rounds,
            guard_policy="stop",
            checkpoint_every=1,
            checkpoints_total_limit=0,
        ),
        "base model": None,
    }
    started = time.perf_counter()
    jobs = [dict(settings=settings, eval_per_family=args.eval_per_family) for settings in runs.values()]
    results = dict(zip(runs, run_jobs(jobs, args.workers, run_loop), strict=True))
    print(
        f"shapes world, trained on shapes-clip, judged by the verifier; hacking runs: lr {args.learning_rate}, "
        f"{args.epochs} epochs a round, {args.rounds} rounds; guards: tolerance {args.tolerance}, patience 2; "
        f"{len(runs)} runs in {time.perf_counter() - started:.0f} s ({args.workers} workers); {machine_line()}\n"
    )

    warn_rows = results["warn"]["rows"]
    print(f"The warn run, every round ({args.eval_prompts} eval prompts, budget 0)")
    print("| round | shapes-clip | verifier (guard) | guards held |")
    print("|---:|---:|---:|---|")
    for row in warn_rows:
        print(
            f"| {row['round']} | {row['eval/reward_budget0']:.3f} | {row['guard/verifier']:.3f} | "
            f"{'yes' if row.get('guard/held') == 1.0 else 'no'} |"
        )
    for name in ("stop", "default"):
        report = results[name]["report"]
        rows = results[name]["rows"]
        if report:
            print(
                f"\n{name} run: stopped at round {report['stopped_at_round']}, final LoRA = round {report['final_lora_round']}; "
                f"fired: {'; '.join(report['failures'])}"
            )
        else:
            print(
                f"\n{name} run: no guard stopped it ({len(rows) - 1} rounds; held at every eval: "
                f"{all(row.get('guard/held') == 1.0 for row in rows)})"
            )

    items = held_out_items(args.eval_per_family)
    base = correct(results["base model"]["judged"]["verifier"])
    print(
        f"\nThe final LoRAs on {len(items)} held-out items (budget 0): verifier accuracy, and the paired change from the "
        "base model (± se over items)"
    )
    print("| model | verifier accuracy | change | shapes-clip |")
    print("|---|---:|---:|---:|")
    for name, result in results.items():
        accuracy = correct(result["judged"]["verifier"])
        change = (
            fmt([a - b for a, b in zip(accuracy, base, strict=True)], signed=True)
            if name != "base model"
            else ""
        )
        print(f"| {name} | {fmt(accuracy)} | {change} | {fmt(result['judged']['shapes-clip'], 2)} |")
    plot(
        warn_rows,
        results["stop"],
        args.plot,
        f"shapes model trained on shapes-clip, lr {args.learning_rate}, {args.epochs} epochs/round: warn run",
    )
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
