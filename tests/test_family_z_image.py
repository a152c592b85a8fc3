"""Z-Image (`ZImagePipeline`) on the tiny kit `tiny-z-image`: generation from noise, LoRAs, SES and DPO training.

The kit mirrors Z-Image-Turbo (few steps, guidance 0: no CFG); a second generator on the same
pipeline runs the base model's CFG (guidance 5) to check the negative-prompt path.
"""

import json
import math
import runpy
import sys
from pathlib import Path

import family_checks
import pytest
import torch

from tscale_train.families.z_image import Z_IMAGE_LORA_TARGETS
from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.z_image import ZImageGenerator
from tscale_train.loading import generator_defaults, load_lora, load_pipeline

MODEL = "tiny-z-image"
REPO = Path(__file__).resolve().parents[1]
# Byte-level tokens: prompts of different lengths give caption features of different lengths.
PROMPTS = ["a cat", "a red cube on a wooden table", "sunset", "two dogs playing in the deep snow"]


def load_tiny():
    return load_pipeline(MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def cfg_generator(pipe):
    return generator_for_pipeline(pipe, guidance_scale=5.0, eval_batch_size=3)


@pytest.fixture(params=["turbo", "cfg"])
def any_generator(request, generator, cfg_generator):
    return generator if request.param == "turbo" else cfg_generator


def test_kit_loads_as_a_turbo_like_z_image(pipe, generator):
    from transformers import Qwen3Model

    assert type(generator) is ZImageGenerator and type(pipe).__name__ == "ZImagePipeline"
    assert isinstance(pipe.text_encoder, Qwen3Model)
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=ZImageGenerator,
        kit_defaults={
            "num_inference_steps": 4,
            "guidance_scale": 0.0,
            "max_sequence_length": 64,
            "default_resolution": 64,
        },
        steps_preview_guidance=(4, 4, 0.0),
        uses_cfg=False,
        noise_shape=(16, 8, 8),  # [16, H/8, W/8]
    )
    assert generator.max_sequence_length == 64 and generator.latents_dtype == torch.float32
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 3.0


def test_defaults_of_the_base_model_and_of_turbo(pipe):
    base = ZImageGenerator(pipe)  # what a checkpoint without known settings gets: the pipeline's defaults
    assert (base.height, base.num_inference_steps, base.guidance_scale, base.preview_steps) == (
        1024,
        50,
        5.0,
        10,
    )
    assert base.uses_cfg and base.max_sequence_length == 512
    turbo = ZImageGenerator(pipe, **generator_defaults("Tongyi-MAI/Z-Image-Turbo"))
    assert (turbo.num_inference_steps, turbo.guidance_scale, turbo.preview_steps, turbo.uses_cfg) == (
        9,
        0.0,
        9,
        False,
    )
    with pytest.raises(ValueError, match="multiples of 16"):
        ZImageGenerator(pipe, height=72, width=64)


def test_generation_is_the_pipelines_own_from_that_noise(any_generator, pipe):
    """The pipeline, encoding the prompt (and under CFG its default negative) itself, makes the same images."""
    generator = any_generator
    prompts = PROMPTS[:3]
    noises = generator.initial_noise(5, batch_size=3)
    latents = generator.to_pipeline_latents(noises)
    assert latents.shape == (3, 16, 8, 8) and latents.dtype == torch.float32
    torch.testing.assert_close(generator.from_pipeline_latents(latents), noises, atol=0, rtol=0)
    ours = generator.generate(noises, [generator.encode_prompt(prompt) for prompt in prompts]).images
    theirs = pipe(
        prompt=prompts,
        latents=latents,
        height=64,
        width=64,
        num_inference_steps=generator.num_inference_steps,
        guidance_scale=generator.guidance_scale,
        max_sequence_length=generator.max_sequence_length,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    other = generator.generate(generator.initial_noise(6), generator.encode_prompt(prompts[0])).images
    assert (other - ours[:1]).abs().max() > 1e-3  # the noise is really used


def test_clean_latents_and_sigmas_are_the_pipelines(any_generator, pipe):
    generator = any_generator
    embeds = generator.encode_prompt("a cat")
    noises = generator.initial_noise(7, batch_size=2)
    kept, reference = family_checks.pipeline_final_latents(
        pipe, generator, noises, embeds, generator.num_inference_steps
    )
    torch.testing.assert_close(kept, reference, atol=1e-6, rtol=0)
    family_checks.check_sigmas_are_the_pipelines(generator, pipe, generator.num_inference_steps)
    for steps in (1, 7):
        generator.generate(noises[:1], embeds, num_inference_steps=steps)
        family_checks.check_sigmas_are_the_pipelines(generator, pipe, steps)
    assert generator.sampler_sigmas(1).tolist() == [1.0]


def test_predict_velocity_reproduces_a_one_step_sample(generator, pipe):
    """x0 = noise - sigma * v at sigma = 1: one Euler step from pure noise, as the sampler takes it."""
    family_checks.check_one_step_velocity(
        pipe, generator, [generator.encode_prompt(prompt) for prompt in PROMPTS[:2]]
    )


def test_predict_velocity_integrates_to_the_samplers_latents(generator, pipe):
    """Every sigma of the schedule, not only sigma = 1: Euler steps with `predict_velocity` end where the pipeline does."""
    family_checks.check_euler_walk(
        pipe, generator, [generator.encode_prompt(prompt) for prompt in PROMPTS[:2]]
    )


def test_batched_generation_equals_one_at_a_time(any_generator):
    """Caption features of different lengths share a batch (the transformer pads and masks them)."""
    generator = any_generator
    embeds = [generator.encode_prompt(prompt) for prompt in PROMPTS + PROMPTS[:1]]
    assert len({item.prompt_embeds.shape[1] for item in embeds}) == len(PROMPTS)
    family_checks.check_batched_equals_one_at_a_time(generator, embeds, latent_shape=(16, 8, 8))


def test_cfg_shares_one_negative_and_changes_the_images(generator, cfg_generator):
    first, second = cfg_generator.encode_prompt("a cat"), cfg_generator.encode_prompt("a dog")
    assert first.negative is not None and first.negative is second.negative
    assert first.prompt_embeds.ndim == 3 and first.prompt_embeds.shape[0] == 1
    plain = generator.encode_prompt("a cat")
    assert plain.negative is None
    torch.testing.assert_close(plain.prompt_embeds, first.prompt_embeds)
    noises = generator.initial_noise(0, batch_size=2)
    assert (
        cfg_generator.generate(noises, first).images - generator.generate(noises, plain).images
    ).abs().max() > 1e-3


def test_ses_end_to_end_through_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


@pytest.mark.parametrize("preset, count", [("attention", 16), ("attention_ff", 28), ("all_linear", 35)])
def test_lora_presets_and_save_load(preset, count, tmp_path, kit_dir):
    """Each preset hits only Linear modules; the saved LoRA loads into a fresh pipeline and acts the same there.

    Counts: 4 blocks (1 noise refiner, 1 context refiner, 2 main) x 4 projections, x 3 SwiGLU linears,
    then 3 block modulations, the patch and caption embedders and the final layer's 2 linears.
    """
    family_checks.check_lora_preset_round_trip(tmp_path, MODEL, ZImageGenerator, preset, count=count)


def test_the_regexes_name_whole_modules_only():
    import re

    attention = re.compile(Z_IMAGE_LORA_TARGETS["attention"])
    assert attention.fullmatch("layers.3.attention.to_out.0") and attention.fullmatch(
        "context_refiner.0.attention.to_k"
    )
    assert not attention.fullmatch("layers.3.attention.to_out") and not attention.fullmatch(
        "layers.3.attention.norm_q"
    )
    all_linear = re.compile(Z_IMAGE_LORA_TARGETS["all_linear"])
    assert all_linear.fullmatch("all_x_embedder.2-1") and all_linear.fullmatch(
        "all_final_layer.2-1.adaLN_modulation.1"
    )
    assert not all_linear.fullmatch("t_embedder.mlp.0") and not all_linear.fullmatch(
        "all_final_layer.2-1.adaLN_modulation"
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_online_dpo_trains_a_z_image_lora(tmp_path, kit_dir):
    from tscale_train import cli

    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--model",
            MODEL,
            "--dtype",
            "float32",
            "--reward",
            "rewards.synthetic:brightness",
            "--budget",
            "4",
            "--popsize",
            "2",
            "--k_elites",
            "2",
            "--rounds",
            "2",
            "--prompts_per_round",
            "4",
            "--epochs_per_round",
            "2",
            "--train_batch_size",
            "2",
            "--lora_rank",
            "4",
            "--lora_target_modules",
            "all_linear",
            "--beta",
            "1.0",
            "--learning_rate",
            "1e-3",
            "--eval_every",
            "1",
            "--eval_budget",
            "2",
            "--max_eval_prompts",
            "2",
            "--checkpoint_every",
            "0",
            "--output_dir",
            str(out),
            "--no_progress",
        ]
    )
    assert code == 0
    rows = _metrics(out)
    assert [row["round"] for row in rows] == [-1, 0, 1]
    assert all(math.isfinite(row["eval/reward_budget0"]) for row in rows)
    assert all(math.isfinite(row["train/loss"]) for row in rows[1:])
    assert rows[1]["train/implicit_acc_new"] == 0.0  # LoRA B = 0 at the start: theta == ref

    plain, adapted = load_tiny(), load_tiny()
    load_lora(adapted, str(out))
    images = []
    for loaded in (plain, adapted):
        generator = generator_for_pipeline(loaded)
        images.append(generator.generate(generator.initial_noise(0), generator.encode_prompt("a cat")).images)
    assert (images[0] - images[1]).abs().max() > 1e-3


def test_recipe_configs_parse_and_the_tiny_one_runs_a_round_through_the_recipe(
    tmp_path, monkeypatch, kit_dir
):
    from tscale_train.config import parse_config

    real = parse_config(["--config", str(REPO / "recipes/configs/z_image_turbo.yaml")])
    assert real.model == "Tongyi-MAI/Z-Image-Turbo" and (real.height, real.width) == (1024, 1024)
    assert real.dtype == "bfloat16" and real.gradient_checkpointing and real.train_batch_size == 1
    assert real.beta == 100.0 and real.lora_rank == 16 and real.lora_target_modules == "attention"
    tiny_config = REPO / "recipes/configs/tiny_z_image.yaml"
    assert parse_config(["--config", str(tiny_config)]).model == MODEL

    out = tmp_path / "recipe"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "z_image_turbo_dpo.py",
            "--config",
            str(tiny_config),
            "--rounds",
            "1",
            "--budget",
            "4",
            "--popsize",
            "2",
            "--prompts_per_round",
            "2",
            "--epochs_per_round",
            "1",
            "--max_eval_prompts",
            "2",
            "--eval_budget",
            "2",
            "--output_dir",
            str(out),
            "--no_progress",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "recipes/z_image_turbo_dpo.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert _metrics(out)[-1]["train/num_pairs"] == 2
