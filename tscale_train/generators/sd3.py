"""Stable Diffusion 3 and 3.5: `StableDiffusion3Pipeline`."""

from __future__ import annotations

from typing import Any

import torch

from ..families.sd3 import SD3
from ..generation import FlowGenerator, PromptEmbeds, negatives, stack_embeds

# `StableDiffusion3Pipeline.__call__` defaults: 28 steps, a T5 sequence of 256 tokens.
SD3_STEPS = 28
SD3_MAX_SEQUENCE_LENGTH = 256
# The pipeline's guidance 7.0 is SD3-medium's (its model card's value). SD3.5's cards use less
# (large: 3.5, medium: 4.5) and 7.0 over-saturates them; SD3.5 is told apart by its RMS q/k norm.
SD3_GUIDANCE = 7.0
SD35_GUIDANCE = 3.5
# Search previews of a 28-step model: the shifted schedule has settled the composition by 10 steps.
SD3_PREVIEW_STEPS = 10


class StableDiffusion3Generator(FlowGenerator):
    """`StableDiffusion3Pipeline`: SD3-medium and SD3.5 large / medium, with real classifier-free guidance.

    The negative prompt is the pipeline's default, "", encoded once per generator. Latents are not
    packed: the search noise `[16, H/8, W/8]` is what `latents=` takes. The transformer takes
    timesteps in [0, 1000] (sigma * 1000) and predicts the velocity noise - x0.
    """

    family = SD3.name
    pipeline_class = SD3.pipeline_class
    lora_targets = SD3.lora_targets

    def __init__(self, pipe, *, max_sequence_length: int | None = SD3_MAX_SEQUENCE_LENGTH, **kwargs) -> None:
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or SD3_MAX_SEQUENCE_LENGTH

    @staticmethod
    def resolution_multiple(pipe) -> int:
        return pipe.vae_scale_factor * pipe.patch_size

    @property
    def is_sd35(self) -> bool:
        """SD3.5 (large, medium) normalises queries and keys; SD3-medium does not."""
        return getattr(self.pipe.transformer.config, "qk_norm", None) is not None

    def default_num_inference_steps(self) -> int:
        return SD3_STEPS

    def default_preview_steps(self) -> int:
        return SD3_PREVIEW_STEPS

    def default_guidance_scale(self) -> float:
        return SD35_GUIDANCE if self.is_sd35 else SD3_GUIDANCE

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        scale = self.pipe.vae_scale_factor
        return (self.pipe.transformer.config.in_channels, self.height // scale, self.width // scale)

    def encode_text(self, text: str) -> PromptEmbeds:
        # The same text goes to all three encoders, as when the pipeline gets only `prompt`.
        prompt_embeds, _, pooled_prompt_embeds, _ = self.pipe.encode_prompt(
            prompt=text,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(text, prompt_embeds, extra={"pooled_prompt_embeds": pooled_prompt_embeds})

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict[str, Any]:
        dtype = self.pipe.transformer.dtype
        kwargs = dict(
            prompt_embeds=stack_embeds(embeds, "prompt_embeds", self.device, dtype),
            pooled_prompt_embeds=stack_embeds(embeds, "pooled_prompt_embeds", self.device, dtype),
            guidance_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
        )
        if self.uses_cfg:
            negative = negatives(embeds)
            kwargs["negative_prompt_embeds"] = stack_embeds(negative, "prompt_embeds", self.device, dtype)
            kwargs["negative_pooled_prompt_embeds"] = stack_embeds(
                negative, "pooled_prompt_embeds", self.device, dtype
            )
        return kwargs

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        steps = num_inference_steps or self.num_inference_steps
        config = self.pipe.scheduler.config
        mu = None
        # The released SD3 schedulers shift by a fixed 3.0; as the pipeline, a dynamically shifting
        # one gets a mu from the patch count.
        if config.get("use_dynamic_shifting", None):
            mu = self.resolution_shift_mu(patch=self.pipe.transformer.config.patch_size, max_shift=1.16)
        return self.scheduler_sigmas(steps, mu=mu)

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        batch = noisy_latents.shape[0]
        device, dtype = noisy_latents.device, noisy_latents.dtype
        # The pipeline hands the transformer the scheduler's timesteps, sigma * num_train_timesteps, in float32.
        timesteps = sigmas.to(device, torch.float32) * self.pipe.scheduler.config.num_train_timesteps
        return transformer(
            hidden_states=noisy_latents,
            timestep=timesteps.expand(batch),
            encoder_hidden_states=stack_embeds(embeds, "prompt_embeds", device, dtype),
            pooled_projections=stack_embeds(embeds, "pooled_prompt_embeds", device, dtype),
            return_dict=False,
        )[0]
