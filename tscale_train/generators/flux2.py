"""FLUX.2: `Flux2KleinPipeline` (klein distilled and base), and what it shares with `Flux2Pipeline` (FLUX.2-dev)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..families.flux2_klein import FLUX2_KLEIN
from ..generation import FlowGenerator, PromptEmbeds, negatives, stack_embeds
from ..real_configs import FLUX2_KLEIN_MAX_SEQUENCE_LENGTH, FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS


def pack_flux2_latents(latents: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, h*w, C]: the row-major tokens FLUX.2's pipelines (`_pack_latents`) hand the transformer."""
    return latents.flatten(2).permute(0, 2, 1)


def unpack_flux2_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_flux2_latents`: [N, h*w, C] -> [N, C, h, w]."""
    return tokens.permute(0, 2, 1).reshape(tokens.shape[0], -1, height, width)


class Flux2LatentsGenerator(FlowGenerator):
    """What FLUX.2's pipelines (`Flux2KleinPipeline`, `Flux2Pipeline`) share: the latent layout and the
    prompt encoding.

    Noise and clean latents live in the transformer's input space: patchified, batch-norm-normalised
    `[N, transformer.in_channels, H/16, W/16]`, which is what the pipelines' `latents=` takes before
    they pack it into tokens. Subclasses set `max_sequence_length` and `text_encoder_out_layers`.
    """

    max_sequence_length: int
    text_encoder_out_layers: tuple[int, ...]

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        # What the pipelines' `prepare_latents` draw before packing.
        multiple = self.resolution_multiple(self.pipe)
        return (self.pipe.transformer.config.in_channels, self.height // multiple, self.width // multiple)

    def encode_text(self, text: str) -> PromptEmbeds:
        prompt_embeds, text_ids = self.pipe.encode_prompt(
            prompt=text,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers,
        )
        return PromptEmbeds(text, prompt_embeds, text_ids)

    def _conditioning_kwargs(self, embeds: list[PromptEmbeds]) -> dict:
        """The prompt conditioning and the guidance scale, as both pipelines take them."""
        return dict(
            prompt_embeds=stack_embeds(embeds, "prompt_embeds", self.device, self.pipe.transformer.dtype),
            guidance_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers,
        )

    def prompt_call_kwargs(self) -> dict[str, Any]:
        # Which hidden layers of the text encoder make the prompt embedding: a model with fewer layers than the
        # pipeline's default (a kit's 2-layer encoder) cannot be called without them.
        return {**super().prompt_call_kwargs(), "text_encoder_out_layers": list(self.text_encoder_out_layers)}

    def from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, h*w, C] (the sampler's tokens) -> [N, C, h, w] (the `latents=` layout)."""
        _, height, width = self.noise_shape
        return unpack_flux2_latents(latents, height, width)


class Flux2KleinGenerator(Flux2LatentsGenerator):
    """`Flux2KleinPipeline`: distilled klein (4 steps, no CFG) and the undistilled klein base models."""

    family = FLUX2_KLEIN.name
    pipeline_class = FLUX2_KLEIN.pipeline_class
    lora_targets = FLUX2_KLEIN.lora_targets

    def __init__(
        self,
        pipe,
        *,
        max_sequence_length: int | None = FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
        text_encoder_out_layers: Sequence[int] = FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS,
        **kwargs,
    ) -> None:
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or FLUX2_KLEIN_MAX_SEQUENCE_LENGTH
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)

    @property
    def is_distilled(self) -> bool:
        return bool(self.pipe.config.get("is_distilled", False))

    def default_num_inference_steps(self) -> int:
        return 4 if self.is_distilled else 50

    def default_preview_steps(self) -> int:
        # The distilled model's 4 steps are its previews; the base model's 50 would make a search 5x dearer
        # than 10-step previews, which already settle composition and colour.
        return 4 if self.is_distilled else 10

    def default_guidance_scale(self) -> float:
        return 1.0 if self.is_distilled else 4.0

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0 and not self.is_distilled

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict:
        kwargs = self._conditioning_kwargs(embeds)
        if self.uses_cfg:
            kwargs["negative_prompt_embeds"] = stack_embeds(
                negatives(embeds), "prompt_embeds", self.device, self.pipe.transformer.dtype
            )
        return kwargs

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        steps = num_inference_steps or self.num_inference_steps
        _, height, width = self.noise_shape
        linear = [1.0 - index / steps for index in range(steps)]
        return self.scheduler_sigmas(steps, sigmas=linear, mu=compute_empirical_mu(height * width, steps))

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        batch = noisy_latents.shape[0]
        prompt_embeds = stack_embeds(embeds, "prompt_embeds", noisy_latents.device, noisy_latents.dtype)
        text_ids = stack_embeds(embeds, "text_ids", noisy_latents.device)
        latent_ids = self.pipe._prepare_latent_ids(noisy_latents).to(noisy_latents.device)
        prediction = transformer(
            hidden_states=pack_flux2_latents(noisy_latents),
            timestep=sigmas.to(noisy_latents.dtype).expand(batch),
            guidance=None,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=latent_ids,
            return_dict=False,
        )[0]
        return self.from_pipeline_latents(prediction)
