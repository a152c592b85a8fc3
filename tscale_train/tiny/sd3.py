"""A tiny random-weight Stable Diffusion 3.5 (`StableDiffusion3Pipeline`) that runs offline on a CPU (`--model tiny-sd3`).

Every component is the class `stabilityai/stable-diffusion-3.5-large` uses, only smaller: two
`CLIPTextModelWithProjection` (CLIP-L and CLIP-G: the penultimate hidden states, concatenated, plus
both pooled projections), a T5 encoder, an `SD3Transformer2DModel` with SD3.5's RMS q/k norm, and
an `AutoencoderKL` that downsamples 8x. The scheduler is SD3.5's own (a fixed shift of 3).

The widths keep the real model's structure: the two CLIP widths add up to less than T5's, so the
pipeline's zero padding of the CLIP sequence to T5's width really happens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_t5 import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer
from .flux1 import TINY_RESOLUTION, tiny_autoencoder_kl
from .kit import save_kit_pipeline

# Every prompt of the kit's prompt list (at most 69 characters) fits.
TINY_MAX_SEQUENCE_LENGTH = 64
TINY_NUM_INFERENCE_STEPS = 4
TINY_PREVIEW_STEPS = 2
TINY_CLIP_L_HIDDEN = 16
TINY_CLIP_G_HIDDEN = 24
TINY_T5_D_MODEL = 48

# stable-diffusion-3.5-large's (and -medium's, SD3-medium's) scheduler_config.json.
SD35_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
# SD3's VAE latent normalisation (vae/config.json).
SD3_VAE_SCALING_FACTOR = 1.5305
SD3_VAE_SHIFT_FACTOR = 0.0609


def build_tiny_sd3(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD3.5-like `StableDiffusion3Pipeline` from `seed`, `save_pretrained` it to `out_dir`,
    write the kit marker; returns `out_dir`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(
        tokenizer, hidden_size=TINY_CLIP_L_HIDDEN, projection_dim=TINY_CLIP_L_HIDDEN
    )
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder_2 = tiny_clip_text_encoder(
        tokenizer_2, hidden_size=TINY_CLIP_G_HIDDEN, projection_dim=TINY_CLIP_G_HIDDEN
    )
    tokenizer_3 = tiny_t5_tokenizer()
    text_encoder_3 = tiny_t5_encoder(tokenizer_3, d_model=TINY_T5_D_MODEL)
    heads, head_dim = 2, 16
    transformer = SD3Transformer2DModel(
        sample_size=128,  # the real default size (1024 px) is the pipeline's default
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,  # the last block is context-pre-only, as in the real model
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=TINY_T5_D_MODEL,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=TINY_CLIP_L_HIDDEN + TINY_CLIP_G_HIDDEN,
        pos_embed_max_size=96,  # latents up to 96 patches a side: 1536 px
        qk_norm="rms_norm",
    )
    vae = tiny_autoencoder_kl(scaling_factor=SD3_VAE_SCALING_FACTOR, shift_factor=SD3_VAE_SHIFT_FACTOR)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    marker = {
        "kind": "sd3",
        "seed": seed,
        "resolution": TINY_RESOLUTION,
        "generator_kwargs": {
            "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
            "num_inference_steps": TINY_NUM_INFERENCE_STEPS,
            "preview_steps": TINY_PREVIEW_STEPS,
        },
    }
    return save_kit_pipeline(pipe, out_dir, marker)
