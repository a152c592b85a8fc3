"""Stable Diffusion 3 and 3.5 (`StableDiffusion3Pipeline`)."""

from __future__ import annotations

from .registry import Checkpoint, ModelFamily, register_family

# Regexes over full module names (peft `fullmatch`es a string `target_modules`). `attn2` is the
# second, image-only attention of SD3.5-medium's dual-attention blocks. The last joint block is
# context-pre-only and has no `to_add_out` or `ff_context`; the alternatives simply match nothing there.
SD3_ATTENTION_TARGETS = r"(.*\.)?transformer_blocks\.\d+\.(attn|attn2)\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
SD3_ATTENTION_AND_FF_TARGETS = (
    SD3_ATTENTION_TARGETS + r"|(.*\.)?transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)"
)
# As FLUX.2's preset: plus the output projection and the final modulation. SD3's input projection
# (`pos_embed.proj`) is a convolution, so it is not a target of a linear preset.
SD3_ALL_LINEAR_TARGETS = SD3_ATTENTION_AND_FF_TARGETS + r"|proj_out|norm_out\.linear"
SD3_LORA_TARGETS = {
    "attention": SD3_ATTENTION_TARGETS,
    "attention_ff": SD3_ATTENTION_AND_FF_TARGETS,
    "all_linear": SD3_ALL_LINEAR_TARGETS,
}

SD3 = register_family(
    ModelFamily(
        name="SD3",
        hub_tag="sd3",
        pipeline_class="StableDiffusion3Pipeline",
        transformer_class="SD3Transformer2DModel",
        generator="tscale_train.generators.sd3:StableDiffusion3Generator",
        lora_targets=SD3_LORA_TARGETS,
        # The model cards' steps and guidance, which the pipeline class cannot tell apart.
        checkpoints={
            "stabilityai/stable-diffusion-3.5-large-turbo": Checkpoint(
                settings={"num_inference_steps": 4, "guidance_scale": 0.0}
            ),
            "stabilityai/stable-diffusion-3.5-medium": Checkpoint(
                settings={"num_inference_steps": 40, "guidance_scale": 4.5}
            ),
        },
        kits={"tiny-sd3": "tscale_train.tiny.sd3:build_tiny_sd3"},
    )
)
