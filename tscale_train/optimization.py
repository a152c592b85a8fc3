"""The LoRA's optimizer and learning-rate schedule, sized to the run (as diffusers' training scripts do)."""

from __future__ import annotations

import math

import torch

from .config import OnlineDPOConfig


def optimizer_steps_per_round(config: OnlineDPOConfig, num_processes: int) -> int:
    """Optimizer steps of one round: its pairs over all processes, in micro-batches, accumulated, per epoch."""
    pairs = config.prompts_per_round * config.pairs_per_prompt
    per_step = config.train_batch_size * config.gradient_accumulation_steps * num_processes
    return config.epochs_per_round * math.ceil(pairs / per_step)


def make_optimizer(config: OnlineDPOConfig, parameters: list[torch.nn.Parameter], num_processes: int):
    """AdamW over the LoRA parameters and the configured diffusers scheduler over all rounds."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    total_steps = max(1, optimizer_steps_per_round(config, num_processes) * config.rounds)
    # accelerate steps a prepared scheduler once per process, hence the factor (as diffusers' scripts do).
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=total_steps * num_processes,
    )
    return optimizer, scheduler
