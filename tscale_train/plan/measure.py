"""The measured transients: peak bytes of sampling, DPO, decode, reward and encode forwards on fake tensors.

What differs between pipeline families (the transformer's inputs and output, the encode call, how CFG
batches) comes from the spec's `families.PlanFamily`; the measurements themselves are shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from .components import (
    LoraSpec,
    PipelineSpec,
    _meta_clip,
    _meta_vae,
    _to_json,
    component_bytes,
    meta_text_encoders,
    meta_transformer,
)
from .tracker import _FAKE_DEVICE, LiveMemoryTracker, _backward, _CudaAutocast, fake_gpu


def _autocast(enabled: bool):
    return _CudaAutocast(torch.bfloat16) if enabled else contextlib.nullcontext()


def _with_blocks(spec: PipelineSpec, counts: dict[str, int]) -> PipelineSpec:
    config = spec.transformer
    config.update(counts)
    return dataclasses.replace(spec, transformer_json=_to_json(config))


def _blocks(spec: PipelineSpec) -> dict[str, int]:
    """The transformer's block counts, by config key (`PlanFamily.block_keys`)."""
    config = spec.transformer
    return {key: int(config[key]) for key in spec.family.block_keys}


def _clone(value):
    return [item.clone() for item in value] if isinstance(value, list) else value.clone()


def measure_sampling(
    spec: PipelineSpec,
    dtype: torch.dtype,
    lora: LoraSpec | None,
    batch: int,
    height: int,
    width: int,
    cfg: bool,
    autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step; see `_measure_sampling`.

    Without grad every block frees its transient before the next one runs and the residual streams
    keep their size, so the peak of a model with one block of each kind is the peak of the full one
    (checked against the full 25-block klein at 1024px); measuring 2 blocks instead of 25 is ~10x faster.
    """
    small = _with_blocks(spec, {key: min(count, 1) for key, count in _blocks(spec).items()})
    return _measure_sampling(small, dtype, lora, batch, height, width, cfg, autocast)


def measure_dpo(
    spec: PipelineSpec,
    dtype: torch.dtype,
    lora: LoraSpec,
    pairs: int,
    height: int,
    width: int,
    checkpointing: bool,
    autocast: bool,
    extrapolate: bool = True,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients); see `_measure_dpo`.

    Each block adds the same saved activations (its inputs with checkpointing, everything without),
    so the peak is linear in the block counts: measured with one block of each kind, then with two of
    one kind at a time, and extrapolated, which equals the full measurement to the byte (checked for
    klein at 1024px with and without checkpointing, and in the tests for every family) at a fraction of
    the time. `extrapolate=False` measures the full model.
    """
    counts = _blocks(spec)
    if not extrapolate or any(count < 2 for count in counts.values()):
        return _measure_dpo(spec, dtype, lora, pairs, height, width, checkpointing, autocast)
    args = (dtype, lora, pairs, height, width, checkpointing, autocast)
    ones = dict.fromkeys(counts, 1)
    base, _ = _measure_dpo(_with_blocks(spec, ones), *args)
    peak = base
    for key, count in counts.items():
        per_block = _measure_dpo(_with_blocks(spec, {**ones, key: 2}), *args)[0] - base
        peak += (count - 1) * per_block
    lora_grads = component_bytes(spec, dtype, lora)["lora"]
    return peak, lora_grads


@functools.lru_cache(maxsize=128)
def _measure_sampling(
    spec: PipelineSpec,
    dtype: torch.dtype,
    lora: LoraSpec | None,
    batch: int,
    height: int,
    width: int,
    cfg: bool,
    autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step at `batch`, with CFG as the family's pipeline runs it.

    The klein and FLUX.1 pipelines run the conditional and unconditional forwards one after the other at
    the same batch, so CFG adds one prediction and the negative embeddings, not a doubled batch; the
    Z-Image pipeline runs both in one forward of twice the batch.
    """
    family = spec.family
    transformer = meta_transformer(spec, dtype, lora)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad(), _autocast(autocast):
            if cfg and family.cfg_batched:
                inputs, latents = family.inputs(spec, 2 * batch, height, width, dtype)
                both = family.prediction(transformer(**inputs))
                positive, negative = both[:batch].float(), both[batch:].float()
                del both
                prediction = positive + 2.0 * (positive - negative)
                del positive, negative
                latents = latents[:batch]
            else:
                inputs, latents = family.inputs(spec, batch, height, width, dtype)
                negative = {key: _clone(inputs[key]) for key in family.text_inputs} if cfg else None
                prediction = family.prediction(transformer(**inputs))
                if cfg:
                    uncond = family.prediction(transformer(**dict(inputs, **negative)))
                    prediction = uncond + 2.0 * (prediction - uncond)
            latents = latents - 0.25 * prediction.to(latents.dtype)
            del latents, prediction, inputs
        return tracker.peak


@functools.lru_cache(maxsize=64)
def measure_decode(
    spec: PipelineSpec, dtype: torch.dtype, batch: int, height: int, width: int
) -> tuple[int, int]:
    """(peak bytes of the VAE decode of `batch` latents, bytes of the float32 images it leaves)."""
    vae = _meta_vae(spec, dtype)
    channels = spec.vae.get("latent_channels", 32)
    factor = spec.vae_scale_factor
    with fake_gpu():
        vae = vae.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            latents = torch.randn(
                batch, channels, height // factor, width // factor, device=_FAKE_DEVICE, dtype=dtype
            )
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
                images,
                size=(round(height * size / short), round(width * size / short)),
                mode="bicubic",
                antialias=True,
            ).clamp_(0, 1)
            top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
            pixels = (resized[..., top : top + size, left : left + size] - 0.5) / 0.25
            del resized
            image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
            del pixels
            tokens = torch.zeros(batch, text_length, dtype=torch.long, device=_FAKE_DEVICE)
            text_embeds = model.get_text_features(
                input_ids=tokens, attention_mask=torch.ones_like(tokens)
            ).pooler_output
            scores = (image_embeds * text_embeds).sum(-1)
            del scores, image_embeds, text_embeds, tokens
        return tracker.peak


@functools.lru_cache(maxsize=16)
def measure_encode(spec: PipelineSpec, dtype: torch.dtype) -> int:
    """Peak bytes of encoding one prompt of `max_sequence_length` tokens, as the family's pipeline does
    (`PlanFamily.encode`: klein stacks three hidden states, FLUX.1 runs CLIP then T5, Z-Image keeps
    Qwen3's second to last hidden state)."""
    encoders = meta_text_encoders(spec, dtype)
    with fake_gpu():
        encoders = {name: encoder.to_empty(device=_FAKE_DEVICE) for name, encoder in encoders.items()}
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            spec.family.encode(spec, encoders)
        return tracker.peak


@functools.lru_cache(maxsize=256)
def _measure_dpo(
    spec: PipelineSpec,
    dtype: torch.dtype,
    lora: LoraSpec,
    pairs: int,
    height: int,
    width: int,
    checkpointing: bool,
    autocast: bool,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients it leaves).

    As the trainer does it: the chosen and rejected latents of `pairs` pairs in one batch of
    2 x pairs, a no-grad reference forward with the adapters disabled, the trained forward (with
    gradient checkpointing if set), the flow-DPO loss and its backward into the fp32 LoRA grads.
    """
    from ..dpo import flow_dpo_loss

    family = spec.family
    transformer = meta_transformer(spec, dtype, lora, checkpointing=checkpointing)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        transformer.train()
        lora_parameters = [p for name, p in transformer.named_parameters() if "lora_" in name]
        tracker = LiveMemoryTracker()
        with tracker:
            inputs, latents = family.inputs(spec, 2 * pairs, height, width, dtype)
            target = torch.randn(latents.shape, device=_FAKE_DEVICE)
            with torch.no_grad(), _autocast(autocast):
                transformer.disable_adapters()
                reference = family.prediction(transformer(**inputs)).float()
                transformer.enable_adapters()
            for parameter in lora_parameters:
                parameter.requires_grad_(True)
            # The emulated autocast stays on through the backward: checkpointing recomputes each block
            # there, under the autocast state of the forward, as torch.utils.checkpoint restores it.
            with _autocast(autocast):
                prediction = family.prediction(transformer(**inputs)).float()  # accelerate's convert_to_fp32
                loss, _ = flow_dpo_loss(
                    prediction[:pairs],
                    prediction[pairs:],
                    reference[:pairs],
                    reference[pairs:],
                    target[:pairs],
                    target[pairs:],
                    beta=100.0,
                )
                _backward(loss)
            del loss, prediction, reference, inputs, latents, target
            grads = sum(p.grad.numel() * p.grad.element_size() for p in lora_parameters if p.grad is not None)
            if lora_parameters and any(p.grad is None for p in lora_parameters):
                raise RuntimeError("the planned DPO backward left LoRA parameters without gradients")
        return tracker.peak, grads


def _search_transient(
    spec: PipelineSpec,
    dtype: torch.dtype,
    lora: LoraSpec | None,
    clip_json: str | None,
    eval_batch: int,
    reward_batch: int,
    height: int,
    width: int,
    cfg: bool,
    autocast: bool,
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
