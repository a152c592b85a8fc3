"""LoRA adapters on the transformer: add, save in diffusers format, read back.

The file written by `save_lora` is what `Flux2KleinPipeline.save_lora_weights` writes
(`pytorch_lora_weights.safetensors`, keys prefixed `transformer.`), so
`pipe.load_lora_weights(dir)` and `tscale ses --lora dir` load it as they would any diffusers LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .families.flux2_klein import (
    FLUX2_ALL_LINEAR_TARGETS,
    FLUX2_ATTENTION_AND_FF_TARGETS,
    FLUX2_ATTENTION_TARGETS,
    FLUX2_LORA_TARGETS,
)
from .io_utils import respect_umask

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# The FLUX.2 regexes, kept importable from here; every family declares its presets in its module of
# `tscale_train.families` (`ModelFamily.lora_targets`, also `FlowGenerator.lora_targets`), under the same names.

# Names accepted wherever a target regex is (`--lora_target_modules all_linear`).
LORA_TARGET_PRESETS = tuple(FLUX2_LORA_TARGETS)
__all__ = [
    "FLUX2_ALL_LINEAR_TARGETS",
    "FLUX2_ATTENTION_AND_FF_TARGETS",
    "FLUX2_ATTENTION_TARGETS",
    "LORA_TARGET_PRESETS",
    "LORA_WEIGHT_NAME",
    "add_lora",
    "lora_state_dict",
    "resolve_lora_targets",
    "save_lora",
]


def resolve_lora_targets(target_modules: str, presets: dict[str, str] | None = None) -> str:
    """A preset name -> its regex in `presets` (a family's `ModelFamily.lora_targets`, FLUX.2's by default);
    anything else is taken as a regex."""
    return (presets or FLUX2_LORA_TARGETS).get(target_modules, target_modules)


def add_lora(
    transformer,
    *,
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str = "attention",
    init: str | bool = True,
    adapter_name: str = "default",
    presets: dict[str, str] | None = None,
) -> list[torch.nn.Parameter]:
    """Add a LoRA adapter to `transformer` (diffusers `PeftAdapterMixin.add_adapter`).

    Returns the trainable LoRA parameters, upcast to float32 so a bf16 model trains fp32 adapters.
    `target_modules` is a regex over full module names or a preset name of `presets` (the family's
    `ModelFamily.lora_targets`; FLUX.2's when not given).
    `init=True` is peft's default (B = 0: the adapted model starts equal to the base), "gaussian"
    and the other peft init names are passed through.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights=init,
        target_modules=resolve_lora_targets(target_modules, presets),
    )
    transformer.add_adapter(config, adapter_name=adapter_name)
    if not any("lora_" in name for name, _ in transformer.named_parameters()):
        raise ValueError(
            f"the LoRA target regex {target_modules!r} matched no module of {type(transformer).__name__}."
        )
    parameters = []
    for name, parameter in transformer.named_parameters():
        is_lora = "lora_" in name
        parameter.requires_grad_(is_lora)
        if is_lora:
            parameter.data = parameter.data.float()
            parameters.append(parameter)
    return parameters


def lora_state_dict(transformer, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in peft naming, as `save_lora_weights` expects them."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, adapter_name=adapter_name)


def save_lora(pipeline_class, transformer, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` through the pipeline class's `save_lora_weights`.

    The file gets the mode of any other file of the run (0o644 under umask 022), not the 0600 that
    safetensors >= 0.8 gives every file it writes: a LoRA is made to be shared.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        out_dir,
        transformer_lora_layers=lora_state_dict(transformer, adapter_name),
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
        # Without the config, loaders assume alpha == rank and a LoRA trained with another alpha
        # would load at the wrong scale.
        transformer_lora_adapter_metadata=transformer.peft_config[adapter_name].to_dict(),
    )
    return respect_umask(out_dir / LORA_WEIGHT_NAME)
