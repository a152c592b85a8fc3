"""The real-dimension kit: a random-weight FLUX.2-klein with FLUX.2-klein-4B's real widths (`dims-klein-4b`).

The tiny kit (`tiny`) exercises the code paths; this kit also exercises the real tensor shapes: the
transformer has the real 128 input channels, 24 heads x 128, joint_attention_dim 7680 (3 x 2560
text-encoder hidden states), rope axes (32, 32, 32, 32), mlp_ratio 3 and no guidance embedding, but
only one double-stream and one single-stream block. The text encoder is a Qwen3 with the real hidden
size 2560 and enough layers for the real `text_encoder_out_layers` (9, 18, 27), with tiny attention and
MLP; the VAE has the real 32 latent channels (2x2-patchified to 128) with small blocks. Every field is
taken from `tscale_train.real_configs` and only depth/size fields are overridden, so the kit follows the
real configs. About 550 M parameters, saved in bfloat16 (about 1.1 GB), so it is built only on request
(`ensure_dims_kit`), never as part of the tiny kit that every test builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..real_configs import (
    FLUX2_KLEIN_4B_TRANSFORMER,
    FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS,
    FLUX2_VAE,
    QWEN3_4B_TEXT_ENCODER,
)
from .kit import DIMS_MODEL_NAME  # noqa: F401  (the kit this module builds)

# Bump when a config below changes, so a stale kit is rebuilt instead of silently reused.
DIMS_KIT_VERSION = "v1"

# Depth/size overrides of the real configs; everything else is the real value.
SHAPES_TRANSFORMER_OVERRIDES: dict[str, Any] = {"num_layers": 1, "num_single_layers": 1}
# 28 layers, not 27: transformers returns the final-norm output as the LAST entry of `hidden_states`,
# so with 27 layers index 27 would be RMS-normalised; with 28 it is a raw residual-stream state, as
# in the real 36-layer Qwen3-4B. Attention and MLP are tiny (2 heads x 16, intermediate 32), so the 28
# layers cost little beyond their 2560-wide norms and projections.
SHAPES_TEXT_ENCODER_OVERRIDES: dict[str, Any] = {
    "num_hidden_layers": 28,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 32,
}
SHAPES_VAE_OVERRIDES: dict[str, Any] = {
    "block_out_channels": (32, 32, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}
# Short text: the real 512 tokens would make every CPU test pay for 512 text tokens of joint attention
# through 3072-wide blocks (about 3x the cost of the 256 image tokens of a 256px image). 64 byte tokens
# hold the chat template (~20 tokens) plus a ~40-character prompt.
SHAPES_MAX_SEQUENCE_LENGTH = 64
# Default image size: 256px is a 16x16 latent of 128 channels (256 image tokens).
SHAPES_RESOLUTION = 256
# Random-weight std for the transformer's linears: 1/sqrt(fan_in) scaled down, so the residual stream and
# the 4-step sampler stay small and finite in bf16 (the default init's std is 1/sqrt(3 fan_in)).
_LINEAR_STD_SCALE = 0.5


def dims_component_configs() -> dict[str, dict[str, Any]]:
    """The kit's transformer / text-encoder / VAE configs: the real ones with the overrides above."""
    transformer = {**FLUX2_KLEIN_4B_TRANSFORMER, **SHAPES_TRANSFORMER_OVERRIDES}
    text_encoder = {**QWEN3_4B_TEXT_ENCODER, **SHAPES_TEXT_ENCODER_OVERRIDES}
    vae = {**FLUX2_VAE, **SHAPES_VAE_OVERRIDES}
    return {"transformer": transformer, "text_encoder": text_encoder, "vae": vae}


@torch.no_grad()
def _init_linears(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded normal init of every Linear (std = scale / sqrt(fan_in)), zero biases; fast and deterministic."""
    for _, submodule in sorted(module.named_modules(), key=lambda item: item[0]):
        if isinstance(submodule, torch.nn.Linear):
            std = _LINEAR_STD_SCALE / submodule.in_features**0.5
            submodule.weight.normal_(0.0, std, generator=generator)
            if submodule.bias is not None:
                submodule.bias.zero_()


def dims_kit_marker(seed: int = 0) -> dict[str, Any]:
    """What the kit records in its marker file: the generator settings every command uses."""
    return {
        "shapes_of": "black-forest-labs/FLUX.2-klein-4B",
        "version": DIMS_KIT_VERSION,
        "seed": seed,
        "text_encoder_out_layers": list(FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS),
        "max_sequence_length": SHAPES_MAX_SEQUENCE_LENGTH,
        "resolution": SHAPES_RESOLUTION,
    }


def build_dims_components(*, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The kit's `text_encoder`, `transformer`, `vae` (bf16) and `tokenizer`, deterministic given `seed`.

    With `device="meta"` nothing is allocated or initialised: the modules have the kit's exact configs,
    parameter names and shapes, which is all that tests of shapes need (no 1.1 GB build).
    """
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .flux2 import _byte_level_tokenizer

    meta = torch.device(device).type == "meta"
    configs = dims_component_configs()
    tokenizer = _byte_level_tokenizer()
    text_config = dict(configs["text_encoder"])
    # The byte-level tokenizer's ids (256 bytes + 3 specials) fit in 320; the real vocab would be
    # 151936 x 2560 = 389 M embedding parameters of nothing.
    text_config.update(
        vocab_size=320,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    if meta:
        with torch.device("meta"):
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**text_config))
            transformer = Flux2Transformer2DModel(**configs["transformer"])
            vae = AutoencoderKLFlux2(**configs["vae"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**text_config))
            # The transformer is built on the meta device (no default init of its ~530 M weights), then
            # materialised and filled from a seeded generator.
            with torch.device("meta"):
                transformer = Flux2Transformer2DModel(**configs["transformer"])
            # `torch.nn.Module.to`, not diffusers' override: there is nothing to keep in float32 here.
            torch.nn.Module.to(transformer, torch.bfloat16)
            transformer.to_empty(device="cpu")
            generator = torch.Generator().manual_seed(seed + 1)
            _init_linears(transformer, generator)
            with torch.no_grad():
                for name, parameter in transformer.named_parameters():
                    if "norm" in name and parameter.ndim == 1 and "linear" not in name:
                        parameter.fill_(1.0)  # RMSNorm scales (q/k norms): identity.
            vae = AutoencoderKLFlux2(**configs["vae"])
    # Everything in bf16, as saved: `torch.nn.Module.to`, not diffusers' override (nothing stays float32).
    for module in (text_encoder, transformer, vae):
        torch.nn.Module.to(module, torch.bfloat16)
    return {"text_encoder": text_encoder, "transformer": transformer, "vae": vae, "tokenizer": tokenizer}


def build_dims_flux2_klein(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build the real-dimension random-weight FLUX.2-klein-4B pipeline into `out_dir` (bf16 safetensors).

    Deterministic given `seed`. Returns `out_dir`.
    """
    from .flux2 import save_klein_pipeline

    return save_klein_pipeline(
        Path(out_dir), **build_dims_components(seed=seed), distilled=True, marker=dims_kit_marker(seed)
    )
