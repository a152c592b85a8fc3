"""Qwen-Image (`QwenImagePipeline`: Qwen/Qwen-Image, Qwen/Qwen-Image-2512)."""

from __future__ import annotations

from .registry import ModelFamily, register_family

# Regexes over full module names (peft matches bare names by suffix, which is ambiguous). Qwen-Image's
# 60 blocks are all double-stream: image and text streams each have their own attention projections,
# MLP (`img_mlp`/`txt_mlp`: `net.0.proj` in, `net.2` out) and modulation (`img_mod.1`/`txt_mod.1`).
_BLOCKS = r".*transformer_blocks\.\d+"
QWEN_IMAGE_ATTENTION_TARGETS = (
    _BLOCKS + r"\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
)
QWEN_IMAGE_ATTENTION_AND_FF_TARGETS = (
    QWEN_IMAGE_ATTENTION_TARGETS + "|" + _BLOCKS + r"\.(img_mlp|txt_mlp)\.net\.(0\.proj|2)"
)
# Plus every other linear that shapes the output: the blocks' modulation, the image and text input
# projections, the final modulation and projection (as FLUX.2's preset, the timestep embedder is left alone).
QWEN_IMAGE_ALL_LINEAR_TARGETS = (
    QWEN_IMAGE_ATTENTION_AND_FF_TARGETS
    + "|"
    + _BLOCKS
    + r"\.(img_mod|txt_mod)\.1"
    + r"|img_in|txt_in|norm_out\.linear|proj_out"
)
QWEN_IMAGE_LORA_TARGETS = {
    "attention": QWEN_IMAGE_ATTENTION_TARGETS,
    "attention_ff": QWEN_IMAGE_ATTENTION_AND_FF_TARGETS,
    "all_linear": QWEN_IMAGE_ALL_LINEAR_TARGETS,
}

QWEN_IMAGE = register_family(
    ModelFamily(
        name="Qwen-Image",
        hub_tag="qwen-image",
        pipeline_class="QwenImagePipeline",
        transformer_class="QwenImageTransformer2DModel",
        generator="tscale_train.generators.qwen_image:QwenImageGenerator",
        lora_targets=QWEN_IMAGE_LORA_TARGETS,
        kits={"tiny-qwen-image": "tscale_train.tiny.qwen_image:build_tiny_qwen_image"},
    )
)
