"""The component configs of the real models, for what must know their shapes without their weights.

`tscale plan` estimates memory from these on the meta device, and the real-dimension kit
(`--model dims-klein-4b`) builds random-weight models with the same dimensions. Where the real
config can be read (a local pipeline dir, or a hub id already in the local HF cache), it is read;
these copies are the fall-back for the hub ids below when nothing can be fetched. Which checkpoint uses
which of them is said by its family (`tscale_train.families`: `Checkpoint.configs`,
`families.known_pipeline_config`).

Checked against the meta-device model: the FLUX.2-klein-4B transformer has 3,875,544,576
parameters and 109 linear layers, 80 of which the default attention LoRA regex targets.
The FLUX.1-dev transformer has 11,901,408,320 parameters (11.9 B, 22.2 GiB in bf16), its T5-XXL
encoder 4,762,310,656 and its CLIP-L text encoder 123,060,480; the Z-Image-Turbo transformer has
6,154,908,736 (6.15 B, 11.5 GiB in bf16); the FLUX.1 VAE (also Z-Image's) 83,819,683.

Where the values come from: the Hub's config.json files cannot be downloaded here, so each block
below names the public copies it was checked against. Only fields that change a shape matter to
the plan; every field listed is the Hub file's value.
"""

from __future__ import annotations

from typing import Any

FLUX2_KLEIN_4B = "black-forest-labs/FLUX.2-klein-4B"
FLUX2_KLEIN_BASE_4B = "black-forest-labs/FLUX.2-klein-base-4B"
FLUX2_KLEIN_9B = "black-forest-labs/FLUX.2-klein-9B"
FLUX2_KLEIN_BASE_9B = "black-forest-labs/FLUX.2-klein-base-9B"

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
# diffusers `Flux2Transformer2DModel` of FLUX.2-klein-9B (and the klein base 9B: same transformer): 8 double
# + 24 single blocks, 32 heads of 128 (4096 wide), text input 3 x 4096 (Qwen3-8B hidden states).
FLUX2_KLEIN_9B_TRANSFORMER: dict[str, Any] = {
    **FLUX2_KLEIN_4B_TRANSFORMER,
    "num_layers": 8,
    "num_single_layers": 24,
    "num_attention_heads": 32,
    "joint_attention_dim": 12288,
}

# transformers `Qwen3Config` of Qwen3-8B, the klein 9B text encoder (about 8.2 B parameters, 16 GB bf16; its
# input and output embeddings are not tied, unlike Qwen3-4B's).
QWEN3_8B_TEXT_ENCODER: dict[str, Any] = {
    **QWEN3_4B_TEXT_ENCODER,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "tie_word_embeddings": False,
}

# The text encoder's hidden states that klein concatenates into `joint_attention_dim` (3 x 2560 for 4B, 3 x 4096 for 9B).
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

FLUX1_DEV = "black-forest-labs/FLUX.1-dev"
FLUX1_SCHNELL = "black-forest-labs/FLUX.1-schnell"
Z_IMAGE_TURBO = "Tongyi-MAI/Z-Image-Turbo"

# diffusers `FluxTransformer2DModel` of FLUX.1-dev (transformer/config.json, diffusers 0.34 export):
# 19 double-stream + 38 single-stream blocks, 24 heads x 128, 2x2-packed 16-channel latents (64),
# T5-XXL sequence (4096) and CLIP-L pooled (768) conditioning, and the guidance embedding of the
# guidance-distilled dev model. The Hub file is quoted verbatim in several public repos (e.g. the
# Ascend ModelZoo FLUX README and an "apex" GGUF loader: `_name_or_path` "../checkpoints/flux-dev/
# transformer"); the block counts match diffusers' scripts/convert_flux_to_diffusers.py (19, 38) and
# BFL's own flux-dev params as copied in hpcaitech/Open-Sora configs/diffusion/inference/plugins/
# t2i2v.py (depth 19, depth_single_blocks 38, hidden 3072, axes_dim [16, 56, 56], vec_in_dim 768,
# context_in_dim 4096, guidance_embed True).
FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# FLUX.1-schnell: the same transformer without the guidance embedding (timestep-distilled);
# diffusers' convert script and kohya-ss/sd-scripts library/flux_utils.py tell the two apart by it alone.
FLUX1_SCHNELL_TRANSFORMER: dict[str, Any] = {**FLUX1_DEV_TRANSFORMER, "guidance_embeds": False}

# transformers `CLIPTextModel` of FLUX.1 (text_encoder/config.json): openai/clip-vit-large-patch14's text
# tower (about 123 M parameters). Checked against the copies in kohya-ss/sd-scripts library/flux_utils.py
# (`load_clip_l`) and other public copies of openai/clip-vit-large-patch14's CLIPTextModel config.
# Not read from FLUX.1-dev's own file (not downloadable here); CLIP-L's text config is the same wherever
# it is used, and FLUX.1 uses the stock model.
CLIP_L_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# transformers `T5EncoderModel` of FLUX.1 (text_encoder_2/config.json): google/t5-v1_1-xxl's encoder
# (about 4.76 B parameters, 8.9 GiB in bf16). Values as in kohya-ss/sd-scripts library/flux_utils.py
# (`load_t5xxl`, the FLUX t5xxl config) and the SD3 reference code's T5_CONFIG (d_model 4096,
# d_ff 10240, 24 layers, 64 heads, vocab 32128).
T5_XXL_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
FLUX1_MAX_SEQUENCE_LENGTH = 512  # `FluxPipeline`'s default T5 length (FLUX.1-dev)

# diffusers `AutoencoderKL` of FLUX.1 (vae/config.json), which Z-Image-Turbo ships unchanged: 16 latent
# channels, 8x down-sampling. diffusers' scripts/convert_flux_to_diffusers.py builds it as SD3's VAE with
# scaling_factor 0.3611 and shift_factor 0.1159; the full file is quoted in public copies (e.g. an
# "AnimePro FLUX VAE" analysis of vae/config.json, and Z-Image loaders' DEFAULT_ZIMAGE_VAE_CONFIG), and
# zhutao100/Z-Image.swift docs/z-image-turbo.md lists Z-Image-Turbo's vae as this AutoencoderKL
# (latent_channels 16, scaling 0.3611, shift 0.1159, force_upcast true).
FLUX1_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "mid_block_add_attention": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

# diffusers `ZImageTransformer2DModel` of Z-Image-Turbo (transformer/config.json, diffusers 0.36 export):
# a single-stream DiT, 30 layers of width 3840 (30 heads x 128), 2 noise-refiner and 2 context-refiner
# layers, 2x2 patches of 16 latent channels, Qwen3-4B hidden states (2560) as caption features. Quoted
# verbatim in uqer1244/MLX_z-image converting/convert_comfy.py ("based on the Z-Image-Turbo transformer
# config"), in a fork of it citing https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/blob/main/transformer/
# config.json, and in several other Z-Image loaders; note axes_lens [1536, 512, 512], not diffusers'
# default [1024, 512, 512] (it changes no parameter count, only the RoPE table).
Z_IMAGE_TURBO_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": (32, 48, 48),
    "axes_lens": (1536, 512, 512),
}
# Z-Image-Turbo's text encoder is a transformers `Qwen3Model` (model_index.json, per zhutao100/Z-Image.swift
# docs/z-image-turbo.md) whose config.json is Qwen3-4B's (hidden 2560, 36 layers, 32 heads, 8 KV heads),
# the same file as klein's: QWEN3_4B_TEXT_ENCODER.
Z_IMAGE_MAX_SEQUENCE_LENGTH = 512  # `ZImagePipeline`'s default (prompts are padded to it, then unpadded)
