"""Process-group set-up that `accelerate launch` alone gets wrong on CPU-only machines and with DeepSpeed.

- Two CPU processes launched with a MULTI_GPU config and no CUDA come up as two independent
  `DistributedType.NO` processes that each call themselves rank 0 of 1, unless the state is created
  with `cpu=True`: nothing is data-parallel and every gather returns local values only.
- `cpu=True` under DeepSpeed silently turns DeepSpeed off (MULTI_CPU), so it is not passed there;
  DeepSpeed on CPU needs a gloo process group instead of its NCCL default.
- `accelerate launch` exports the DeepSpeed config's `gradient_accumulation_steps` as
  `ACCELERATE_GRADIENT_ACCUMULATION_STEPS`, which overrides the `Accelerator` argument.
"""

from __future__ import annotations

import os
import warnings

import torch

_ACCUMULATION_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


def uses_deepspeed() -> bool:
    """True when launched by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def run_on_cpu() -> bool:
    """Whether the accelerate state must be created with `cpu=True` (no CUDA, and not DeepSpeed)."""
    return not torch.cuda.is_available() and not uses_deepspeed()


def process_group_kwargs() -> list:
    """Kwargs handlers for `Accelerator`: gloo where there is no CUDA (DeepSpeed defaults to NCCL)."""
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    return [InitProcessGroupKwargs(backend="gloo")]


def pin_gradient_accumulation(steps: int) -> None:
    """Make the training config's `gradient_accumulation_steps` the one DeepSpeed uses.

    Call before creating the `Accelerator`. A different value in the DeepSpeed config file is
    overridden, with a warning, so one setting (the training config's) decides the effective batch.
    """
    if not uses_deepspeed():
        return
    from_launcher = os.environ.get(_ACCUMULATION_ENV)
    if from_launcher is not None and from_launcher != "auto" and int(from_launcher) != steps:
        warnings.warn(
            f"the DeepSpeed config says gradient_accumulation_steps={from_launcher}, the training config "
            f"{steps}; using {steps} (set it in the training config).",
            stacklevel=2,
        )
    os.environ[_ACCUMULATION_ENV] = str(steps)


def check_gradient_accumulation(accelerator, steps: int) -> None:
    """Fail loudly if the accelerator (or DeepSpeed) would accumulate over another number of steps."""
    effective = {"accelerator": accelerator.gradient_accumulation_steps}
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        effective["deepspeed"] = plugin.deepspeed_config.get("gradient_accumulation_steps")
    wrong = {name: value for name, value in effective.items() if value != steps}
    if wrong:
        raise RuntimeError(
            f"gradient_accumulation_steps is {steps} in the training config but {wrong} in the launched "
            "accelerate state; remove gradient_accumulation_steps from the accelerate/DeepSpeed config."
        )
