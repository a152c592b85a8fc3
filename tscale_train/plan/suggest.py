"""Settings that fit: the lever searches behind a :class:`MemoryPlan`'s ``suggestions``.

Each search is given a ``replan(overrides)`` callable (the plan with those settings changed,
without suggestions), so this module needs nothing of how a plan is estimated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .memory import MemoryPlan


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"--{name} {value}"


# Which phases each lever lowers; prompt encoding (text encoder + transformer together) has none.
_LEVER_PHASES = {
    "gradient_checkpointing": {"dpo"},
    "train_batch_size": {"dpo"},
    "eval_batch_size": {"search", "eval"},
    "offload_text_encoder": {"search", "dpo", "eval"},
    "offload_reward": {"dpo"},
    "reward_batch_size": {"search", "eval"},
    "height": {"search", "dpo", "eval"},
    "quantize_base": {"encode", "search", "dpo", "eval"},
}


def _training_levers(config, plan: MemoryPlan) -> Iterator[dict[str, Any]]:
    """The usual levers, cheapest in quality first; each yields one change to try."""
    if not config.gradient_checkpointing:
        yield {"gradient_checkpointing": True}
    if config.train_batch_size > 1:
        yield {"train_batch_size": 1}
    batch = config.eval_batch_size
    while batch > 1:
        batch //= 2
        yield {"eval_batch_size": batch}
    if not config.offload_text_encoder:
        yield {"offload_text_encoder": True}
    if not config.offload_reward:
        yield {"offload_reward": True}
    reward_batch = config.reward_batch_size or config.eval_batch_size
    while reward_batch > 1:
        reward_batch //= 2
        yield {"reward_batch_size": reward_batch}
    if config.quantize_base == "none":
        # A float8 base needs checkpointing (quantization.py): one lever, so neither is dropped alone.
        yield {"quantize_base": "fp8", "gradient_checkpointing": True}
    for side in (768, 512):
        if side < min(plan.height, plan.width):
            yield {"height": side, "width": side}


def _over(plan: MemoryPlan) -> set[str]:
    return {phase for phase, value in plan.phases.items() if value > plan.gpu_memory_gib}


def _suggest_training(plan: MemoryPlan, config, replan: Callable[[dict[str, Any]], MemoryPlan]) -> None:
    """Apply the levers in order while a phase does not fit (a lever is kept when it lowers a phase
    that does not fit), then drop any kept lever the fitting set does not need.

    ``replan(overrides)`` is the plan of ``config`` with ``overrides`` applied, without suggestions.
    """
    overrides: dict[str, Any] = {}
    current = plan
    for change in _training_levers(config, plan):
        over = _over(current)
        if not over:
            break
        targets = _LEVER_PHASES[next(iter(change))] & over
        if not targets:
            continue
        candidate = replan({**overrides, **change})
        if any(candidate.phases[phase] < current.phases[phase] - 1e-6 for phase in targets):
            overrides.update(change)
            current = candidate
    if current.fits:
        for name in [key for key in overrides if key != "width"]:
            if name == "gradient_checkpointing" and "quantize_base" in overrides:
                continue  # a float8 base needs it
            trial = {
                key: value
                for key, value in overrides.items()
                if key != name and not (name == "height" and key == "width")
            }
            candidate = replan(trial)
            if candidate.fits:
                overrides, current = trial, candidate
    elif "encode" in _over(current):
        plan.notes.append(
            "prompt encoding needs the text encoder and the transformer on the GPU together; no other setting lowers it"
        )
    plan.suggestions = [_flag(name, value) for name, value in overrides.items()]
    plan.suggested_peak_gib = current.peak_gib
    plan.suggestion_fits = current.fits


def _suggest_ses(plan: MemoryPlan, replan: Callable[[dict[str, Any]], MemoryPlan]) -> None:
    """`tscale ses` keeps everything on the GPU: halve the eval batch, then store the base in float8, then lower
    the resolution, until the plan fits."""
    changes: list[dict[str, Any]] = []
    batch = plan.settings["eval_batch_size"]
    while batch > 1:
        batch //= 2
        changes.append({"eval_batch_size": batch})
    if plan.settings.get("quantize_base", "none") == "none":
        changes.append({"quantize_base": "fp8"})
    changes += [{"height": side, "width": side} for side in (768, 512) if side < min(plan.height, plan.width)]
    current, overrides = plan, {}
    for change in changes:
        if current.fits:
            break
        overrides.update(change)
        current = replan(overrides)
    plan.suggestions = [f"--{name.replace('_', '-')} {value}" for name, value in overrides.items()]
    plan.suggested_peak_gib = current.peak_gib
    plan.suggestion_fits = current.fits
