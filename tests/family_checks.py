"""Checks every family's tests run on its tiny kit, written once; each `test_family_*.py` calls them with its
model name, generator and family specifics, and keeps its family-only assertions next to the call."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tscale_train.generation import FlowGenerator, PromptEmbeds, generator_for_pipeline
from tscale_train.loading import generator_defaults, load_lora, load_pipeline
from tscale_train.lora import add_lora, save_lora

KIT_RESOLUTION = 64
CLI_PROMPT = "a red cube"


def check_kit_settings(
    pipe,
    generator: FlowGenerator,
    model: str,
    *,
    generator_class: type[FlowGenerator],
    kit_defaults: dict[str, Any],
    steps_preview_guidance: tuple[int, int, float],
    uses_cfg: bool,
    noise_shape: tuple[int, int, int],
    off_grid: tuple[int, int] = (72, 64),
    multiple: int = 16,
) -> None:
    """The kit marker's settings reach `generator_for_pipeline`, which refuses sizes off the family's grid."""
    assert generator_defaults(model) == kit_defaults
    assert type(generator) is generator_class
    assert (generator.height, generator.width) == (KIT_RESOLUTION, KIT_RESOLUTION)
    assert (
        generator.num_inference_steps,
        generator.preview_steps,
        generator.guidance_scale,
    ) == steps_preview_guidance
    assert generator.uses_cfg == uses_cfg
    assert generator.noise_shape == noise_shape
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        generator_for_pipeline(pipe, height=off_grid[0], width=off_grid[1])


def check_the_noise_is_used(generator: FlowGenerator, embeds: PromptEmbeds, images: torch.Tensor) -> None:
    """Other noise makes other images than `images` (generated from the first `len(images)` noises)."""
    other = generator.generate(generator.initial_noise(6, batch_size=len(images)), embeds).images
    assert (other - images).abs().max() > 1e-3


def check_sigmas_are_the_pipelines(generator: FlowGenerator, pipe, steps: int) -> None:
    """Run right after the pipeline sampled `steps` steps: its scheduler holds the sigmas it used."""
    sigmas = generator.sampler_sigmas(steps)
    torch.testing.assert_close(sigmas, pipe.scheduler.sigmas[:-1].float(), atol=1e-6, rtol=0)
    assert len(sigmas) == steps and sigmas[0] == 1.0 and torch.all(sigmas[1:] < sigmas[:-1])


def pipeline_final_latents(
    pipe, generator: FlowGenerator, noises: torch.Tensor, embeds: PromptEmbeds, steps: int
):
    """The generator's clean latents of `noises` and the pipeline's own final latents (as it returns them)."""
    kept = generator.generate(noises, embeds, num_inference_steps=steps).clean_latents
    call = generator.pipeline_call(noises, [embeds] * len(noises), steps)
    return kept, pipe(**{**call, "output_type": "latent"}).images


def check_one_step_velocity(
    pipe, generator: FlowGenerator, embeds: list[PromptEmbeds], *, differs_from: FlowGenerator | None = None
) -> None:
    """x0 = noise - sigma * v at sigma = 1: one Euler step from pure noise, as the sampler takes it.

    `differs_from`, a generator with other guidance on the same pipeline, must predict another velocity
    (for families whose guidance scale is a model input).
    """
    noises = generator.initial_noise(11, batch_size=len(embeds))
    one_step = generator.generate(noises, embeds, num_inference_steps=1).clean_latents
    sigma = generator.sampler_sigmas(1)
    assert sigma.tolist() == [1.0]
    with torch.no_grad():
        velocity = generator.predict_velocity(pipe.transformer, noises, sigma, embeds)
        other = (
            None
            if differs_from is None
            else differs_from.predict_velocity(pipe.transformer, noises, sigma, embeds)
        )
    assert velocity.shape == noises.shape
    torch.testing.assert_close(noises - sigma * velocity, one_step, atol=1e-5, rtol=0)
    if other is not None:
        assert (velocity - other).abs().max() > 1e-4


def check_euler_walk(
    pipe, generator: FlowGenerator, embeds: list[PromptEmbeds], steps: int | None = None
) -> None:
    """Euler steps along `predict_velocity` over `sampler_sigmas(steps)` end where the pipeline's sampler ends."""
    latents = generator.initial_noise(12, batch_size=len(embeds))
    expected = generator.generate(latents, embeds, num_inference_steps=steps).clean_latents
    sigmas = generator.sampler_sigmas(steps).tolist() + [0.0]
    assert sigmas[0] == 1.0
    with torch.no_grad():
        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            velocity = generator.predict_velocity(
                pipe.transformer, latents, torch.tensor([sigma] * len(embeds)), embeds
            )
            latents = latents + (following - sigma) * velocity
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=0)


def check_batched_equals_one_at_a_time(
    generator: FlowGenerator, embeds: list[PromptEmbeds], latent_shape: tuple[int, int, int]
) -> None:
    """Images and clean latents of one batch equal those of one prompt at a time."""
    count = len(embeds)
    noises = generator.initial_noise(3, batch_size=count)
    batched = generator.generate(noises, embeds)
    single = [generator.generate(noises[i : i + 1], embeds[i]) for i in range(count)]
    torch.testing.assert_close(batched.images, torch.cat([out.images for out in single]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        batched.clean_latents, torch.cat([out.clean_latents for out in single]), atol=1e-4, rtol=0
    )
    assert batched.images.shape == (count, 3, KIT_RESOLUTION, KIT_RESOLUTION)
    assert batched.clean_latents.shape == (count, *latent_shape)


def check_ses_from_the_cli(tmp_path: Path, model: str) -> None:
    """A tiny SES run through the CLI writes the kit-size image and a trace whose best is its best score."""
    from tscale_train import cli

    out = tmp_path / "cube.png"
    args = [
        "ses",
        "--model",
        model,
        "--no-progress",
        "--prompt",
        CLI_PROMPT,
        "--budget",
        "6",
        "--popsize",
        "3",
        "--save-trace",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    assert Image.open(out).size == (KIT_RESOLUTION, KIT_RESOLUTION)
    trace = json.loads((tmp_path / "cube_trace.json").read_text())
    assert len(trace["scores"]) == 6 and trace["best_score"] == max(trace["scores"]) >= trace["base_score"]


def lora_base_layers(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules a LoRA adapts, by full name, as the layers they wrap."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: module.get_base_layer()
        for name, module in transformer.named_modules()
        if isinstance(module, BaseTunerLayer)
    }


def check_lora_preset_round_trip(
    tmp_path: Path,
    model: str,
    generator_class: type[FlowGenerator],
    preset: str,
    *,
    base: Any = None,
    count: int | None = None,
) -> dict[str, torch.nn.Module]:
    """`preset` adapts only Linear modules (`count` of them, when given); the saved LoRA loads into a fresh
    pipeline and acts the same there, and differently from `base` (a pipeline without it; a fresh one if None).
    Returns the adapted modules for the family's own checks."""
    adapted = load_pipeline(model, dtype="float32")
    add_lora(
        adapted.transformer,
        rank=4,
        target_modules=preset,
        presets=generator_class.lora_targets,
        init="gaussian",
    )
    hit = lora_base_layers(adapted.transformer)
    assert hit
    if count is not None:
        assert len(hit) == count, sorted(hit)
    assert all(type(module) is torch.nn.Linear for module in hit.values())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.transformer.named_parameters():
            if ".lora_B" in name:  # peft starts B at zero: make the adapter change the output
                parameter.normal_(std=0.2)
    save_lora(type(adapted), adapted.transformer, tmp_path)
    fresh = load_pipeline(model, dtype="float32")
    load_lora(fresh, str(tmp_path))
    assert sorted(lora_base_layers(fresh.transformer)) == sorted(hit)
    if base is None:
        base = load_pipeline(model, dtype="float32")

    generator = generator_for_pipeline(fresh)
    embeds = [generator.encode_prompt(CLI_PROMPT)] * 2
    noises, sigmas = generator.initial_noise(0, batch_size=2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        expected, loaded, unadapted = (
            generator.predict_velocity(pipeline.transformer, noises, sigmas, embeds)
            for pipeline in (adapted, fresh, base)
        )
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=0)
    assert (expected - unadapted).abs().max() > 1e-3
    return hit


def check_kit_rebuilds_identically(
    tmp_path: Path,
    pipe,
    pipeline_class: type,
    build: Callable[..., Path],
    components: tuple[str, ...],
    kind: str,
):
    """Building the kit again from seed 0 gives the same weights, loads back through `from_pretrained`
    and records its kind; returns the rebuilt pipeline for the family's tokenizer checks."""
    rebuilt = pipeline_class.from_pretrained(build(tmp_path / "kit", seed=0), local_files_only=True)
    for name in components:
        ours, theirs = getattr(pipe, name).state_dict(), getattr(rebuilt, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert json.loads((tmp_path / "kit" / "tscale_tiny.json").read_text())["kind"] == kind
    return rebuilt
