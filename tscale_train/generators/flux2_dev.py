"""FLUX.2-dev: `Flux2Pipeline` (guidance-distilled, a Mistral-Small-3.1 text encoder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..families.flux2_dev import FLUX2_DEV
from ..generation import PromptEmbeds, stack_embeds
from .flux2 import Flux2LatentsGenerator, pack_flux2_latents, unpack_flux2_latents

# `Flux2Pipeline.__call__` defaults: 50 steps at guidance 4, the Mistral hidden states of layers 10,
# 20 and 30 (of 40) stacked, prompts of up to 512 tokens (the system message included).
FLUX2_DEV_STEPS = 50
FLUX2_DEV_GUIDANCE = 4.0
FLUX2_DEV_TEXT_ENCODER_OUT_LAYERS = (10, 20, 30)
FLUX2_DEV_MAX_SEQUENCE_LENGTH = 512
# Search previews of a 50-step FLUX.2-dev: `compute_empirical_mu` shifts a short schedule further
# towards high noise, so 10 steps already settle the composition and colours a reward ranks, at a
# fifth of the cost (as 10 of FLUX.1-dev's 28).
FLUX2_DEV_PREVIEW_STEPS = 10


class Flux2Generator(Flux2LatentsGenerator):
    """`Flux2Pipeline`: FLUX.2-dev, 50 steps, guidance 4 fed to the transformer's guidance embedding.

    The model is guidance-distilled: one transformer pass per step, no negative prompt (the pipeline
    has none). Noise and clean latents are laid out as for klein (`Flux2LatentsGenerator`).

    Not a `Flux2KleinGenerator`: they share the latent layout and the prompt encoding, but klein's class is built around step distillation and true CFG with a negative prompt, neither of
    which FLUX.2-dev has, while its guidance embedding is what klein lacks.
    """

    family = FLUX2_DEV.name
    pipeline_class = FLUX2_DEV.pipeline_class
    # The same transformer class as klein, so the same module names.
    lora_targets = FLUX2_DEV.lora_targets

    def __init__(
        self,
        pipe,
        *,
        max_sequence_length: int | None = FLUX2_DEV_MAX_SEQUENCE_LENGTH,
        text_encoder_out_layers: Sequence[int] = FLUX2_DEV_TEXT_ENCODER_OUT_LAYERS,
        **kwargs,
    ) -> None:
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or FLUX2_DEV_MAX_SEQUENCE_LENGTH
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)

    def default_num_inference_steps(self) -> int:
        return FLUX2_DEV_STEPS

    def default_preview_steps(self) -> int:
        return FLUX2_DEV_PREVIEW_STEPS

    def default_guidance_scale(self) -> float:
        return FLUX2_DEV_GUIDANCE

    @property
    def uses_cfg(self) -> bool:
        # The guidance scale is an input of the distilled transformer, never a second pass.
        return False

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict[str, Any]:
        return self._conditioning_kwargs(embeds)

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        steps = num_inference_steps or self.num_inference_steps
        # As `Flux2Pipeline.__call__`: linear sigmas shifted with an empirical mu of the token count and steps.
        use_flow_sigmas = self.pipe.scheduler.config.get("use_flow_sigmas", False)
        sigmas = None if use_flow_sigmas else np.linspace(1.0, 1 / steps, steps)
        _, height, width = self.noise_shape
        return self.scheduler_sigmas(steps, sigmas=sigmas, mu=compute_empirical_mu(height * width, steps))

    def predict_velocity(
        self, transformer, noisy_latents: torch.Tensor, sigmas: torch.Tensor, embeds: list[PromptEmbeds]
    ) -> torch.Tensor:
        batch, _, height, width = noisy_latents.shape
        device, dtype = noisy_latents.device, noisy_latents.dtype
        prediction = transformer(
            hidden_states=pack_flux2_latents(noisy_latents),
            # The pipeline hands the transformer sigma in [0, 1] (its timesteps / 1000).
            timestep=sigmas.to(device, dtype).expand(batch),
            # As the pipeline: the guidance scale in float32, one per sample (the transformer scales it).
            guidance=torch.full([batch], self.guidance_scale, device=device, dtype=torch.float32),
            encoder_hidden_states=stack_embeds(embeds, "prompt_embeds", device, dtype),
            txt_ids=stack_embeds(embeds, "text_ids", device),
            img_ids=self.pipe._prepare_latent_ids(noisy_latents).to(device),
            return_dict=False,
        )[0]
        # The transformer predicts the flow velocity noise - x0 itself (the scheduler steps along it).
        return unpack_flux2_latents(prediction, height, width)
