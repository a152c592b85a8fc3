"""What the plan must know of each pipeline family, keyed by the diffusers pipeline class name.

Everything else in the plan is shared: components are built on the meta device from the classes named
here, the transformer's inputs for a batch at a resolution come from `inputs`, its output becomes one
prediction tensor through `prediction`, and `encode` is the text-encoder work of the pipeline's
`encode_prompt`. Each description mirrors its diffusers pipeline (`pipeline_flux2_klein.py`,
`pipeline_flux.py`, `pipeline_z_image.py`): the shapes and dtypes of what the pipeline hands the
transformer, and whether its CFG runs the negative prompt as a second forward or in a doubled batch.

The LoRA presets of a family are its generator's (`FlowGenerator.lora_targets`), so a preset name
plans the same modules that training adapts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..real_configs import (
    FLUX1_MAX_SEQUENCE_LENGTH,
    FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
    FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS,
    Z_IMAGE_MAX_SEQUENCE_LENGTH,
)
from .tracker import _FAKE_DEVICE

if TYPE_CHECKING:
    from .components import PipelineSpec

# (transformer kwargs, the latents the sampler updates) of one forward.
Inputs = tuple[dict[str, Any], torch.Tensor]


@dataclass(frozen=True)
class PlanFamily:
    """One pipeline family, as the plan sees it (see the module docstring)."""

    pipeline_class: str
    transformer_class: str  # diffusers class
    vae_class: str  # diffusers class
    # (pipeline component name, transformers class), in the order `encode_prompt` runs them.
    text_encoders: tuple[tuple[str, str], ...]
    # Transformer config keys counting blocks: the DPO peak is linear in each (see `measure_dpo`).
    block_keys: tuple[str, ...]
    # Transformer kwargs carrying the prompt: a CFG negative replaces them.
    text_inputs: tuple[str, ...]
    # True: the pipeline runs cond and uncond as one forward of twice the batch; False: two forwards.
    cfg_batched: bool
    max_sequence_length: int
    inputs: Callable[[PipelineSpec, int, int, int, torch.dtype], Inputs]
    prediction: Callable[[Any], torch.Tensor]
    encode: Callable[[PipelineSpec, dict[str, torch.nn.Module]], None]
    prompt_embedding_numel: Callable[[PipelineSpec], int]  # one prompt's cached conditioning
    default_guidance: Callable[[PipelineSpec], float]  # the pipeline's own default
    uses_cfg: Callable[[PipelineSpec, float], bool]
    text_encoder_out_layers: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    def lora_presets(self) -> dict[str, str]:
        """The LoRA target presets of this family's generator (`FlowGenerator.lora_targets`)."""
        from ..generation import generator_class

        return dict(generator_class(self.pipeline_class).lora_targets)


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, device=_FAKE_DEVICE, dtype=dtype)


def _first(output: Any) -> torch.Tensor:
    return output[0]


def _tokens(spec: PipelineSpec, height: int, width: int) -> tuple[int, int]:
    return height // spec.resolution_multiple, width // spec.resolution_multiple


# ---- FLUX.2-klein (`Flux2KleinPipeline`) ---------------------------------------------------------------------
def _flux2_inputs(spec: PipelineSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """Patchified, packed latents [B, h*w, 128]; the stacked Qwen3 hidden states [B, 512, 7680]; 4-axis ids."""
    tokens_h, tokens_w = _tokens(spec, height, width)
    channels = spec.transformer["in_channels"]
    joint = spec.transformer["joint_attention_dim"]
    text = spec.max_sequence_length
    inputs = dict(
        hidden_states=_randn(batch, tokens_h * tokens_w, channels, dtype=dtype),
        timestep=torch.rand(batch, device=_FAKE_DEVICE, dtype=dtype),
        guidance=None,
        encoder_hidden_states=_randn(batch, text, joint, dtype=dtype),
        txt_ids=torch.zeros(batch, text, 4, device=_FAKE_DEVICE, dtype=torch.long),
        img_ids=torch.zeros(batch, tokens_h * tokens_w, 4, device=_FAKE_DEVICE, dtype=torch.long),
        return_dict=False,
    )
    return inputs, inputs["hidden_states"]


def _flux2_encode(spec: PipelineSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`Flux2KleinPipeline.encode_prompt`: all hidden states, three of them stacked into the text input."""
    length = spec.max_sequence_length
    input_ids = torch.zeros(1, length, dtype=torch.long, device=_FAKE_DEVICE)
    output = encoders["text_encoder"](
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        output_hidden_states=True,
        use_cache=False,
    )
    stacked = torch.stack([output.hidden_states[k] for k in spec.text_encoder_out_layers], dim=1)
    embeds = stacked.permute(0, 2, 1, 3).reshape(1, length, -1).clone()
    del output, stacked, embeds


FLUX2_KLEIN = PlanFamily(
    pipeline_class="Flux2KleinPipeline",
    transformer_class="Flux2Transformer2DModel",
    vae_class="AutoencoderKLFlux2",
    text_encoders=(("text_encoder", "Qwen3ForCausalLM"),),
    block_keys=("num_layers", "num_single_layers"),
    text_inputs=("encoder_hidden_states",),
    cfg_batched=False,
    max_sequence_length=FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
    inputs=_flux2_inputs,
    prediction=_first,
    encode=_flux2_encode,
    prompt_embedding_numel=lambda spec: spec.max_sequence_length * spec.transformer["joint_attention_dim"],
    default_guidance=lambda spec: 1.0 if spec.is_distilled else 4.0,
    uses_cfg=lambda spec, guidance: guidance > 1.0 and not spec.is_distilled,
    text_encoder_out_layers=tuple(FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS),
)


# ---- FLUX.1 (`FluxPipeline`) ---------------------------------------------------------------------------------
def _flux1_inputs(spec: PipelineSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """2x2-packed 16-channel latents [B, h*w, 64]; T5 sequence [B, 512, 4096]; CLIP pooled [B, 768];
    the embedded guidance (float32, as the pipeline makes it) when the model has a guidance embedding;
    3-axis ids without a batch dimension."""
    config = spec.transformer
    tokens_h, tokens_w = _tokens(spec, height, width)
    text = spec.max_sequence_length
    guidance = None
    if config.get("guidance_embeds", False):
        guidance = torch.full((batch,), 3.5, device=_FAKE_DEVICE, dtype=torch.float32)
    inputs = dict(
        hidden_states=_randn(batch, tokens_h * tokens_w, config["in_channels"], dtype=dtype),
        timestep=torch.rand(batch, device=_FAKE_DEVICE, dtype=dtype),
        guidance=guidance,
        pooled_projections=_randn(batch, config["pooled_projection_dim"], dtype=dtype),
        encoder_hidden_states=_randn(batch, text, config["joint_attention_dim"], dtype=dtype),
        txt_ids=torch.zeros(text, 3, device=_FAKE_DEVICE, dtype=dtype),
        img_ids=torch.zeros(tokens_h * tokens_w, 3, device=_FAKE_DEVICE, dtype=dtype),
        return_dict=False,
    )
    return inputs, inputs["hidden_states"]


def _flux1_encode(spec: PipelineSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`FluxPipeline.encode_prompt`: CLIP-L's pooled output (77 tokens), then T5's last hidden state
    (`max_sequence_length` tokens, no attention mask), the pooled embedding kept meanwhile."""
    clip, t5 = encoders["text_encoder"], encoders["text_encoder_2"]
    clip_ids = torch.zeros(1, clip.config.max_position_embeddings, dtype=torch.long, device=_FAKE_DEVICE)
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    t5_ids = torch.zeros(1, spec.max_sequence_length, dtype=torch.long, device=_FAKE_DEVICE)
    embeds = t5(t5_ids, output_hidden_states=False)[0]
    del pooled, embeds


FLUX1 = PlanFamily(
    pipeline_class="FluxPipeline",
    transformer_class="FluxTransformer2DModel",
    vae_class="AutoencoderKL",
    text_encoders=(("text_encoder", "CLIPTextModel"), ("text_encoder_2", "T5EncoderModel")),
    block_keys=("num_layers", "num_single_layers"),
    text_inputs=("encoder_hidden_states", "pooled_projections"),
    cfg_batched=False,
    max_sequence_length=FLUX1_MAX_SEQUENCE_LENGTH,
    inputs=_flux1_inputs,
    prediction=_first,
    encode=_flux1_encode,
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


# ---- Z-Image (`ZImagePipeline`) --------------------------------------------------------------------------------
def _z_image_inputs(spec: PipelineSpec, batch: int, height: int, width: int, dtype: torch.dtype) -> Inputs:
    """Per-sample lists, as the pipeline calls the transformer: latents [16, 1, H/8, W/8] each (the pipeline
    keeps the float32 latents and hands the transformer a cast copy) and caption features [L, 2560] each.

    L is `max_sequence_length`: the pipeline drops a prompt's padding, so a real prompt is shorter and
    this is the upper bound. With one image size and one caption length for the whole batch, every
    sample pads to the same length (a multiple of 32) and the transformer builds no attention mask; a
    batch of prompts of different lengths would add one (and the memory-efficient kernel, not flash).
    """
    factor = spec.vae_scale_factor
    latents = _randn(
        batch, spec.transformer["in_channels"], height // factor, width // factor, dtype=torch.float32
    )
    inputs = dict(
        x=list(latents.to(dtype).unsqueeze(2).unbind(0)),
        t=torch.rand(batch, device=_FAKE_DEVICE, dtype=torch.float32),
        cap_feats=[
            _randn(spec.max_sequence_length, spec.transformer["cap_feat_dim"], dtype=dtype)
            for _ in range(batch)
        ],
        return_dict=False,
    )
    return inputs, latents


def _z_image_prediction(output: Any) -> torch.Tensor:
    """The per-sample outputs [16, 1, h, w] stacked into one [B, 16, h, w] tensor."""
    return torch.stack(list(output[0])).squeeze(2)


def _z_image_encode(spec: PipelineSpec, encoders: dict[str, torch.nn.Module]) -> None:
    """`ZImagePipeline._encode_prompt`: a padded `max_sequence_length` prompt through `Qwen3Model`, all hidden
    states, the second to last kept without its padding. Fake tensors cannot index by a data-dependent
    mask, so the unpadded copy is taken as all tokens: the upper bound of what the pipeline keeps."""
    length = spec.max_sequence_length
    input_ids = torch.zeros(1, length, dtype=torch.long, device=_FAKE_DEVICE)
    output = encoders["text_encoder"](
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids, dtype=torch.bool),
        output_hidden_states=True,
        use_cache=False,
    )
    embeds = output.hidden_states[-2][0].clone()
    del output, embeds


Z_IMAGE = PlanFamily(
    pipeline_class="ZImagePipeline",
    transformer_class="ZImageTransformer2DModel",
    vae_class="AutoencoderKL",
    text_encoders=(("text_encoder", "Qwen3Model"),),
    # `n_refiner_layers` counts the noise refiner's blocks and the context refiner's.
    block_keys=("n_layers", "n_refiner_layers"),
    text_inputs=("cap_feats",),
    cfg_batched=True,
    max_sequence_length=Z_IMAGE_MAX_SEQUENCE_LENGTH,
    inputs=_z_image_inputs,
    prediction=_z_image_prediction,
    encode=_z_image_encode,
    prompt_embedding_numel=lambda spec: spec.max_sequence_length * spec.transformer["cap_feat_dim"],
    default_guidance=lambda spec: 5.0,  # `ZImagePipeline.__call__`'s guidance_scale (the base model's)
    uses_cfg=lambda spec, guidance: guidance > 0.0,  # `ZImagePipeline.do_classifier_free_guidance`
    notes=(
        "text tokens counted at the padded prompt length, an upper bound: Z-Image drops a prompt's padding",
    ),
)

PLAN_FAMILIES: dict[str, PlanFamily] = {
    family.pipeline_class: family for family in (FLUX2_KLEIN, FLUX1, Z_IMAGE)
}


def plan_family(pipeline_class: str) -> PlanFamily:
    """The description of a pipeline class; ValueError naming the supported ones for any other."""
    if pipeline_class not in PLAN_FAMILIES:
        raise ValueError(
            f"tscale plan has no description of {pipeline_class} pipelines yet; it plans "
            f"{', '.join(PLAN_FAMILIES)}."
        )
    return PLAN_FAMILIES[pipeline_class]
