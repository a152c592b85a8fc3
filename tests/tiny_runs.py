"""The settings of a short training run on the tiny kit, shared by the tests that train (a helper, not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tscale_train.config import OnlineDPOConfig

# Brightness on the tiny klein: 2 rounds of 4 prompts, a 4-candidate search, a rank-4 LoRA. Seconds on a CPU.
TINY_RUN: dict[str, Any] = dict(
    model="tiny",
    dtype="float32",
    reward="rewards.synthetic:brightness",
    budget=4,
    popsize=2,
    k_elites=2,
    rounds=2,
    prompts_per_round=4,
    epochs_per_round=1,
    train_batch_size=2,
    lora_rank=4,
    seed=0,
)


def tiny_run_config(output_dir: str | Path, **overrides: Any) -> OnlineDPOConfig:
    """`TINY_RUN` writing to `output_dir`, with `overrides` on top."""
    return OnlineDPOConfig(**{**TINY_RUN, "output_dir": str(output_dir), **overrides})
