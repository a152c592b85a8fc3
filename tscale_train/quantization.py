"""A frozen base in 8 bits: the transformer's and text encoder's linear weights stored in float8, computed in the run's dtype.

This is diffusers' layerwise casting (`ModelMixin.enable_layerwise_casting`, `hooks.apply_layerwise_casting`): each
linear layer keeps its weight in `float8_e4m3fn` (1 byte a parameter) and casts it up to the compute dtype for its
own forward only. It needs no kernel, so it runs wherever torch runs, the CPU included. What stays in full precision:
the LoRA (peft layers are skipped, and `add_lora` keeps them in float32), norms, embeddings, and the patterns a
model lists in `_skip_layerwise_casting_patterns`.

What it costs, priced in `tscale plan`: the weights are rounded once to e4m3 (3 mantissa bits); every forward casts
each layer up (a little time, no kernel fusion). During DPO, autograd keeps the up-cast copy of every weight whose
layer's input needs a gradient until the backward pass: with gradient checkpointing that is one block at a time,
without it the whole model in the compute dtype on top of its float8 copy, more than not quantising at all, so
`quantize_base` requires `gradient_checkpointing` for training.

The casting must come after the LoRA is added (peft's new layers take their base layer's dtype) and before the model
moves to the GPU (so the GPU never holds the full-precision copy).
"""

from __future__ import annotations

import torch

QUANTIZE_CHOICES = ("none", "fp8")
FP8_STORAGE_DTYPE = torch.float8_e4m3fn
# Never cast in a text encoder: norms, and `lm_head`, whose weight is the input embedding's where they are tied
# (Qwen3-4B), so casting it would feed float8 embeddings to the first layer.
TEXT_ENCODER_SKIP_PATTERNS = ("norm", "lm_head", "embed")


def storage_dtype(quantize: str) -> torch.dtype | None:
    """The dtype the frozen base's linear weights are stored in, or None when they keep the run's dtype."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize_base must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}.")
    return FP8_STORAGE_DTYPE if quantize == "fp8" else None


def quantize_transformer(transformer: torch.nn.Module, quantize: str, compute_dtype: torch.dtype) -> None:
    """Store `transformer`'s frozen linear weights in float8 (after its LoRA is added); a no-op for "none"."""
    storage = storage_dtype(quantize)
    if storage is not None:
        # diffusers' default skips: norms, position/patch embeddings, proj_in/out, and every peft adapter layer.
        transformer.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute_dtype)


def quantize_text_encoder(text_encoder: torch.nn.Module, quantize: str, compute_dtype: torch.dtype) -> None:
    """Store a (frozen, inference-only) text encoder's linear weights in float8; a no-op for "none"."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    storage = storage_dtype(quantize)
    if storage is not None:
        apply_layerwise_casting(
            text_encoder,
            storage_dtype=storage,
            compute_dtype=compute_dtype,
            skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + TEXT_ENCODER_SKIP_PATTERNS,
        )


def text_encoder_names(pipe) -> list[str]:
    """The text encoders of `pipe`: `text_encoder`, `text_encoder_2`, ... (FLUX.1 has two)."""
    return [
        name
        for name, component in pipe.components.items()
        if name.startswith("text_encoder") and isinstance(component, torch.nn.Module)
    ]


def quantize_pipeline(pipe, quantize: str, compute_dtype: torch.dtype) -> None:
    """The transformer (with its LoRA, if any, already added) and every text encoder of `pipe` in float8."""
    quantize_transformer(pipe.transformer, quantize, compute_dtype)
    for name in text_encoder_names(pipe):
        quantize_text_encoder(getattr(pipe, name), quantize, compute_dtype)
