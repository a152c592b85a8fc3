"""FLUX.2-dev (`Flux2Pipeline`, `Flux2Generator`) on the tiny kit `tiny-flux2-dev`, loaded through the real loading code."""

import family_checks
import pytest
import torch

from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.flux2_dev import Flux2Generator

MODEL = "tiny-flux2-dev"
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def embeds(generator):
    return generator.encode_prompt(PROMPT)


def test_the_kit_settings_reach_the_generator(pipe, generator):
    from transformers import Mistral3ForConditionalGeneration, PixtralProcessor

    assert type(generator) is Flux2Generator and type(pipe).__name__ == "Flux2Pipeline"
    assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration) and isinstance(
        pipe.tokenizer, PixtralProcessor
    )
    assert pipe.transformer.config.guidance_embeds
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=Flux2Generator,
        kit_defaults={
            "num_inference_steps": 4,
            "preview_steps": 2,
            "text_encoder_out_layers": (1, 2, 3),
            "max_sequence_length": 64,
            "default_resolution": 64,
        },
        steps_preview_guidance=(4, 2, 4.0),
        uses_cfg=False,
        noise_shape=(16, 4, 4),  # patchified: 4 latent channels x 2 x 2 at H/16 x W/16
    )
    assert (generator.max_sequence_length, generator.text_encoder_out_layers) == (64, (1, 2, 3))


def test_real_model_defaults(pipe):
    """Without kit settings: the pipeline's 50 steps at guidance 4, 10-step previews, Mistral layers
    10/20/30, 512 tokens, 1024 px; guidance never turns on a CFG pass."""
    dev = Flux2Generator(pipe)
    assert (dev.num_inference_steps, dev.preview_steps, dev.guidance_scale) == (50, 10, 4.0)
    assert (dev.max_sequence_length, dev.text_encoder_out_layers, dev.height, dev.width) == (
        512,
        (10, 20, 30),
        1024,
        1024,
    )
    assert dev.noise_shape == (16, 64, 64) and not dev.uses_cfg
    assert not Flux2Generator(pipe, guidance_scale=7.0).uses_cfg


def test_the_prompt_survives_the_system_message(pipe, generator, embeds):
    """The pipeline puts its system message before every prompt and truncates on the right: in the tiny
    length the prompt must still be there, or every prompt would encode alike."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    encoded = pipe.tokenizer.apply_chat_template(
        format_input([PROMPT], system_message=pipe.system_message),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=generator.max_sequence_length,
    )
    tokens = pipe.tokenizer.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    text = pipe.tokenizer.tokenizer.convert_tokens_to_string([token for token in tokens if token != "<pad>"])
    assert text.endswith(f"[/SYSTEM_PROMPT][INST]{PROMPT}[/INST]") and text.startswith(
        "<s>[SYSTEM_PROMPT]You are"
    )
    assert int(encoded["attention_mask"].sum()) < generator.max_sequence_length
    other = generator.encode_prompt("a blue sphere")
    assert embeds.prompt_embeds.shape == (1, 64, 3 * 32) and embeds.text_ids.shape == (1, 64, 4)
    assert generator.encode_prompt("a very long prompt " * 20).prompt_embeds.shape == (
        1,
        64,
        3 * 32,
    )  # truncated
    assert (embeds.prompt_embeds - other.prompt_embeds).abs().max() > 1e-3


def test_search_noise_is_the_pipelines_own_noise(pipe, generator, embeds):
    """The pipeline draws `[N, 16, H/16, W/16]` and packs it; handing it that same noise gives the same images,
    and the pipeline encoding the prompt itself gives what the cached embeddings give."""
    noises = torch.randn((2, *generator.noise_shape), generator=torch.Generator().manual_seed(5))
    ours = generator.generate(noises, embeds)
    drawn_by_the_pipeline = pipe(
        prompt=[PROMPT] * 2,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=4.0,
        max_sequence_length=64,
        text_encoder_out_layers=(1, 2, 3),
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, drawn_by_the_pipeline, atol=1e-6, rtol=0)

    latents = generator.to_pipeline_latents(noises)
    assert torch.equal(generator.from_pipeline_latents(pipe._pack_latents(latents)), noises)
    with_latents = pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2),
        latents=latents,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=4.0,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, with_latents, atol=1e-6, rtol=0)
    family_checks.check_the_noise_is_used(generator, embeds, ours.images)


@pytest.mark.parametrize("steps", [4, 3])
def test_clean_latents_and_sigmas_are_the_pipelines(pipe, generator, embeds, steps):
    kept, final = family_checks.pipeline_final_latents(
        pipe, generator, generator.initial_noise(7, batch_size=2), embeds, steps
    )
    assert final.shape == (2, 4 * 4, 16)  # packed tokens
    torch.testing.assert_close(kept, generator.from_pipeline_latents(final), atol=1e-6, rtol=0)
    family_checks.check_sigmas_are_the_pipelines(generator, pipe, steps)


@pytest.mark.parametrize("guidance", [4.0, 1.5])
def test_predict_velocity_reproduces_a_one_step_sample(pipe, generator, embeds, guidance):
    """x0 = noise - sigma * v at sigma = 1, at any guidance: the scale is the model's input, not a second pass."""
    guided = generator_for_pipeline(pipe, guidance_scale=guidance)
    other_guidance = generator_for_pipeline(pipe, guidance_scale=guidance + 2)
    family_checks.check_one_step_velocity(pipe, guided, [embeds] * 2, differs_from=other_guidance)


def test_batched_generation_equals_one_at_a_time(generator):
    prompts = [generator.encode_prompt(text) for text in ("a cat", "a dog", "a cat", "a tree", "a dog")]
    family_checks.check_batched_equals_one_at_a_time(generator, prompts, latent_shape=(16, 4, 4))


def test_ses_from_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


@pytest.mark.parametrize("preset", ["attention", "attention_ff", "all_linear"])
def test_lora_presets_save_and_load(tmp_path, kit_dir, preset):
    targets = family_checks.check_lora_preset_round_trip(tmp_path, MODEL, Flux2Generator, preset)
    # Both block kinds are adapted: the double blocks' and the single blocks' fused projections.
    assert any(name.startswith("transformer_blocks.") for name in targets)
    assert any(name.startswith("single_transformer_blocks.") for name in targets)


def test_the_kit_is_deterministic_and_loads_back(tmp_path, pipe):
    from diffusers import Flux2Pipeline

    from tscale_train.tiny.flux2_dev import build_tiny_flux2_dev

    rebuilt = family_checks.check_kit_rebuilds_identically(
        tmp_path,
        pipe,
        Flux2Pipeline,
        build_tiny_flux2_dev,
        ("transformer", "vae", "text_encoder"),
        "flux2-dev",
    )
    text = "a red cube [IMG] on a table"
    assert rebuilt.tokenizer.tokenizer(text).input_ids == pipe.tokenizer.tokenizer(text).input_ids
    assert pipe.tokenizer.chat_template == rebuilt.tokenizer.chat_template
