"""SD3 / SD3.5 (`StableDiffusion3Pipeline`, `StableDiffusion3Generator`) on the tiny kit `tiny-sd3`."""

import re
from types import SimpleNamespace

import family_checks
import pytest
import torch

from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.sd3 import StableDiffusion3Generator
from tscale_train.lora import add_lora
from tscale_train.tiny.sd3 import TINY_MAX_SEQUENCE_LENGTH as TEXT_LENGTH

MODEL = "tiny-sd3"
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def embeds(generator):
    return generator.encode_prompt(PROMPT)


@pytest.fixture(scope="module")
def unguided(pipe):
    """The same model with CFG off (guidance 1): one transformer pass per step."""
    return generator_for_pipeline(pipe, guidance_scale=1.0)


def test_the_kit_settings_reach_the_generator(pipe, generator):
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=StableDiffusion3Generator,
        kit_defaults={
            "max_sequence_length": TEXT_LENGTH,
            "num_inference_steps": 4,
            "preview_steps": 2,
            "default_resolution": 64,
        },
        steps_preview_guidance=(4, 2, 3.5),
        uses_cfg=True,
        noise_shape=(16, 8, 8),
        off_grid=(64, 56),
    )
    assert generator.is_sd35 and generator.max_sequence_length == TEXT_LENGTH


def test_real_model_defaults(pipe):
    """Without kit settings: 28 steps, 10-step previews, T5 length 256, 1024 px; guidance 3.5 for SD3.5
    (RMS q/k norm), the pipeline's 7.0 for SD3-medium."""
    sd35 = StableDiffusion3Generator(pipe)
    assert (sd35.num_inference_steps, sd35.preview_steps, sd35.guidance_scale) == (28, 10, 3.5)
    assert (sd35.max_sequence_length, sd35.height, sd35.width) == (256, 1024, 1024)
    assert sd35.noise_shape == (16, 128, 128) and sd35.uses_cfg
    sd3_medium_like = SimpleNamespace(
        vae_scale_factor=8,
        patch_size=2,
        default_sample_size=128,
        transformer=SimpleNamespace(config=SimpleNamespace(qk_norm=None, in_channels=16)),
    )
    sd3 = StableDiffusion3Generator(sd3_medium_like)
    assert not sd3.is_sd35 and sd3.guidance_scale == 7.0 and sd3.uses_cfg


def test_search_noise_is_the_pipelines_own_noise(pipe, generator, embeds):
    """The pipeline's own draw is `[N, 16, H/8, W/8]`; given the same noise and letting the pipeline encode the
    prompt and its default negative itself, it makes the same images as the cached embeddings."""
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

    assert torch.equal(generator.from_pipeline_latents(generator.to_pipeline_latents(noises)), noises)
    negative = embeds.negative
    with_latents = pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2),
        pooled_prompt_embeds=torch.cat([embeds.extra["pooled_prompt_embeds"]] * 2),
        negative_prompt_embeds=torch.cat([negative.prompt_embeds] * 2),
        negative_pooled_prompt_embeds=torch.cat([negative.extra["pooled_prompt_embeds"]] * 2),
        latents=generator.to_pipeline_latents(noises),
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=TEXT_LENGTH,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, with_latents, atol=1e-6, rtol=0)
    family_checks.check_the_noise_is_used(generator, embeds, ours.images)


def test_cfg_negative_is_encoded_once_and_changes_the_image(generator, unguided, embeds):
    assert embeds.negative is not None and embeds.negative.prompt == ""
    assert generator.encode_prompt("a dog").negative is embeds.negative
    # The CLIP sequence (77 tokens) comes first, zero-padded to T5's width, then T5's tokens.
    assert embeds.prompt_embeds.shape[1] == 77 + TEXT_LENGTH
    assert embeds.extra["pooled_prompt_embeds"].shape[0] == 1
    plain_embeds = unguided.encode_prompt(PROMPT)
    assert plain_embeds.negative is None and not unguided.uses_cfg
    noises = generator.initial_noise(0, batch_size=1)
    guided, plain = generator.generate(noises, embeds).images, unguided.generate(noises, plain_embeds).images
    assert (guided - plain).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [4, 3])
def test_clean_latents_and_sigmas_are_the_pipelines(pipe, generator, embeds, steps):
    kept, final = family_checks.pipeline_final_latents(
        pipe, generator, generator.initial_noise(7, batch_size=2), embeds, steps
    )
    torch.testing.assert_close(kept, final, atol=1e-6, rtol=0)
    family_checks.check_sigmas_are_the_pipelines(generator, pipe, steps)


def test_predict_velocity_reproduces_a_one_step_sample(pipe, unguided):
    """x0 = noise - sigma * v at sigma = 1, with CFG off (the velocity is the conditional one)."""
    family_checks.check_one_step_velocity(pipe, unguided, [unguided.encode_prompt("a dog")] * 2)


def test_predict_velocity_walks_the_sampler(pipe, unguided):
    """Euler steps along `predict_velocity` over `sampler_sigmas` end where the pipeline's sampler ends (CFG off)."""
    family_checks.check_euler_walk(pipe, unguided, [unguided.encode_prompt(PROMPT)] * 2)


def test_batched_generation_equals_one_at_a_time(generator):
    prompts = [generator.encode_prompt(text) for text in ("a cat", "a dog", "a cat", "a tree", "a dog")]
    family_checks.check_batched_equals_one_at_a_time(generator, prompts, latent_shape=(16, 8, 8))


def test_ses_from_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


@pytest.mark.parametrize("preset", ["attention", "attention_ff", "all_linear"])
def test_lora_presets_save_and_load(tmp_path, pipe, preset):
    family_checks.check_lora_preset_round_trip(tmp_path, MODEL, StableDiffusion3Generator, preset, base=pipe)


def test_attention_preset_covers_sd35_medium_dual_attention():
    """SD3.5-medium's first blocks attend twice; its second, image-only attention (`attn2`) is attention too."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        pos_embed_max_size=8,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    add_lora(transformer, rank=2, target_modules="attention", presets=StableDiffusion3Generator.lora_targets)
    targets = set(family_checks.lora_base_layers(transformer))
    assert {f"transformer_blocks.0.attn2.{leaf}" for leaf in ("to_q", "to_k", "to_v", "to_out.0")} <= targets
    assert not any("ff" in name or "norm" in name for name in targets)


def test_preset_targets_by_module():
    names = [
        "transformer_blocks.1.attn.add_k_proj",
        "transformer_blocks.0.ff_context.net.0.proj",
        "transformer_blocks.0.norm1.linear",
        "proj_out",
        "context_embedder",
    ]

    def hits(preset):
        return [name for name in names if re.fullmatch(StableDiffusion3Generator.lora_targets[preset], name)]

    assert hits("attention") == names[:1]
    assert hits("attention_ff") == names[:2]
    assert hits("all_linear") == [*names[:2], "proj_out"]


def test_the_kit_is_deterministic_and_loads_back(tmp_path, pipe):
    from diffusers import StableDiffusion3Pipeline

    from tscale_train.tiny.sd3 import build_tiny_sd3

    rebuilt = family_checks.check_kit_rebuilds_identically(
        tmp_path,
        pipe,
        StableDiffusion3Pipeline,
        build_tiny_sd3,
        ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"),
        "sd3",
    )
    assert rebuilt.tokenizer_3(PROMPT).input_ids == pipe.tokenizer_3(PROMPT).input_ids
