"""Z-Image (`ZImagePipeline`: Tongyi-MAI/Z-Image-Turbo and the undistilled base model)."""

from __future__ import annotations

from typing import Any

import torch

from ..real_configs import (
    FLUX1_VAE,
    QWEN3_4B_TEXT_ENCODER,
    Z_IMAGE_MAX_SEQUENCE_LENGTH,
    Z_IMAGE_TURBO,
    Z_IMAGE_TURBO_TRANSFORMER,
)
from .plan import FAKE_DEVICE, Inputs, PlanFamily, PlanSpec, fake_randn
from .registry import Checkpoint, ModelFamily, register_family

# Regexes over full module names (peft matches bare names by suffix, which is ambiguous). Z-Image's
# blocks are single-stream: the noise refiner (image tokens), the context refiner (caption tokens) and
# the main `layers` (both), all with the same `attention.to_q|to_k|to_v|to_out.0` and SwiGLU
# `feed_forward.w1|w2|w3`.
_BLOCKS = r".*(noise_refiner|context_refiner|layers)\.\d+"
Z_IMAGE_ATTENTION_TARGETS = _BLOCKS + r"\.attention\.(to_q|to_k|to_v|to_out\.0)"
Z_IMAGE_ATTENTION_AND_FF_TARGETS = Z_IMAGE_ATTENTION_TARGETS + "|" + _BLOCKS + r"\.feed_forward\.(w1|w2|w3)"
# Plus every other linear that shapes the output: the blocks' timestep modulation, the patch and caption
# embedders and the final layer (as FLUX.2's preset, the timestep embedder itself is left alone).
Z_IMAGE_ALL_LINEAR_TARGETS = (
    Z_IMAGE_ATTENTION_AND_FF_TARGETS
    + r"|.*(noise_refiner|layers)\.\d+\.adaLN_modulation\.0"
    + r"|all_x_embedder\.[^.]+|cap_embedder\.1|all_final_layer\.[^.]+\.(linear|adaLN_modulation\.1)"
)
Z_IMAGE_LORA_TARGETS = {
    "attention": Z_IMAGE_ATTENTION_TARGETS,
    "attention_ff": Z_IMAGE_ATTENTION_AND_FF_TARGETS,
    "all_linear": Z_IMAGE_ALL_LINEAR_TARGETS,
}


# ---- what `tscale plan` runs (mirrors `pipeline_z_image.py`) -------------------------------------------------
def _inputs(spec: PlanSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """Per-sample lists, as the pipeline calls the transformer: latents [16, 1, H/8, W/8] each (the pipeline
    keeps the float32 latents and hands the transformer a cast copy) and caption features [L, 2560] each.

    L is `max_sequence_length`: the pipeline drops a prompt's padding, so a real prompt is shorter and
    this is the upper bound. With one image size and one caption length for the whole batch, every
    sample pads to the same length (a multiple of 32) and the transformer builds no attention mask; a
    batch of prompts of different lengths would add one (and the memory-efficient kernel, not flash).
    """
    factor = spec.vae_scale_factor
    latents = fake_randn(
        batch, spec.transformer["in_channels"], height // factor, width // factor, dtype=torch.float32
    )
    inputs = dict(
        x=list(latents.to(dtype).unsqueeze(2).unbind(0)),
        t=torch.rand(batch, device=FAKE_DEVICE, dtype=torch.float32),
        cap_feats=[
            fake_randn(spec.max_sequence_length, spec.transformer["cap_feat_dim"], dtype=dtype)
            for _ in range(batch)
        ],
        return_dict=False,
    )
    return inputs, latents


def _prediction(output: Any) -> torch.Tensor:
    """The per-sample outputs [16, 1, h, w] stacked into one [B, 16, h, w] tensor."""
    return torch.stack(list(output[0])).squeeze(2)


def _encode(spec: PlanSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`ZImagePipeline._encode_prompt`: a padded `max_sequence_length` prompt through `Qwen3Model`, all hidden
    states, the second to last kept without its padding. Fake tensors cannot index by a data-dependent
    mask, so the unpadded copy is taken as all tokens: the upper bound of what the pipeline keeps."""
    length = spec.max_sequence_length
    input_ids = torch.zeros(1, length, dtype=torch.long, device=FAKE_DEVICE)
    output = encoders["text_encoder"](
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids, dtype=torch.bool),
        output_hidden_states=True,
        use_cache=False,
    )
    embeds = output.hidden_states[-2][0].clone()
    del output, embeds


PIPELINE_CLASS = "ZImagePipeline"
TRANSFORMER_CLASS = "ZImageTransformer2DModel"

Z_IMAGE_PLAN = PlanFamily(
    pipeline_class=PIPELINE_CLASS,
    transformer_class=TRANSFORMER_CLASS,
    vae_class="AutoencoderKL",
    text_encoders=(("text_encoder", "Qwen3Model"),),
    # `n_refiner_layers` counts the noise refiner's blocks and the context refiner's.
    block_keys=("n_layers", "n_refiner_layers"),
    text_inputs=("cap_feats",),
    cfg_batched=True,
    max_sequence_length=Z_IMAGE_MAX_SEQUENCE_LENGTH,
    inputs=_inputs,
    prediction=_prediction,
    encode=_encode,
    prompt_embedding_numel=lambda spec: spec.max_sequence_length * spec.transformer["cap_feat_dim"],
    default_guidance=lambda spec: 5.0,  # `ZImagePipeline.__call__`'s guidance_scale (the base model's)
    uses_cfg=lambda spec, guidance: guidance > 0.0,  # `ZImagePipeline.do_classifier_free_guidance`
    notes=(
        "text tokens counted at the padded prompt length, an upper bound: Z-Image drops a prompt's padding",
    ),
)

Z_IMAGE = register_family(
    ModelFamily(
        name="Z-Image",
        hub_tag="z-image",
        pipeline_class=PIPELINE_CLASS,
        transformer_class=TRANSFORMER_CLASS,
        generator="tscale_train.generators.z_image:ZImageGenerator",
        lora_targets=Z_IMAGE_LORA_TARGETS,
        checkpoints={
            # Turbo is a `ZImagePipeline` like the base model, whose class defaults are 50 steps with CFG;
            # its model card: 9 steps, no guidance.
            Z_IMAGE_TURBO: Checkpoint(
                settings={"num_inference_steps": 9, "guidance_scale": 0.0},
                configs={
                    "transformer": Z_IMAGE_TURBO_TRANSFORMER,
                    "text_encoder": QWEN3_4B_TEXT_ENCODER,
                    "vae": FLUX1_VAE,
                    "max_sequence_length": Z_IMAGE_MAX_SEQUENCE_LENGTH,
                },
            )
        },
        kits={"tiny-z-image": "tscale_train.tiny.z_image:build_tiny_z_image"},
        plan=Z_IMAGE_PLAN,
    )
)
