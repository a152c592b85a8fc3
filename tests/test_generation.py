"""Generation from noise on the tiny FLUX.2-klein, loaded through the real loading code."""

import pytest
import torch

from tscale_train.generation import generator_for_pipeline


@pytest.fixture(scope="module")
def generator(tiny_pipe):
    return generator_for_pipeline(tiny_pipe, eval_batch_size=3)


def test_noise_shape_is_the_transformer_input_space(generator, tiny_pipe):
    channels, height, width = generator.noise_shape
    assert channels == tiny_pipe.transformer.config.in_channels
    assert (height * 16, width * 16) == (generator.height, generator.width)


def test_batched_generation_equals_one_at_a_time(generator):
    embeds = generator.encode_prompt("a red square")
    noises = generator.initial_noise(3, batch_size=5)
    batched = generator.generate(noises, embeds)
    single = [generator.generate(noises[i : i + 1], embeds) for i in range(5)]
    torch.testing.assert_close(batched.images, torch.cat([out.images for out in single]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        batched.clean_latents, torch.cat([out.clean_latents for out in single]), atol=1e-4, rtol=0
    )
    assert batched.images.shape == (5, 3, generator.height, generator.width)
    assert 0.0 <= batched.images.min() and batched.images.max() <= 1.0


def test_clean_latents_are_the_pipelines_final_latents(generator, tiny_pipe):
    """Un-normalised and un-patchified, the kept latents are what the pipeline itself ends on."""
    embeds = generator.encode_prompt("a cat")
    noises = generator.initial_noise(7, batch_size=2)
    kept = generator.generate(noises, embeds).clean_latents
    reference = tiny_pipe(
        prompt_embeds=torch.cat([embeds.prompt_embeds] * 2),
        latents=noises,
        height=generator.height,
        width=generator.width,
        num_inference_steps=generator.num_inference_steps,
        output_type="latent",
        max_sequence_length=generator.max_sequence_length,
        text_encoder_out_layers=generator.text_encoder_out_layers,
    ).images
    bn_mean = tiny_pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    bn_std = torch.sqrt(tiny_pipe.vae.bn.running_var.view(1, -1, 1, 1) + tiny_pipe.vae.config.batch_norm_eps)
    expected = tiny_pipe._unpatchify_latents(kept * bn_std + bn_mean)
    torch.testing.assert_close(expected, reference, atol=1e-5, rtol=0)


def test_predict_velocity_reproduces_a_one_step_sample(generator, tiny_pipe):
    """x0 = noise - sigma * v at sigma = 1: one Euler step from pure noise, as the sampler takes it."""
    embeds = generator.encode_prompt("a dog")
    noises = generator.initial_noise(11, batch_size=2)
    one_step = generator.generate(noises, embeds, num_inference_steps=1).clean_latents
    sigma = generator.sampler_sigmas(1)
    assert sigma.tolist() == [1.0]
    with torch.no_grad():
        velocity = generator.predict_velocity(tiny_pipe.transformer, noises, sigma, [embeds] * 2)
    torch.testing.assert_close(noises - velocity, one_step, atol=1e-5, rtol=0)


def test_sampler_sigmas_of_the_distilled_model(generator):
    sigmas = generator.sampler_sigmas()
    assert len(sigmas) == 4 and sigmas[0] == 1.0 and sigmas.min() > 0.5
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_resolution_must_be_a_multiple_of_16(tiny_pipe):
    with pytest.raises(ValueError, match="multiples of 16"):
        generator_for_pipeline(tiny_pipe, height=72, width=64)


def test_base_model_uses_cfg(kit_dir):
    from tscale_train.loading import load_pipeline

    pipe = load_pipeline("tiny-base", dtype="float32", device="cpu")
    base = generator_for_pipeline(pipe, num_inference_steps=3)
    assert not base.is_distilled and base.uses_cfg and base.guidance_scale == 4.0
    embeds = base.encode_prompt("a cat")
    assert embeds.negative_prompt_embeds is not None
    noises = base.initial_noise(0, batch_size=2)
    cfg = base.generate(noises, embeds).images
    no_cfg = generator_for_pipeline(pipe, num_inference_steps=3, guidance_scale=1.0)
    plain = no_cfg.generate(noises, no_cfg.encode_prompt("a cat")).images
    assert not torch.allclose(cfg, plain)


def test_search_scores_batch_by_batch_in_bounded_groups(tiny_pipe):
    """A generation's images are never held or scored all at once, and groups bound a generation's size.

    At 1024px one float32 candidate is 12.6 MB (plus the reward's copy): scoring a whole lockstep
    generation of 200 prompts x popsize 10 at once would fill an 80 GB card.
    """
    from search import SESConfig
    from tscale_train.ses import search_prompts

    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=3)
    reward_batches, evaluated = [], []

    def reward(images, prompts):
        reward_batches.append(images.shape[0])
        return images.mean(dim=(1, 2, 3))

    original = generator.iter_batches

    def spy(noises, embeds, steps=None):
        evaluated.append(noises.shape[0])
        return original(noises, embeds, steps)

    generator.iter_batches = spy
    prompts = [f"prompt {index}" for index in range(5)]
    seeds = list(range(5))
    config = SESConfig(popsize=4, k_elites=2)
    grouped = search_prompts(
        generator, reward, prompts, seeds, budget=8, config=config, group_size=2, progress=False
    )
    assert max(reward_batches) <= 3, reward_batches  # the eval batch, never a whole generation
    assert max(evaluated) <= 4 * 2, evaluated  # popsize x group size
    assert sum(reward_batches) == 5 * 8
    # The grouping changes nothing about the results.
    together = search_prompts(
        generator, reward, prompts, seeds, budget=8, config=config, group_size=None, progress=False
    )
    for one, other in zip(grouped, together, strict=True):
        torch.testing.assert_close(one.search.scores, other.search.scores, atol=1e-5, rtol=0)
        if one.search.best_index == other.search.best_index:
            # The surrogate step divides by the scores' spread (tiny for this flat reward), so the ~1e-7 a
            # batch's composition adds to a score can move a later candidate by ~1e-5.
            torch.testing.assert_close(one.search.best_noise, other.search.best_noise, atol=1e-4, rtol=0)
        else:  # batch composition moves scores by ~1e-7; only a near-tie may pick another candidate
            scores = one.search.scores
            assert abs(float(scores[one.search.best_index] - scores[other.search.best_index])) < 1e-5


def test_cfg_negative_embedding_is_encoded_once_and_shared(kit_dir):
    from tscale_train.loading import load_pipeline

    generator = generator_for_pipeline(load_pipeline("tiny-base", dtype="float32"))
    first, second = generator.encode_prompt("a cat"), generator.encode_prompt("a dog")
    assert (
        first.negative_prompt_embeds is not None
        and first.negative_prompt_embeds is second.negative_prompt_embeds
    )


def test_kit_settings_come_from_loading_not_from_generation(kit_dir, tiny_pipe):
    from tscale_train.generation import Flux2KleinGenerator
    from tscale_train.loading import generator_defaults

    defaults = generator_defaults("tiny")
    assert defaults == {
        "text_encoder_out_layers": (1, 2),
        "max_sequence_length": 64,
        "default_resolution": 64,
    }
    assert generator_defaults("black-forest-labs/FLUX.2-klein-4B") == {}
    explicit = Flux2KleinGenerator(tiny_pipe, **defaults)
    implicit = generator_for_pipeline(tiny_pipe)  # the pipe loaded by load_pipeline carries them
    for generator in (explicit, implicit):
        assert generator.text_encoder_out_layers == (1, 2) and generator.max_sequence_length == 64
        assert (generator.height, generator.width) == (64, 64)
    assert generator_for_pipeline(tiny_pipe, default_resolution=32, max_sequence_length=None).height == 32
    assert generator_for_pipeline(tiny_pipe, max_sequence_length=None).max_sequence_length == 64


def test_prompt_embeds_named_fields(generator):
    embeds = generator.encode_prompt("a cat")
    assert (
        embeds.prompt == "a cat"
        and embeds.negative_prompt_embeds is None
        and embeds.negative_text_ids is None
    )
    assert (
        embeds.prompt_embeds.shape[:2] == (1, generator.max_sequence_length) and embeds.text_ids.shape[0] == 1
    )
    moved = embeds.to("cpu")
    assert torch.equal(moved.prompt_embeds, embeds.prompt_embeds) and moved.negative_prompt_embeds is None
