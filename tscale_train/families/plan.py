"""What `tscale plan` must know of a family: the `PlanFamily` a family module declares.

Everything else in the plan is shared: components are built on the meta device from the classes named
here, the transformer's inputs for a batch at a resolution come from `inputs`, its output becomes one
prediction tensor through `prediction`, and `encode` is the text-encoder work of the pipeline's
`encode_prompt`. Each description mirrors its diffusers pipeline: the shapes and dtypes of what the
pipeline hands the transformer, and whether its CFG runs the negative prompt as a second forward or in a
doubled batch.

This module imports nothing of the plan, so a family module can declare its figures without importing
`tscale_train.plan` (which reads the registry: the other way round would be an import circle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# Fake tensors stand for GPU tensors on the CPU device: the autograd engine needs a real CUDA device
# to run a backward over (even fake) CUDA tensors, and the memory of an op does not depend on the
# device once attention and autocast behave as on the GPU (`plan.tracker._FusedAttention`, `_CudaAutocast`).
FAKE_DEVICE = "cpu"

# (transformer kwargs, the latents the sampler updates) of one forward.
Inputs = tuple[dict[str, Any], torch.Tensor]


class PlanSpec(Protocol):
    """What a family's plan functions read of a `tscale_train.plan.PipelineSpec`."""

    @property
    def transformer(self) -> dict: ...

    max_sequence_length: int
    resolution_multiple: int
    is_distilled: bool
    text_encoder_out_layers: tuple[int, ...]

    @property
    def vae_scale_factor(self) -> int: ...


@dataclass(frozen=True)
class PlanFamily:
    """One pipeline family, as the plan sees it (see the module docstring)."""

    pipeline_class: str
    transformer_class: str  # diffusers class
    vae_class: str  # diffusers class
    # (pipeline component name, transformers class), in the order `encode_prompt` runs them.
    text_encoders: tuple[tuple[str, str], ...]
    # Transformer config keys counting blocks: the DPO peak is linear in each (see `measure_dpo`).
    block_keys: tuple[str, ...]
    # Transformer kwargs carrying the prompt: a CFG negative replaces them.
    text_inputs: tuple[str, ...]
    # True: the pipeline runs cond and uncond as one forward of twice the batch; False: two forwards.
    cfg_batched: bool
    max_sequence_length: int
    inputs: Callable[[PlanSpec, int, int, int, torch.dtype], Inputs]
    prediction: Callable[[Any], torch.Tensor]
    encode: Callable[[PlanSpec, dict[str, torch.nn.Module]], None]
    prompt_embedding_numel: Callable[[PlanSpec], int]  # one prompt's cached conditioning
    default_guidance: Callable[[PlanSpec], float]  # the pipeline's own default
    uses_cfg: Callable[[PlanSpec, float], bool]
    text_encoder_out_layers: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


def fake_randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A standard-normal tensor on the plan's device (a fake tensor under `plan.fake_gpu`)."""
    return torch.randn(*shape, device=FAKE_DEVICE, dtype=dtype)


def first_output(output: Any) -> torch.Tensor:
    """The prediction of a transformer called with `return_dict=False`."""
    return output[0]


def latent_tokens(spec: PlanSpec, height: int, width: int) -> tuple[int, int]:
    """The transformer's token grid at `height` x `width` pixels."""
    return height // spec.resolution_multiple, width // spec.resolution_multiple
