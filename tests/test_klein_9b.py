"""FLUX.2-klein-9B and klein-base-9B at their real dimensions, on the meta device (shapes only, no memory).

The published layout (8 double + 24 single blocks, 32 heads of 128, Qwen3-8B's three stacked hidden states as
text input): the LoRA presets hit what they hit on the 4B, the ComfyUI export maps every trained module of every
block and diffusers' converter reads it back, and the family recognises both checkpoints.
"""

from __future__ import annotations

import re

import pytest
import torch

from tscale_train import real_configs
from tscale_train.export.comfyui import to_comfyui_state_dict
from tscale_train.families.flux2_klein import FLUX2_LORA_TARGETS
from tscale_train.lora import add_lora

DOUBLE, SINGLE, INNER = 8, 24, 32 * 128


@pytest.fixture(scope="module")
def meta_transformer():
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        return Flux2Transformer2DModel(**real_configs.FLUX2_KLEIN_9B_TRANSFORMER)


def test_the_9b_transformer_has_the_published_size_and_layout(meta_transformer):
    config = meta_transformer.config
    assert (config.num_layers, config.num_single_layers) == (DOUBLE, SINGLE)
    assert config.num_attention_heads * config.attention_head_dim == INNER
    assert sum(parameter.numel() for parameter in meta_transformer.parameters()) == 9_078_581_248
    linears = [
        name for name, module in meta_transformer.named_modules() if isinstance(module, torch.nn.Linear)
    ]
    hit = [name for name in linears if re.fullmatch(FLUX2_LORA_TARGETS["attention"], name)]
    # 8 projections in each double block, 2 in each single block: as on the 4B (80 of 109 there).
    assert (len(hit), len(linears)) == (8 * DOUBLE + 2 * SINGLE, 153)


def test_the_comfyui_export_of_a_9b_lora_maps_every_block_and_reads_back(meta_transformer):
    import copy

    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_flux2_lora_to_diffusers
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        transformer = copy.deepcopy(meta_transformer)
        add_lora(transformer, rank=16, target_modules="all_linear")
    own = {f"transformer.{key}": value for key, value in get_peft_model_state_dict(transformer).items()}
    exported = to_comfyui_state_dict(own)
    blocks = {int(key.split(".")[2]) for key in exported if key.startswith("diffusion_model.double_blocks.")}
    singles = {int(key.split(".")[2]) for key in exported if key.startswith("diffusion_model.single_blocks.")}
    assert blocks == set(range(DOUBLE)) and singles == set(range(SINGLE))
    # q, k and v fused into the original qkv: the rank triples, the output is 3 x the inner width.
    assert exported["diffusion_model.double_blocks.7.img_attn.qkv.lora_B.weight"].shape == (3 * INNER, 48)
    mlp_hidden = int(INNER * real_configs.FLUX2_KLEIN_9B_TRANSFORMER["mlp_ratio"])
    assert exported["diffusion_model.single_blocks.23.linear1.lora_B.weight"].shape == (
        3 * INNER + 2 * mlp_hidden,
        16,
    )
    back = _convert_non_diffusers_flux2_lora_to_diffusers(exported)
    assert set(back) == set(own)


@pytest.mark.parametrize(
    ("model", "distilled"),
    [(real_configs.FLUX2_KLEIN_9B, True), (real_configs.FLUX2_KLEIN_BASE_9B, False)],
)
def test_the_family_recognises_both_9b_checkpoints(model, distilled):
    from tscale_train.families import get_family

    family = get_family("Flux2KleinPipeline")
    configs = family.checkpoints[model].configs
    assert configs["is_distilled"] is distilled
    assert configs["transformer"] is real_configs.FLUX2_KLEIN_9B_TRANSFORMER
    assert configs["text_encoder"]["hidden_size"] * 3 == configs["transformer"]["joint_attention_dim"]
