"""Generation from given initial noise, batched, for diffusers flow pipelines.

A `FlowGenerator` wraps a pipeline the user already holds (a LoRA loaded or not) and does the three
things search and training need from it:

- `encode_prompt(prompt)` once per prompt (the text encoder never runs inside the search loop),
- `generate(noises, prompt_embeds, num_inference_steps)` -> images in [0, 1] plus the final clean
  latents in the transformer's own input space (kept so DPO never re-encodes through the VAE),
- `predict_velocity(...)` / `sampler_sigmas(...)`, the model call and noise levels that training uses.

One subclass per pipeline family; `generator_for_pipeline(pipe)` picks it. A second family (FLUX.1,
SD3, Qwen-Image) is one more subclass registered in `GENERATOR_CLASSES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .real_configs import FLUX2_KLEIN_MAX_SEQUENCE_LENGTH, FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS

# Where `loading.load_pipeline` leaves the generator settings a kit pipeline records next to itself
# (`loading.generator_defaults`); `generator_for_pipeline` uses them unless the caller passes its own.
GENERATOR_DEFAULTS_ATTRIBUTE = "_tscale_generator_defaults"



@dataclass
class PromptEmbeds:
    """One prompt's cached conditioning (batch 1); the negative pair is set when CFG is used."""

    prompt: str
    prompt_embeds: torch.Tensor
    text_ids: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PromptEmbeds:
        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device)

        return PromptEmbeds(
            self.prompt,
            move(self.prompt_embeds),
            move(self.text_ids),
            move(self.negative_prompt_embeds),
            move(self.negative_text_ids),
        )


@dataclass
class GenerationOutput:
    images: torch.Tensor  # [N, 3, H, W] float32 in [0, 1]
    clean_latents: torch.Tensor  # [N, *noise_shape]: the transformer-space latents the sampler ended on


class FlowGenerator(ABC):
    """Turns initial noises into images for one pipeline, at a fixed resolution."""

    def __init__(
        self,
        pipe,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eval_batch_size: int = 8,
        default_resolution: int | None = None,
    ) -> None:
        multiple = self.resolution_multiple(pipe)
        default_resolution = default_resolution or self.native_resolution(pipe)
        height = height or default_resolution
        width = width or default_resolution
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of {multiple} for this pipeline, got "
                f"{height}x{width}; pass e.g. --height {max(multiple, height // multiple * multiple)} "
                f"--width {max(multiple, width // multiple * multiple)}."
            )
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}.")
        self.pipe = pipe
        self.height = height
        self.width = width
        self.num_inference_steps = num_inference_steps or self.default_num_inference_steps()
        self.guidance_scale = self.default_guidance_scale() if guidance_scale is None else guidance_scale
        self.eval_batch_size = eval_batch_size

    # ---- family-specific pieces -------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def resolution_multiple(pipe) -> int:
        """Image sizes must be multiples of this."""

    @staticmethod
    @abstractmethod
    def native_resolution(pipe) -> int:
        """The pipeline's own default image height and width (used when neither they nor `default_resolution` is given)."""

    @abstractmethod
    def default_num_inference_steps(self) -> int: ...

    @abstractmethod
    def default_guidance_scale(self) -> float: ...

    @property
    @abstractmethod
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one initial noise (without batch), in the space `latents=` takes."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> PromptEmbeds: ...

    @abstractmethod
    def _generate_batch(
        self, noises: torch.Tensor, embeds: list[PromptEmbeds], num_inference_steps: int
    ) -> GenerationOutput: ...

    @abstractmethod
    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """The sampler's noise levels for this resolution and step count (trailing 0 excluded)."""

    @abstractmethod
    def predict_velocity(
        self, transformer, noisy_latents: torch.Tensor, sigmas: torch.Tensor, embeds: list[PromptEmbeds]
    ) -> torch.Tensor:
        """The (conditional) velocity prediction of `transformer` at `noisy_latents`, noise level `sigmas`."""

    # ---- shared ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def transformer(self):
        return self.pipe.transformer

    def initial_noise(self, seed: int, batch_size: int = 1) -> torch.Tensor:
        """Standard Gaussian noise from `seed`, drawn on the CPU so it is the same on every device."""
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randn((batch_size, *self.noise_shape), generator=generator, dtype=torch.float32)

    @torch.no_grad()
    def iter_batches(
        self,
        noises: torch.Tensor,
        embeds: PromptEmbeds | list[PromptEmbeds],
        num_inference_steps: int | None = None,
    ) -> Iterator[tuple[slice, GenerationOutput]]:
        """Generate one image per noise, `eval_batch_size` at a time, yielding each batch as it is decoded.

        `embeds` is one prompt for all noises or a list with one per noise (many prompts' searches
        share a batch this way). A caller that scores and drops each batch before asking for the
        next never holds more than one batch of full-size images (a 1024px float32 image is 12.6 MB).
        """
        if noises.ndim != 1 + len(self.noise_shape) or tuple(noises.shape[1:]) != tuple(self.noise_shape):
            raise ValueError(f"noises must be [N, {', '.join(map(str, self.noise_shape))}], got {list(noises.shape)}.")
        count = noises.shape[0]
        if isinstance(embeds, PromptEmbeds):
            embeds = [embeds] * count
        if len(embeds) != count:
            raise ValueError(f"got {count} noises but {len(embeds)} prompt embeddings.")
        steps = num_inference_steps or self.num_inference_steps
        for start in range(0, count, self.eval_batch_size):
            stop = min(start + self.eval_batch_size, count)
            yield slice(start, stop), self._generate_batch(noises[start:stop], embeds[start:stop], steps)

    @torch.no_grad()
    def generate(
        self,
        noises: torch.Tensor,
        embeds: PromptEmbeds | list[PromptEmbeds],
        num_inference_steps: int | None = None,
    ) -> GenerationOutput:
        """All images of `iter_batches` at once: for a handful of final images, not for a search."""
        images, latents = [], []
        for _, output in self.iter_batches(noises, embeds, num_inference_steps):
            images.append(output.images.float())
            latents.append(output.clean_latents)
        return GenerationOutput(images=torch.cat(images), clean_latents=torch.cat(latents))


class Flux2KleinGenerator(FlowGenerator):
    """`Flux2KleinPipeline`: distilled klein (4 steps, no CFG) and the undistilled klein base models.

    Noise and clean latents live in the transformer's input space: patchified, batch-norm-normalised
    `[N, transformer.in_channels, H/16, W/16]`, which is what the pipeline's `latents=` takes.
    """

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
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def resolution_multiple(pipe) -> int:
        return pipe.vae_scale_factor * 2

    @staticmethod
    def native_resolution(pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    @property
    def is_distilled(self) -> bool:
        return bool(self.pipe.config.get("is_distilled", False))

    def default_num_inference_steps(self) -> int:
        return 4 if self.is_distilled else 50

    def default_guidance_scale(self) -> float:
        return 1.0 if self.is_distilled else 4.0

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0 and not self.is_distilled

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        multiple = self.resolution_multiple(self.pipe)
        return (self.pipe.transformer.config.in_channels, self.height // multiple, self.width // multiple)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            return self.pipe.encode_prompt(
                prompt=text,
                device=self.device,
                max_sequence_length=self.max_sequence_length,
                text_encoder_out_layers=self.text_encoder_out_layers,
            )

        prompt_embeds, text_ids = encode(prompt)
        if not self.uses_cfg:
            return PromptEmbeds(prompt, prompt_embeds, text_ids)
        # The pipeline's own negative prompt for CFG is the empty string: encode it once and
        # share it between all prompts (one 512 x 7680 embedding, not one per prompt).
        if self._negative is None:
            self._negative = encode("")
        return PromptEmbeds(prompt, prompt_embeds, text_ids, *self._negative)

    def _generate_batch(self, noises, embeds, num_inference_steps):
        final_latents: dict[str, torch.Tensor] = {}

        transformer_dtype = self.pipe.transformer.dtype

        def keep_last_latents(pipe, step_index, timestep, callback_kwargs):
            latents = callback_kwargs["latents"]
            if step_index == pipe.num_timesteps - 1:
                final_latents["packed"] = latents
            # Under accelerate's mixed precision the prepared transformer returns float32, and the
            # scheduler step turns the latents float32 with it; a bf16 VAE then fails to decode them.
            # Hand the pipeline back latents in the dtype it started with.
            return {"latents": latents.to(transformer_dtype)}

        call_kwargs = dict(
            prompt_embeds=torch.cat([item.prompt_embeds for item in embeds]).to(self.device, transformer_dtype),
            latents=noises.to(self.device, transformer_dtype),
            height=self.height,
            width=self.width,
            num_inference_steps=num_inference_steps,
            guidance_scale=self.guidance_scale,
            output_type="pt",
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers,
            callback_on_step_end=keep_last_latents,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        if self.uses_cfg:
            call_kwargs["negative_prompt_embeds"] = torch.cat([item.negative_prompt_embeds for item in embeds]).to(
                self.device, transformer_dtype
            )
        self.pipe.set_progress_bar_config(disable=True)
        images = self.pipe(**call_kwargs).images
        # float32 whatever the model dtype: rewards resize on the CPU too, where bf16 interpolation is missing.
        return GenerationOutput(images=images.float().clamp(0, 1), clean_latents=self._unpack(final_latents["packed"]))

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C] (the sampler's token layout) -> [B, C, h, w] (the `latents=` layout)."""
        channels, height, width = self.noise_shape
        return packed.permute(0, 2, 1).reshape(packed.shape[0], channels, height, width)

    @staticmethod
    def _pack(latents: torch.Tensor) -> torch.Tensor:
        return latents.flatten(2).permute(0, 2, 1)

    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        steps = num_inference_steps or self.num_inference_steps
        _, height, width = self.noise_shape
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        linear = [1.0 - index / steps for index in range(steps)]
        scheduler.set_timesteps(sigmas=linear, mu=compute_empirical_mu(height * width, steps), device="cpu")
        return scheduler.sigmas[:-1].float().clone()

    def predict_velocity(self, transformer, noisy_latents, sigmas, embeds):
        batch = noisy_latents.shape[0]
        prompt_embeds = torch.cat([item.prompt_embeds for item in embeds]).to(noisy_latents.device, noisy_latents.dtype)
        text_ids = torch.cat([item.text_ids for item in embeds]).to(noisy_latents.device)
        latent_ids = self.pipe._prepare_latent_ids(noisy_latents).to(noisy_latents.device)
        prediction = transformer(
            hidden_states=self._pack(noisy_latents),
            timestep=sigmas.to(noisy_latents.dtype).expand(batch),
            guidance=None,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=latent_ids,
            return_dict=False,
        )[0]
        return self._unpack(prediction)


GENERATOR_CLASSES: dict[str, type[FlowGenerator]] = {
    "Flux2KleinPipeline": Flux2KleinGenerator,
}


def generator_for_pipeline(pipe, **kwargs) -> FlowGenerator:
    """The `FlowGenerator` for a loaded diffusers pipeline.

    `kwargs` go to the generator class. Settings that a pipeline loaded by `loading.load_pipeline`
    carries (a kit model's text-encoder layers, text length and default size; see
    `loading.generator_defaults`) fill in whatever `kwargs` leave out or pass as None.
    """
    name = type(pipe).__name__
    if name not in GENERATOR_CLASSES:
        raise ValueError(
            f"pipelines of class {name} are not supported yet; supported: {sorted(GENERATOR_CLASSES)}."
        )
    settings = dict(getattr(pipe, GENERATOR_DEFAULTS_ATTRIBUTE, None) or {})
    settings.update({key: value for key, value in kwargs.items() if value is not None or key not in settings})
    return GENERATOR_CLASSES[name](pipe, **settings)
