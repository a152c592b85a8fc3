"""`tscale plan`: the memory tracker against hand arithmetic, the plans of the recipes, the CLI.

Planned runs share the module-level caches of `tscale_train.plan` (one fake forward per shape), so
the whole file takes well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from pathlib import Path

import pytest
import torch

from tscale_train.config import OnlineDPOConfig, parse_config
from tscale_train.plan import (
    LiveMemoryTracker,
    fake_gpu,
    format_plan_table,
    plan_ses,
    plan_training,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "flux2_klein_4b.yaml"
RECIPE_24GB = ROOT / "recipes" / "configs" / "flux2_klein_4b_24gb.yaml"
TINY_RECIPE = ROOT / "recipes" / "configs" / "tiny.yaml"


def _cli(argv: list[str]) -> int:
    from tscale_train.cli import main

    return main(["plan", *argv])


# ---- the tracker ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", [True, False], ids=["fake", "real"])
def test_tracker_matches_hand_arithmetic_for_a_linear_stack(fake):
    batch, width, depth = 64, 256, 3
    unit = batch * width * 4  # one float32 activation [64, 256]
    grad = width * width * 4  # one float32 weight gradient [256, 256]
    with torch.device("meta"):
        layers = [torch.nn.Linear(width, width, bias=False) for _ in range(depth)]
    with fake_gpu() if fake else contextlib.nullcontext():
        layers = [layer.to_empty(device="cpu") for layer in layers]
        # No grad: x, the previous activation and the new one are alive at once.
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            x = torch.randn(batch, width)
            hidden = x
            for layer in layers:
                hidden = layer(hidden)
            assert tracker.current == 2 * unit  # x and the output
        assert tracker.peak == 3 * unit
        del hidden, x
        # Forward + backward: the weights were there before the tracker, so they are not counted.
        tracker = LiveMemoryTracker()
        with tracker:
            x = torch.randn(batch, width)
            hidden = x
            for layer in layers:
                hidden = layer(hidden)
            assert tracker.current == (1 + depth) * unit  # x and every activation, saved for backward
            loss = hidden.sum()
            loss.backward()
            # The peak is at the last weight gradient: x, the output (held here), the gradient of the
            # first activation, the three weight gradients, the loss and its seed gradient (4 + 4 bytes).
            assert tracker.peak == 3 * unit + depth * grad + 8
            del loss, hidden
            # What stays: x and the weight gradients.
            assert tracker.current == unit + depth * grad
            for layer in layers:
                layer.weight.grad = None
            assert tracker.current == unit


def test_fused_attention_has_no_attention_matrix():
    tokens = 4096
    with fake_gpu():
        tracker = LiveMemoryTracker()
        with tracker:
            query = torch.randn(1, 24, tokens, 128, dtype=torch.bfloat16)
            base = tracker.current
            out = torch.nn.functional.scaled_dot_product_attention(query, query, query)
        assert out.shape == query.shape
    # output + log-sum-exp, not the 24 x 4096 x 4096 scores (768 MiB in bf16)
    assert tracker.peak - base < 2 * query.numel() * 2
    assert tracker.peak < 24 * tokens * tokens * 2 / 10


# ---- plans ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_recipe_plan_is_sane_and_fits_80gb():
    plan = plan_training(parse_config(["--config", str(RECIPE)]))
    assert set(plan.phases) == {"encode", "search", "dpo", "eval"}
    # Weights alone are 7.2 GiB; the previous fake-tensor estimate was ~14 GB with checkpointing and 2 pairs.
    assert 10 < plan.phases["dpo"] < 25, plan.phases
    assert 7 < plan.breakdown["dpo"]["transformer"] < 7.5
    assert plan.fits and plan.peak_gib < 80
    assert 10 < plan.cpu_gib < 40
    table = format_plan_table(plan)
    assert "DPO step" in table and "fits an 80 GiB card: yes" in table


@pytest.mark.slow
def test_default_fits_and_no_checkpointing_batch_4_does_not():
    default = plan_training(OnlineDPOConfig())
    assert default.fits, format_plan_table(default)
    heavy = plan_training(OnlineDPOConfig(gradient_checkpointing=False, train_batch_size=4))
    assert not heavy.fits
    # ~138 GB in the previous estimate: activations of 8 samples at 4096 + 512 tokens through 25 blocks.
    assert 100 < heavy.phases["dpo"] < 200, heavy.phases
    assert heavy.peak_phase == "dpo"
    # The suggestions make it fit, and re-planning with them says so.
    assert heavy.suggestions and heavy.suggestion_fits
    argv = ["--gradient_checkpointing", "false", "--train_batch_size", "4"] + shlex.split(
        " ".join(heavy.suggestions)
    )
    fixed = plan_training(parse_config(argv))
    assert fixed.fits and fixed.peak_gib == pytest.approx(heavy.suggested_peak_gib)
    # Checkpointing lowers the DPO estimate at the same batch.
    checkpointed = plan_training(OnlineDPOConfig(gradient_checkpointing=True, train_batch_size=4))
    assert checkpointed.phases["dpo"] < heavy.phases["dpo"] / 3


@pytest.mark.slow
def test_suggestions_combine_levers_for_a_24gb_card():
    argv = ["--gradient_checkpointing", "false", "--train_batch_size", "4", "--offload_text_encoder", "false"]
    plan = plan_training(parse_config(argv), gpu_memory_gib=24)
    assert not plan.fits and plan.suggestion_fits, format_plan_table(plan)
    assert len(plan.suggestions) >= 2 and "--gradient_checkpointing true" in plan.suggestions
    assert plan_training(parse_config(argv + shlex.split(" ".join(plan.suggestions))), gpu_memory_gib=24).fits
    # Prompt encoding (text encoder + transformer) is a floor that only a float8 base lowers: at 14 GiB the
    # suggestion stores it in float8; at 6 GiB nothing fits.
    low = plan_training(parse_config(argv), gpu_memory_gib=14)
    assert low.suggestion_fits and "--quantize_base fp8" in low.suggestions, format_plan_table(low)
    floor = plan_training(parse_config(argv), gpu_memory_gib=6)
    assert not floor.suggestion_fits and any("prompt encoding" in note for note in floor.notes)


@pytest.mark.slow
def test_block_extrapolation_equals_the_full_model():
    from tscale_train.lora import FLUX2_ATTENTION_TARGETS
    from tscale_train.plan import LoraSpec, measure_dpo, resolve_pipeline_spec

    spec = resolve_pipeline_spec("black-forest-labs/FLUX.2-klein-4B")
    lora = LoraSpec(4, FLUX2_ATTENTION_TARGETS)
    # (checked at 1024px with and without checkpointing when written; here the cheaper case)
    args = (spec, torch.bfloat16, lora, 1, 256, 256, False, True)
    assert measure_dpo(*args) == measure_dpo(*args, extrapolate=False)


@pytest.mark.slow
def test_24gb_recipe_fits_24gb():
    plan = plan_training(parse_config(["--config", str(RECIPE_24GB)]), gpu_memory_gib=24)
    assert plan.fits, format_plan_table(plan)
    assert plan.peak_gib < 24


def test_tiny_recipe_reads_the_kit(kit_dir):
    plan = plan_training(parse_config(["--config", str(TINY_RECIPE)]))
    assert plan.model_source == "tiny kit"
    assert (plan.height, plan.width) == (64, 64)
    assert plan.fits
    assert 0 < plan.breakdown["dpo"]["transformer"] < 0.01


@pytest.mark.slow
def test_ses_plans(kit_dir):
    tiny = plan_ses("tiny", eval_batch_size=4)
    assert tiny.kind == "ses" and tiny.fits and set(tiny.phases) == {"encode", "search"}
    klein = plan_ses("black-forest-labs/FLUX.2-klein-4B", eval_batch_size=4)
    # The whole pipeline stays on the GPU in `tscale ses`: text encoder + transformer + reward.
    assert 18 < klein.peak_gib < 40 and klein.fits
    assert not plan_ses("black-forest-labs/FLUX.2-klein-4B", eval_batch_size=4, gpu_memory_gib=16).fits


# ---- CLI -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_table_and_json(capsys):
    assert _cli(["--config", str(RECIPE)]) == 0
    table = capsys.readouterr().out
    for text in (
        "encode prompts",
        "search",
        "DPO step",
        "eval",
        "CPU per process",
        "fits an 80 GiB card: yes",
    ):
        assert text in table
    assert _cli(["--config", str(RECIPE), "--json", "--", "--train_batch_size", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and set(data["phases"]) == {"encode", "search", "dpo", "eval"}
    assert data["settings"]["train_batch_size"] == 1
    assert _cli(["--config", str(RECIPE), "--gpu-memory", "10"]) == 1
    assert "fits a 10 GiB card: no" in capsys.readouterr().out


def test_cli_ses(capsys, kit_dir):
    assert _cli(["--ses", "--model", "tiny", "--eval-batch-size", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "ses"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "no/such.yaml"], "does not exist"),
        (["--config", str(RECIPE), "--", "--no_such_field", "1"], "unknown setting"),
        (["--config", str(RECIPE), "--gpu-memory", "0"], "--gpu-memory must be > 0"),
        (["--config", str(RECIPE), "--num-processes", "0"], "--num-processes must be >= 1"),
        (["--model", "not a model"], "unknown model"),
        (["--ses", "--reward", "nope"], "nope"),
        (["--ses", "--model", "tiny", "--height", "50"], "multiple of 16"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys):
    assert _cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tscale plan: error:") and message in lines[0], (
        captured.err
    )


def test_unknown_yaml_field_is_an_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: tiny\nnot_a_field: 3\n")
    assert _cli(["--config", str(config)]) == 2
    assert "unknown fields ['not_a_field']" in capsys.readouterr().err


# ---- further families: FLUX.1 and Z-Image ------------------------------------------------------------
FLUX1_DEV = "black-forest-labs/FLUX.1-dev"
Z_IMAGE_TURBO = "Tongyi-MAI/Z-Image-Turbo"
FAMILY_MODELS = [FLUX1_DEV, Z_IMAGE_TURBO]
GIB = 1024**3

# Published parameter counts: FLUX.1-dev's transformer is "12 B" (11.90 B), its text encoders CLIP-L's
# text tower (123 M) and T5-XXL's encoder (4.76 B); Z-Image-Turbo's transformer is "6 B" (6.15 B) and its
# text encoder Qwen3-4B (4.02 B, tied embeddings); both use FLUX.1's 16-channel VAE (83.8 M).
PUBLISHED_PARAMETERS = {
    FLUX1_DEV: {"transformer": 11.90e9, "text_encoder": 0.123e9 + 4.76e9, "vae": 83.8e6},
    Z_IMAGE_TURBO: {"transformer": 6.15e9, "text_encoder": 4.02e9, "vae": 83.8e6},
}


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_bundled_configs_build_on_meta_with_the_published_parameter_counts(model):
    from tscale_train.plan import resolve_pipeline_spec
    from tscale_train.plan.components import component_bytes, meta_text_encoders, meta_transformer

    spec = resolve_pipeline_spec(model)
    assert (
        spec.source == "bundled config"
        and spec.pipeline_class == {FLUX1_DEV: "FluxPipeline", Z_IMAGE_TURBO: "ZImagePipeline"}[model]
    )
    assert (spec.default_resolution, spec.resolution_multiple, spec.max_sequence_length) == (1024, 16, 512)
    # Built on the meta device: shapes only, nothing loaded.
    transformer = meta_transformer(spec, torch.bfloat16, None)
    assert {parameter.device.type for parameter in transformer.parameters()} == {"meta"}
    encoders = meta_text_encoders(spec, torch.bfloat16)
    assert len(encoders) == (2 if model == FLUX1_DEV else 1)
    assert {p.device.type for encoder in encoders.values() for p in encoder.parameters()} == {"meta"}
    parameters = {name: size / 2 for name, size in component_bytes(spec, torch.bfloat16).items()}  # bf16
    for name, published in PUBLISHED_PARAMETERS[model].items():
        assert parameters[name] == pytest.approx(published, rel=0.01), (name, parameters[name])


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_dpo_plan_at_1024_fits_80gb_with_checkpointing_and_not_without(model):
    from tscale_train.plan import LoraSpec, measure_dpo, resolve_pipeline_spec
    from tscale_train.plan.measure import _with_blocks

    default = plan_training(OnlineDPOConfig(model=model, height=1024, width=1024))
    assert default.fits and default.peak_gib < 60, format_plan_table(default)
    weights = PUBLISHED_PARAMETERS[model]["transformer"] * 2 / GIB
    assert default.breakdown["dpo"]["transformer"] == pytest.approx(weights, rel=0.01)
    # Text encoders are offloaded in training: prompt encoding is the only phase holding them.
    text_encoder = PUBLISHED_PARAMETERS[model]["text_encoder"] * 2 / GIB
    assert default.breakdown["encode"]["text encoder"] == pytest.approx(text_encoder, rel=0.01)
    assert "text encoder (not offloaded)" not in default.breakdown["dpo"]

    heavy = plan_training(
        OnlineDPOConfig(
            model=model, height=1024, width=1024, gradient_checkpointing=False, train_batch_size=4
        ),
        suggest=False,
    )
    assert not heavy.fits and heavy.peak_phase == "dpo"
    # 8 samples of 4096 image + 512 text tokens through every block, all activations kept: ~260-290 GiB.
    assert 150 < heavy.phases["dpo"] < 400, heavy.phases

    def activations(plan):
        return next(value for name, value in plan.breakdown["dpo"].items() if name.startswith("activations"))

    # Per sample, checkpointing keeps only each block's inputs: an order of magnitude less.
    assert activations(heavy) / 8 > 5 * activations(default) / 2

    # The block extrapolation behind these figures is exact: a 2 + 2 block model measured whole equals the
    # extrapolation from the (cached) 1 + 1, 2 + 1 and 1 + 2 measurements of the plan above.
    spec = resolve_pipeline_spec(model)
    two_each = _with_blocks(spec, dict.fromkeys(spec.family.block_keys, 2))
    args = (two_each, torch.bfloat16, LoraSpec(16, "attention"), 1, 1024, 1024, True, True)
    assert measure_dpo(*args) == measure_dpo(*args, extrapolate=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_cli_plans_further_families(model, capsys):
    assert _cli(["--model", model, "--height", "1024", "--width", "1024"]) == 0
    table = capsys.readouterr().out
    assert f"training run: {model} (bundled config), 1024x1024" in table
    for text in ("encode prompts", "DPO step", "checkpointed", "fits an 80 GiB card: yes"):
        assert text in table
    assert _cli(["--ses", "--model", model, "--height", "1024", "--width", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "ses" and data["fits"] and set(data["phases"]) == {"encode", "search"}
    # `tscale ses` keeps the text encoders, the transformer and the reward model on the GPU together.
    resident = sum(PUBLISHED_PARAMETERS[model].values()) * 2 / GIB
    assert resident < data["phases"]["encode"] < resident + 10


def test_z_image_turbo_has_no_cfg_and_z_image_cfg_doubles_the_forward_batch():
    from tscale_train.plan import measure_sampling, resolve_pipeline_spec

    turbo = plan_ses(Z_IMAGE_TURBO, height=1024, width=1024, eval_batch_size=4)
    assert (
        turbo.settings["guidance_scale"] == 0.0
    )  # the model card's, though the pipeline class defaults to 5
    z_image = resolve_pipeline_spec(Z_IMAGE_TURBO)
    flux1 = resolve_pipeline_spec(FLUX1_DEV)
    assert z_image.uses_cfg(5.0) and not z_image.uses_cfg(0.0)
    assert not flux1.uses_cfg(flux1.default_guidance_scale)  # dev's 3.5 goes into its guidance embedding
    args = (torch.bfloat16, None, 2, 512, 512)
    # `ZImagePipeline` runs cond and uncond in one forward of twice the batch; FLUX-style pipelines run a
    # second forward at the same batch, which costs only the negative embeddings and one more prediction.
    assert measure_sampling(z_image, *args, True, False) > 1.8 * measure_sampling(
        z_image, *args, False, False
    )
    assert measure_sampling(flux1, *args, True, False) < 1.2 * measure_sampling(flux1, *args, False, False)


def _write_pipeline_dir(directory: Path, pipeline_class: str, components: dict[str, dict]) -> Path:
    """A pipeline directory holding only configs, as `save_pretrained` lays them out."""
    index = {"_class_name": pipeline_class}
    for name, config in components.items():
        (directory / name).mkdir(parents=True)
        (directory / name / "config.json").write_text(json.dumps(config, default=list))
        index[name] = ["diffusers", config.get("_class_name", "")]
    (directory / "model_index.json").write_text(json.dumps(index))
    return directory


def test_a_local_flux1_dir_is_read_with_both_text_encoders(tmp_path):
    from transformers import CLIPTextConfig, T5Config

    from tscale_train import real_configs
    from tscale_train.plan import resolve_pipeline_spec
    from tscale_train.plan.components import component_bytes

    directory = _write_pipeline_dir(
        tmp_path / "flux1",
        "FluxPipeline",
        {
            "transformer": {"_class_name": "FluxTransformer2DModel", **real_configs.FLUX1_DEV_TRANSFORMER},
            "vae": {"_class_name": "AutoencoderKL", **real_configs.FLUX1_VAE},
        },
    )
    CLIPTextConfig(**real_configs.CLIP_L_TEXT_ENCODER).save_pretrained(directory / "text_encoder")
    T5Config(**real_configs.T5_XXL_TEXT_ENCODER).save_pretrained(directory / "text_encoder_2")
    local = resolve_pipeline_spec(str(directory))
    bundled = resolve_pipeline_spec(FLUX1_DEV)
    assert (local.source, local.pipeline_class, local.max_sequence_length) == (
        "local dir",
        "FluxPipeline",
        512,
    )
    assert local.text_encoder_2_json is not None
    assert component_bytes(local, torch.bfloat16) == component_bytes(bundled, torch.bfloat16)


def test_a_family_without_a_plan_description_is_a_one_line_error(tmp_path, capsys):
    directory = _write_pipeline_dir(
        tmp_path / "sd3",
        "StableDiffusion3Pipeline",
        {
            "transformer": {"_class_name": "SD3Transformer2DModel"},
        },
    )
    assert _cli(["--model", str(directory)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("tscale plan: error:") and "no description of StableDiffusion3Pipeline" in error
    assert "FluxPipeline" in error and "ZImagePipeline" in error


def test_weighted_rewards_and_judges_are_counted_on_the_gpu():
    """Every model of a weighted reward, and every held-out judge at eval, takes GPU memory."""
    plain = plan_training(OnlineDPOConfig())
    weighted = plan_training(OnlineDPOConfig(reward="pickscore:1.0,hpsv2:0.5"))
    judged = plan_training(OnlineDPOConfig(guard_rewards="hpsv2,clip"))
    one_model = plain.breakdown["search"]["reward model"]
    assert one_model > 3  # CLIP-H in float32, GiB
    # The plan rounds GiB to 4 digits.
    assert weighted.breakdown["search"]["reward model"] == pytest.approx(2 * one_model, rel=1e-3)
    assert judged.breakdown["eval"]["guard reward models"] == pytest.approx(2 * one_model, rel=1e-3)
    assert judged.phases["eval"] == pytest.approx(plain.phases["eval"] + 2 * one_model, rel=1e-3)
    assert judged.phases["dpo"] == plain.phases["dpo"]  # offloaded while DPO trains
    resident = plan_training(OnlineDPOConfig(guard_rewards="hpsv2,clip", offload_reward=False))
    assert resident.breakdown["dpo"]["guard reward models"] == pytest.approx(2 * one_model, rel=1e-3)
    assert judged.cpu_gib > plain.cpu_gib  # and they wait in CPU memory when offloaded


# ---- klein 9B and a float8 base -----------------------------------------------------------------------
KLEIN_9B = "black-forest-labs/FLUX.2-klein-9B"
KLEIN_BASE_9B = "black-forest-labs/FLUX.2-klein-base-9B"
# Published: "9B" (the transformer: 9.08 B here), Qwen3-8B "8.2B" (untied embeddings), FLUX.2's VAE (84 M).
KLEIN_9B_PARAMETERS = {"transformer": 9.08e9, "text_encoder": 8.19e9}
RECIPE_4B_12GB = ROOT / "recipes" / "configs" / "flux2_klein_base_4b_12gb.yaml"
RECIPE_9B_24GB = ROOT / "recipes" / "configs" / "flux2_klein_base_9b_24gb.yaml"


@pytest.mark.parametrize("model", [KLEIN_9B, KLEIN_BASE_9B])
def test_klein_9b_configs_build_on_meta_with_the_published_sizes(model):
    from tscale_train.plan import LoraSpec, resolve_pipeline_spec
    from tscale_train.plan.components import component_bytes

    spec = resolve_pipeline_spec(model)
    assert spec.source == "bundled config" and spec.pipeline_class == "Flux2KleinPipeline"
    assert spec.is_distilled == (model == KLEIN_9B)
    assert spec.transformer["joint_attention_dim"] == 3 * spec.text_encoder["hidden_size"] == 12288
    parameters = {name: size / 2 for name, size in component_bytes(spec, torch.bfloat16).items()}
    for name, published in KLEIN_9B_PARAMETERS.items():
        assert parameters[name] == pytest.approx(published, rel=0.01), (name, parameters[name])
    # A float8 base: the block linears at one byte, the rest (norms, embeddings, proj_out) in bf16.
    lora = LoraSpec(16, "attention")
    full, fp8 = (component_bytes(spec, torch.bfloat16, lora, quantize) for quantize in ("none", "fp8"))
    assert 0.49 < fp8["transformer"] / full["transformer"] < 0.52
    assert 0.55 < fp8["text_encoder"] / full["text_encoder"] < 0.6  # the 1.2 GiB embedding table stays bf16
    assert fp8["lora"] == full["lora"]
    # The largest block (a double block, 1/21 of the model) cast up: what a checkpointed backward holds.
    assert full["transformer"] / 40 < fp8["upcast_block"] < full["transformer"] / 15
    assert "upcast_block" not in full


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "card_gib"), [(RECIPE_4B_12GB, 12), (RECIPE_9B_24GB, 24)])
def test_float8_base_recipes_fit_their_cards(recipe, card_gib):
    """The documented configs: klein base 4B under 12 GiB, klein base 9B in 24 GiB; without the float8 base
    neither fits, and the plan suggests it."""
    config = parse_config(["--config", str(recipe)])
    plan = plan_training(config, gpu_memory_gib=card_gib)
    assert plan.fits and plan.peak_gib < card_gib, format_plan_table(plan)
    assert any(name.startswith("float8 weights cast up") for name in plan.breakdown["dpo"])
    argv = ["--config", str(recipe), "--quantize_base", "none"]
    unquantized = plan_training(parse_config(argv), gpu_memory_gib=card_gib)
    assert not unquantized.fits and "--quantize_base fp8" in unquantized.suggestions
    assert unquantized.breakdown["dpo"]["transformer"] > 1.9 * plan.breakdown["dpo"]["transformer"]
