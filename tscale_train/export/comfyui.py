"""The LoRA adapter in the original FLUX.2 layout that ComfyUI and BFL-style tools load (`--format comfyui`).

`save_lora` writes diffusers' layout (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, alpha in the
safetensors metadata). ComfyUI patches the weights of the original BFL model, whose names and fusions differ:
`diffusion_model.double_blocks.0.img_attn.qkv` is diffusers' to_q/to_k/to_v in one matrix. The file is exact for
that layout: the delta it puts on each original weight (`lora_B @ lora_A` on the weight of the same name, which is
how ComfyUI's loader reads `diffusion_model.` keys), mapped through diffusers' converter of the original base
checkpoint (`convert_flux2_transformer_checkpoint_to_diffusers`), is the adapter's own on every diffusers weight, to
float rounding (tests/test_comfyui.py; ComfyUI itself is not run there).

Read back by diffusers (`pipe.load_lora_weights(dir, weight_name=COMFYUI_WEIGHT_NAME)`, through
`_convert_non_diffusers_flux2_lora_to_diffusers` in `diffusers/loaders/lora_conversion_utils.py`), the file gives
the same predictions as the diffusers-format file, to float rounding, with one exception:
`norm_out.linear`, trained only with `lora_target_modules: all_linear` (or a target list naming it). The original
final layer orders its modulation (shift, scale), diffusers' (scale, shift); diffusers' base-model converter swaps
the two halves of that weight, but its LoRA reader renames final_layer.adaLN_modulation.1 to norm_out.linear without
swapping lora_B's rows. Written with the rows swapped (right for the original layout), that module reads back into
diffusers with its scale and shift deltas exchanged, and the image differs. One file cannot be exact for both: the
two readers take the same key with opposite row orders, and diffusers refuses a file with any key it does not map.
For diffusers, load `pytorch_lora_weights.safetensors`.

Key mapping (diffusers module -> original module, both without their prefix), as the FLUX.2 families declare it
(`families.flux2_klein.FLUX2_COMFYUI_KEYS`, `ModelFamily.comfyui`):

    transformer_blocks.N.attn.{to_q,to_k,to_v}                 -> double_blocks.N.img_attn.qkv  (fused)
    transformer_blocks.N.attn.{add_q_proj,add_k_proj,add_v_proj} -> double_blocks.N.txt_attn.qkv  (fused)
    transformer_blocks.N.attn.to_out.0                         -> double_blocks.N.img_attn.proj
    transformer_blocks.N.attn.to_add_out                       -> double_blocks.N.txt_attn.proj
    transformer_blocks.N.ff.linear_in / linear_out             -> double_blocks.N.img_mlp.0 / img_mlp.2
    transformer_blocks.N.ff_context.linear_in / linear_out     -> double_blocks.N.txt_mlp.0 / txt_mlp.2
    single_transformer_blocks.N.attn.to_qkv_mlp_proj           -> single_blocks.N.linear1
    single_transformer_blocks.N.attn.to_out                    -> single_blocks.N.linear2
    x_embedder / context_embedder                              -> img_in / txt_in
    proj_out                                                   -> final_layer.linear
    norm_out.linear                                            -> final_layer.adaLN_modulation.1  (lora_B halves swapped)
    time_guidance_embed.{timestep,guidance}_embedder.linear_1/2 -> {time,guidance}_in.in_layer/out_layer
    {single_stream,double_stream_modulation_img,_txt}...linear -> ....lin

Scale: the diffusers reader takes no `.alpha` keys of this layout (it raises on any key it does not consume), and
ComfyUI applies `lora_B @ lora_A` at scale 1 when a module has no `.alpha`. So the file has no alpha keys and each
module's peft scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into its lora_B. Loaded without
metadata, diffusers likewise sets alpha = rank per module (scale 1), also where the fused modules' rank differs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..families import ComfyUIKeys, get_family, iter_families
from ..io_utils import respect_umask
from ..lora import LORA_WEIGHT_NAME

# Next to `pytorch_lora_weights.safetensors`; ComfyUI takes any file name in its `loras` folder.
COMFYUI_WEIGHT_NAME = "pytorch_lora_weights_comfyui.safetensors"
ORIGINAL_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
# Where `save_lora_weights` keeps the LoraConfig (its keys prefixed "transformer.").
LORA_METADATA_KEY = "lora_adapter_metadata"

_LORA_KEY = re.compile(r"(.+)\.(lora_A|lora_B)\.weight")


def _original_module(module: str, keys: ComfyUIKeys) -> tuple[str, int | None]:
    """diffusers module name -> (original module name, index of q/k/v inside a fused projection or None)."""
    if module in keys.top_level:
        return keys.top_level[module], None
    (double, original_double), (single, original_single) = keys.double_block_name, keys.single_block_name
    match = re.fullmatch(rf"({re.escape(double)}|{re.escape(single)})\.(\d+)\.(.+)", module)
    if match is not None:
        kind, index, inner = match.groups()
        if kind == double:
            if inner in keys.double_blocks:
                return f"{original_double}.{index}.{keys.double_blocks[inner]}", None
            for fused, parts in keys.fused_qkv.items():
                if inner in parts:
                    return f"{original_double}.{index}.{fused}", parts.index(inner)
        elif inner in keys.single_blocks:
            return f"{original_single}.{index}.{keys.single_blocks[inner]}", None
    raise ValueError(
        f"the LoRA module {module!r} has no counterpart that diffusers' FLUX.2 original-layout converter maps "
        "back (`_convert_non_diffusers_flux2_lora_to_diffusers`); it cannot be exported in the ComfyUI layout."
    )


def comfyui_keys(pipeline_class: str = "Flux2KleinPipeline") -> ComfyUIKeys:
    """The original-layout key map of a pipeline class's family (`ModelFamily.comfyui`)."""
    family = get_family(pipeline_class)
    if family.comfyui is None:
        exportable = [other.name for other in iter_families() if other.comfyui is not None]
        raise ValueError(
            f"{family.name} LoRAs have no ComfyUI (original-layout) export; it exists for {', '.join(exportable)}. "
            "Use the diffusers format."
        )
    return family.comfyui


def _lora_config(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The LoraConfig dict from `save_lora`'s metadata, its "transformer." prefix dropped; {} when absent."""
    if not metadata:
        return {}
    if LORA_METADATA_KEY in metadata:  # the raw safetensors metadata
        raw = metadata[LORA_METADATA_KEY]
        metadata = json.loads(raw) if isinstance(raw, str) else raw
    return {key.removeprefix(DIFFUSERS_PREFIX): value for key, value in metadata.items()}


def _scaling(module: str, rank: int, config: Mapping[str, Any]) -> float:
    """peft's `LoraLayer.scaling` for `module`: alpha / r (alpha / sqrt(r) with rsLoRA).

    Without a config diffusers assumes alpha == rank (scale 1), and so do we. The rank is the tensor's, which
    already reflects `rank_pattern`; alpha follows `alpha_pattern` with peft's own matching rule.
    """
    if not config:
        return 1.0
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_comfyui_state_dict(
    diffusers_state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    pipeline_class: str = "Flux2KleinPipeline",
) -> dict[str, torch.Tensor]:
    """A FLUX.2 transformer LoRA in diffusers' layout -> the original layout (`diffusion_model.` keys).

    `metadata` is the LoraConfig `save_lora` stores (the safetensors metadata, or its decoded
    "lora_adapter_metadata" dict); without it every module is taken at scale 1, as diffusers does.
    The key map is the family's of `pipeline_class` (`comfyui_keys`).
    Raises ValueError for a key that is not a plain LoRA weight or names a module the converter cannot map.
    """
    keys = comfyui_keys(pipeline_class)
    config = _lora_config(metadata)
    if config.get("use_dora") or config.get("lora_bias"):
        raise ValueError("DoRA and LoRA-bias adapters have no equivalent in the original FLUX.2 LoRA layout.")

    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in diffusers_state_dict.items():
        match = _LORA_KEY.fullmatch(key.removeprefix(DIFFUSERS_PREFIX))
        if match is None or not key.startswith(DIFFUSERS_PREFIX):
            raise ValueError(
                f"{key!r} is not a `transformer.<module>.lora_A/lora_B.weight` key of a diffusers transformer LoRA; "
                "only those can be exported in the ComfyUI layout."
            )
        modules.setdefault(match[1], {})[match[2]] = tensor

    # original module -> {q/k/v index or None: (lora_A, scaled lora_B)}
    grouped: dict[str, dict[int | None, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, pair in sorted(modules.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(
                f"the LoRA module {module!r} has {sorted(pair)} but needs both lora_A and lora_B."
            )
        original, part = _original_module(module, keys)
        down, up = pair["lora_A"], pair["lora_B"]
        scale = _scaling(module, down.shape[0], config)
        if scale != 1.0:
            # Multiply in float32 so a bf16 adapter loses no more than its final rounding.
            up = (up.float() * scale).to(up.dtype)
        if module in keys.swapped_halves:
            up = _swap_halves(up)
        grouped.setdefault(original, {})[part] = (down, up)

    converted: dict[str, torch.Tensor] = {}
    for original, parts in grouped.items():
        if None in parts:
            down, up = parts[None]
        else:
            down, up = _fuse_qkv(original, parts)
        # Contiguous: safetensors refuses views, and cat/chunk results may be.
        converted[f"{ORIGINAL_PREFIX}{original}.lora_A.weight"] = down.contiguous()
        converted[f"{ORIGINAL_PREFIX}{original}.lora_B.weight"] = up.contiguous()
    return converted


def _fuse_qkv(
    original: str, parts: Mapping[int, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v LoRAs -> one LoRA on the fused qkv weight whose delta is the three deltas stacked.

    The converter gives the fused lora_A to each of q, k, v and splits lora_B in three row blocks, so separate
    adapters fit only as lora_A = [A_q; A_k; A_v] (rank r_q + r_k + r_v) and a block-diagonal lora_B: each row
    block sees only its own rank slice. A projection without a LoRA gets zero rows (the converter still needs
    its third of the rows, and diffusers then loads a LoRA there whose delta is exactly zero).
    """
    first_down, first_up = next(iter(parts.values()))
    out_features = first_up.shape[0]
    if any(up.shape[0] != out_features for _, up in parts.values()):
        raise ValueError(f"the q/k/v LoRAs fused into {original!r} have different output sizes.")
    ranks = [parts[index][0].shape[0] for index in sorted(parts)]
    down = torch.cat([parts[index][0] for index in sorted(parts)], dim=0)
    up = first_up.new_zeros(3 * out_features, sum(ranks))
    column = 0
    for index, rank in zip(sorted(parts), ranks, strict=True):
        up[index * out_features : (index + 1) * out_features, column : column + rank] = parts[index][1]
        column += rank
    return down, up


def _lora_file(lora_dir_or_file: str | Path) -> Path:
    path = Path(lora_dir_or_file)
    return path / LORA_WEIGHT_NAME if path.is_dir() else path


def save_comfyui_lora(
    lora_dir_or_file: str | Path,
    out_path: str | Path | None = None,
    pipeline_class: str = "Flux2KleinPipeline",
) -> Path:
    """Convert a diffusers LoRA file (or the folder `save_lora` wrote) and write it in the original layout.

    `out_path` defaults to `COMFYUI_WEIGHT_NAME` next to the source file; a folder gets that name inside it.
    The file deliberately carries no "lora_adapter_metadata": diffusers would take that LoraConfig (rank r for
    every module) over the tensors' own shapes, and the fused q/k/v modules have rank 3r, with the scale already
    folded into lora_B.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = _lora_file(lora_dir_or_file)
    if not source.is_file():
        raise FileNotFoundError(f"no LoRA weights at {source}")
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    converted = to_comfyui_state_dict(state_dict, metadata, pipeline_class)

    out = source.parent / COMFYUI_WEIGHT_NAME if out_path is None else Path(out_path)
    if out.is_dir():
        out = out / COMFYUI_WEIGHT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out), metadata={"format": "pt"})
    return respect_umask(out)  # safetensors >= 0.8 writes 0600
