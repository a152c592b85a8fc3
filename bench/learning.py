"""Does the online loop learn on the tiny model? Brightness reward vs a coin-flip control.

Prints, per round, the budget-0 eval reward (brightness) as a shift from the untrained baseline in
units of the eval set's spread. Usage: python bench/learning.py [--rounds 5] [--beta 5] ...
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from tscale_train.config import OnlineDPOConfig
from tscale_train.trainer import OnlineDPOTrainer


def run(reward: str, args, out: Path) -> list[float]:
    config = OnlineDPOConfig(
        model="tiny", dtype="float32", reward=reward, eval_reward="rewards.synthetic:brightness", budget=args.budget, popsize=args.popsize, k_elites=2,
        rounds=args.rounds, prompts_per_round=args.prompts, epochs_per_round=args.epochs, train_batch_size=4,
        beta=args.beta, learning_rate=args.lr, lora_rank=8, eval_every=1, eval_ses_every=0, checkpoint_every=0,
        max_eval_prompts=16, eval_fraction=0.2, output_dir=str(out), progress=False, seed=args.seed,
        lora_target_modules=args.targets or OnlineDPOConfig.lora_target_modules,
    )
    if args.prompts_file:
        config.prompts = args.prompts_file
    OnlineDPOTrainer(config).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--popsize", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default=None)
    parser.add_argument("--prompts-file", default=None)
    args = parser.parse_args()
    table = {}
    for reward in ("rewards.synthetic:brightness", "rewards.synthetic:coin_flip"):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(reward, args, Path(tmp))
        table[reward] = (rows, time.perf_counter() - started)
    print(f"beta={args.beta} lr={args.lr} epochs={args.epochs} budget={args.budget} prompts/round={args.prompts}")
    print("| run | round | eval brightness (budget 0) | shift (eval sd) | implicit_acc_new | s/round |")
    print("|---|---|---|---|---|---|")
    for reward, (rows, _seconds) in table.items():
        evals = [row for row in rows if "eval/reward_budget0" in row]
        base, spread = evals[0]["eval/reward_budget0"], evals[0]["eval/reward_budget0_std"]
        for row in evals:
            shift = (row["eval/reward_budget0"] - base) / spread
            print(f"| {reward.split(':')[-1]} | {row['round']} | {row['eval/reward_budget0']:.5f} | {shift:+.2f} | "
                  f"{row.get('train/implicit_acc_new', float('nan')):.2f} | {row.get('time/round_seconds', 0):.1f} |")


if __name__ == "__main__":
    main()
