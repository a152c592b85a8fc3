"""What the model is: a pipeline's component configs, its components on the meta device, their bytes."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .tracker import module_bytes

SHAPES_MODEL_NAME = "shapes-klein-4b"


@dataclass(frozen=True)
class PipelineSpec:
    """The component configs of a pipeline (as JSON, so the spec is hashable for caching)."""

    model: str
    source: str
    transformer_json: str
    text_encoder_json: str
    vae_json: str
    is_distilled: bool
    default_resolution: int
    resolution_multiple: int
    max_sequence_length: int
    text_encoder_out_layers: tuple[int, ...]
    reward_clip_json: str | None = None  # a CLIPConfig for CLIP-style rewards of this model (tiny: the kit's)

    @property
    def transformer(self) -> dict:
        return json.loads(self.transformer_json)

    @property
    def text_encoder(self) -> dict:
        return json.loads(self.text_encoder_json)

    @property
    def vae(self) -> dict:
        return json.loads(self.vae_json)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.get("block_out_channels", (128, 256, 512, 512))) - 1)


def _to_json(config: Any) -> str:
    return json.dumps(dict(config), sort_keys=True, default=list)


def _read_pipeline_dir(model: str, directory: Path, source: str) -> PipelineSpec:
    """Read the component configs of a saved `Flux2KleinPipeline` directory (no weights)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import AutoConfig

    index = json.loads((directory / "model_index.json").read_text())
    transformer = Flux2Transformer2DModel.load_config(str(directory), subfolder="transformer")
    vae = AutoencoderKLFlux2.load_config(str(directory), subfolder="vae")
    text_encoder = AutoConfig.from_pretrained(str(directory / "text_encoder")).to_dict()
    from ..real_configs import FLUX2_KLEIN_MAX_SEQUENCE_LENGTH, FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS
    from ..tiny import generator_settings

    extra = generator_settings(directory)  # a kit pipeline's recorded settings; {} for real ones
    vae_scale_factor = 2 ** (len(vae.get("block_out_channels", (128, 256, 512, 512))) - 1)
    reward_clip = None
    pickscore_dir = directory.parent / "pickscore"
    if extra and (pickscore_dir / "config.json").is_file():
        reward_clip = _to_json(json.loads((pickscore_dir / "config.json").read_text()))
    return PipelineSpec(
        model=model,
        source=source,
        transformer_json=_to_json(transformer),
        text_encoder_json=_to_json(text_encoder),
        vae_json=_to_json(vae),
        is_distilled=bool(index.get("is_distilled", False)),
        default_resolution=int(extra.get("default_resolution", 128 * vae_scale_factor)),
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=int(extra.get("max_sequence_length", FLUX2_KLEIN_MAX_SEQUENCE_LENGTH)),
        text_encoder_out_layers=tuple(extra.get("text_encoder_out_layers", FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS)),
        reward_clip_json=reward_clip,
    )


def _known_spec(model: str, known: dict, source: str) -> PipelineSpec:
    from ..real_configs import FLUX2_KLEIN_MAX_SEQUENCE_LENGTH, FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS

    vae_scale_factor = 2 ** (len(known["vae"]["block_out_channels"]) - 1)
    return PipelineSpec(
        model=model,
        source=source,
        transformer_json=_to_json(known["transformer"]),
        text_encoder_json=_to_json(known["text_encoder"]),
        vae_json=_to_json(known["vae"]),
        is_distilled=bool(known["is_distilled"]),
        default_resolution=128 * vae_scale_factor,
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
        text_encoder_out_layers=tuple(FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS),
    )


def _hub_cache_dir(model: str) -> Path | None:
    """The model's configs from the local HF cache, if they are there (never the network)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(model, allow_patterns=["model_index.json", "*/config.json"], local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - any failure means "not cached"; the bundled configs follow
        return None
    return path if (path / "model_index.json").is_file() and (path / "transformer" / "config.json").is_file() else None


@functools.lru_cache(maxsize=16)
def resolve_pipeline_spec(model: str) -> PipelineSpec:
    """Component configs for `model`: the tiny kit's dir, a local dir, the HF cache, or the bundled copy.

    Raises ValueError/FileNotFoundError with the fix for a model it cannot describe.
    """
    from ..real_configs import FLUX2_KLEIN_4B, known_pipeline_config

    if model == SHAPES_MODEL_NAME:
        # The real-shape kit: FLUX.2-klein-4B dimensions with one double and one single block.
        known = known_pipeline_config(FLUX2_KLEIN_4B)
        known["transformer"].update(num_layers=1, num_single_layers=1)
        return _known_spec(model, known, "bundled klein-4B config, 1 + 1 blocks")
    from ..loading import TINY_MODELS, check_model_source

    if model in TINY_MODELS:
        from ..tiny import tiny_pipeline_dir

        return _read_pipeline_dir(model, tiny_pipeline_dir(distilled=TINY_MODELS[model]), "tiny kit")
    source = check_model_source(model)
    if Path(source).is_dir():
        return _read_pipeline_dir(model, Path(source), "local dir")
    cached = _hub_cache_dir(source)
    if cached is not None:
        return _read_pipeline_dir(model, cached, "HF cache")
    known = known_pipeline_config(source)
    if known is None:
        raise ValueError(
            f"no component configs for {model!r}: it is not in the local HF cache and not a bundled model "
            "(black-forest-labs/FLUX.2-klein-4B, black-forest-labs/FLUX.2-klein-base-4B); pass a local pipeline dir."
        )
    return _known_spec(model, known, "bundled config")


def reward_clip_config_json(reward: str, spec: PipelineSpec) -> str | None:
    """The CLIPConfig (JSON) that stands for `reward` on the GPU, or None for rewards with no model.

    pickscore is CLIP-H/14; hpsv2 and clip are open_clip ViT-H-14 of the same dimensions, so the
    transformers CLIP-H config stands in for them. Tiny models use the kit's tiny CLIP.
    `module:callable` rewards (synthetic, user-defined) are counted as 0.
    """
    from ..real_configs import PICKSCORE_CLIP

    if ":" in reward or reward.strip().lower() not in ("pickscore", "hpsv2", "clip"):
        return None
    if spec.reward_clip_json is not None:
        return spec.reward_clip_json
    return _to_json(PICKSCORE_CLIP)


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    target_modules: str


def meta_transformer(spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, checkpointing: bool = False):
    from diffusers import Flux2Transformer2DModel

    from ..lora import add_lora

    with _quiet_diffusers(), torch.device("meta"):
        transformer = Flux2Transformer2DModel.from_config(spec.transformer).to(dtype)
    transformer.requires_grad_(False)
    if lora is not None:
        add_lora(transformer, rank=lora.rank, target_modules=lora.target_modules)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' "modules that should be kept in float32: []" warning of `.to(dtype)`."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _meta_vae(spec: PipelineSpec, dtype: torch.dtype):
    from diffusers import AutoencoderKLFlux2

    with _quiet_diffusers(), torch.device("meta"):
        return AutoencoderKLFlux2.from_config(spec.vae).to(dtype).requires_grad_(False)


def _meta_text_encoder(spec: PipelineSpec, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config.from_dict(spec.text_encoder)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return Qwen3ForCausalLM(config).to(dtype).requires_grad_(False).eval()


def _meta_clip(clip_json: str, dtype: torch.dtype = torch.float32):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_dict(json.loads(clip_json))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return CLIPModel(config).to(dtype).requires_grad_(False).eval()


@functools.lru_cache(maxsize=64)
def component_bytes(spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None = None) -> dict[str, int]:
    """Weights of each component: transformer, lora (fp32), vae, text_encoder (in `dtype`)."""
    transformer = meta_transformer(spec, dtype, lora)
    sizes = {
        "transformer": module_bytes(transformer, lambda name: "lora_" not in name),
        "lora": module_bytes(transformer, lambda name: "lora_" in name),
        "vae": module_bytes(_meta_vae(spec, dtype)),
        "text_encoder": module_bytes(_meta_text_encoder(spec, dtype)),
    }
    return sizes


@functools.lru_cache(maxsize=16)
def reward_bytes(clip_json: str | None) -> int:
    """Weights of the reward model (float32, as `load_reward_for` loads it)."""
    return 0 if clip_json is None else module_bytes(_meta_clip(clip_json))
