"""Qwen-Image (`QwenImagePipeline`) on the tiny kit `tiny-qwen-image`: generation from noise, LoRAs, SES.

The kit keeps the real defaults' true CFG (scale 4 against the negative prompt " "); a second
generator on the same pipeline runs without CFG, for the velocity checks and the no-CFG path.
"""

import re

import family_checks
import pytest
import torch

from tscale_train.families.qwen_image import QWEN_IMAGE_LORA_TARGETS
from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.qwen_image import QwenImageGenerator

MODEL = "tiny-qwen-image"
# Prompts of different token lengths, so a batch of them is padded and masked.
PROMPTS = ["a cat", "a red cube on a wooden table", "sunset", "two dogs playing in the deep snow"]


@pytest.fixture(scope="module")
def plain_generator(pipe):
    return generator_for_pipeline(pipe, guidance_scale=1.0, eval_batch_size=3)


@pytest.fixture(params=["cfg", "plain"])
def any_generator(request, generator, plain_generator):
    return generator if request.param == "cfg" else plain_generator


def pipeline_by_text(pipe, settings: QwenImageGenerator, prompts: list[str], **kwargs):
    """The pipeline called with prompt strings and `settings`' guidance, encoding the prompts (and the negative) itself."""
    if settings.uses_cfg:
        kwargs["negative_prompt"] = [settings.negative_prompt] * len(prompts)
    return pipe(
        prompt=prompts,
        height=settings.height,
        width=settings.width,
        true_cfg_scale=settings.guidance_scale,
        max_sequence_length=settings.max_sequence_length,
        **kwargs,
    ).images


def test_kit_loads_as_qwen_image_with_the_kit_settings(pipe, generator):
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen2_5_VLForConditionalGeneration

    assert type(generator) is QwenImageGenerator and type(pipe).__name__ == "QwenImagePipeline"
    assert isinstance(pipe.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(pipe.vae, AutoencoderKLQwenImage) and pipe.vae_scale_factor == 8
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=QwenImageGenerator,
        kit_defaults={"num_inference_steps": 4, "preview_steps": 2, "default_resolution": 64},
        steps_preview_guidance=(4, 2, 4.0),
        uses_cfg=True,
        noise_shape=(16, 8, 8),  # [16, H/8, W/8], before 2x2 packing
    )
    assert generator.negative_prompt == " "
    assert pipe.scheduler.config.shift_terminal == 0.02 and pipe.scheduler.config.max_image_seq_len == 8192


def test_defaults_of_a_real_checkpoint(pipe):
    real = QwenImageGenerator(pipe)  # what a checkpoint without kit settings gets
    assert (real.height, real.width, real.num_inference_steps, real.preview_steps) == (1024, 1024, 50, 10)
    assert real.guidance_scale == 4.0 and real.uses_cfg and real.max_sequence_length == 512
    with pytest.raises(ValueError, match="multiples of 16"):
        QwenImageGenerator(pipe, height=72, width=64)
    with pytest.raises(ValueError, match="at least 2 sampler steps"):
        QwenImageGenerator(pipe, num_inference_steps=1)


def test_the_template_drop_leaves_the_prompt_and_the_template_tail(pipe, generator):
    """The pipeline drops the template's first 34 tokens: with the kit tokenizer they are the system prompt."""
    tokenizer, drop = pipe.tokenizer, pipe.prompt_template_encode_start_idx
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == drop
    for prompt in ("a red cube", " "):
        ids = tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids
        assert tokenizer.decode(ids[drop:]) == prompt + "<|im_end|>\n<|im_start|>assistant\n"
        embeds = generator.encode_prompt(prompt)
        assert embeds.prompt_embeds.shape[1] == len(ids) - drop
        assert embeds.extra["prompt_embeds_mask"].shape == embeds.prompt_embeds.shape[:2]


def test_generation_is_the_pipelines_own_from_that_noise(any_generator, pipe):
    """The pipeline encoding the prompts (and under CFG the negative " ") itself, from the same noise,
    makes the same images; and from the same seed it draws the same noise."""
    generator = any_generator
    prompts = PROMPTS[:3]
    noises = generator.initial_noise(5, batch_size=3)
    latents = generator.to_pipeline_latents(noises)
    assert latents.shape == (3, 4 * 4, 64)
    torch.testing.assert_close(generator.from_pipeline_latents(latents), noises, atol=0, rtol=0)
    ours = generator.generate(noises, [generator.encode_prompt(prompt) for prompt in prompts]).images
    steps = generator.num_inference_steps
    theirs = pipeline_by_text(
        pipe, generator, prompts, latents=latents, num_inference_steps=steps, output_type="pt"
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # The pipeline's own noise from a seed is `[N, 1, 16, h, w]` packed: the search noise of that seed.
    drawn = pipeline_by_text(
        pipe,
        generator,
        prompts,
        generator=torch.Generator().manual_seed(5),
        num_inference_steps=steps,
        output_type="pt",
    )
    torch.testing.assert_close(ours, drawn, atol=1e-5, rtol=0)
    other = generator.generate(generator.initial_noise(6), generator.encode_prompt(prompts[0])).images
    assert (other - ours[:1]).abs().max() > 1e-3  # the noise is really used


def test_clean_latents_and_sigmas_are_the_pipelines(any_generator, pipe):
    generator = any_generator
    embeds = generator.encode_prompt("a cat")
    noises = generator.initial_noise(7, batch_size=2)
    kept = generator.generate(noises, embeds).clean_latents
    assert kept.shape == (2, 16, 8, 8)
    packed = pipeline_by_text(
        pipe,
        generator,
        ["a cat"] * 2,
        latents=generator.to_pipeline_latents(noises),
        num_inference_steps=generator.num_inference_steps,
        output_type="latent",
    )
    torch.testing.assert_close(kept, generator.from_pipeline_latents(packed), atol=1e-6, rtol=0)
    family_checks.check_sigmas_are_the_pipelines(generator, pipe, generator.num_inference_steps)
    for steps in (2, 7):
        generator.generate(noises[:1], embeds, num_inference_steps=steps)
        family_checks.check_sigmas_are_the_pipelines(generator, pipe, steps)
    # The schedule is stretched to end at shift_terminal: 0.02 before the final 0.
    assert generator.sampler_sigmas(2).tolist() == pytest.approx([1.0, 0.02])


def test_one_step_is_refused_not_sampled_with_a_nan_sigma(generator):
    embeds = generator.encode_prompt("a cat")
    with pytest.raises(ValueError, match="at least 2 sampler steps"):
        generator.sampler_sigmas(1)
    with pytest.raises(ValueError, match="at least 2 sampler steps"):
        generator.generate(generator.initial_noise(0), embeds, num_inference_steps=1)


def test_predict_velocity_integrates_to_the_samplers_latents(plain_generator, pipe):
    """Euler steps with `predict_velocity` from pure noise end on the pipeline's clean latents (no CFG).

    Qwen-Image cannot sample one step (see above), so this takes every step of a 3-step schedule,
    sigma 1 first: `x - sigma * v` at sigma = 1 is the first step's x0, and the later steps check the
    timestep scale away from sigma = 1. Two prompts of different lengths exercise the padding mask.
    """
    generator = plain_generator
    embeds = [generator.encode_prompt(prompt) for prompt in PROMPTS[:2]]
    assert embeds[0].prompt_embeds.shape[1] != embeds[1].prompt_embeds.shape[1]
    family_checks.check_euler_walk(pipe, generator, embeds, steps=3)


def test_batched_generation_equals_one_at_a_time(generator):
    """Prompts of different lengths share a batch: zero-padded and masked, as the pipeline pads a batch
    (under CFG, so the conditional and the negative pass both run batched)."""
    embeds = [generator.encode_prompt(prompt) for prompt in PROMPTS + PROMPTS[:1]]
    assert len({item.prompt_embeds.shape[1] for item in embeds}) == len(PROMPTS)
    family_checks.check_batched_equals_one_at_a_time(generator, embeds, latent_shape=(16, 8, 8))


def test_cfg_shares_one_negative_and_changes_the_images(generator, plain_generator):
    first, second = generator.encode_prompt("a cat"), generator.encode_prompt("a dog")
    assert first.negative is not None and first.negative is second.negative
    assert first.negative.prompt == " "
    plain = plain_generator.encode_prompt("a cat")
    assert plain.negative is None and not plain_generator.uses_cfg
    assert "negative_prompt_embeds" not in plain_generator.pipeline_kwargs([plain])
    torch.testing.assert_close(plain.prompt_embeds, first.prompt_embeds)
    noises = generator.initial_noise(0, batch_size=2)
    assert (
        generator.generate(noises, first).images - plain_generator.generate(noises, plain).images
    ).abs().max() > 1e-3


def test_ses_end_to_end_through_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


@pytest.mark.parametrize("preset, count", [("attention", 16), ("attention_ff", 24), ("all_linear", 32)])
def test_lora_presets_and_save_load(preset, count, tmp_path, pipe):
    """Each preset hits only Linear modules; the saved LoRA loads into a fresh pipeline and acts the same there.

    Counts: 2 double-stream blocks x 8 attention projections, x 4 MLP linears (image and text), then
    2 modulations per block, the image and text input projections, the final modulation and projection.
    """
    hit = family_checks.check_lora_preset_round_trip(
        tmp_path, MODEL, QwenImageGenerator, preset, base=pipe, count=count
    )
    assert not any(name.startswith("time_text_embed") for name in hit)


def test_the_regexes_name_whole_modules_only():
    attention = re.compile(QWEN_IMAGE_LORA_TARGETS["attention"])
    assert attention.fullmatch("transformer_blocks.59.attn.to_out.0")
    assert attention.fullmatch("transformer_blocks.0.attn.add_k_proj")
    assert not attention.fullmatch("transformer_blocks.0.attn.to_out") and not attention.fullmatch(
        "transformer_blocks.0.attn.norm_q"
    )
    attention_ff = re.compile(QWEN_IMAGE_LORA_TARGETS["attention_ff"])
    assert attention_ff.fullmatch("transformer_blocks.3.txt_mlp.net.0.proj")
    assert not attention_ff.fullmatch("transformer_blocks.3.txt_mlp.net.0")
    all_linear = re.compile(QWEN_IMAGE_LORA_TARGETS["all_linear"])
    assert all_linear.fullmatch("transformer_blocks.3.img_mod.1") and all_linear.fullmatch("norm_out.linear")
    assert not all_linear.fullmatch("time_text_embed.timestep_embedder.linear_1")
    assert not all_linear.fullmatch("transformer_blocks.3.img_mod")
