"""A tiny random-weight FLUX.1 (`FluxPipeline`) that runs offline on a CPU (`--model tiny-flux1`).

Every component is the class `black-forest-labs/FLUX.1-dev` uses, only smaller: a CLIP-L-style
`CLIPTextModel` (pooled prompt), a T5 encoder (prompt sequence), a guidance-distilled
`FluxTransformer2DModel` (`guidance_embeds=True`) over 2x2-packed 16-channel latents, and an
`AutoencoderKL` that downsamples 8x like the real one. The scheduler is FLUX.1-dev's own
(dynamic shifting), so the sampler sigmas are the real model's at the same latent size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_t5 import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer
from .kit import save_kit_pipeline

TINY_RESOLUTION = 64
# Every prompt of the kit's prompt list (at most 69 characters) fits.
TINY_MAX_SEQUENCE_LENGTH = 64
# 4 sampler steps for a final image, 2 for a search preview: both cheap, and previews differ from finals.
TINY_NUM_INFERENCE_STEPS = 4
TINY_PREVIEW_STEPS = 2
# Distinct widths, so a pooled embedding passed where the sequence belongs fails on its shape.
TINY_CLIP_HIDDEN = 32
TINY_T5_D_MODEL = 48

# FLUX.1-dev's scheduler_config.json.
FLUX1_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1's VAE latent normalisation (vae/config.json).
FLUX1_VAE_SCALING_FACTOR = 0.3611
FLUX1_VAE_SHIFT_FACTOR = 0.1159


def tiny_autoencoder_kl(
    *,
    scaling_factor: float,
    shift_factor: float,
    block_out_channels: tuple[int, ...] = (8, 8, 16, 16),
    norm_num_groups: int = 4,
):
    """A random 16-latent-channel `AutoencoderKL` with four blocks (8x downsampling), as FLUX.1's, SD3's
    and Z-Image's.

    Like theirs it has no quant convs and normalises latents with `scaling_factor` and `shift_factor`.
    Draws from the global RNG: seed it before calling.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=norm_num_groups,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_flux1(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny FLUX.1-dev-like `FluxPipeline` from `seed`, `save_pretrained` it to `out_dir`, write
    the kit marker; returns `out_dir`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer, hidden_size=TINY_CLIP_HIDDEN)
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = tiny_t5_encoder(tokenizer_2, d_model=TINY_T5_D_MODEL)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_T5_D_MODEL,
        pooled_projection_dim=TINY_CLIP_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, as (16, 56, 56) does to 128
    )
    vae = tiny_autoencoder_kl(scaling_factor=FLUX1_VAE_SCALING_FACTOR, shift_factor=FLUX1_VAE_SHIFT_FACTOR)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    marker = {
        "kind": "flux1",
        "seed": seed,
        "resolution": TINY_RESOLUTION,
        "generator_kwargs": {
            "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
            "num_inference_steps": TINY_NUM_INFERENCE_STEPS,
            "preview_steps": TINY_PREVIEW_STEPS,
        },
    }
    return save_kit_pipeline(pipe, out_dir, marker)
