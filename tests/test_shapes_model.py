"""The shapes model (`--model shapes`): the trained miniature FLUX.2-klein shipped with the package, loaded
through the product's own loading code, and its training script (resumable, deterministic from a seed)."""

import json
import math
from pathlib import Path

import family_checks
import pytest
import torch

from tscale_train.generators.flux2 import Flux2KleinGenerator
from tscale_train.shapes import SHIPPED_PIPELINE_DIR
from tscale_train.shapes import model as shapes_model

MODEL = "shapes"
SCORES_FILE = SHIPPED_PIPELINE_DIR / "scores.json"


def test_the_shipped_model_is_real_classes_in_safetensors_under_30_mb(pipe):
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    assert type(pipe) is Flux2KleinPipeline and not pipe.config.is_distilled
    assert isinstance(pipe.vae, AutoencoderKLFlux2) and isinstance(pipe.transformer, Flux2Transformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen3ForCausalLM) and isinstance(pipe.tokenizer, Qwen2TokenizerFast)
    files = [path for path in SHIPPED_PIPELINE_DIR.rglob("*") if path.is_file()]
    weights = [
        path for path in files if path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
    ]
    assert weights and all(path.suffix == ".safetensors" for path in weights)
    assert sum(path.stat().st_size for path in files) < 30 * 2**20


def test_the_recorded_settings_reach_every_command(pipe, generator):
    family_checks.check_kit_settings(
        pipe,
        generator,
        MODEL,
        generator_class=Flux2KleinGenerator,
        kit_defaults={
            "text_encoder_out_layers": shapes_model.TEXT_ENCODER_OUT_LAYERS,
            "max_sequence_length": shapes_model.MAX_SEQUENCE_LENGTH,
            "default_resolution": shapes_model.RESOLUTION,
            "num_inference_steps": shapes_model.NUM_INFERENCE_STEPS,
            "preview_steps": shapes_model.PREVIEW_STEPS,
            "guidance_scale": shapes_model.GUIDANCE_SCALE,
        },
        steps_preview_guidance=(
            shapes_model.NUM_INFERENCE_STEPS,
            shapes_model.PREVIEW_STEPS,
            shapes_model.GUIDANCE_SCALE,
        ),
        uses_cfg=True,
        noise_shape=(4 * shapes_model.LATENT_CHANNELS, 8, 8),  # 64 px through a 4x VAE and 2x2 patches
        off_grid=(68, 64),
        multiple=8,  # a 4x VAE and 2x2 patches
    )


def test_the_search_low_band_is_4x4_per_channel(generator):
    from search.wavelets import resolve_level

    _, height, width = generator.noise_shape
    level = resolve_level(height, width, "db1", None)
    assert (height // 2**level, width // 2**level) == (4, 4)


def test_every_grammar_word_is_one_token(pipe):
    tokenizer = pipe.tokenizer
    for word in shapes_model.VOCABULARY:
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    # Text outside the grammar still encodes (byte by byte).
    assert len(tokenizer("a zebra", add_special_tokens=False)["input_ids"]) > 2


def test_euler_walk_and_batching(pipe, generator):
    from tscale_train.generation import generator_for_pipeline

    embeds = [generator.encode_prompt(prompt) for prompt in ("a red circle", "two blue squares")]
    # `predict_velocity` is the conditional velocity DPO trains; the pipeline walks it alone without CFG.
    unguided = generator_for_pipeline(pipe, guidance_scale=1.0)
    family_checks.check_euler_walk(pipe, unguided, embeds, steps=4)
    family_checks.check_batched_equals_one_at_a_time(generator, embeds, latent_shape=generator.noise_shape)


@pytest.mark.slow
def test_ses_from_the_cli(tmp_path, kit_dir):
    family_checks.check_ses_from_the_cli(tmp_path, MODEL)


def test_lora_round_trip(tmp_path, pipe):
    family_checks.check_lora_preset_round_trip(tmp_path, MODEL, Flux2KleinGenerator, "attention", base=pipe)


def _tiny_config(**overrides):
    from tscale_train.shapes.training import ShapesTrainingConfig

    settings = dict(
        vae_steps=2,
        vae_batch_size=2,
        transformer_steps=3,
        batch_size=2,
        warmup_steps=1,
        decoder_steps=2,  # the default 1,500 decoder steps would be minutes of a test about resuming
        checkpoint_every=1,
    )
    return ShapesTrainingConfig(**{**settings, **overrides})


@pytest.mark.slow
def test_training_resumes_to_the_uninterrupted_result(tmp_path):
    from tscale_train.shapes.training import train_shapes_model

    torch.set_num_threads(1)
    straight = train_shapes_model(tmp_path / "straight", tmp_path / "work-straight", _tiny_config())
    assert (
        train_shapes_model(tmp_path / "resumed", tmp_path / "work-resumed", _tiny_config(), max_minutes=0)
        is None
    )
    assert (tmp_path / "work-resumed" / "vae_state.pt").is_file()
    resumed = train_shapes_model(tmp_path / "resumed", tmp_path / "work-resumed", _tiny_config())
    from safetensors.torch import load_file

    for component in ("vae", "transformer"):
        (ours,) = (straight / component).glob("*.safetensors")
        (theirs,) = (resumed / component).glob("*.safetensors")
        first, second = load_file(ours), load_file(theirs)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), component
    with pytest.raises(ValueError, match="other settings"):
        train_shapes_model(tmp_path / "other", tmp_path / "work-resumed", _tiny_config(seed=1))


@pytest.mark.slow
def test_the_stored_weights_reproduce_the_cards_scores():
    """The card's per-family budget-0 verifier accuracy on the held-out prompts, regenerated through the
    product's loading path, within one standard error (the same noises: equal unless the numerics moved)."""
    from tscale_train.shapes.evaluation import evaluate_shapes, mean_and_se

    stated = json.loads(SCORES_FILE.read_text())
    scores = evaluate_shapes(MODEL, images_per_family=stated["images_per_family"], progress=False)["base"]
    correct = scores.correct()
    for family, row in stated["families"].items():
        accuracy, _ = mean_and_se(correct[scores.mask(family)])
        assert math.isclose(accuracy, row["accuracy"], abs_tol=max(row["se"], 1e-9)), (family, accuracy, row)
    assert Path(stated["model"]).name == SHIPPED_PIPELINE_DIR.name


@pytest.mark.slow
def test_one_round_of_the_loop_with_the_verifier_as_guard_judge(tmp_path, kit_dir, monkeypatch):
    """The demo's settings, cut to one small round: shapes-clip makes the pairs, the verifier judges the
    held-out prompts as a guard (`guard/verifier`, a clause fraction), and the LoRA is written."""
    from tscale_train.config import parse_config
    from tscale_train.run_dir import read_metrics
    from tscale_train.trainer import OnlineDPOTrainer

    torch.set_num_threads(1)
    monkeypatch.chdir(
        Path(__file__).resolve().parents[1]
    )  # the config names its prompt files from the repo root
    config = parse_config(
        ["--config", "recipes/configs/shapes.yaml", "--output_dir", str(tmp_path / "run"), "--rounds", "1",
         "--prompts_per_round", "2", "--max_eval_prompts", "2", "--epochs_per_round", "3", "--budget", "4",
         "--popsize", "2", "--eval_budget", "4", "--progress", "false"]
    )  # fmt: skip
    assert (config.model, config.reward, config.guard_rewards) == ("shapes", "shapes-clip", "verifier")
    out = OnlineDPOTrainer(config).train()
    evals = [row for row in read_metrics(Path(out) / "metrics.jsonl") if "guard/verifier" in row]
    assert [row["round"] for row in evals] == [-1, 0]
    assert all(0.0 <= row["guard/verifier"] <= 1.0 for row in evals)
    assert (Path(out) / "pytorch_lora_weights.safetensors").is_file()
    _check_comfyui_export_loads_back(Path(out))


def _check_comfyui_export_loads_back(run_dir: Path) -> None:
    """The loop's LoRA, exported for ComfyUI, loads into the shapes pipeline through diffusers' own reader
    and moves the transformer as the diffusers-format file does."""
    from tscale_train.export.comfyui import save_comfyui_lora
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_pipeline

    comfy_file = save_comfyui_lora(run_dir)
    velocities = []
    for weights in (run_dir / "pytorch_lora_weights.safetensors", comfy_file, None):
        pipe = load_pipeline(MODEL, dtype="float32")
        if weights is not None:
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name)
        generator = generator_for_pipeline(pipe)
        embeds = [generator.encode_prompt("a red circle")] * 2
        with torch.no_grad():
            velocities.append(
                generator.predict_velocity(
                    pipe.transformer, generator.initial_noise(0, 2), torch.tensor([0.9, 0.5]), embeds
                )
            )
    diffusers_format, comfyui_format, base = velocities
    torch.testing.assert_close(comfyui_format, diffusers_format, atol=1e-4, rtol=0)
    assert (diffusers_format - base).abs().max() > 1e-5
