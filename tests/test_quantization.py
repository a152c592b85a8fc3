"""A frozen base in float8 (`--quantize_base fp8`): what runs on the CPU, on the tiny kit.

The weights are stored in float8 and cast up per layer (diffusers' layerwise casting), so the quantised pipeline's
output is close to the full-precision one, the LoRA stays float32 and its gradients are exactly those of the same
LoRA on the de-quantised weights. What only a GPU shows (memory and speed at 1024px) is `bench/gpu_quantized.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tscale_train.lora import add_lora
from tscale_train.quantization import (
    FP8_STORAGE_DTYPE,
    quantize_pipeline,
    quantize_text_encoder,
    quantize_transformer,
    storage_dtype,
)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def pipes(tiny_pipe):
    """The tiny kit with a LoRA (B != 0, so it changes the output), in full precision and with a float8 base."""
    reference = copy.deepcopy(tiny_pipe)
    torch.manual_seed(0)
    add_lora(reference.transformer, rank=2, init="gaussian")
    with torch.no_grad():
        for name, parameter in reference.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    quantized = copy.deepcopy(reference)
    quantize_pipeline(quantized, "fp8", compute_dtype=torch.float32)
    return reference, quantized


def test_linear_weights_are_stored_in_float8_and_the_lora_stays_float32(pipes):
    _, quantized = pipes
    linears = {
        name: module.weight.dtype
        for name, module in quantized.transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    }
    stored = {name for name, dtype in linears.items() if dtype == FP8_STORAGE_DTYPE}
    # Every block linear is float8; what diffusers skips (norms, proj_out) keeps the run's dtype.
    assert any(name.startswith("transformer_blocks.") for name in stored)
    assert any(name.startswith("single_transformer_blocks.") for name in stored)
    assert "proj_out" not in stored and not any("norm" in name for name in stored)
    lora = [p for name, p in quantized.transformer.named_parameters() if "lora_" in name]
    assert lora and {p.dtype for p in lora} == {torch.float32}
    # The model still reports its compute dtype (the generators build their inputs from it).
    assert quantized.transformer.dtype == torch.float32
    encoder_dtypes = {p.dtype for p in quantized.text_encoder.parameters()}
    assert FP8_STORAGE_DTYPE in encoder_dtypes and quantized.text_encoder.dtype == torch.float32


def test_quantized_images_and_embeddings_are_close_to_full_precision(pipes):
    from tscale_train.generation import generator_for_pipeline

    outputs = []
    for pipe in pipes:
        generator = generator_for_pipeline(pipe)
        embeds = generator.encode_prompt("a red circle above a blue square")
        images = generator.generate(generator.initial_noise(0, batch_size=2), embeds).images
        outputs.append((embeds.prompt_embeds, images))
    (reference_embeds, reference_images), (embeds, images) = outputs
    # Measured on this kit: 4.8% on the prompt embeddings (e4m3 has 3 mantissa bits), 0.6% on the images.
    assert 0 < _relative_error(embeds, reference_embeds) < 0.15
    assert 0 < _relative_error(images, reference_images) < 0.05


def test_lora_gradients_through_a_float8_base_equal_those_on_its_dequantized_weights(pipes):
    """The up-cast is exact arithmetic on the float8 values: a float32 model holding those values gives the same
    velocity and the same LoRA gradients, to the bit."""
    from tscale_train.generation import generator_for_pipeline

    _, quantized = pipes
    dequantized = copy.deepcopy(quantized.transformer)
    # A copy without hooks, its weights the float8 values in float32.
    plain = copy.deepcopy(pipes[0].transformer)
    plain.load_state_dict({key: value.to(torch.float32) for key, value in dequantized.state_dict().items()})
    generator = generator_for_pipeline(quantized)
    embeds = generator.encode_prompt("two green triangles")
    noise = generator.initial_noise(1, batch_size=2)
    sigma = torch.tensor([0.7, 0.7])
    gradients = []
    for transformer in (quantized.transformer, plain):
        transformer.zero_grad()
        for name, parameter in transformer.named_parameters():
            parameter.requires_grad_("lora_" in name)
        velocity = generator.predict_velocity(transformer, noise, sigma, [embeds, embeds])
        velocity.square().mean().backward()
        gradients.append(
            {name: p.grad.clone() for name, p in transformer.named_parameters() if "lora_" in name}
        )
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    assert all(gradients[0][name].abs().sum() > 0 for name in gradients[0] if "lora_A" in name)
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradient, gradients[1][name], rtol=0, atol=0)


def test_none_is_a_no_op_and_unknown_names_are_refused(tiny_pipe):
    transformer = copy.deepcopy(tiny_pipe.transformer)
    before = {name: p.dtype for name, p in transformer.named_parameters()}
    quantize_transformer(transformer, "none", torch.float32)
    quantize_text_encoder(copy.deepcopy(tiny_pipe.text_encoder), "none", torch.float32)
    assert {name: p.dtype for name, p in transformer.named_parameters()} == before
    assert storage_dtype("none") is None and storage_dtype("fp8") == FP8_STORAGE_DTYPE
    with pytest.raises(ValueError, match="quantize_base must be one of none, fp8"):
        storage_dtype("int4")


def test_config_refuses_a_float8_base_without_checkpointing_and_unknown_choices():
    from tscale_train.config import OnlineDPOConfig

    with pytest.raises(ValueError, match="needs --gradient_checkpointing true"):
        OnlineDPOConfig(quantize_base="fp8", gradient_checkpointing=False)
    with pytest.raises(ValueError, match="quantize_base"):
        OnlineDPOConfig(quantize_base="nf4")
    assert OnlineDPOConfig(quantize_base="fp8").quantize_base == "fp8"


@pytest.mark.slow
def test_one_training_round_on_a_float8_base_trains_the_lora(tmp_path, kit_dir):
    """The trainer's path: text encoder stored in float8 at load, the transformer after its LoRA; a round of
    search and DPO changes the LoRA and leaves the base in float8."""
    from tiny_runs import tiny_run_config

    from tscale_train.trainer import OnlineDPOTrainer

    config = tiny_run_config(
        tmp_path / "run",
        quantize_base="fp8",
        k_elites=1,
        rounds=1,
        prompts_per_round=2,
        lora_rank=2,
        lora_target_modules="all_linear",
        eval_every=0,
        eval_fraction=0.0,
        progress=False,
        report_to="none",
    )
    trainer = OnlineDPOTrainer(config)
    start = [p.detach().clone() for p in trainer.lora_parameters]
    trainer.train()
    assert any(not torch.equal(p, q) for p, q in zip(trainer.lora_parameters, start, strict=True))
    stored = {p.dtype for name, p in trainer.pipe.transformer.named_parameters() if "lora_" not in name}
    assert FP8_STORAGE_DTYPE in stored
    assert FP8_STORAGE_DTYPE in {p.dtype for p in trainer.pipe.text_encoder.parameters()}
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_tscale_ses_searches_with_a_float8_base(tmp_path, kit_dir, monkeypatch):
    """`tscale ses --quantize-base fp8`: the base stored in float8 after loading, then the search runs."""
    import json

    from PIL import Image

    from tscale_train import quantization
    from tscale_train.cli import main

    calls = []
    original = quantization.quantize_pipeline
    monkeypatch.setattr(
        quantization,
        "quantize_pipeline",
        lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs),
    )
    out = tmp_path / "fox.png"
    argv = ["ses", "--model", "tiny", "--quantize-base", "fp8", "--prompt", "a fox", "--budget", "4"]
    assert main([*argv, "--popsize", "2", "--save-trace", "--out", str(out), "--no-progress"]) == 0
    assert len(calls) == 1 and calls[0][1] == "fp8"
    assert calls[0][0].transformer.dtype == torch.float32  # computes in the run's dtype
    assert FP8_STORAGE_DTYPE in {p.dtype for p in calls[0][0].transformer.parameters()}
    assert Image.open(out).size == (64, 64)
    assert len(json.loads((tmp_path / "fox_trace.json").read_text())["scores"]) == 4


def test_a_float8_base_under_deepspeed_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """DeepSpeed's engine casts every weight to its precision: the run stops with the fix, nothing loaded."""
    from accelerate import Accelerator
    from tiny_runs import tiny_run_config

    from tscale_train.trainer import OnlineDPOTrainer

    class DeepSpeedState:
        deepspeed_plugin = object()  # what accelerate's state holds under a DeepSpeed config

        def __init__(self, state):
            self._state = state

        def __getattr__(self, name):
            return getattr(self._state, name)

    class DeepSpeedLaunch:
        def __init__(self):
            self._accelerator = Accelerator(cpu=True)
            self.state = DeepSpeedState(self._accelerator.state)

        def __getattr__(self, name):
            return getattr(self._accelerator, name)

    monkeypatch.setattr("tscale_train.trainer.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    config = tiny_run_config(tmp_path / "run", quantize_base="fp8", eval_every=0, eval_fraction=0.0)
    with pytest.raises(ValueError, match="does not run under DeepSpeed"):
        OnlineDPOTrainer(config, accelerator=DeepSpeedLaunch())
