"""The measured transients: peak bytes of sampling, DPO, decode, reward and encode forwards on fake tensors."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from .components import (
    LoraSpec,
    PipelineSpec,
    _meta_clip,
    _meta_text_encoder,
    _meta_vae,
    _to_json,
    component_bytes,
    meta_transformer,
)
from .tracker import _FAKE_DEVICE, LiveMemoryTracker, _backward, _CudaAutocast, fake_gpu


def _autocast(enabled: bool):
    return _CudaAutocast(torch.bfloat16) if enabled else contextlib.nullcontext()


def _transformer_inputs(spec: PipelineSpec, batch: int, tokens_h: int, tokens_w: int, dtype: torch.dtype):
    channels = spec.transformer["in_channels"]
    joint = spec.transformer["joint_attention_dim"]
    text = spec.max_sequence_length
    return dict(
        hidden_states=torch.randn(batch, tokens_h * tokens_w, channels, device=_FAKE_DEVICE, dtype=dtype),
        timestep=torch.rand(batch, device=_FAKE_DEVICE, dtype=dtype),
        guidance=None,
        encoder_hidden_states=torch.randn(batch, text, joint, device=_FAKE_DEVICE, dtype=dtype),
        txt_ids=torch.zeros(batch, text, 4, device=_FAKE_DEVICE, dtype=torch.long),
        img_ids=torch.zeros(batch, tokens_h * tokens_w, 4, device=_FAKE_DEVICE, dtype=torch.long),
        return_dict=False,
    )


def _with_blocks(spec: PipelineSpec, double: int, single: int) -> PipelineSpec:
    config = spec.transformer
    config.update(num_layers=double, num_single_layers=single)
    return dataclasses.replace(spec, transformer_json=_to_json(config))


def _blocks(spec: PipelineSpec) -> tuple[int, int]:
    config = spec.transformer
    return int(config["num_layers"]), int(config["num_single_layers"])


def measure_sampling(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, batch: int, height: int, width: int,
    cfg: bool, autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step; see `_measure_sampling`.

    Without grad every block frees its transient before the next one runs and the residual streams
    keep their size, so the peak of a 1 + 1 block model is the peak of the full one (checked
    against the full 25-block klein at 1024px); measuring 2 blocks instead of 25 is ~10x faster.
    """
    double, single = _blocks(spec)
    small = _with_blocks(spec, min(double, 1), min(single, 1))
    return _measure_sampling(small, dtype, lora, batch, height, width, cfg, autocast)


def measure_dpo(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec, pairs: int, height: int, width: int,
    checkpointing: bool, autocast: bool, extrapolate: bool = True,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients); see `_measure_dpo`.

    Each block adds the same saved activations (its inputs with checkpointing, everything without),
    so the peak is linear in the block counts: measured at (1, 1), (2, 1) and (1, 2) blocks and
    extrapolated, which equals the full 25-block measurement to the byte (checked at 1024px with and
    without checkpointing) at about half the time. `extrapolate=False` measures the full model.
    """
    double, single = _blocks(spec)
    if not extrapolate or double < 2 or single < 2:
        return _measure_dpo(spec, dtype, lora, pairs, height, width, checkpointing, autocast)
    args = (dtype, lora, pairs, height, width, checkpointing, autocast)
    base, _ = _measure_dpo(_with_blocks(spec, 1, 1), *args)
    per_double = _measure_dpo(_with_blocks(spec, 2, 1), *args)[0] - base
    per_single = _measure_dpo(_with_blocks(spec, 1, 2), *args)[0] - base
    lora_grads = component_bytes(spec, dtype, lora)["lora"]
    return base + (double - 1) * per_double + (single - 1) * per_single, lora_grads


@functools.lru_cache(maxsize=128)
def _measure_sampling(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, batch: int, height: int, width: int,
    cfg: bool, autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step at `batch` (the pipeline's cond, then uncond, forward).

    With CFG the klein pipeline runs the conditional and unconditional forwards one after the other
    at the same batch, so CFG adds one prediction and the negative embeddings, not a doubled batch.
    """
    tokens_h, tokens_w = height // spec.resolution_multiple, width // spec.resolution_multiple
    transformer = meta_transformer(spec, dtype, lora)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad(), _autocast(autocast):
            inputs = _transformer_inputs(spec, batch, tokens_h, tokens_w, dtype)
            negative = inputs["encoder_hidden_states"].clone() if cfg else None
            prediction = transformer(**inputs)[0]
            if cfg:
                uncond = transformer(**dict(inputs, encoder_hidden_states=negative))[0]
                prediction = uncond + 2.0 * (prediction - uncond)
            latents = inputs["hidden_states"] - 0.25 * prediction.to(dtype)
            del latents, prediction, negative, inputs
        return tracker.peak


@functools.lru_cache(maxsize=64)
def measure_decode(spec: PipelineSpec, dtype: torch.dtype, batch: int, height: int, width: int) -> tuple[int, int]:
    """(peak bytes of the VAE decode of `batch` latents, bytes of the float32 images it leaves)."""
    vae = _meta_vae(spec, dtype)
    channels = spec.vae.get("latent_channels", 32)
    factor = spec.vae_scale_factor
    with fake_gpu():
        vae = vae.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            latents = torch.randn(batch, channels, height // factor, width // factor, device=_FAKE_DEVICE, dtype=dtype)
            decoded = vae.decode(latents, return_dict=False)[0]
            del latents
            images = (decoded / 2 + 0.5).clamp(0, 1).float()
            del decoded
            kept = images.numel() * images.element_size()
        return tracker.peak, kept


@functools.lru_cache(maxsize=64)
def measure_reward(clip_json: str | None, batch: int, height: int, width: int) -> int:
    """Peak bytes of scoring `batch` images (already on the GPU) with a CLIP-style reward."""
    if clip_json is None:
        return 0
    model = _meta_clip(clip_json)
    size = model.config.vision_config.image_size
    text_length = model.config.text_config.max_position_embeddings
    with fake_gpu():
        model = model.to_empty(device=_FAKE_DEVICE)
        images = torch.rand(batch, 3, height, width, device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            short = min(height, width)
            resized = torch.nn.functional.interpolate(
                images, size=(round(height * size / short), round(width * size / short)), mode="bicubic", antialias=True
            ).clamp_(0, 1)
            top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
            pixels = (resized[..., top : top + size, left : left + size] - 0.5) / 0.25
            del resized
            image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
            del pixels
            tokens = torch.zeros(batch, text_length, dtype=torch.long, device=_FAKE_DEVICE)
            text_embeds = model.get_text_features(input_ids=tokens, attention_mask=torch.ones_like(tokens)).pooler_output
            scores = (image_embeds * text_embeds).sum(-1)
            del scores, image_embeds, text_embeds, tokens
        return tracker.peak


@functools.lru_cache(maxsize=16)
def measure_encode(spec: PipelineSpec, dtype: torch.dtype) -> int:
    """Peak bytes of encoding one prompt of `max_sequence_length` tokens, as `Flux2KleinPipeline` does
    (all hidden states, three of them stacked into the transformer's text input)."""
    text_encoder = _meta_text_encoder(spec, dtype)
    length = spec.max_sequence_length
    with fake_gpu():
        text_encoder = text_encoder.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            input_ids = torch.zeros(1, length, dtype=torch.long, device=_FAKE_DEVICE)
            output = text_encoder(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True, use_cache=False
            )
            stacked = torch.stack([output.hidden_states[k] for k in spec.text_encoder_out_layers], dim=1)
            embeds = stacked.permute(0, 2, 1, 3).reshape(1, length, -1).clone()
            del output, stacked, embeds
        return tracker.peak


@functools.lru_cache(maxsize=256)
def _measure_dpo(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec, pairs: int, height: int, width: int,
    checkpointing: bool, autocast: bool,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients it leaves).

    As the trainer does it: the chosen and rejected latents of `pairs` pairs in one batch of
    2 x pairs, a no-grad reference forward with the adapters disabled, the trained forward (with
    gradient checkpointing if set), the flow-DPO loss and its backward into the fp32 LoRA grads.
    """
    from ..dpo import flow_dpo_loss

    tokens_h, tokens_w = height // spec.resolution_multiple, width // spec.resolution_multiple
    transformer = meta_transformer(spec, dtype, lora, checkpointing=checkpointing)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        transformer.train()
        lora_parameters = [p for name, p in transformer.named_parameters() if "lora_" in name]
        tracker = LiveMemoryTracker()
        with tracker:
            inputs = _transformer_inputs(spec, 2 * pairs, tokens_h, tokens_w, dtype)
            channels = inputs["hidden_states"].shape[-1]
            target = torch.randn(2 * pairs, tokens_h * tokens_w, channels, device=_FAKE_DEVICE)
            with torch.no_grad(), _autocast(autocast):
                transformer.disable_adapters()
                reference = transformer(**inputs)[0].float()
                transformer.enable_adapters()
            for parameter in lora_parameters:
                parameter.requires_grad_(True)
            # The emulated autocast stays on through the backward: checkpointing recomputes each block
            # there, under the autocast state of the forward, as torch.utils.checkpoint restores it.
            with _autocast(autocast):
                prediction = transformer(**inputs)[0].float()  # accelerate's convert_to_fp32
                loss, _ = flow_dpo_loss(
                    prediction[:pairs], prediction[pairs:], reference[:pairs], reference[pairs:],
                    target[:pairs], target[pairs:], beta=100.0,
                )
                _backward(loss)
            del loss, prediction, reference, inputs, target
            grads = sum(p.grad.numel() * p.grad.element_size() for p in lora_parameters if p.grad is not None)
            if lora_parameters and any(p.grad is None for p in lora_parameters):
                raise RuntimeError("the planned DPO backward left LoRA parameters without gradients")
        return tracker.peak, grads


def _search_transient(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, clip_json: str | None,
    eval_batch: int, reward_batch: int, height: int, width: int, cfg: bool, autocast: bool,
) -> dict[str, int]:
    """The transient of one eval batch: sampling steps, then the VAE decode, then scoring its images
    `reward_batch` at a time (the batch's float32 images stay on the GPU until scored). One batch is
    the right unit: `FlowGenerator` scores each eval batch as soon as it is decoded, so the images of
    a whole generation are never on the GPU together."""
    sampling = measure_sampling(spec, dtype, lora, eval_batch, height, width, cfg, autocast)
    decode, images = measure_decode(spec, dtype, eval_batch, height, width)
    scoring = images + measure_reward(clip_json, min(reward_batch, eval_batch), height, width)
    return {
        f"denoising forward (batch {eval_batch}{', CFG' if cfg else ''})": sampling,
        f"VAE decode (batch {eval_batch})": decode,
        f"images + reward forward (batch {min(reward_batch, eval_batch)})": scoring,
    }
