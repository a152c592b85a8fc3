"""FLUX.1 (`FluxPipeline`, `FluxGenerator`) on the tiny kit `tiny-flux1`, loaded through the real loading code."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.flux1 import FluxGenerator
from tscale_train.loading import load_lora, load_pipeline
from tscale_train.lora import add_lora, save_lora
from tscale_train.tiny.flux1 import TINY_MAX_SEQUENCE_LENGTH as TEXT_LENGTH

MODEL = "tiny-flux1"
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def pipe(kit_dir):
    return load_pipeline(MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def generator(pipe):
    return generator_for_pipeline(pipe, eval_batch_size=3)


@pytest.fixture(scope="module")
def embeds(generator):
    return generator.encode_prompt(PROMPT)


def test_the_kit_settings_reach_the_generator(pipe, generator):
    from tscale_train.loading import generator_defaults

    assert generator_defaults(MODEL) == {
        "max_sequence_length": TEXT_LENGTH, "num_inference_steps": 4, "preview_steps": 2, "default_resolution": 64,
    }
    assert type(generator) is FluxGenerator
    assert (generator.height, generator.width, generator.max_sequence_length) == (64, 64, TEXT_LENGTH)
    assert (generator.num_inference_steps, generator.preview_steps, generator.guidance_scale) == (4, 2, 3.5)
    assert not generator.uses_cfg
    assert generator.noise_shape == (16, 8, 8)  # unpacked: 16 latent channels at H/8 x W/8
    with pytest.raises(ValueError, match="multiples of 16"):
        generator_for_pipeline(pipe, height=72, width=64)


def test_real_model_defaults(pipe):
    """Without kit settings: FLUX.1-dev's 28 steps at guidance 3.5, 10-step previews, T5 length 512, 1024 px;
    a transformer without a guidance embedding (FLUX.1-schnell) gets 4 steps."""
    dev = FluxGenerator(pipe)
    assert (dev.num_inference_steps, dev.preview_steps, dev.guidance_scale) == (28, 10, 3.5)
    assert (dev.max_sequence_length, dev.height, dev.width) == (512, 1024, 1024)
    assert dev.noise_shape == (16, 128, 128) and not dev.uses_cfg
    schnell_like = SimpleNamespace(
        vae_scale_factor=8, default_sample_size=128,
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
        prompt=[PROMPT] * 2, height=64, width=64, num_inference_steps=4, guidance_scale=3.5,
        max_sequence_length=TEXT_LENGTH, generator=torch.Generator().manual_seed(5), output_type="pt",
    ).images
    # The pipeline encodes the batch's texts together, which moves the embeddings by float rounding.
    torch.testing.assert_close(ours.images, drawn_by_the_pipeline, atol=1e-5, rtol=0)

    packed = generator.to_pipeline_latents(noises)
    assert packed.shape == (2, 4 * 4, 64)
    assert torch.equal(generator.from_pipeline_latents(packed), noises)
    with_latents = pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2),
        pooled_prompt_embeds=torch.cat([embeds.extra["pooled_prompt_embeds"]] * 2),
        latents=packed, height=64, width=64, num_inference_steps=4, guidance_scale=3.5,
        max_sequence_length=TEXT_LENGTH, output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, with_latents, atol=1e-6, rtol=0)
    other = generator.generate(generator.initial_noise(6, batch_size=2), embeds)
    assert (other.images - ours.images).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [4, 3])
def test_clean_latents_and_sigmas_are_the_pipelines(pipe, generator, embeds, steps):
    noises = generator.initial_noise(7, batch_size=2)
    kept = generator.generate(noises, embeds, num_inference_steps=steps).clean_latents
    final = pipe(**{**generator.pipeline_call(noises, [embeds] * 2, steps), "output_type": "latent"}).images
    assert final.shape == (2, 16, 64)  # packed
    torch.testing.assert_close(kept, pipe._unpack_latents(final, 64, 64, pipe.vae_scale_factor), atol=1e-6, rtol=0)
    torch.testing.assert_close(generator.sampler_sigmas(steps), pipe.scheduler.sigmas[:-1].float())
    sigmas = generator.sampler_sigmas(steps)
    assert len(sigmas) == steps and sigmas[0] == 1.0 and torch.all(sigmas[1:] < sigmas[:-1])


def test_predict_velocity_reproduces_a_one_step_sample(pipe, generator, embeds):
    """x0 = noise - sigma * v at sigma = 1; the guidance scale is the model's input, not a second pass."""
    noises = generator.initial_noise(11, batch_size=2)
    one_step = generator.generate(noises, embeds, num_inference_steps=1).clean_latents
    sigma = generator.sampler_sigmas(1)
    assert sigma.tolist() == [1.0]
    with torch.no_grad():
        velocity = generator.predict_velocity(pipe.transformer, noises, sigma, [embeds] * 2)
        unguided = generator_for_pipeline(pipe, guidance_scale=1.0)
        other_guidance = unguided.predict_velocity(pipe.transformer, noises, sigma, [embeds] * 2)
    assert velocity.shape == noises.shape
    torch.testing.assert_close(noises - sigma * velocity, one_step, atol=1e-5, rtol=0)
    assert (velocity - other_guidance).abs().max() > 1e-4


def test_predict_velocity_walks_the_sampler(pipe, generator, embeds):
    """Euler steps along `predict_velocity` over `sampler_sigmas` end where the pipeline's sampler ends."""
    noises = generator.initial_noise(12, batch_size=2)
    final = generator.generate(noises, embeds).clean_latents
    sigmas = generator.sampler_sigmas().tolist() + [0.0]
    latents = noises
    with torch.no_grad():
        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            velocity = generator.predict_velocity(pipe.transformer, latents, torch.tensor([sigma] * 2), [embeds] * 2)
            latents = latents + (following - sigma) * velocity
    torch.testing.assert_close(latents, final, atol=1e-5, rtol=0)


def test_batched_generation_equals_one_at_a_time(generator):
    prompts = [generator.encode_prompt(text) for text in ("a cat", "a dog", "a cat", "a tree", "a dog")]
    noises = generator.initial_noise(3, batch_size=5)
    batched = generator.generate(noises, prompts)
    single = [generator.generate(noises[i : i + 1], prompts[i]) for i in range(5)]
    torch.testing.assert_close(batched.images, torch.cat([out.images for out in single]), atol=1e-4, rtol=0)
    torch.testing.assert_close(batched.clean_latents, torch.cat([out.clean_latents for out in single]), atol=1e-4, rtol=0)
    assert batched.images.shape == (5, 3, 64, 64) and batched.clean_latents.shape == (5, 16, 8, 8)


def test_ses_from_the_cli(tmp_path, kit_dir):
    from tscale_train import cli

    out = tmp_path / "cube.png"
    args = ["ses", "--model", MODEL, "--no-progress", "--prompt", PROMPT, "--budget", "6", "--popsize", "3",
            "--save-trace", "--out", str(out)]
    assert cli.main(args) == 0
    assert Image.open(out).size == (64, 64)
    trace = json.loads((tmp_path / "cube_trace.json").read_text())
    assert len(trace["scores"]) == 6 and trace["best_score"] == max(trace["scores"]) >= trace["base_score"]


@pytest.mark.parametrize("preset", ["attention", "attention_ff", "all_linear"])
def test_lora_presets_save_and_load(tmp_path, pipe, preset):
    adapted = load_pipeline(MODEL, dtype="float32")
    add_lora(adapted.transformer, rank=4, target_modules=preset, presets=FluxGenerator.lora_targets, init="gaussian")
    targets = {name.rpartition(".lora_")[0] for name, _ in adapted.transformer.named_parameters() if ".lora_" in name}
    assert targets
    modules = dict(adapted.transformer.named_modules())
    assert all(isinstance(modules[name].base_layer, torch.nn.Linear) for name in targets)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.transformer.named_parameters():
            if ".lora_B" in name:  # peft starts B at zero: make the adapter change the output
                parameter.normal_(std=0.2)
    save_lora(type(adapted), adapted.transformer, tmp_path)
    fresh = load_pipeline(MODEL, dtype="float32")
    load_lora(fresh, str(tmp_path))

    generator = generator_for_pipeline(fresh)
    embeds = [generator.encode_prompt(PROMPT)] * 2
    noises, sigmas = generator.initial_noise(0, batch_size=2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        expected, loaded, base = (
            generator.predict_velocity(model.transformer, noises, sigmas, embeds) for model in (adapted, fresh, pipe)
        )
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=0)
    assert (expected - base).abs().max() > 1e-3


def test_preset_targets_by_block_kind():
    names = [f"single_transformer_blocks.3.{leaf}" for leaf in ("attn.to_q", "proj_out", "proj_mlp", "norm.linear")]
    names += ["transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.ff_context.net.2", "proj_out", "x_embedder"]

    def hits(preset):
        return [name for name in names if re.fullmatch(FluxGenerator.lora_targets[preset], name)]

    assert hits("attention") == [names[0], names[1], names[4]]
    assert hits("attention_ff") == [names[0], names[1], names[2], names[4], names[5]]
    assert hits("all_linear") == [names[0], names[1], names[2], names[4], names[5], names[6], names[7]]


def test_the_kit_is_deterministic_and_loads_back(tmp_path, pipe):
    from diffusers import FluxPipeline

    from tscale_train.tiny.flux1 import build_tiny_flux1

    rebuilt = FluxPipeline.from_pretrained(build_tiny_flux1(tmp_path / "kit", seed=0), local_files_only=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(rebuilt, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert rebuilt.tokenizer_2(PROMPT).input_ids == pipe.tokenizer_2(PROMPT).input_ids
    assert pipe.tokenizer_2(PROMPT).input_ids[-1] == pipe.tokenizer_2.eos_token_id
    assert json.loads((tmp_path / "kit" / "tscale_tiny.json").read_text())["kind"] == "flux1"
