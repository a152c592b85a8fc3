"""Qwen-Image: `QwenImagePipeline` (Qwen/Qwen-Image, Qwen/Qwen-Image-2512).

What sets the family apart:

- `latents=` takes packed latents `[N, (H/16) * (W/16), 64]`: 2x2 patches of the 16-channel latent.
  The pipeline draws its own noise as `[N, 1, 16, H/8, W/8]` (the video VAE's frame axis) and packs it
  with `_pack_latents`; the search noise is that noise without the frame axis, `[N, 16, H/8, W/8]`, so
  the same seed gives the same noise either way.
- CFG is "true CFG": a second pass on a negative prompt, on only when `true_cfg_scale > 1` AND a
  negative prompt is given, and the combined prediction is rescaled to the conditional one's norm per
  token. The pipeline has no default negative prompt; the model card passes `negative_prompt=" "` with
  `true_cfg_scale=4.0` and 50 steps, and so do we by default (`guidance_scale` here is
  `true_cfg_scale`; the pipeline's own `guidance_scale` is for guidance-distilled variants, of which
  none exists, and they are refused).
- The conditioning is the text encoder's last hidden state with the chat template's system prompt
  dropped, of the prompt's own length, plus `prompt_embeds_mask`. A batch of prompts of different
  lengths is zero-padded to the longest with the mask 0 there, as `_get_qwen_prompt_embeds` does; an
  all-ones mask means no mask to the pipeline.
- The transformer takes `timestep` = sigma (the pipeline passes `t / 1000`) and `img_shapes`, the
  packed grid per sample; its output is the sampler's velocity (noise - x0) as it is.
- The scheduler stretches its sigmas to end at `shift_terminal` (0.02): one step is undefined (the
  pipeline samples with a NaN sigma), so at least 2 steps are required.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..families.qwen_image import QWEN_IMAGE
from ..generation import FlowGenerator, PromptEmbeds, negatives

# `QwenImagePipeline.__call__` defaults and the Qwen-Image model card (50 steps, true CFG 4 with a " " negative).
QWEN_IMAGE_DEFAULT_STEPS = 50
QWEN_IMAGE_DEFAULT_TRUE_CFG_SCALE = 4.0
QWEN_IMAGE_NEGATIVE_PROMPT = " "
QWEN_IMAGE_MAX_SEQUENCE_LENGTH = 512
# Search previews of the 50-step model: a fifth of the steps, with the final image's guidance.
QWEN_IMAGE_PREVIEW_STEPS = 10
PROMPT_EMBEDS_MASK = "prompt_embeds_mask"


def pad_prompt_embeds(
    embeds: list[PromptEmbeds], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Many prompts' `[1, seq_i, dim]` embeddings as one batch `[N, max seq, dim]` and its mask `[N, max seq]`.

    Zeros after each prompt's own tokens and mask 0 there: what `QwenImagePipeline._get_qwen_prompt_embeds`
    gives for a list of prompts, so a batch of cached prompts conditions as a batch of prompt strings does.
    """
    length = max(item.prompt_embeds.shape[1] for item in embeds)
    prompt_embeds, masks = [], []
    for item in embeds:
        padding = length - item.prompt_embeds.shape[1]
        prompt_embeds.append(F.pad(item.prompt_embeds.to(device, dtype), (0, 0, 0, padding)))
        masks.append(F.pad(item.extra[PROMPT_EMBEDS_MASK].to(device), (0, padding)))
    return torch.cat(prompt_embeds), torch.cat(masks)


class QwenImageGenerator(FlowGenerator):
    """`QwenImagePipeline`: Qwen-Image (50 steps, true CFG 4 against the negative prompt " ").

    Noise and clean latents are `[N, 16, H/8, W/8]`, the latent before 2x2 packing, in the space the
    transformer samples in (the VAE's latents normalised by its `latents_mean`/`latents_std`).
    """

    family = QWEN_IMAGE.name
    pipeline_class = QWEN_IMAGE.pipeline_class
    lora_targets = QWEN_IMAGE.lora_targets
    guidance_argument = "true_cfg_scale"  # the pipeline's `guidance_scale` is for guidance-distilled variants

    def __init__(
        self,
        pipe,
        *,
        max_sequence_length: int | None = QWEN_IMAGE_MAX_SEQUENCE_LENGTH,
        negative_prompt: str = QWEN_IMAGE_NEGATIVE_PROMPT,
        **kwargs,
    ) -> None:
        if pipe.transformer.config.guidance_embeds:
            raise ValueError(
                "this Qwen-Image transformer is guidance-distilled (guidance_embeds=True), which is not supported; "
                "use a Qwen-Image checkpoint with true CFG."
            )
        super().__init__(pipe, **kwargs)
        self.max_sequence_length = max_sequence_length or QWEN_IMAGE_MAX_SEQUENCE_LENGTH
        self.negative_prompt = negative_prompt
        self._check_steps(self.num_inference_steps)
        self._check_steps(self.preview_steps)

    def default_num_inference_steps(self) -> int:
        return QWEN_IMAGE_DEFAULT_STEPS

    def default_preview_steps(self) -> int:
        return QWEN_IMAGE_PREVIEW_STEPS

    def default_guidance_scale(self) -> float:
        return QWEN_IMAGE_DEFAULT_TRUE_CFG_SCALE

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        scale = self.pipe.vae_scale_factor
        # `prepare_latents`' `num_channels_latents`: the packed channels are 4 latent channels per patch.
        return (self.pipe.transformer.config.in_channels // 4, self.height // scale, self.width // scale)

    def _check_steps(self, steps: int) -> None:
        if steps < 2 and self.pipe.scheduler.config.get("shift_terminal"):
            raise ValueError(
                f"Qwen-Image needs at least 2 sampler steps, got {steps}: its scheduler stretches the sigmas to end "
                f"at shift_terminal={self.pipe.scheduler.config.shift_terminal}, which one step cannot (the pipeline "
                "would sample with a NaN sigma)."
            )

    def encode_text(self, text: str) -> PromptEmbeds:
        # One prompt has no padding: the pipeline returns no mask, and every token is valid.
        prompt_embeds, _ = self.pipe.encode_prompt(
            prompt=text, device=self.device, max_sequence_length=self.max_sequence_length
        )
        mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
        return PromptEmbeds(text, prompt_embeds, extra={PROMPT_EMBEDS_MASK: mask})

    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict:
        dtype = self.pipe.transformer.dtype
        prompt_embeds, mask = pad_prompt_embeds(embeds, self.device, dtype)
        kwargs = dict(
            prompt_embeds=prompt_embeds,
            prompt_embeds_mask=mask,
            true_cfg_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
        )
        if self.uses_cfg:
            negative_embeds, negative_mask = pad_prompt_embeds(negatives(embeds), self.device, dtype)
            kwargs.update(negative_prompt_embeds=negative_embeds, negative_prompt_embeds_mask=negative_mask)
        return kwargs

    def pipeline_call(
        self, noises: torch.Tensor, embeds: list[PromptEmbeds], num_inference_steps: int
    ) -> dict:
        self._check_steps(num_inference_steps)
        return super().pipeline_call(noises, embeds, num_inference_steps)

    def to_pipeline_latents(self, noises: torch.Tensor) -> torch.Tensor:
        """[N, 16, h, w] -> [N, (h/2) * (w/2), 64], by the pipeline's own packing."""
        return self.pipe._pack_latents(noises.contiguous(), *noises.shape)  # it `view`s its input

    def from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, (h/2) * (w/2), 64] -> [N, 16, h, w] (the pipeline unpacks to [N, 16, 1, h, w]: no frame axis here)."""
        _, height, width = self.noise_shape
        return self._unpack(latents, height, width)

    def _unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        scale = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(latents, height * scale, width * scale, scale).squeeze(2)

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        steps = num_inference_steps or self.num_inference_steps
        self._check_steps(steps)
        # As `QwenImagePipeline.__call__`: linear sigmas, shifted by `mu` of the packed sequence length.
        return self.scheduler_sigmas(
            steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=self.resolution_shift_mu()
        )

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        batch, _, height, width = noisy_latents.shape
        dtype = noisy_latents.dtype
        prompt_embeds, mask = pad_prompt_embeds(embeds, noisy_latents.device, dtype)
        if mask.all():
            mask = None  # as `encode_prompt` hands the transformer no mask when nothing is padded
        # The pipeline's timestep: the scheduler's t = 1000 * sigma, cast to the latents' dtype, over 1000.
        timesteps = sigmas.float().to(noisy_latents.device) * self.pipe.scheduler.config.num_train_timesteps
        prediction = transformer(
            hidden_states=self.to_pipeline_latents(noisy_latents),
            timestep=timesteps.to(dtype).expand(batch) / 1000,
            guidance=None,
            encoder_hidden_states=prompt_embeds,
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, height // 2, width // 2)]] * batch,
            return_dict=False,
        )[0]
        return self._unpack(prediction, height, width)
