"""A tiny random-weight Z-Image pipeline that runs offline on a CPU (`--model tiny-z-image`).

Every component is the class the real `Tongyi-MAI/Z-Image-Turbo` checkpoint uses (`ZImageTransformer2DModel`,
a `Qwen3Model` text encoder with a Qwen2 byte-level tokenizer, the FLUX.1-style `AutoencoderKL` with its
scaling and shift factors, the real scheduler config), only smaller, so the saved pipeline loads back
through the same `ZImagePipeline.from_pretrained(path)` code as the real one. It mirrors Turbo: a few
steps without CFG.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .flux1 import FLUX1_VAE_SCALING_FACTOR, FLUX1_VAE_SHIFT_FACTOR, tiny_autoencoder_kl
from .flux2 import _byte_level_tokenizer, tiny_qwen3_config
from .kit import save_kit_pipeline

TINY_TEXT_HIDDEN = 32
# Short prompts only: with byte-level tokens the chat template alone takes ~20 of them.
TINY_MAX_SEQUENCE_LENGTH = 64
# 64 x 64 px: an 8 x 8 latent, 4 x 4 transformer tokens.
TINY_RESOLUTION = 64
# Turbo-like sampling (the real Turbo takes 9 steps, guidance 0).
TINY_GENERATOR_KWARGS = {
    "num_inference_steps": 4,
    "guidance_scale": 0.0,
    "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
}

# `Tongyi-MAI/Z-Image-Turbo`'s scheduler_config.json: a fixed shift of 3, no resolution-dependent shifting.
Z_IMAGE_TURBO_SCHEDULER = {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}


def build_tiny_z_image(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny `ZImagePipeline` from `seed`, `save_pretrained` it to `out_dir` and write the kit marker."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    text_encoder = Qwen3Model(tiny_qwen3_config(tokenizer))
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TINY_TEXT_HIDDEN,
        axes_dims=[8, 4, 4],
        # Frame axis: caption positions, then the image after them; height/width axes: up to 1024 px.
        axes_lens=[256, 64, 64],
    )
    with torch.no_grad():
        # Zero in a fresh model; random here so padding is a visible part of what the tests compare.
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    # The FLUX.1 VAE's latent normalisation, which Z-Image uses.
    vae = tiny_autoencoder_kl(
        scaling_factor=FLUX1_VAE_SCALING_FACTOR,
        shift_factor=FLUX1_VAE_SHIFT_FACTOR,
        block_out_channels=(16, 16, 16, 16),
        norm_num_groups=8,
    )
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**Z_IMAGE_TURBO_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    marker = {
        "kind": "z-image",
        "seed": seed,
        "resolution": TINY_RESOLUTION,
        "generator_kwargs": TINY_GENERATOR_KWARGS,
    }
    return save_kit_pipeline(pipe, out_dir, marker)
