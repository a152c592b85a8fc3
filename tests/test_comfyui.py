"""`--format comfyui`: the LoRA in the original FLUX.2 layout, proven against diffusers' two converters.

What ComfyUI does with the file: it adds B @ A (scale 1 without `.alpha`) to the original model's weight of the
same name. Mapped through diffusers' converter of the original *base model*
(`convert_flux2_transformer_checkpoint_to_diffusers`), those deltas are peft's on every diffusers weight, so the
file is exact for the original layout. diffusers also reads the layout back as a LoRA
(`_convert_non_diffusers_flux2_lora_to_diffusers`): loaded into a fresh tiny pipeline it predicts what our own
diffusers-format file predicts, except where the final norm's modulation (norm_out.linear) is trained: that reader
does not swap its (shift, scale) halves, which the base converter does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tscale_train.export.comfyui import (
    COMFYUI_WEIGHT_NAME,
    save_comfyui_lora,
    to_comfyui_state_dict,
)
from tscale_train.families.flux2_klein import FLUX2_COMFYUI_KEYS
from tscale_train.lora import LORA_WEIGHT_NAME, add_lora, save_lora

PRESETS = ("attention", "attention_ff", "all_linear")
# Every top-level linear of the FLUX.2 key map (klein has no guidance embedder: those names match nothing).
TOP_LEVEL_TARGETS = "|".join(re.escape(name) for name in FLUX2_COMFYUI_KEYS.top_level)
# diffusers' separate projections that the original model fuses into img_attn.qkv / txt_attn.qkv.
QKV = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")

# Original-layout modules each preset must produce in a model with one double and one single block.
ATTENTION_MODULES = {
    "double_blocks.0.img_attn.qkv",
    "double_blocks.0.txt_attn.qkv",
    "double_blocks.0.img_attn.proj",
    "double_blocks.0.txt_attn.proj",
    "single_blocks.0.linear1",
    "single_blocks.0.linear2",
}
FF_MODULES = {f"double_blocks.0.{name}" for name in ("img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2")}
EXPECTED_MODULES = {
    "attention": ATTENTION_MODULES,
    "attention_ff": ATTENTION_MODULES | FF_MODULES,
    "all_linear": ATTENTION_MODULES
    | FF_MODULES
    | {"img_in", "final_layer.linear", "final_layer.adaLN_modulation.1"},
}


def _keys_for(modules: set[str]) -> set[str]:
    return {f"diffusion_model.{module}.lora_{side}.weight" for module in modules for side in "AB"}


def _lora_pipeline(preset: str, alpha: float | None, out_dir: Path):
    """A tiny pipeline with a rank-4 LoRA whose A and B are both random (peft's gaussian init zeroes B)."""
    from tscale_train.loading import load_pipeline

    pipe = load_pipeline("tiny", dtype="float32", device="cpu")
    add_lora(pipe.transformer, rank=4, alpha=alpha, target_modules=preset, init="gaussian")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    save_lora(type(pipe), pipe.transformer, out_dir)
    return pipe


def _loaded(weight_dir: Path, weight_name: str):
    from tscale_train.loading import load_pipeline

    pipe = load_pipeline("tiny", dtype="float32", device="cpu")
    pipe.load_lora_weights(weight_dir, weight_name=weight_name)
    return pipe


def _velocity(pipe, embeds) -> torch.Tensor:
    from tscale_train.generation import generator_for_pipeline

    generator = generator_for_pipeline(pipe)
    noise = torch.randn(2, *generator.noise_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return generator.predict_velocity(pipe.transformer, noise, torch.tensor([0.7, 0.3]), [embeds, embeds])


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2)
    return torch.cat([second, first])


def _assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # A fused q/k/v LoRA has rank 3r with zeros off its own block, so BLAS sums 3r products instead of r and
    # may associate the nonzero ones differently: about 1 float32 ulp per element (observed <= 1.6e-7 of the
    # output's max). 1e-6 of the max (~8 ulp) holds that with margin on another BLAS and still catches any
    # real mismatch, which changes outputs at the 1e-2 level.
    assert actual.shape == expected.shape
    tolerance = 1e-6 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tolerance)


@pytest.fixture(scope="module")
def embeds(tiny_pipe):
    from tscale_train.generation import generator_for_pipeline

    return generator_for_pipeline(tiny_pipe).encode_prompt("a red cube on a table")


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_through_diffusers_loader(preset, embeds, tiny_pipe, tmp_path):
    alpha = {"attention": None, "attention_ff": 8.0, "all_linear": 3.0}[preset]  # scale 1, 2 and 0.75
    _lora_pipeline(preset, alpha, tmp_path)
    out = save_comfyui_lora(tmp_path)
    assert out == tmp_path / COMFYUI_WEIGHT_NAME

    exported = load_file(out)
    assert set(exported) == _keys_for(EXPECTED_MODULES[preset])
    # q, k and v fused: rank 3 x 4, output 3 x 32.
    assert exported["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"].shape == (12, 32)
    assert exported["diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight"].shape == (96, 12)
    with safe_open(str(out), framework="pt") as handle:
        # A LoraConfig here would make diffusers load every module at rank 4 and the alpha of training.
        assert "lora_adapter_metadata" not in (handle.metadata() or {})

    reference = _velocity(_loaded(tmp_path, LORA_WEIGHT_NAME), embeds)
    # The adapter moves the output far beyond the tolerance below, so the comparison has teeth.
    assert (reference - _velocity(tiny_pipe, embeds)).abs().max() > 1e-2
    comfy_pipe = _loaded(tmp_path, COMFYUI_WEIGHT_NAME)
    if preset == "all_linear":
        # diffusers' LoRA reader maps final_layer.adaLN_modulation.1 straight onto norm_out.linear, without the
        # (shift, scale) -> (scale, shift) swap its base-model converter applies: it loads our (correctly
        # swapped, see test_comfyui_deltas_match_peft_through_base_converter) lora_B with its halves swapped.
        own = load_file(tmp_path / LORA_WEIGHT_NAME)["transformer.norm_out.linear.lora_B.weight"] * 0.75
        loaded = next(iter(comfy_pipe.transformer.norm_out.linear.lora_B.values())).weight
        torch.testing.assert_close(loaded.data, _swap_halves(own), rtol=0, atol=0)
        loaded.data = _swap_halves(loaded.data)
    _assert_close_to_rounding(_velocity(comfy_pipe, embeds), reference)


def test_every_top_level_layer_reads_back_through_diffusers_but_the_final_norm_swapped(
    embeds, tiny_pipe, tmp_path
):
    """The one place where diffusers' reading of the file is not the adapter: norm_out.linear.

    The original final layer splits its modulation as (shift, scale), diffusers' `AdaLayerNormContinuous` as
    (scale, shift). The file is written for the original layout (ComfyUI; see
    test_comfyui_deltas_match_peft_through_base_converter), so its lora_B rows are swapped there, and diffusers'
    LoRA reader (`_convert_non_diffusers_flux2_lora_to_diffusers`) renames final_layer.adaLN_modulation.1 to
    norm_out.linear without swapping them back (its base-model converter does swap the weight). Every other
    top-level layer reads back as exported, bit for bit.
    """
    _lora_pipeline(TOP_LEVEL_TARGETS, 3.0, tmp_path)  # scale 0.75, folded into lora_B
    save_comfyui_lora(tmp_path)
    own = load_file(tmp_path / LORA_WEIGHT_NAME)
    adapted = sorted({key.removeprefix("transformer.").rsplit(".lora_", 1)[0] for key in own})
    present = {name for name, _ in tiny_pipe.transformer.named_modules()} & set(FLUX2_COMFYUI_KEYS.top_level)
    assert adapted == sorted(present) and "norm_out.linear" in adapted and len(adapted) == 9

    reference = _velocity(_loaded(tmp_path, LORA_WEIGHT_NAME), embeds)
    comfy_pipe = _loaded(tmp_path, COMFYUI_WEIGHT_NAME)
    modules = dict(comfy_pipe.transformer.named_modules())
    for name in adapted:
        layer = modules[name]
        assert list(layer.scaling.values()) == [1.0], name  # no alpha in the file: scale 1, as folded
        down = next(iter(layer.lora_A.values())).weight
        up = next(iter(layer.lora_B.values())).weight
        expected_up = own[f"transformer.{name}.lora_B.weight"] * 0.75
        if name == "norm_out.linear":
            expected_up = _swap_halves(expected_up)
        assert torch.equal(down, own[f"transformer.{name}.lora_A.weight"]), name
        assert torch.equal(up, expected_up), name
    # The swap changes the prediction (the bug report's different image) ...
    assert (_velocity(comfy_pipe, embeds) - reference).abs().max() > 1e-2
    # ... and is the only difference: swapped back, the prediction is the adapter's.
    norm_up = next(iter(modules["norm_out.linear"].lora_B.values())).weight
    norm_up.data = _swap_halves(norm_up.data)
    _assert_close_to_rounding(_velocity(comfy_pipe, embeds), reference)


def test_unfused_modules_round_trip_bit_exact(embeds, tmp_path):
    # Without a q/k/v fusion every module keeps its rank and scale 1 stays 1: the same products, the same bits.
    # Only to_q of the q/k/v triple: k and v get zero rows, the rank stays 4.
    targets = r".*single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)|.*transformer_blocks\.\d+\.attn\.to_q"
    _lora_pipeline(targets, None, tmp_path)
    out = save_comfyui_lora(tmp_path / LORA_WEIGHT_NAME, tmp_path / "comfy" / "adapter.safetensors")
    assert set(load_file(out)) == _keys_for(
        {"double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2"}
    )
    reference = _velocity(_loaded(tmp_path, LORA_WEIGHT_NAME), embeds)
    assert torch.equal(_velocity(_loaded(out.parent, out.name), embeds), reference)


def test_images_match(embeds, tmp_path):
    from tscale_train.generation import generator_for_pipeline

    _lora_pipeline("attention", None, tmp_path)
    save_comfyui_lora(tmp_path)
    images = []
    for name in (LORA_WEIGHT_NAME, COMFYUI_WEIGHT_NAME):
        generator = generator_for_pipeline(_loaded(tmp_path, name))
        noises = torch.randn(2, *generator.noise_shape, generator=torch.Generator().manual_seed(2))
        images.append(generator.generate(noises, [embeds, embeds], num_inference_steps=2).images)
    # Through the sampler and the VAE the per-element rounding of the fused q/k/v grows to a few 1e-6.
    torch.testing.assert_close(images[1], images[0], rtol=0.0, atol=2e-5)


@pytest.mark.parametrize("preset", [*PRESETS, pytest.param(TOP_LEVEL_TARGETS, id="top_level")])
def test_comfyui_deltas_match_peft_through_base_converter(preset, tmp_path):
    """What ComfyUI adds to each original weight (B @ A), renamed/split/swapped by diffusers' converter of the
    original base checkpoint, equals peft's delta (scale included) on each diffusers weight."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from peft.tuners.lora import LoraLayer

    pipe = _lora_pipeline(preset, 3.0, tmp_path)
    exported = load_file(save_comfyui_lora(tmp_path))
    deltas = {
        key.removeprefix("diffusion_model.").replace(".lora_A.weight", ".weight"): (
            exported[key.replace("lora_A", "lora_B")] @ exported[key]
        )
        for key in exported
        if ".lora_A." in key
    }
    converted = convert_flux2_transformer_checkpoint_to_diffusers(deltas)
    expected = {
        f"{name}.weight": module.get_delta_weight("default")
        for name, module in pipe.transformer.named_modules()
        if isinstance(module, LoraLayer)
    }
    # q/k/v each gain two zero-only fused slices (exact): B@A differs from peft's by reassociation alone.
    assert set(converted) == set(expected)
    for key, delta in expected.items():
        torch.testing.assert_close(converted[key], delta, rtol=0.0, atol=1e-6 * delta.abs().max().item())


def test_diffusers_converter_gives_back_the_modules(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_flux2_lora_to_diffusers

    _lora_pipeline("all_linear", None, tmp_path)
    own = load_file(tmp_path / LORA_WEIGHT_NAME)
    back = _convert_non_diffusers_flux2_lora_to_diffusers(to_comfyui_state_dict(own))
    assert set(back) == set(own)
    for key, tensor in own.items():
        if any(f".{name}." in key for name in QKV):
            continue  # fused: rank 12, compared by product below
        if key == "transformer.norm_out.linear.lora_B.weight":
            tensor = _swap_halves(tensor)
        assert torch.equal(back[key], tensor), key
    for module in QKV:
        prefix = f"transformer.transformer_blocks.0.attn.{module}"
        product = back[f"{prefix}.lora_B.weight"] @ back[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(product, own[f"{prefix}.lora_B.weight"] @ own[f"{prefix}.lora_A.weight"])


def test_scale_folds_into_lora_b_with_patterns():
    torch.manual_seed(0)
    state_dict = {
        "transformer.proj_out.lora_A.weight": torch.randn(4, 32),
        "transformer.proj_out.lora_B.weight": torch.randn(16, 4),
        "transformer.x_embedder.lora_A.weight": torch.randn(2, 16),  # rank_pattern gave it rank 2
        "transformer.x_embedder.lora_B.weight": torch.randn(32, 2),
    }
    metadata = {
        "transformer.r": 4,
        "transformer.lora_alpha": 8,
        "transformer.alpha_pattern": {"x_embedder": 1},
    }
    out = to_comfyui_state_dict(state_dict, metadata)
    assert torch.equal(
        out["diffusion_model.final_layer.linear.lora_B.weight"],
        state_dict["transformer.proj_out.lora_B.weight"] * 2,
    )
    assert torch.equal(
        out["diffusion_model.img_in.lora_B.weight"], state_dict["transformer.x_embedder.lora_B.weight"] * 0.5
    )
    assert torch.equal(
        out["diffusion_model.img_in.lora_A.weight"], state_dict["transformer.x_embedder.lora_A.weight"]
    )
    rslora = to_comfyui_state_dict(state_dict, {"transformer.lora_alpha": 8, "transformer.use_rslora": True})
    assert torch.equal(
        rslora["diffusion_model.final_layer.linear.lora_B.weight"],
        state_dict["transformer.proj_out.lora_B.weight"] * 4,
    )
    # No metadata: diffusers' convention, alpha == rank.
    assert torch.equal(
        to_comfyui_state_dict(state_dict)["diffusion_model.img_in.lora_B.weight"],
        state_dict["transformer.x_embedder.lora_B.weight"],
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("transformer.transformer_blocks.0.attn.norm_q.lora_A.weight", "transformer_blocks.0.attn.norm_q"),
        (
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
            "single_transformer_blocks.0.attn.to_q",
        ),
        ("transformer.pos_embed.lora_A.weight", "pos_embed"),
        ("text_encoder.layers.0.q_proj.lora_A.weight", "text_encoder"),
        ("transformer.proj_out.lora_B.bias", "lora_B.bias"),
    ],
)
def test_unmappable_keys_raise(key, message):
    state_dict = {key: torch.zeros(4, 8), key.replace("lora_A", "lora_B"): torch.zeros(8, 4)}
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        to_comfyui_state_dict(state_dict)


def test_real_klein_4b_layout_on_meta_device():
    from diffusers import Flux2Transformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_flux2_lora_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from tscale_train.real_configs import FLUX2_KLEIN_4B_TRANSFORMER

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**FLUX2_KLEIN_4B_TRANSFORMER)
        add_lora(transformer, rank=16, target_modules="all_linear")
    own = {f"transformer.{key}": value for key, value in get_peft_model_state_dict(transformer).items()}
    exported = to_comfyui_state_dict(own)
    double = {module for module in EXPECTED_MODULES["attention_ff"] if module.startswith("double_blocks.")}
    modules = {
        *(
            module.replace("double_blocks.0.", f"double_blocks.{block}.")
            for block in range(5)
            for module in double
        ),
        *(f"single_blocks.{block}.linear{index}" for block in range(20) for index in (1, 2)),
        "img_in",
        "final_layer.linear",
        "final_layer.adaLN_modulation.1",
    }
    assert set(exported) == _keys_for(modules)
    inner = 24 * 128
    assert exported["diffusion_model.double_blocks.4.img_attn.qkv.lora_A.weight"].shape == (48, inner)
    assert exported["diffusion_model.double_blocks.4.txt_attn.qkv.lora_B.weight"].shape == (3 * inner, 48)
    assert exported["diffusion_model.single_blocks.19.linear1.lora_B.weight"].shape == (
        3 * inner + 2 * 3 * inner,
        16,
    )
    back = _convert_non_diffusers_flux2_lora_to_diffusers(exported)
    assert set(back) == set(own)
    for key, tensor in own.items():
        rank = 48 if any(f".{name}." in key for name in QKV) else 16
        expected = (rank, tensor.shape[1]) if ".lora_A." in key else (tensor.shape[0], rank)
        assert tuple(back[key].shape) == expected, key
