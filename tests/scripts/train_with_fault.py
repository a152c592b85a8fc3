"""Run by tests/test_fault_injection.py: the training loop, SIGKILLed at a chosen point (or not at all).

    python train_with_fault.py [--kill-at {search,dpo,shard,checkpoint} --kill-round N] <OnlineDPOConfig flags>

Without `--kill-at` it is a plain `OnlineDPOTrainer(config).train()` (the reference run, or the
resume with `--resume_from_checkpoint latest`). With it, the process kills itself with SIGKILL
(no cleanup, no `finally`, no atexit) at one point of round `--kill-round`:

- ``search``: inside the pair search (`search_prompts` from `make_pairs`), after the first
  generation of candidates was generated and scored, when the second is about to be;
- ``dpo``: inside `train_on_pairs`, after `--kill-after-steps` optimizer steps;
- ``shard``: inside `PairStore.write_shard`, once the shard's `save_to_disk` into its staging
  directory has returned, before the staging directory is renamed into place;
- ``checkpoint``: inside `CheckpointManager.save`, once the checkpoint's LoRA file is on disk,
  just before `trainer_state.json` is written.

Production code is untouched: the points are reached by wrapping functions of this process only.
Before dying, the script prints `FAULT: <point> round <N>: <detail>` to stderr so the test can
check the kill happened where it meant to.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import datasets

import tscale_train.checkpointing as checkpointing
import tscale_train.io_utils as io_utils
import tscale_train.ses.driver as ses
from tscale_train.config import parse_config
from tscale_train.dpo import FlowDPOStep
from tscale_train.lora import LORA_WEIGHT_NAME
from tscale_train.pairs import PairStore
from tscale_train.trainer import OnlineDPOTrainer

KILL_POINTS = ("search", "dpo", "shard", "checkpoint")


def die(point: str, round_index: int, detail: str) -> None:
    print(f"FAULT: {point} round {round_index}: {detail}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class Phase:
    """Which round the loop is in, and in which of the wrapped calls (set by the wrappers below)."""

    round: int | None = None
    inside: str | None = None
    count = 0


def during(owner, name: str, phase: str, round_of) -> None:
    """Wrap `owner.name` so that `Phase` says we are inside it (for round `round_of(args, kwargs)`)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        previous = (Phase.round, Phase.inside, Phase.count)
        Phase.round, Phase.inside, Phase.count = round_of(args, kwargs), phase, 0
        try:
            return original(*args, **kwargs)
        finally:
            Phase.round, Phase.inside, Phase.count = previous

    setattr(owner, name, wrapper)


def argument(position: int, name: str):
    """`round_of` for `during`: the argument at `position` (self included) or passed as `name`."""
    return lambda args, kwargs: args[position] if len(args) > position else kwargs[name]


def arm(point: str, kill_round: int, output_dir: Path, kill_after_steps: int) -> None:
    def armed(phase: str) -> bool:
        return Phase.inside == phase and Phase.round == kill_round

    if point == "search":
        # make_pairs(self, round_index): the pair search, not the eval's (which runs outside make_pairs).
        during(OnlineDPOTrainer, "make_pairs", "search", argument(1, "round_index"))
        original_evaluate = ses._Evaluator._evaluate

        def evaluate(self, noises, embeds):
            if armed("search"):
                Phase.count += 1
                if Phase.count > 1:
                    die(
                        point,
                        kill_round,
                        f"{(Phase.count - 1)} generation(s) scored, {noises.shape[0]} candidates about to be",
                    )
            return original_evaluate(self, noises, embeds)

        ses._Evaluator._evaluate = evaluate
    elif point == "dpo":
        during(OnlineDPOTrainer, "train_on_pairs", "dpo", argument(2, "round_index"))
        original_step = FlowDPOStep.__call__

        def step(self, *args, **kwargs):
            if armed("dpo"):
                if Phase.count >= kill_after_steps:
                    die(point, kill_round, f"after {Phase.count} optimizer step(s)")
                Phase.count += 1
            return original_step(self, *args, **kwargs)

        FlowDPOStep.__call__ = step
    elif point == "shard":
        # write_shard(self, records, round_index, process_index)
        during(PairStore, "write_shard", "shard", argument(2, "round_index"))
        original_save = datasets.Dataset.save_to_disk

        def save_to_disk(self, dataset_path, *args, **kwargs):
            result = original_save(self, dataset_path, *args, **kwargs)
            if armed("shard"):
                staged = Path(dataset_path)
                if not (staged / "dataset_info.json").is_file():
                    raise RuntimeError(f"fault injection: {staged} holds no saved dataset")
                die(point, kill_round, f"shard staged at {staged}, not renamed in")
            return result

        datasets.Dataset.save_to_disk = save_to_disk
    elif point == "checkpoint":
        # save(self, round_index, global_step)
        during(checkpointing.CheckpointManager, "save", "checkpoint", argument(1, "round_index"))

        def before_trainer_state(path) -> None:
            if armed("checkpoint") and Path(path).name == checkpointing.TRAINER_STATE:
                checkpoints = output_dir / "checkpoints"
                loras = sorted(checkpoints.rglob(LORA_WEIGHT_NAME)) if checkpoints.is_dir() else []
                fresh = [lora for lora in loras if f"{kill_round:05d}" in str(lora.relative_to(checkpoints))]
                if not fresh:
                    raise RuntimeError(
                        f"fault injection: no LoRA file of round {kill_round} under {checkpoints}: {loras}"
                    )
                die(point, kill_round, f"LoRA written at {fresh[0]}, {path} not yet")

        # Whichever of these writes trainer_state.json, it is caught before it writes: the names
        # checkpointing.py imported, and io_utils' innermost writer (its other writers call it).
        for module, name in [
            (checkpointing, "atomic_write_json"),
            (checkpointing, "atomic_write_text"),
            (checkpointing, "atomic_write"),
            (io_utils, "atomic_write"),
        ]:
            original = getattr(module, name, None)
            if original is None:
                continue

            def wrapper(path, *args, _original=original, **kwargs):
                before_trainer_state(path)
                return _original(path, *args, **kwargs)

            setattr(module, name, wrapper)
    else:
        raise ValueError(point)


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--kill-at", choices=KILL_POINTS, default=None)
    parser.add_argument("--kill-round", type=int, default=1)
    parser.add_argument(
        "--kill-after-steps", type=int, default=2, help="dpo: optimizer steps taken before the kill"
    )
    fault, rest = parser.parse_known_args()
    config = parse_config(rest)
    if fault.kill_at:
        arm(fault.kill_at, fault.kill_round, Path(config.output_dir), fault.kill_after_steps)
    OnlineDPOTrainer(config).train()
    if fault.kill_at:
        print(f"FAULT NOT REACHED: {fault.kill_at} round {fault.kill_round}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
