"""The real-dimension kit (`--model dims-klein-4b`): FLUX.2-klein-4B's real widths, one block of each kind.

The kit is ~550 M parameters (1.1 GB in bf16) and is built once per kit directory (about 10 s) by the
session fixture `dims_kit_dir`; `dims_pipe` loads it once in bf16 for the tests that only read it. Tests
of configs and shapes build its modules on the meta device instead (`meta_components`: no weights), so
they run in the fast tier; everything that builds, saves or runs the kit is marked slow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tscale_train import real_configs
from tscale_train.lora import FLUX2_ATTENTION_TARGETS

DOUBLE_ATTENTION = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
SINGLE_ATTENTION = ("to_qkv_mlp_proj", "to_out")


@pytest.fixture(scope="session")
def dims_pipe(dims_kit_dir):
    """The real-dimension pipeline in bf16 on the CPU. Shared: tests must not modify it."""
    from tscale_train.loading import load_pipeline

    return load_pipeline("dims-klein-4b", dtype="bfloat16", device="cpu")


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def _matched_linears(model: torch.nn.Module, pattern: str) -> tuple[list[str], list[str]]:
    """(all Linear names, those the LoRA regex selects) -- peft matches a string target with re.fullmatch."""
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    return linears, [name for name in linears if re.fullmatch(pattern, name)]


def test_model_name_is_registered_like_tiny():
    from tscale_train.loading import check_model_source, is_offline_kit, reward_kwargs_for

    assert check_model_source("dims-klein-4b") == "dims-klein-4b"
    assert is_offline_kit("dims-klein-4b") and is_offline_kit("tiny") and is_offline_kit("tiny-base")
    # The tiny kit's reward models serve it, so `--reward pickscore` works offline.
    assert reward_kwargs_for("pickscore", "dims-klein-4b") == reward_kwargs_for("pickscore", "tiny")


@pytest.fixture(scope="module")
def meta_components() -> dict:
    """The kit's modules on the meta device: its exact configs and parameter shapes, nothing built."""
    from tscale_train.tiny.real_dims import build_dims_components

    return build_dims_components(device="meta")


def test_configs_are_the_real_ones_but_shallow(meta_components):
    from tscale_train.tiny.real_dims import dims_kit_marker

    transformer = dict(meta_components["transformer"].config)
    for key, real in real_configs.FLUX2_KLEIN_4B_TRANSFORMER.items():
        if key in ("num_layers", "num_single_layers"):
            assert transformer[key] == 1, key
        else:
            assert _normalise(transformer[key]) == _normalise(real), key

    text = meta_components["text_encoder"].config
    real_text = real_configs.QWEN3_4B_TEXT_ENCODER
    assert text.hidden_size == real_text["hidden_size"] == 2560
    assert text.num_hidden_layers >= max(real_configs.FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS) == 27
    for key in (
        "hidden_act",
        "rms_norm_eps",
        "tie_word_embeddings",
        "attention_bias",
        "max_position_embeddings",
    ):
        assert getattr(text, key) == real_text[key], key
    rope_theta = getattr(text, "rope_theta", None) or text.rope_parameters["rope_theta"]
    assert rope_theta == real_text["rope_theta"]
    assert 3 * text.hidden_size == transformer["joint_attention_dim"]

    vae = meta_components["vae"].config
    assert vae.latent_channels == real_configs.FLUX2_VAE["latent_channels"] == 32
    assert _normalise(vae.patch_size) == _normalise(real_configs.FLUX2_VAE["patch_size"])
    assert vae.latent_channels * 4 == transformer["in_channels"] == 128

    marker = dims_kit_marker()
    assert marker["text_encoder_out_layers"] == [9, 18, 27]
    assert marker["resolution"] == 256 and marker["max_sequence_length"] <= 64
    assert all(
        parameter.dtype == torch.bfloat16
        for module in ("text_encoder", "transformer", "vae")
        for parameter in meta_components[module].parameters()
    )
    # Under 1.3 GB in all (bf16): the size the docstring promises.
    parameters = sum(
        parameter.numel()
        for module in ("text_encoder", "transformer", "vae")
        for parameter in meta_components[module].parameters()
    )
    assert 2 * parameters < 1.3e9


@pytest.mark.slow
def test_the_saved_kit_is_what_the_builder_describes(dims_pipe, dims_kit_dir, meta_components):
    """Saved and loaded back through the real loading code: the same configs, bf16, distilled, the marker."""
    from tscale_train.tiny.real_dims import dims_kit_marker

    for module in ("transformer", "vae"):
        described, saved = dict(meta_components[module].config), dict(getattr(dims_pipe, module).config)
        for key, value in described.items():
            if not key.startswith("_"):
                assert _normalise(saved[key]) == _normalise(value), (module, key)
    described, saved = meta_components["text_encoder"].config, dims_pipe.text_encoder.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        assert getattr(saved, key) == getattr(described, key), key
    assert dims_pipe.config.is_distilled
    marker = json.loads((dims_kit_dir / "tscale_tiny.json").read_text())
    assert {key: marker[key] for key in dims_kit_marker()} == dims_kit_marker()
    assert dims_pipe.transformer.dtype == torch.bfloat16
    assert all(path.stat().st_size < 1.3e9 for path in dims_kit_dir.rglob("*.safetensors"))


def test_default_lora_regex_hits_the_attention_linears(meta_components):
    linears, hit = _matched_linears(meta_components["transformer"], FLUX2_ATTENTION_TARGETS)
    expected = [f"transformer_blocks.0.attn.{name}" for name in DOUBLE_ATTENTION]
    expected += [f"single_transformer_blocks.0.attn.{name}" for name in SINGLE_ATTENTION]
    assert sorted(hit) == sorted(expected) and len(hit) == 10
    assert len(linears) == 23


def test_default_lora_regex_on_the_full_real_transformer():
    """On the meta device (no memory): the real 5 + 20 block layout has 80 of 109 linears targeted."""
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**real_configs.FLUX2_KLEIN_4B_TRANSFORMER)
    linears, hit = _matched_linears(transformer, FLUX2_ATTENTION_TARGETS)
    assert (len(hit), len(linears)) == (80, 109)
    assert sum(parameter.numel() for parameter in transformer.parameters()) == 3_875_544_576


@pytest.mark.slow
def test_generation_is_finite_at_256px_bf16(dims_pipe):
    from tscale_train.generation import generator_for_pipeline

    generator = generator_for_pipeline(dims_pipe)  # the kit's defaults: 256px, 4 steps
    assert (generator.height, generator.width, generator.num_inference_steps) == (256, 256, 4)
    assert generator.noise_shape == (128, 16, 16)
    embeds = generator.encode_prompt("a cat")
    assert embeds.prompt_embeds.shape == (1, 64, 7680) and embeds.prompt_embeds.isfinite().all()
    output = generator.generate(generator.initial_noise(0, batch_size=2), embeds)
    assert output.images.shape == (2, 3, 256, 256)
    assert output.images.isfinite().all() and output.clean_latents.isfinite().all()
    # Not a constant image: the random weights still carry signal to the pixels.
    assert output.images.std() > 1e-3


def _run_ses(tmp_path: Path, reward: str) -> dict:
    from tscale_train.cli import main

    out = tmp_path / "cat.png"
    argv = ["ses", "--model", "dims-klein-4b", "--prompt", "a cat", "--budget", "4", "--popsize", "2"]
    argv += ["--height", "256", "--width", "256", "--dtype", "bfloat16", "--reward", reward]
    argv += ["--out", str(out), "--no-progress", "--save-trace"]
    assert main(argv) == 0
    assert out.is_file()
    trace = json.loads((tmp_path / "cat_trace.json").read_text())
    assert len(trace["scores"]) == 4
    assert all(torch.isfinite(torch.tensor(trace["scores"])))
    assert trace["best_score"] >= trace["base_score"]
    return trace


@pytest.mark.slow
def test_ses_cli_end_to_end_synthetic_reward(dims_kit_dir, tmp_path):
    _run_ses(tmp_path, "rewards.synthetic:brightness")


@pytest.mark.slow
def test_ses_cli_end_to_end_tiny_pickscore(dims_kit_dir, tmp_path):
    _run_ses(tmp_path, "pickscore")


@pytest.mark.slow
def test_lora_round_trip_gives_the_same_velocity(dims_kit_dir, tmp_path):
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_lora, load_pipeline
    from tscale_train.lora import add_lora, save_lora

    pipe = load_pipeline("dims-klein-4b", dtype="bfloat16", device="cpu")
    parameters = add_lora(pipe.transformer, rank=4)
    wrapped = [name for name, module in pipe.transformer.named_modules() if hasattr(module, "lora_A")]
    assert len(wrapped) == 10
    random = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=random))
    assert parameters
    save_lora(type(pipe), pipe.transformer, tmp_path / "lora")

    fresh = load_pipeline("dims-klein-4b", dtype="bfloat16", device="cpu")
    load_lora(fresh, str(tmp_path / "lora"))
    loaded = {name: parameter for name, parameter in fresh.transformer.named_parameters() if "lora_" in name}
    assert len(loaded) == 20
    # Compute both with the adapter weights in the dtype the loader gives them.
    loaded_dtype = next(iter(loaded.values())).dtype
    for name, parameter in pipe.transformer.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.to(loaded_dtype)

    def velocity(pipeline, enabled=True):
        generator = generator_for_pipeline(pipeline, height=256, width=256)
        embeds = generator.encode_prompt("a cat")
        noise = generator.initial_noise(1).to(torch.bfloat16)
        sigma = generator.sampler_sigmas()[1:2]
        if not enabled:
            pipeline.transformer.disable_adapters()
        with torch.no_grad():
            result = generator.predict_velocity(pipeline.transformer, noise, sigma, [embeds]).float()
        if not enabled:
            pipeline.transformer.enable_adapters()
        return result

    adapted, reloaded, base = velocity(pipe), velocity(fresh), velocity(pipe, enabled=False)
    assert adapted.isfinite().all() and reloaded.isfinite().all()
    change = (adapted - base).abs().max()
    assert change > 0.1, "the random LoRA should change the velocity"
    torch.testing.assert_close(reloaded, adapted, atol=1e-2 * float(change), rtol=0)


@pytest.mark.slow
def test_build_is_deterministic_from_the_seed(dims_kit_dir, tmp_path):
    from tscale_train.tiny.real_dims import build_dims_flux2_klein

    rebuilt = build_dims_flux2_klein(tmp_path / "again", seed=0)
    try:
        for component in ("transformer", "text_encoder", "vae"):
            (original,) = (dims_kit_dir / component).glob("*.safetensors")
            (copy,) = (rebuilt / component).glob("*.safetensors")
            digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (original, copy)]
            assert digests[0] == digests[1], component
    finally:
        shutil.rmtree(rebuilt, ignore_errors=True)


@pytest.mark.slow
def test_one_training_round_in_bf16_under_bf16_mixed_precision(dims_kit_dir, tmp_path):
    """The recipe on klein-4B's real widths, through the single-GPU config's CPU twin (bf16 mixed precision)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(repo / "accelerate_configs/cpu/single_gpu.yaml"),
        str(repo / "recipes/flux2_klein_dpo.py"),
        "--model",
        "dims-klein-4b",
        "--dtype",
        "bfloat16",
        "--height",
        "256",
        "--width",
        "256",
        "--reward",
        "rewards.synthetic:brightness",
        "--budget",
        "4",
        "--popsize",
        "2",
        "--k_elites",
        "2",
        "--prompts_per_round",
        "2",
        "--rounds",
        "1",
        "--epochs_per_round",
        "1",
        "--lora_rank",
        "4",
        "--eval_every",
        "0",
        "--max_eval_prompts",
        "1",
        "--eval_budget",
        "2",
        "--checkpoint_every",
        "0",
        "--output_dir",
        str(out),
        "--no_progress",
    ]
    result = subprocess.run(
        command,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["train/num_pairs"] == 2 and row["global_step"] == 2
    for name in ("train/loss", "train/inside_abs", "search/best_reward"):
        assert torch.isfinite(torch.tensor(row[name])), (name, row)
    from safetensors.torch import load_file

    lora = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert len([key for key in lora if "lora_A" in key]) == 10  # the 10 attention linears of 1 + 1 blocks
    from tscale_train.loading import load_lora, load_pipeline

    load_lora(load_pipeline("dims-klein-4b", dtype="bfloat16"), str(out))
