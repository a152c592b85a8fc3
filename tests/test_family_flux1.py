"""FLUX.1 (`FluxPipeline`, `FluxGenerator`) on the tiny kit `tiny-flux1`, loaded through the real loading code."""

import re
from types import SimpleNamespace

import family_checks
import pytest
import torch

from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.flux1 import FluxGenerator
from tscale_train.tiny.flux1 import TINY_MAX_SEQUENCE_LENGTH as TEXT_LENGTH

MODEL = "tiny-flux1"
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def embeds(generator):
    return generator.encode_prompt(PROMPT)


def test_the_kit_settings_reach_the_generator(pipe, generator):
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=FluxGenerator,
        kit_defaults={
            "max_sequence_length": TEXT_LENGTH,
            "num_inference_steps": 4,
            "preview_steps": 2,
            "default_resolution": 64,
        },
        steps_preview_guidance=(4, 2, 3.5),
        uses_cfg=False,
        noise_shape=(16, 8, 8),  # unpacked: 16 latent channels at H/8 x W/8
    )
    assert generator.max_sequence_length == TEXT_LENGTH


def test_real_model_defaults(pipe):
    """Without kit settings: FLUX.1-dev's 28 steps at guidance 3.5, 10-step previews, T5 length 512, 1024 px;
    a transformer without a guidance embedding (FLUX.1-schnell) gets 4 steps."""
    dev = FluxGenerator(pipe)
    assert (dev.num_inference_steps, dev.preview_steps, dev.guidance_scale) == (28, 10, 3.5)
    assert (dev.max_sequence_length, dev.height, dev.width) == (512, 1024, 1024)
    assert dev.noise_shape == (16, 128, 128) and not dev.uses_cfg
    schnell_like = SimpleNamespace(
        vae_scale_factor=8,
        default_sample_size=128,
        transformer=SimpleNamespace(config=SimpleNamespace(guidance_embeds=False, in_channels=64)),
    )
    schnell = FluxGenerator(schnell_like)
    assert (schnell.num_inference_steps, schnell.preview_steps, schnell.guidance_scale) == (4, 4, 0.0)
    assert not schnell.uses_cfg


def test_search_noise_is_the_pipelines_own_noise(pipe, generator, embeds):
    """The pipeline draws `[N, 16, H/8, W/8]` and packs it; handing it that same noise gives the same images,
    and the pipeline encoding the prompt itself gives what the cached embeddings give."""
    noises = torch.randn((2, *generator.noise_shape), generator=torch.Generator().manual_seed(5))
    ours = generator.generate(noises, embeds)
    drawn_by_the_pipeline = pipe(
        prompt=[PROMPT] * 2,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=TEXT_LENGTH,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    # The pipeline encodes the batch's texts together, which moves the embeddings by float rounding.
    torch.testing.assert_close(ours.images, drawn_by_the_pipeline, atol=1e-5, rtol=0)

    packed = generator.to_pipeline_latents(noises)
    assert packed.shape == (2, 4 * 4, 64)
    assert torch.equal(generator.from_pipeline_latents(packed), noises)
    with_latents = pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2),
        pooled_prompt_embeds=torch.cat([embeds.extra["pooled_prompt_embeds"]] * 2),
        latents=packed,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=TEXT_LENGTH,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, with_latents, atol=1e-6, rtol=0)
    family_checks.check_the_noise_is_used(generator, embeds, ours.images)


@pytest.mark.parametrize("steps", [4, 3])
def test_clean_latents_and_sigmas_are_the_pipelines(pipe, generator, embeds, steps):
    kept, final = family_checks.pipeline_final_latents(
        pipe, generator, generator.initial_noise(7, batch_size=2), embeds, steps
    )
    assert final.shape == (2, 16, 64)  # packed
    torch.testing.assert_close(
        kept, pipe._unpack_latents(final, 64, 64, pipe.vae_scale_factor), atol=1e-6, rtol=0
    )
    family_checks.check_sigmas_are_the_pipelines(generator, pipe, steps)


def test_predict_velocity_reproduces_a_one_step_sample(pipe, generator, embeds):
    """x0 = noise - sigma * v at sigma = 1; the guidance scale is the model's input, not a second pass."""
    unguided = generator_for_pipeline(pipe, guidance_scale=1.0)
    family_checks.check_one_step_velocity(pipe, generator, [embeds] * 2, differs_from=unguided)


def test_predict_velocity_walks_the_sampler(pipe, generator, embeds):
    """Euler steps along `predict_velocity` over `sampler_sigmas` end where the pipeline's sampler ends."""
    family_checks.check_euler_walk(pipe, generator, [embeds] * 2)


def test_batched_generation_equals_one_at_a_time(generator):
    prompts = [generator.encode_prompt(text) for text in ("a cat", "a dog", "a cat", "a tree", "a dog")]
    family_checks.check_batched_equals_one_at_a_time(generator, prompts, latent_shape=(16, 8, 8))


def test_ses_from_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


@pytest.mark.parametrize("preset", ["attention", "attention_ff", "all_linear"])
def test_lora_presets_save_and_load(tmp_path, pipe, preset):
    family_checks.check_lora_preset_round_trip(tmp_path, MODEL, FluxGenerator, preset, base=pipe)


def test_preset_targets_by_block_kind():
    names = [
        f"single_transformer_blocks.3.{leaf}" for leaf in ("attn.to_q", "proj_out", "proj_mlp", "norm.linear")
    ]
    names += [
        "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.ff_context.net.2",
        "proj_out",
        "x_embedder",
    ]

    def hits(preset):
        return [name for name in names if re.fullmatch(FluxGenerator.lora_targets[preset], name)]

    assert hits("attention") == [names[0], names[1], names[4]]
    assert hits("attention_ff") == [names[0], names[1], names[2], names[4], names[5]]
    assert hits("all_linear") == [names[0], names[1], names[2], names[4], names[5], names[6], names[7]]


def test_the_kit_is_deterministic_and_loads_back(tmp_path, pipe):
    from diffusers import FluxPipeline

    from tscale_train.tiny.flux1 import build_tiny_flux1

    rebuilt = family_checks.check_kit_rebuilds_identically(
        tmp_path,
        pipe,
        FluxPipeline,
        build_tiny_flux1,
        ("transformer", "vae", "text_encoder", "text_encoder_2"),
        "flux1",
    )
    assert rebuilt.tokenizer_2(PROMPT).input_ids == pipe.tokenizer_2(PROMPT).input_ids
    assert pipe.tokenizer_2(PROMPT).input_ids[-1] == pipe.tokenizer_2.eos_token_id
