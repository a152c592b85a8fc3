"""FLUX.2-dev (`Flux2Pipeline`, `Flux2Generator`) on the tiny kit `tiny-flux2-dev`, loaded through the real loading code."""

import json

import pytest
import torch
from PIL import Image

from tscale_train.generation import generator_for_pipeline
from tscale_train.generators.flux2_dev import Flux2Generator
from tscale_train.loading import generator_defaults, load_lora, load_pipeline
from tscale_train.lora import add_lora, save_lora

MODEL = "tiny-flux2-dev"
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
    from transformers import Mistral3ForConditionalGeneration, PixtralProcessor

    assert type(generator) is Flux2Generator and type(pipe).__name__ == "Flux2Pipeline"
    assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration) and isinstance(pipe.tokenizer, PixtralProcessor)
    assert pipe.transformer.config.guidance_embeds
    assert (generator.height, generator.width, generator.max_sequence_length) == (64, 64, 64)
    assert generator.text_encoder_out_layers == (1, 2, 3)
    assert (generator.num_inference_steps, generator.preview_steps, generator.guidance_scale) == (4, 2, 4.0)
    assert not generator.uses_cfg
    assert generator.noise_shape == (16, 4, 4)  # patchified: 4 latent channels x 2 x 2 at H/16 x W/16
    assert generator_defaults(MODEL) == {
        "num_inference_steps": 4, "preview_steps": 2, "text_encoder_out_layers": (1, 2, 3),
        "max_sequence_length": 64, "default_resolution": 64,
    }
    with pytest.raises(ValueError, match="multiples of 16"):
        generator_for_pipeline(pipe, height=72, width=64)


def test_real_model_defaults(pipe):
    """Without kit settings: the pipeline's 50 steps at guidance 4, 10-step previews, Mistral layers
    10/20/30, 512 tokens, 1024 px; guidance never turns on a CFG pass."""
    dev = Flux2Generator(pipe)
    assert (dev.num_inference_steps, dev.preview_steps, dev.guidance_scale) == (50, 10, 4.0)
    assert (dev.max_sequence_length, dev.text_encoder_out_layers, dev.height, dev.width) == (512, (10, 20, 30), 1024, 1024)
    assert dev.noise_shape == (16, 64, 64) and not dev.uses_cfg
    assert not Flux2Generator(pipe, guidance_scale=7.0).uses_cfg


def test_the_prompt_survives_the_system_message(pipe, generator, embeds):
    """The pipeline puts its system message before every prompt and truncates on the right: in the tiny
    length the prompt must still be there, or every prompt would encode alike."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    encoded = pipe.tokenizer.apply_chat_template(
        format_input([PROMPT], system_message=pipe.system_message), tokenize=True, return_dict=True,
        return_tensors="pt", padding="max_length", truncation=True, max_length=generator.max_sequence_length,
    )
    tokens = pipe.tokenizer.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    text = pipe.tokenizer.tokenizer.convert_tokens_to_string([token for token in tokens if token != "<pad>"])
    assert text.endswith(f"[/SYSTEM_PROMPT][INST]{PROMPT}[/INST]") and text.startswith("<s>[SYSTEM_PROMPT]You are")
    assert int(encoded["attention_mask"].sum()) < generator.max_sequence_length
    other = generator.encode_prompt("a blue sphere")
    assert embeds.prompt_embeds.shape == (1, 64, 3 * 32) and embeds.text_ids.shape == (1, 64, 4)
    assert generator.encode_prompt("a very long prompt " * 20).prompt_embeds.shape == (1, 64, 3 * 32)  # truncated
    assert (embeds.prompt_embeds - other.prompt_embeds).abs().max() > 1e-3


def test_search_noise_is_the_pipelines_own_noise(pipe, generator, embeds):
    """The pipeline draws `[N, 16, H/16, W/16]` and packs it; handing it that same noise gives the same images,
    and the pipeline encoding the prompt itself gives what the cached embeddings give."""
    noises = torch.randn((2, *generator.noise_shape), generator=torch.Generator().manual_seed(5))
    ours = generator.generate(noises, embeds)
    drawn_by_the_pipeline = pipe(
        prompt=[PROMPT] * 2, height=64, width=64, num_inference_steps=4, guidance_scale=4.0, max_sequence_length=64,
        text_encoder_out_layers=(1, 2, 3), generator=torch.Generator().manual_seed(5), output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, drawn_by_the_pipeline, atol=1e-6, rtol=0)

    latents = generator.to_pipeline_latents(noises)
    assert torch.equal(generator.from_pipeline_latents(pipe._pack_latents(latents)), noises)
    with_latents = pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2), latents=latents, height=64, width=64,
        num_inference_steps=4, guidance_scale=4.0, output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, with_latents, atol=1e-6, rtol=0)
    other = generator.generate(generator.initial_noise(6, batch_size=2), embeds)
    assert (other.images - ours.images).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [4, 3])
def test_clean_latents_and_sigmas_are_the_pipelines(pipe, generator, embeds, steps):
    noises = generator.initial_noise(7, batch_size=2)
    kept = generator.generate(noises, embeds, num_inference_steps=steps).clean_latents
    final = pipe(**{**generator.pipeline_call(noises, [embeds] * 2, steps), "output_type": "latent"}).images
    assert final.shape == (2, 4 * 4, 16)  # packed tokens
    torch.testing.assert_close(kept, generator.from_pipeline_latents(final), atol=1e-6, rtol=0)
    sigmas = generator.sampler_sigmas(steps)
    torch.testing.assert_close(sigmas, pipe.scheduler.sigmas[:-1].float())
    assert len(sigmas) == steps and sigmas[0] == 1.0 and torch.all(sigmas[1:] < sigmas[:-1])


@pytest.mark.parametrize("guidance", [4.0, 1.5])
def test_predict_velocity_reproduces_a_one_step_sample(pipe, generator, embeds, guidance):
    """x0 = noise - sigma * v at sigma = 1, at any guidance: the scale is the model's input, not a second pass."""
    guided = generator_for_pipeline(pipe, guidance_scale=guidance)
    noises = guided.initial_noise(11, batch_size=2)
    one_step = guided.generate(noises, embeds, num_inference_steps=1).clean_latents
    sigma = guided.sampler_sigmas(1)
    assert sigma.tolist() == [1.0]
    with torch.no_grad():
        velocity = guided.predict_velocity(pipe.transformer, noises, sigma, [embeds] * 2)
        other_guidance = generator_for_pipeline(pipe, guidance_scale=guidance + 2).predict_velocity(
            pipe.transformer, noises, sigma, [embeds] * 2
        )
    assert velocity.shape == noises.shape
    torch.testing.assert_close(noises - sigma * velocity, one_step, atol=1e-5, rtol=0)
    assert (velocity - other_guidance).abs().max() > 1e-4


def test_batched_generation_equals_one_at_a_time(generator):
    prompts = [generator.encode_prompt(text) for text in ("a cat", "a dog", "a cat", "a tree", "a dog")]
    noises = generator.initial_noise(3, batch_size=5)
    batched = generator.generate(noises, prompts)
    single = [generator.generate(noises[i : i + 1], prompts[i]) for i in range(5)]
    torch.testing.assert_close(batched.images, torch.cat([out.images for out in single]), atol=1e-4, rtol=0)
    torch.testing.assert_close(batched.clean_latents, torch.cat([out.clean_latents for out in single]), atol=1e-4, rtol=0)
    assert batched.images.shape == (5, 3, 64, 64) and batched.clean_latents.shape == (5, 16, 4, 4)


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
def test_lora_presets_save_and_load(tmp_path, kit_dir, preset):
    adapted = load_pipeline(MODEL, dtype="float32")
    add_lora(adapted.transformer, rank=4, target_modules=preset, presets=Flux2Generator.lora_targets, init="gaussian")
    targets = {name.rpartition(".lora_")[0] for name, _ in adapted.transformer.named_parameters() if ".lora_" in name}
    assert targets
    modules = dict(adapted.transformer.named_modules())
    assert all(isinstance(modules[name].base_layer, torch.nn.Linear) for name in targets)
    # Both block kinds are adapted: the double blocks' and the single blocks' fused projections.
    assert any(name.startswith("transformer_blocks.") for name in targets)
    assert any(name.startswith("single_transformer_blocks.") for name in targets)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.transformer.named_parameters():
            if ".lora_B" in name:  # peft starts B at zero: make the adapter change the output
                parameter.normal_(std=0.2)
    save_lora(type(adapted), adapted.transformer, tmp_path)
    fresh = load_pipeline(MODEL, dtype="float32")
    load_lora(fresh, str(tmp_path))
    plain = load_pipeline(MODEL, dtype="float32")

    generator = generator_for_pipeline(fresh)
    embeds = [generator.encode_prompt(PROMPT)] * 2
    noises, sigmas = generator.initial_noise(0, batch_size=2), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        expected, loaded, base = (
            generator.predict_velocity(model.transformer, noises, sigmas, embeds) for model in (adapted, fresh, plain)
        )
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=0)
    assert (expected - base).abs().max() > 1e-3


def test_the_kit_is_deterministic_and_loads_back(tmp_path, pipe):
    from diffusers import Flux2Pipeline

    from tscale_train.tiny.flux2_dev import build_tiny_flux2_dev

    rebuilt = Flux2Pipeline.from_pretrained(build_tiny_flux2_dev(tmp_path / "kit", seed=0), local_files_only=True)
    for name in ("transformer", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(rebuilt, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    text = "a red cube [IMG] on a table"
    assert rebuilt.tokenizer.tokenizer(text).input_ids == pipe.tokenizer.tokenizer(text).input_ids
    assert pipe.tokenizer.chat_template == rebuilt.tokenizer.chat_template
    assert json.loads((tmp_path / "kit" / "tscale_tiny.json").read_text())["kind"] == "flux2-dev"
