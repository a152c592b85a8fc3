"""FLUX.1 (`FluxPipeline`): FLUX.1-dev (guidance-distilled) and FLUX.1-schnell (timestep-distilled)."""

from __future__ import annotations

import torch

from ..real_configs import (
    CLIP_L_TEXT_ENCODER,
    FLUX1_DEV,
    FLUX1_DEV_TRANSFORMER,
    FLUX1_MAX_SEQUENCE_LENGTH,
    FLUX1_SCHNELL,
    FLUX1_SCHNELL_TRANSFORMER,
    FLUX1_VAE,
    T5_XXL_TEXT_ENCODER,
)
from .plan import FAKE_DEVICE, Inputs, PlanFamily, PlanSpec, fake_randn, first_output, latent_tokens
from .registry import Checkpoint, ModelFamily, register_family

# Regexes over full module names (peft `fullmatch`es a string `target_modules`). "(.*\.)?" before
# `transformer_blocks` lets a wrapper's prefix through but not `single_`, so each alternative names
# one kind of block. FLUX.1's single blocks have no attention output projection of their own: their
# `proj_out` projects the concatenated attention and MLP outputs, and it counts as attention here,
# as FLUX.2's fused `attn.to_out` does.
FLUX1_ATTENTION_TARGETS = (
    r"(.*\.)?transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|(.*\.)?single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_out)"
)
FLUX1_ATTENTION_AND_FF_TARGETS = (
    FLUX1_ATTENTION_TARGETS
    + r"|(.*\.)?transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)"
    + r"|(.*\.)?single_transformer_blocks\.\d+\.proj_mlp"
)
# As FLUX.2's preset: plus the input and output projections and the final modulation.
FLUX1_ALL_LINEAR_TARGETS = FLUX1_ATTENTION_AND_FF_TARGETS + r"|x_embedder|proj_out|norm_out\.linear"
FLUX1_LORA_TARGETS = {
    "attention": FLUX1_ATTENTION_TARGETS,
    "attention_ff": FLUX1_ATTENTION_AND_FF_TARGETS,
    "all_linear": FLUX1_ALL_LINEAR_TARGETS,
}


# ---- what `tscale plan` runs (mirrors `pipeline_flux.py`) ---------------------------------------------------
def _inputs(spec: PlanSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """2x2-packed 16-channel latents [B, h*w, 64]; T5 sequence [B, 512, 4096]; CLIP pooled [B, 768];
    the embedded guidance (float32, as the pipeline makes it) when the model has a guidance embedding;
    3-axis ids without a batch dimension."""
    config = spec.transformer
    tokens_h, tokens_w = latent_tokens(spec, height, width)
    text = spec.max_sequence_length
    guidance = None
    if config.get("guidance_embeds", False):
        guidance = torch.full((batch,), 3.5, device=FAKE_DEVICE, dtype=torch.float32)
    inputs = dict(
        hidden_states=fake_randn(batch, tokens_h * tokens_w, config["in_channels"], dtype=dtype),
        timestep=torch.rand(batch, device=FAKE_DEVICE, dtype=dtype),
        guidance=guidance,
        pooled_projections=fake_randn(batch, config["pooled_projection_dim"], dtype=dtype),
        encoder_hidden_states=fake_randn(batch, text, config["joint_attention_dim"], dtype=dtype),
        txt_ids=torch.zeros(text, 3, device=FAKE_DEVICE, dtype=dtype),
        img_ids=torch.zeros(tokens_h * tokens_w, 3, device=FAKE_DEVICE, dtype=dtype),
        return_dict=False,
    )
    return inputs, inputs["hidden_states"]


def _encode(spec: PlanSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`FluxPipeline.encode_prompt`: CLIP-L's pooled output (77 tokens), then T5's last hidden state
    (`max_sequence_length` tokens, no attention mask), the pooled embedding kept meanwhile."""
    clip, t5 = encoders["text_encoder"], encoders["text_encoder_2"]
    clip_ids = torch.zeros(1, clip.config.max_position_embeddings, dtype=torch.long, device=FAKE_DEVICE)
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    t5_ids = torch.zeros(1, spec.max_sequence_length, dtype=torch.long, device=FAKE_DEVICE)
    embeds = t5(t5_ids, output_hidden_states=False)[0]
    del pooled, embeds


PIPELINE_CLASS = "FluxPipeline"
TRANSFORMER_CLASS = "FluxTransformer2DModel"

FLUX1_PLAN = PlanFamily(
    pipeline_class=PIPELINE_CLASS,
    transformer_class=TRANSFORMER_CLASS,
    vae_class="AutoencoderKL",
    text_encoders=(("text_encoder", "CLIPTextModel"), ("text_encoder_2", "T5EncoderModel")),
    block_keys=("num_layers", "num_single_layers"),
    text_inputs=("encoder_hidden_states", "pooled_projections"),
    cfg_batched=False,
    max_sequence_length=FLUX1_MAX_SEQUENCE_LENGTH,
    inputs=_inputs,
    prediction=first_output,
    encode=_encode,
    prompt_embedding_numel=lambda spec: (
        spec.max_sequence_length * spec.transformer["joint_attention_dim"]
        + spec.transformer["pooled_projection_dim"]
    ),
    # `FluxPipeline.__call__`'s guidance_scale for dev; schnell has no guidance embedding to take one.
    default_guidance=lambda spec: 3.5 if spec.transformer.get("guidance_embeds", False) else 0.0,
    # guidance_scale is the embedded guidance of a distilled model, never CFG: the pipeline runs a negative
    # pass only for `true_cfg_scale > 1` with a negative prompt.
    uses_cfg=lambda spec, guidance: False,
    notes=("text encoder = CLIP-L + T5-XXL together",),
)

_TEXT_ENCODERS = {"text_encoder": CLIP_L_TEXT_ENCODER, "text_encoder_2": T5_XXL_TEXT_ENCODER}
# schnell's model card: 4 steps, no guidance, a 256-token T5 text.
_SCHNELL_SETTINGS = {"num_inference_steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256}

FLUX1 = register_family(
    ModelFamily(
        name="FLUX.1",
        hub_tag="flux",
        pipeline_class=PIPELINE_CLASS,
        transformer_class=TRANSFORMER_CLASS,
        generator="tscale_train.generators.flux1:FluxGenerator",
        lora_targets=FLUX1_LORA_TARGETS,
        checkpoints={
            FLUX1_DEV: Checkpoint(
                configs={
                    "transformer": FLUX1_DEV_TRANSFORMER,
                    **_TEXT_ENCODERS,
                    "vae": FLUX1_VAE,
                    "max_sequence_length": FLUX1_MAX_SEQUENCE_LENGTH,
                }
            ),
            FLUX1_SCHNELL: Checkpoint(
                settings=_SCHNELL_SETTINGS,
                configs={
                    "transformer": FLUX1_SCHNELL_TRANSFORMER,
                    **_TEXT_ENCODERS,
                    "vae": FLUX1_VAE,
                    "max_sequence_length": _SCHNELL_SETTINGS["max_sequence_length"],
                },
            ),
        },
        kits={"tiny-flux1": "tscale_train.tiny.flux1:build_tiny_flux1"},
        plan=FLUX1_PLAN,
    )
)
