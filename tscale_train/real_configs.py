"""The component configs of the real models, for what must know their shapes without their weights.

`tscale plan` estimates memory from these on the meta device, and the real-shape kit
(`--model shapes-klein-4b`) builds random-weight models with the same dimensions. Where the real
config can be read (a local pipeline dir, or a hub id already in the local HF cache), it is read;
these copies are the fall-back for the hub ids below when nothing can be fetched.

Checked against the meta-device model: the FLUX.2-klein-4B transformer has 3,875,544,576
parameters and 109 linear layers, 80 of which the default attention LoRA regex targets.
"""

from __future__ import annotations

import copy
from typing import Any

FLUX2_KLEIN_4B = "black-forest-labs/FLUX.2-klein-4B"
FLUX2_KLEIN_BASE_4B = "black-forest-labs/FLUX.2-klein-base-4B"

# diffusers `Flux2Transformer2DModel` of FLUX.2-klein-4B (and the klein base 4B: same transformer).
FLUX2_KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

# transformers `Qwen3Config` of Qwen3-4B, the klein 4B text encoder (about 4.0 B parameters, 8 GB bf16).
QWEN3_4B_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "attention_bias": False,
}
# The text encoder's hidden states that klein concatenates into `joint_attention_dim` (3 x 2560).
FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)
FLUX2_KLEIN_MAX_SEQUENCE_LENGTH = 512

# diffusers `AutoencoderKLFlux2` of FLUX.2 (its defaults): 32 latent channels, 2x2 patchified to 128.
FLUX2_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 32,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "patch_size": (2, 2),
}

# transformers `CLIPConfig` of PickScore_v1 (CLIP ViT-H/14, about 986 M parameters).
PICKSCORE_CLIP: dict[str, Any] = {
    "projection_dim": 1024,
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
    },
    "vision_config": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "gelu",
    },
}

_KNOWN_PIPELINES: dict[str, dict[str, Any]] = {
    FLUX2_KLEIN_4B: {
        "transformer": FLUX2_KLEIN_4B_TRANSFORMER,
        "text_encoder": QWEN3_4B_TEXT_ENCODER,
        "vae": FLUX2_VAE,
        "is_distilled": True,
    },
    FLUX2_KLEIN_BASE_4B: {
        "transformer": FLUX2_KLEIN_4B_TRANSFORMER,
        "text_encoder": QWEN3_4B_TEXT_ENCODER,
        "vae": FLUX2_VAE,
        "is_distilled": False,
    },
}


def known_pipeline_config(model: str) -> dict[str, Any] | None:
    """A deep copy of the bundled component configs of `model`, or None for a model not listed here."""
    found = _KNOWN_PIPELINES.get(model)
    return copy.deepcopy(found) if found is not None else None
