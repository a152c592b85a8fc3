"""FLUX.2-klein (`Flux2KleinPipeline`): the distilled klein models and the undistilled klein base models, 4B and 9B.

Train the base models, sample the distilled ones: the base checkpoints (`FLUX.2-klein-base-4B`/`-9B`) are the
recommended start for DPO (`recipes/configs/flux2_klein_base_*.yaml`); a LoRA trained on a base loads into the
distilled model of the same size (the same layout). Distilled klein blurs under RL-style fine-tuning, as Flow-Factory's
maintainers report.

The first-class family. Its offline kits (`tiny`, `tiny-base`, `dims-klein-4b`, `shapes`) are the base kit
of `tscale_train.tiny`, not per-family kits, so `kits` is empty here.
"""

from __future__ import annotations

import torch

from ..real_configs import (
    FLUX2_KLEIN_4B,
    FLUX2_KLEIN_4B_TRANSFORMER,
    FLUX2_KLEIN_9B,
    FLUX2_KLEIN_9B_TRANSFORMER,
    FLUX2_KLEIN_BASE_4B,
    FLUX2_KLEIN_BASE_9B,
    FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
    FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS,
    FLUX2_VAE,
    QWEN3_4B_TEXT_ENCODER,
    QWEN3_8B_TEXT_ENCODER,
)
from .plan import FAKE_DEVICE, Inputs, PlanFamily, PlanSpec, fake_randn, first_output, latent_tokens
from .registry import Checkpoint, ComfyUIKeys, ModelFamily, register_family

# peft matches plain `target_modules` names by suffix, and "attn.to_out" would also hit the double
# blocks' `to_out` ModuleList; a regex over full module names is exact. These are every attention
# projection of FLUX.2's double blocks and the fused projections of its single blocks.
FLUX2_ATTENTION_TARGETS = (
    r".*transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|.*single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)"
)
FLUX2_ATTENTION_AND_FF_TARGETS = (
    FLUX2_ATTENTION_TARGETS + r"|.*transformer_blocks\.\d+\.(ff|ff_context)\.(linear_in|linear_out)"
)
# Every linear that shapes the output, including the input/output projections and the final
# modulation: needed where attention alone is too weak a lever (the tiny random model).
FLUX2_ALL_LINEAR_TARGETS = FLUX2_ATTENTION_AND_FF_TARGETS + r"|x_embedder|proj_out|.*norm_out\.linear"
FLUX2_LORA_TARGETS = {
    "attention": FLUX2_ATTENTION_TARGETS,
    "attention_ff": FLUX2_ATTENTION_AND_FF_TARGETS,
    "all_linear": FLUX2_ALL_LINEAR_TARGETS,
}

# The original BFL layout of a FLUX.2 transformer (`Flux2Transformer2DModel`, klein and dev alike): the
# inverse of diffusers' `_convert_non_diffusers_flux2_lora_to_diffusers` (see `export.comfyui`).
FLUX2_COMFYUI_KEYS = ComfyUIKeys(
    # The original model computes q, k and v with one matrix; diffusers splits it in this order (torch.chunk(3)).
    fused_qkv={
        "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    },
    double_blocks={
        "attn.to_out.0": "img_attn.proj",
        "attn.to_add_out": "txt_attn.proj",
        "ff.linear_in": "img_mlp.0",
        "ff.linear_out": "img_mlp.2",
        "ff_context.linear_in": "txt_mlp.0",
        "ff_context.linear_out": "txt_mlp.2",
    },
    single_blocks={
        "attn.to_qkv_mlp_proj": "linear1",
        "attn.to_out": "linear2",
    },
    top_level={
        "x_embedder": "img_in",
        "context_embedder": "txt_in",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "proj_out": "final_layer.linear",
        "norm_out.linear": "final_layer.adaLN_modulation.1",
        "single_stream_modulation.linear": "single_stream_modulation.lin",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    },
    # The original final layer splits its modulation as (shift, scale), diffusers' AdaLayerNormContinuous as
    # (scale, shift): diffusers' base-model converter swaps the halves of this weight, so the LoRA delta on it
    # (rows of lora_B) must be swapped too to hit the same outputs in ComfyUI.
    swapped_halves=frozenset({"norm_out.linear"}),
)


# ---- what `tscale plan` runs (mirrors `pipeline_flux2_klein.py`) ----------------------------------------------
def _inputs(spec: PlanSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """Patchified, packed latents [B, h*w, 128]; the stacked Qwen3 hidden states [B, 512, 7680]; 4-axis ids."""
    tokens_h, tokens_w = latent_tokens(spec, height, width)
    channels = spec.transformer["in_channels"]
    joint = spec.transformer["joint_attention_dim"]
    text = spec.max_sequence_length
    inputs = dict(
        hidden_states=fake_randn(batch, tokens_h * tokens_w, channels, dtype=dtype),
        timestep=torch.rand(batch, device=FAKE_DEVICE, dtype=dtype),
        guidance=None,
        encoder_hidden_states=fake_randn(batch, text, joint, dtype=dtype),
        txt_ids=torch.zeros(batch, text, 4, device=FAKE_DEVICE, dtype=torch.long),
        img_ids=torch.zeros(batch, tokens_h * tokens_w, 4, device=FAKE_DEVICE, dtype=torch.long),
        return_dict=False,
    )
    return inputs, inputs["hidden_states"]


def _encode(spec: PlanSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`Flux2KleinPipeline.encode_prompt`: all hidden states, three of them stacked into the text input."""
    length = spec.max_sequence_length
    input_ids = torch.zeros(1, length, dtype=torch.long, device=FAKE_DEVICE)
    output = encoders["text_encoder"](
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        output_hidden_states=True,
        use_cache=False,
    )
    stacked = torch.stack([output.hidden_states[k] for k in spec.text_encoder_out_layers], dim=1)
    embeds = stacked.permute(0, 2, 1, 3).reshape(1, length, -1).clone()
    del output, stacked, embeds


PIPELINE_CLASS = "Flux2KleinPipeline"
TRANSFORMER_CLASS = "Flux2Transformer2DModel"

FLUX2_KLEIN_PLAN = PlanFamily(
    pipeline_class=PIPELINE_CLASS,
    transformer_class=TRANSFORMER_CLASS,
    vae_class="AutoencoderKLFlux2",
    text_encoders=(("text_encoder", "Qwen3ForCausalLM"),),
    block_keys=("num_layers", "num_single_layers"),
    text_inputs=("encoder_hidden_states",),
    cfg_batched=False,
    max_sequence_length=FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
    inputs=_inputs,
    prediction=first_output,
    encode=_encode,
    prompt_embedding_numel=lambda spec: spec.max_sequence_length * spec.transformer["joint_attention_dim"],
    default_guidance=lambda spec: 1.0 if spec.is_distilled else 4.0,
    uses_cfg=lambda spec, guidance: guidance > 1.0 and not spec.is_distilled,
    text_encoder_out_layers=tuple(FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS),
)

_KLEIN_4B_CONFIGS = {
    "transformer": FLUX2_KLEIN_4B_TRANSFORMER,
    "text_encoder": QWEN3_4B_TEXT_ENCODER,
    "vae": FLUX2_VAE,
}
# klein 9B: the same pipeline, layout and VAE, wider and deeper (9.1 B transformer, Qwen3-8B text encoder).
_KLEIN_9B_CONFIGS = {
    "transformer": FLUX2_KLEIN_9B_TRANSFORMER,
    "text_encoder": QWEN3_8B_TEXT_ENCODER,
    "vae": FLUX2_VAE,
}

FLUX2_KLEIN = register_family(
    ModelFamily(
        name="FLUX.2-klein",
        hub_tag="flux2-klein",
        pipeline_class=PIPELINE_CLASS,
        transformer_class=TRANSFORMER_CLASS,
        generator="tscale_train.generators.flux2:Flux2KleinGenerator",
        lora_targets=FLUX2_LORA_TARGETS,
        # A klein checkpoint says itself whether it is distilled (model_index.json's `is_distilled`).
        checkpoints={
            FLUX2_KLEIN_4B: Checkpoint(configs={**_KLEIN_4B_CONFIGS, "is_distilled": True}),
            FLUX2_KLEIN_BASE_4B: Checkpoint(configs={**_KLEIN_4B_CONFIGS, "is_distilled": False}),
            FLUX2_KLEIN_9B: Checkpoint(configs={**_KLEIN_9B_CONFIGS, "is_distilled": True}),
            FLUX2_KLEIN_BASE_9B: Checkpoint(configs={**_KLEIN_9B_CONFIGS, "is_distilled": False}),
        },
        plan=FLUX2_KLEIN_PLAN,
        comfyui=FLUX2_COMFYUI_KEYS,
    )
)
