"""FLUX.1: `FluxPipeline` (FLUX.1-dev, guidance-distilled, and FLUX.1-schnell, timestep-distilled)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..families.flux1 import FLUX1
from ..generation import FlowGenerator, PromptEmbeds, stack_embeds

# `FluxPipeline.__call__` defaults (FLUX.1-dev's model card: 28 steps at guidance 3.5) and its T5 length.
FLUX1_DEV_STEPS = 28
FLUX1_DEV_GUIDANCE = 3.5
FLUX1_MAX_SEQUENCE_LENGTH = 512
# FLUX.1-schnell's card: 4 steps; it has no guidance embedding, so its guidance value is unused.
FLUX1_SCHNELL_STEPS = 4
# Search previews of a 28-step FLUX.1-dev: with dynamic shifting, 10 steps already give the final
# composition and colours, which is what a reward ranks, at about a third of the cost.
FLUX1_DEV_PREVIEW_STEPS = 10


class FluxGenerator(FlowGenerator):
    """`FluxPipeline`: FLUX.1-dev (28 steps, guidance 3.5 into the guidance embedding) and FLUX.1-schnell.

    Neither model runs true classifier-free guidance (one transformer pass per step): dev was
    distilled to take the guidance scale as an input, schnell takes none. The pipeline's
    `true_cfg_scale` is left at its default (off).

    The search noise is the VAE latent before packing, `[16, H/8, W/8]`; the pipeline's `latents=`
    takes it packed into 2x2 patches, `[N, (H/16)*(W/16), 64]`.
    """

    family = FLUX1.name
    pipeline_class = FLUX1.pipeline_class
    lora_targets = FLUX1.lora_targets

    def __init__(
        self, pipe, *, max_sequence_length: int | None = FLUX1_MAX_SEQUENCE_LENGTH, **kwargs
    ) -> None:
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or FLUX1_MAX_SEQUENCE_LENGTH

    @property
    def has_guidance_embedding(self) -> bool:
        """True for guidance-distilled FLUX.1-dev; FLUX.1-schnell's transformer has no guidance input."""
        return bool(self.pipe.transformer.config.guidance_embeds)

    def default_num_inference_steps(self) -> int:
        return FLUX1_DEV_STEPS if self.has_guidance_embedding else FLUX1_SCHNELL_STEPS

    def default_preview_steps(self) -> int:
        return FLUX1_DEV_PREVIEW_STEPS if self.has_guidance_embedding else FLUX1_SCHNELL_STEPS

    def default_guidance_scale(self) -> float:
        return FLUX1_DEV_GUIDANCE if self.has_guidance_embedding else 0.0

    @property
    def uses_cfg(self) -> bool:
        return False

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        # What `FluxPipeline.prepare_latents` draws before packing.
        multiple = self.resolution_multiple(self.pipe)
        channels = self.pipe.transformer.config.in_channels // 4
        return (channels, 2 * (self.height // multiple), 2 * (self.width // multiple))

    @torch.no_grad()
    def encode_text(self, text: str) -> PromptEmbeds:
        # The pipeline's text ids are zeros of the sequence length for every prompt: they are made
        # where needed rather than stored, since they have no batch axis to stack along.
        prompt_embeds, pooled_prompt_embeds, _ = self.pipe.encode_prompt(
            prompt=text, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return PromptEmbeds(text, prompt_embeds, extra={"pooled_prompt_embeds": pooled_prompt_embeds})

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict[str, Any]:
        dtype = self.pipe.transformer.dtype
        return dict(
            prompt_embeds=stack_embeds(embeds, "prompt_embeds", self.device, dtype),
            pooled_prompt_embeds=stack_embeds(embeds, "pooled_prompt_embeds", self.device, dtype),
            guidance_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
        )

    def to_pipeline_latents(self, noises: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, (h/2)*(w/2), 4C], the pipeline's own packing."""
        batch, channels, height, width = noises.shape
        return self.pipe._pack_latents(noises, batch, channels, height, width)

    def from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, (h/2)*(w/2), 4C] -> [N, C, h, w], the pipeline's own unpacking."""
        _, height, width = self.noise_shape
        return self._unpack(latents, height, width)

    def _unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # `_unpack_latents` takes the image size in pixels.
        scale = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(latents, height * scale, width * scale, scale)

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        steps = num_inference_steps or self.num_inference_steps
        config = self.pipe.scheduler.config
        # As `FluxPipeline.__call__`: linear sigmas, shifted with a mu from the packed sequence length.
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        return self.scheduler_sigmas(steps, sigmas=sigmas, mu=self.resolution_shift_mu())

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        batch, _, height, width = noisy_latents.shape
        device, dtype = noisy_latents.device, noisy_latents.dtype
        prompt_embeds = stack_embeds(embeds, "prompt_embeds", device, dtype)
        guidance = None
        if self.has_guidance_embedding:
            guidance = torch.full([batch], self.guidance_scale, device=device, dtype=torch.float32)
        prediction = transformer(
            hidden_states=self.to_pipeline_latents(noisy_latents),
            # FLUX.1's transformer takes sigma in [0, 1] (the pipeline divides its timesteps by 1000).
            timestep=sigmas.to(device, dtype).expand(batch),
            guidance=guidance,
            pooled_projections=stack_embeds(embeds, "pooled_prompt_embeds", device, dtype),
            encoder_hidden_states=prompt_embeds,
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype),
            img_ids=self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype),
            return_dict=False,
        )[0]
        # The transformer predicts the flow velocity noise - x0 itself (the scheduler steps along it).
        return self._unpack(prediction, height, width)
