"""Short runs of the online loop on the tiny kit, shared by `bench/amortisation.py` and `bench/pair_sources.py`.

Each run trains a LoRA on all linears of the tiny FLUX.2-klein (the tiny model does not move with the
attention projections alone: measured, a brightness reward moved < 0.1 sd in 5 rounds) for a few rounds and returns its `metrics.jsonl` rows. Runs
go to a pool of worker processes, each on one torch thread, so a result does not depend on how many run
side by side. Rewards are the synthetic ones: the random VAE makes them nearly flat, so shifts are
reported in units of the eval prompts' spread before training (round -1), as the loop's own summary does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The settings every benchmark run shares; a job overrides some of them. No diversity guard: these runs
# measure learning to the last round (the tiny model trained on brightness loses diversity and would stop;
# `bench/guards.py` shows that).
LOOP_SETTINGS: dict[str, Any] = dict(
    guard_diversity_seeds=0,
    model="tiny",
    dtype="float32",
    popsize=4,
    k_elites=2,
    rounds=3,
    prompts_per_round=16,
    epochs_per_round=30,
    train_batch_size=4,
    beta=1.0,
    learning_rate=1e-3,
    lora_rank=8,
    lora_target_modules="all_linear",
    eval_every=1,
    max_eval_prompts=12,
    eval_fraction=0.3,
    checkpoint_every=0,
    checkpoints_total_limit=1,
    eval_batch_size=8,
    progress=False,
    report_to="none",
)


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both loop benchmarks share: seeds, rounds, the round's size, and the worker pool."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=LOOP_SETTINGS["rounds"])
    parser.add_argument("--prompts-per-round", type=int, default=LOOP_SETTINGS["prompts_per_round"])
    parser.add_argument(
        "--epochs",
        type=int,
        default=LOOP_SETTINGS["epochs_per_round"],
        help="DPO passes over a round's pairs",
    )
    parser.add_argument(
        "--rewards", default="brightness,redness", help="synthetic reward names or module:callable"
    )
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (one torch thread each)")


def loop_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `LOOP_SETTINGS` overrides of `add_loop_arguments`' flags."""
    return dict(rounds=args.rounds, prompts_per_round=args.prompts_per_round, epochs_per_round=args.epochs)


def describe(args: argparse.Namespace, runs: int, seconds: float) -> str:
    """The first line of a loop benchmark's output: what was trained, how often, how long it took."""
    return (
        f"tiny FLUX.2-klein, LoRA on all linears (rank {LOOP_SETTINGS['lora_rank']}, beta {LOOP_SETTINGS['beta']}, "
        f"lr {LOOP_SETTINGS['learning_rate']}), {args.rounds} rounds x {args.prompts_per_round} prompts x "
        f"{args.epochs} epochs, popsize {LOOP_SETTINGS['popsize']}, {args.seeds} seeds; {runs} runs in {seconds:.0f} s "
        f"({args.workers} workers)"
    )


def synthetic(name: str) -> str:
    """A synthetic reward's loadable name: `brightness` -> `rewards.synthetic:brightness`."""
    from rewards.registry import BUILTIN_REWARDS

    return name if ":" in name or name in BUILTIN_REWARDS else f"rewards.synthetic:{name}"


def _init_worker() -> None:
    import datasets
    import torch

    # One thread per worker: the workers share the cores, and float reductions then do not depend on the pool.
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _run(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One training run (or, with `only_eval_budget`, one eval of the untrained model): its metrics rows."""
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.trainer import OnlineDPOTrainer

    job = dict(job)
    only_eval_budget = job.pop("only_eval_budget", None)
    # The loop's per-round lines and loading bars would interleave across workers; the tables say it all.
    quiet = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        config = OnlineDPOConfig(**{**LOOP_SETTINGS, **job, "output_dir": str(Path(tmp) / "run")})
        if only_eval_budget is not None:
            config.eval_budget = only_eval_budget
            trainer = OnlineDPOTrainer(config)
            return [{"round": -1, **trainer.evaluate(-1, with_search=True)}]
        out = OnlineDPOTrainer(config).train()
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_jobs(
    jobs: Sequence[dict[str, Any]], workers: int, function: Callable[[dict[str, Any]], Any] = _run
) -> list[Any]:
    """`function(job)` for every job (default: the job's loop run, its metrics rows), in job order;
    `workers` processes at once, each on one torch thread."""
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            _init_worker()
            return [function(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)  # in-process (a test): leave the caller's threads as they were
    context = multiprocessing.get_context("spawn")  # no fork of a process that already holds torch threads
    pool = context.Pool(workers, initializer=_init_worker)
    try:
        return pool.map(function, jobs, chunksize=1)
    finally:
        pool.close()  # a clean shutdown, not the context manager's terminate()
        pool.join()


def eval_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The eval rows of a run by round (-1: before training)."""
    return {row["round"]: row for row in rows if row.get("eval/reward_budget0") is not None}


def in_sd(value: float, before: dict[str, Any]) -> float:
    """A reward as a shift from the untrained budget-0 reward, in eval standard deviations."""
    spread = before.get("eval/reward_budget0_std") or math.nan
    return (value - before["eval/reward_budget0"]) / spread


def mean_spread(values: Sequence[float]) -> str:
    """`mean ± sd` over seeds (sd of the seeds, not the standard error), or `n/a`."""
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return "n/a"
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):+.2f} ± {spread:.2f}"
