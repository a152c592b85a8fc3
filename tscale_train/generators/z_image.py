"""Z-Image: `ZImagePipeline` (Tongyi-MAI Z-Image and the distilled Z-Image-Turbo, one class).

What sets the family apart from FLUX-style pipelines:

- the transformer takes LISTS: one `[C, 1, h, w]` latent per sample (a frame axis) and one caption
  feature `[seq_i, dim]` per sample, of the prompt's own length (padding tokens are dropped by
  `encode_prompt`), and returns a list of `[C, 1, h, w]`;
- its timestep is `1 - sigma` (the pipeline passes `(1000 - t) / 1000`) and the pipeline negates its
  output before the Euler step, so the sampler's velocity (noise - x0) is minus the model's output;
- CFG is on whenever `guidance_scale > 0` and reads `pos + scale * (pos - neg)`; the pipeline's
  `cfg_normalization` and `cfg_truncation` keep their defaults (off);
- latents stay float32 whatever the model's dtype (the pipeline asserts it after each step).
"""

from __future__ import annotations

import torch

from ..families.z_image import Z_IMAGE
from ..generation import FlowGenerator, PromptEmbeds, negatives

# Pipeline defaults (the undistilled Z-Image); Z-Image-Turbo's 9 steps without CFG come from its
# model card, through its family's registration (`families.z_image`).
Z_IMAGE_DEFAULT_STEPS = 50
Z_IMAGE_DEFAULT_GUIDANCE_SCALE = 5.0
Z_IMAGE_MAX_SEQUENCE_LENGTH = 512
# Search previews of the 50-step base model; Turbo (9 steps) previews at its full step count.
Z_IMAGE_PREVIEW_STEPS = 10
# `ZImagePipeline.__call__` falls back to 1024 x 1024.
Z_IMAGE_NATIVE_RESOLUTION = 1024


class ZImageGenerator(FlowGenerator):
    """`ZImagePipeline`: Z-Image (50 steps, CFG 5) and Z-Image-Turbo (9 steps, no CFG).

    Noise and clean latents are the pipeline's own `latents`: `[N, 16, H/8, W/8]` (the transformer
    patchifies 2x2 inside), float32, in the VAE's scaled and shifted space.
    """

    family = Z_IMAGE.name
    pipeline_class = Z_IMAGE.pipeline_class
    lora_targets = Z_IMAGE.lora_targets

    def __init__(
        self, pipe, *, max_sequence_length: int | None = Z_IMAGE_MAX_SEQUENCE_LENGTH, **kwargs
    ) -> None:
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or Z_IMAGE_MAX_SEQUENCE_LENGTH

    @staticmethod
    def native_resolution(pipe) -> int:
        return Z_IMAGE_NATIVE_RESOLUTION

    def default_num_inference_steps(self) -> int:
        return Z_IMAGE_DEFAULT_STEPS

    def default_preview_steps(self) -> int:
        return Z_IMAGE_PREVIEW_STEPS

    def default_guidance_scale(self) -> float:
        return Z_IMAGE_DEFAULT_GUIDANCE_SCALE

    @property
    def uses_cfg(self) -> bool:
        # The pipeline's own test (`do_classifier_free_guidance`): its formula has no guidance at 0, not 1.
        return self.guidance_scale > 0

    @property
    def latents_dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        multiple = self.resolution_multiple(self.pipe)
        # As `ZImagePipeline.prepare_latents`: 2 latent pixels per transformer patch side.
        return (
            self.pipe.transformer.config.in_channels,
            2 * (self.height // multiple),
            2 * (self.width // multiple),
        )

    def encode_text(self, text: str) -> PromptEmbeds:
        (features,), _ = self.pipe.encode_prompt(
            prompt=text,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        # `[seq, dim]` with the padding dropped: its length is the prompt's own.
        return PromptEmbeds(text, features.unsqueeze(0))

    def _caption_features(
        self, embeds: list[PromptEmbeds], device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """The per-sample `[seq_i, dim]` list the pipeline and the transformer take (lengths differ: no stacking)."""
        return [item.prompt_embeds[0].to(device, dtype) for item in embeds]

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict:
        dtype = self.pipe.transformer.dtype
        kwargs = dict(
            prompt_embeds=self._caption_features(embeds, self.device, dtype),
            guidance_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
        )
        if self.uses_cfg:
            kwargs["negative_prompt_embeds"] = self._caption_features(negatives(embeds), self.device, dtype)
        return kwargs

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        steps = num_inference_steps or self.num_inference_steps
        # As `ZImagePipeline.__call__` (`mu` only matters when the scheduler shifts dynamically).
        return self.scheduler_sigmas(
            steps, sigmas=get_default_z_image_sigmas(steps), mu=self.resolution_shift_mu()
        )

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        dtype = noisy_latents.dtype
        # The pipeline's timestep: (1000 - t) / 1000 with t = 1000 * sigma, in float32.
        timestep = (1000 - sigmas.float().to(noisy_latents.device) * 1000) / 1000
        outputs = transformer(
            list(noisy_latents.unsqueeze(2).unbind(dim=0)),
            timestep.expand(noisy_latents.shape[0]),
            self._caption_features(embeds, noisy_latents.device, dtype),
            return_dict=False,
        )[0]
        # The pipeline steps with minus the model's output.
        return -torch.stack(outputs).squeeze(2)
