"""Generation from given initial noise, batched, for diffusers flow pipelines.

A `FlowGenerator` wraps a pipeline the user already holds (a LoRA loaded or not) and does the three
things search and training need from it:

- `encode_prompt(prompt)` once per prompt (the text encoder never runs inside the search loop),
- `generate(noises, prompt_embeds, num_inference_steps)` -> images in [0, 1] plus the final clean
  latents in the denoiser's own space (kept so DPO never re-encodes through the VAE),
- `predict_velocity(...)` / `sampler_sigmas(...)`, the model call and noise levels that training uses.

The noise a search sees is always `[N, C, h, w]`: per channel, spatial, before any packing into
tokens, so the wavelet transform runs over real image axes. Each family converts it to what its
pipeline's `latents=` takes (`to_pipeline_latents`) and back (`from_pipeline_latents`).

One subclass per pipeline family, one file per family in `tscale_train/generators/`;
`generator_for_pipeline(pipe)` picks it by the pipeline's class name, through the family registry
(`tscale_train.families`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .families import get_family

# Where `loading.load_pipeline` leaves the generator settings a kit pipeline records next to itself
# (`loading.generator_defaults`); `generator_for_pipeline` uses them unless the caller passes its own.
GENERATOR_DEFAULTS_ATTRIBUTE = "_tscale_generator_defaults"


@dataclass
class PromptEmbeds:
    """One prompt's cached conditioning (batch 1).

    `prompt_embeds` is `[1, seq, dim]`; `text_ids` the positions some families take with it;
    `extra` holds the family's other tensors (FLUX.1's and SD3's pooled embedding, Qwen-Image's
    mask). `negative` is the CFG negative prompt's conditioning, when CFG is used: one object
    shared by every prompt, not a copy per prompt.
    """

    prompt: str
    prompt_embeds: torch.Tensor
    text_ids: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    negative: PromptEmbeds | None = None

    @property
    def negative_prompt_embeds(self) -> torch.Tensor | None:
        return None if self.negative is None else self.negative.prompt_embeds

    @property
    def negative_text_ids(self) -> torch.Tensor | None:
        return None if self.negative is None else self.negative.text_ids

    def to(self, device: torch.device | str, *, negative: PromptEmbeds | None = None) -> PromptEmbeds:
        """A copy on `device`; `negative` (already moved, to keep one shared copy) replaces the moved negative."""

        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device)

        if negative is None and self.negative is not None:
            negative = self.negative.to(device)
        return PromptEmbeds(
            self.prompt,
            move(self.prompt_embeds),
            move(self.text_ids),
            {name: move(value) for name, value in self.extra.items()},
            negative,
        )


def stack_embeds(
    embeds: list[PromptEmbeds], name: str, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """One field of many prompts' embeddings as a batch: `prompt_embeds`, `text_ids`, or a key of `extra`."""
    values = [
        getattr(item, name) if name in ("prompt_embeds", "text_ids") else item.extra[name] for item in embeds
    ]
    return torch.cat(values).to(device, dtype) if dtype is not None else torch.cat(values).to(device)


def negatives(embeds: list[PromptEmbeds]) -> list[PromptEmbeds]:
    """The CFG negatives of `embeds`, one per prompt (raises if a prompt was encoded without CFG)."""
    if any(item.negative is None for item in embeds):
        raise ValueError(
            "CFG is on but a prompt was encoded without its negative; encode prompts with this generator."
        )
    return [item.negative for item in embeds]


@dataclass
class GenerationOutput:
    images: torch.Tensor  # [N, 3, H, W] float32 in [0, 1]
    clean_latents: torch.Tensor  # [N, *noise_shape]: the denoiser-space latents the sampler ended on


class FlowGenerator(ABC):
    """Turns initial noises into images for one pipeline, at a fixed resolution.

    A family sets its class attributes (`family`, `pipeline_class`, `lora_targets`) and implements
    the abstract methods; batching, the sampling callback and the dtype handling are shared.
    """

    family: ClassVar[str]
    pipeline_class: ClassVar[str]
    # LoRA target presets (`--lora_target_modules attention|attention_ff|all_linear`): regexes over
    # full module names of this family's denoiser (peft matches bare names by suffix, which is ambiguous).
    lora_targets: ClassVar[dict[str, str]]
    # The pipeline's own negative prompt under CFG (an instance may set another).
    negative_prompt: str = ""
    # The pipeline call's argument that `guidance_scale` is (Qwen-Image's true CFG is `true_cfg_scale`).
    guidance_argument: ClassVar[str] = "guidance_scale"

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
        preview_steps: int | None = None,
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
        # Search previews: the family's default unless set; never more steps than the final image.
        self.preview_steps = preview_steps or min(self.default_preview_steps(), self.num_inference_steps)
        self._negative: PromptEmbeds | None = None

    # ---- family-specific pieces -------------------------------------------------------------
    @staticmethod
    def resolution_multiple(pipe) -> int:
        """Image sizes must be multiples of this: the VAE's factor times the 2x2 patches, for most families."""
        return pipe.vae_scale_factor * 2

    @staticmethod
    def native_resolution(pipe) -> int:
        """The pipeline's own default image height and width (used when neither they nor `default_resolution` is given)."""
        return pipe.default_sample_size * pipe.vae_scale_factor

    @abstractmethod
    def default_num_inference_steps(self) -> int: ...

    def default_preview_steps(self) -> int:
        """Sampler steps of a search preview when none are given (the final image's, unless a family says fewer)."""
        return self.num_inference_steps

    @abstractmethod
    def default_guidance_scale(self) -> float: ...

    @property
    def uses_cfg(self) -> bool:
        """Whether sampling runs a second, negative-prompt pass (true classifier-free guidance)."""
        return self.guidance_scale > 1.0

    @property
    @abstractmethod
    def noise_shape(self) -> tuple[int, int, int]:
        """Shape `(C, h, w)` of one initial noise as the search sees it: per channel, before any packing."""

    @abstractmethod
    def encode_text(self, text: str) -> PromptEmbeds:
        """One text's conditioning as the pipeline's `encode_prompt` makes it (no negative attached)."""

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        """`prompt`'s conditioning; under CFG with `negative_prompt`'s attached, encoded once and shared by
        every prompt (one embedding, not one per prompt: 7.9 MB each at klein-4B's 512 x 7680 bf16)."""
        embeds = self.encode_text(prompt)
        if self.uses_cfg:
            if self._negative is None:
                self._negative = self.encode_text(self.negative_prompt)
            embeds.negative = self._negative
        return embeds

    def to_pipeline_latents(self, noises: torch.Tensor) -> torch.Tensor:
        """`[N, C, h, w]` search noises -> what the pipeline's `latents=` takes (identity unless the family packs)."""
        return noises

    def from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents the pipeline hands `callback_on_step_end` -> `[N, C, h, w]` (inverse of `to_pipeline_latents`)."""
        return latents

    def prompt_call_kwargs(self) -> dict[str, Any]:
        """What `pipe(prompt=..., height=, width=, num_inference_steps=)` also needs to sample as this generator
        does: its guidance, its negative prompt where that is not the pipeline's own "", and how it encodes text
        (`max_sequence_length`, which every family's generator sets; a family adds its own). JSON values: a run
        records them in `pipeline.json`, and the exported model card's usage snippet passes them."""
        kwargs: dict[str, Any] = {self.guidance_argument: self.guidance_scale}
        if self.uses_cfg and self.negative_prompt:
            kwargs["negative_prompt"] = self.negative_prompt
        max_sequence_length = getattr(self, "max_sequence_length", None)
        if max_sequence_length is not None:
            kwargs["max_sequence_length"] = int(max_sequence_length)
        return kwargs

    @abstractmethod
    def pipeline_kwargs(self, embeds: list[PromptEmbeds]) -> dict[str, Any]:
        """Everything but `latents`, size, steps and the callback that the pipeline call needs:
        the batch's prompt conditioning (and negatives under CFG) and the guidance arguments."""

    @abstractmethod
    def sampler_sigmas(self, num_inference_steps: int | None = None) -> torch.Tensor:
        """The sampler's noise levels for this resolution and step count (trailing 0 excluded)."""

    @abstractmethod
    def predict_velocity(
        self, transformer, noisy_latents: torch.Tensor, sigmas: torch.Tensor, embeds: list[PromptEmbeds]
    ) -> torch.Tensor:
        """The conditional velocity of `transformer` at `noisy_latents` `[N, C, h, w]`, noise level `sigmas` `[N]`.

        In the sampler's convention, `x_next = x + (sigma_next - sigma) * v`, so `v = noise - x0`
        (what the DPO target is), whatever sign or timestep scale the family's denoiser uses.
        """

    # ---- shared ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def latents_dtype(self) -> torch.dtype:
        """The dtype the pipeline's latents start in (the denoiser's, for most families)."""
        return self.pipe.transformer.dtype

    def resolution_shift_mu(self, patch: int = 2, max_shift: float = 1.15) -> float:
        """The `mu` of dynamic timestep shifting at this resolution, as the pipelines compute it.

        diffusers' `calculate_shift` (one function, copied into each pipeline) of the number of
        `patch x patch` patches of the latent, with the scheduler config's sequence lengths and shifts;
        `max_shift` is the pipeline's fallback when the config has none (1.15; SD3's is 1.16).
        """
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        _, height, width = self.noise_shape
        return calculate_shift(
            (height // patch) * (width // patch),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", max_shift),
        )

    def scheduler_sigmas(
        self, num_inference_steps: int, *, sigmas=None, mu: float | None = None
    ) -> torch.Tensor:
        """`set_timesteps` on a copy of the pipeline's scheduler, as the pipeline calls it; trailing 0 dropped."""
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        kwargs: dict[str, Any] = {"device": "cpu"}
        if sigmas is not None:
            kwargs["sigmas"] = list(sigmas)
        else:
            kwargs["num_inference_steps"] = num_inference_steps
        if mu is not None:
            kwargs["mu"] = mu
        scheduler.set_timesteps(**kwargs)
        return scheduler.sigmas[:-1].float().clone()

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
            raise ValueError(
                f"noises must be [N, {', '.join(map(str, self.noise_shape))}], got {list(noises.shape)}."
            )
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

    def pipeline_call(
        self, noises: torch.Tensor, embeds: list[PromptEmbeds], num_inference_steps: int
    ) -> dict[str, Any]:
        """The keyword arguments of one pipeline call from `noises`, without the callback: what a user
        would pass to get the same images (`pipe(**generator.pipeline_call(...))`)."""
        return dict(
            latents=self.to_pipeline_latents(noises.to(self.device, self.latents_dtype)),
            height=self.height,
            width=self.width,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            **self.pipeline_kwargs(embeds),
        )

    def _generate_batch(
        self, noises: torch.Tensor, embeds: list[PromptEmbeds], num_inference_steps: int
    ) -> GenerationOutput:
        final_latents: dict[str, torch.Tensor] = {}
        latents_dtype = self.latents_dtype

        def keep_last_latents(pipe, step_index, timestep, callback_kwargs):
            latents = callback_kwargs["latents"]
            if step_index == pipe.num_timesteps - 1:
                final_latents["last"] = latents
            # Under accelerate's mixed precision the prepared transformer returns float32, and the
            # scheduler step turns the latents float32 with it; a bf16 VAE then fails to decode them.
            # Hand the pipeline back latents in the dtype it started with.
            return {"latents": latents.to(latents_dtype)}

        self.pipe.set_progress_bar_config(disable=True)
        images = self.pipe(
            **self.pipeline_call(noises, embeds, num_inference_steps),
            callback_on_step_end=keep_last_latents,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        # float32 whatever the model dtype: rewards resize on the CPU too, where bf16 interpolation is missing.
        return GenerationOutput(
            images=images.float().clamp(0, 1), clean_latents=self.from_pipeline_latents(final_latents["last"])
        )


def __getattr__(name: str):
    # `from tscale_train.generation import Flux2KleinGenerator` keeps working after the move.
    if name == "Flux2KleinGenerator":
        return generator_class("Flux2KleinPipeline")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generator_class(pipeline_class_name: str) -> type[FlowGenerator]:
    """The `FlowGenerator` subclass for a diffusers pipeline class name (as in `model_index.json`),
    from its family's registration (`tscale_train.families`)."""
    return get_family(pipeline_class_name).generator_class()


def generator_for_pipeline(pipe, **kwargs) -> FlowGenerator:
    """The `FlowGenerator` for a loaded diffusers pipeline.

    `kwargs` go to the generator class. Settings that a pipeline loaded by `loading.load_pipeline`
    carries (a kit model's text-encoder layers, text length and default size, a known checkpoint's
    steps and guidance; see `loading.generator_defaults`) fill in whatever `kwargs` leave out or pass as None.
    """
    cls = generator_class(type(pipe).__name__)
    settings = dict(getattr(pipe, GENERATOR_DEFAULTS_ATTRIBUTE, None) or {})
    settings.update({key: value for key, value in kwargs.items() if value is not None or key not in settings})
    return cls(pipe, **settings)
