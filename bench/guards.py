"""The guards on the tiny loop: a run that hacks its reward stops itself, a run whose guards hold does not.

Every run trains the tiny FLUX.2-klein with the tiny loop's settings (recipes/configs/tiny.yaml; one process, six rounds) and
logs the guards at every eval, with a tolerance of 1%. The runs:

- `stop`: trained on brightness, guarded by a judge that contradicts it (darkness); `guard_policy=stop`.
- `warn`: the same with `guard_policy=warn`, so it trains to the end (what the stop avoided), and with
  the diversity guard measured too. Guards do not touch training: up to the stop it is the `stop` run.
- `holding`: trained on redness, guarded by darkness, which redness training leaves alone: it holds,
  so the run must end with the LoRA of
- `unguarded`: the same redness training without any guard.

The diversity guard is off in `stop` and `holding`: the tiny model loses it under any reward (see the
`warn` table), so it would fire in every run here.

Prints one table per run (the eval reward in sd of round -1, each guard, and whether all held), whether
`holding` ended with the same LoRA as `unguarded`, and plots the `warn` run's curves with the `stop`
run's stop and kept rounds marked (`bench/results/guards.png`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tiny_loop import LOOP_SETTINGS, in_sd, synthetic

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 0.01
DARKNESS_JUDGE = dict(
    guard_rewards=synthetic("darkness"), guard_diversity_seeds=0, guard_tolerance=TOLERANCE, guard_patience=2
)
RUNS = {
    "stop": dict(DARKNESS_JUDGE, reward=synthetic("brightness")),
    "warn": dict(
        DARKNESS_JUDGE, reward=synthetic("brightness"), guard_diversity_seeds=4, guard_policy="warn"
    ),
    "holding": dict(DARKNESS_JUDGE, reward=synthetic("redness")),
    "unguarded": dict(reward=synthetic("redness"), guard_diversity_seeds=0),
}
# The tiny loop (recipes/configs/tiny.yaml) on one process, with per-round checkpoints to compare LoRAs.
DEMO = dict(
    budget=16,
    popsize=8,
    k_elites=2,
    eval_budget=8,
    eval_batch_size=8,
    max_eval_prompts=16,
    eval_fraction=0.2,
    eval_ses_every=0,
    checkpoint_every=1,
    checkpoints_total_limit=0,
)


def run(name: str, rounds: int, root: Path) -> tuple[list[dict[str, Any]], Path]:
    """One run in this process: its metrics rows and output dir."""
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.trainer import OnlineDPOTrainer

    settings = {
        **LOOP_SETTINGS,
        **DEMO,
        **RUNS[name],
        "rounds": rounds,
        "output_dir": str(root / name),
        "seed": 0,
    }
    out = OnlineDPOTrainer(OnlineDPOConfig(**settings)).train()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], out


def table(name: str, rows: list[dict[str, Any]]) -> str:
    """One row per eval: the eval reward's shift in sd of round -1, the judge, diversity, drift, all held."""
    judges = [key for key in ("guard/darkness",) if key in rows[0]]
    columns = ["eval reward (sd)", *judges, "guard/diversity", "guard/brightness_drift", "guard/held"]
    lines = [f"| {name}: round | " + " | ".join(columns) + " |", "|---:" * (len(columns) + 1) + "|"]
    before = rows[0]
    for row in rows:
        cells = [f"{in_sd(row['eval/reward_budget0'], before):+.1f}"]
        cells += [f"{row[key]:.4f}" for key in judges]
        cells += [
            f"{row[key]:.3f}" if key in row else "-" for key in ("guard/diversity", "guard/brightness_drift")
        ]
        cells.append("yes" if row.get("guard/held") == 1.0 else "no")
        lines.append(f"| {row['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    warn_rows: list[dict[str, Any]],
    stop_rows: list[dict[str, Any]],
    report: dict[str, Any] | None,
    path: Path,
) -> None:
    """The warn run's curves (it trains to the end), the stop run's judge and floor, its stop and kept rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in warn_rows]
    before = warn_rows[0]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=120)
    series = [
        (
            "eval reward: brightness (sd of round -1)",
            [in_sd(row["eval/reward_budget0"], before) for row in warn_rows],
            None,
        ),
        (
            "judge: guard/darkness",
            [row["guard/darkness"] for row in warn_rows],
            stop_rows[0]["guard/darkness"] * (1 + TOLERANCE),
        ),
        (
            "guard/diversity (round -1 = 1; off in the stop run)",
            [row["guard/diversity"] for row in warn_rows],
            1 - TOLERANCE,
        ),
    ]
    for axis, (title, values, floor) in zip(axes, series, strict=True):
        axis.plot(
            rounds,
            values,
            marker="o",
            label="warn run (4 seeds per prompt)" if floor and "darkness" in title else None,
        )
        if "darkness" in title:
            axis.plot(
                [row["round"] for row in stop_rows],
                [row["guard/darkness"] for row in stop_rows],
                marker="x",
                label="stop run (1 seed per prompt)",
            )
        if floor is not None:
            axis.axhline(
                floor, color="gray", linestyle="--", label=f"fails below (tolerance {TOLERANCE:.0%})"
            )
        if report:
            axis.axvline(
                report["stopped_at_round"],
                color="red",
                linestyle=":",
                label=f"stop: round {report['stopped_at_round']}",
            )
            axis.axvline(
                report["final_lora_round"],
                color="green",
                linestyle=":",
                label=f"kept: round {report['final_lora_round']}",
            )
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("round")
        axis.legend(fontsize=7)
    figure.suptitle(
        "tiny klein trained on brightness, guarded by darkness (guard_patience 2): the warn run, "
        "with the stop run's stop and kept rounds",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def same_lora(first: Path, second: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    from tscale_train.lora import LORA_WEIGHT_NAME

    a, b = load_file(str(first / LORA_WEIGHT_NAME)), load_file(str(second / LORA_WEIGHT_NAME))
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--plot", type=Path, default=RESULTS / "guards.png")
    args = parser.parse_args()
    import contextlib
    import io
    import warnings

    import datasets
    import torch

    torch.set_num_threads(1)  # as the other loop benchmarks: results do not depend on the machine's load
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results: dict[str, tuple[list[dict[str, Any]], Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results[name] = run(name, args.rounds, Path(tmp))
        report_file = results["stop"][1] / "guard" / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else None
        holding_is_unguarded = same_lora(results["holding"][1], results["unguarded"][1])
        kept_is_checkpoint = report is not None and same_lora(
            results["stop"][1],
            results["stop"][1] / "checkpoints" / f"checkpoint-{report['final_lora_round']:05d}",
        )
    print(
        f"tiny FLUX.2-klein, tiny.yaml settings, {args.rounds} rounds, tolerance {TOLERANCE:.0%}, patience 2; "
        f"{len(RUNS)} runs in {time.perf_counter() - started:.0f} s\n"
    )
    for name, (rows, _) in results.items():
        print(table(f"{name} ({RUNS[name]['reward'].split(':')[-1]})", rows) + "\n")
    if report:
        print(
            f"stop: stopped at round {report['stopped_at_round']}, final LoRA = round {report['final_lora_round']} "
            f"(identical to that round's checkpoint: {kept_is_checkpoint}); fired: {'; '.join(report['failures'])}"
        )
    else:
        print("stop: no guard fired")
    print(
        f"holding: every guard held at every eval: {all(row.get('guard/held') == 1.0 for row in results['holding'][0])}; "
        f"final LoRA identical to the unguarded run's: {holding_is_unguarded}"
    )
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results["warn"][0], results["stop"][0], report, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
