"""What the model is: a pipeline's component configs, its components on the meta device, their bytes."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..families import PlanFamily, checkpoint_settings, get_family, known_models, known_pipeline_config
from .families import plan_family
from .tracker import module_bytes


@dataclass(frozen=True)
class PipelineSpec:
    """The component configs of a pipeline (as JSON, so the spec is hashable for caching).

    `pipeline_class` (the diffusers class in model_index.json) picks the family description
    (`families.PlanFamily`); `text_encoder_2_json` is FLUX.1's T5 next to its CLIP.
    """

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
    pipeline_class: str = "Flux2KleinPipeline"
    text_encoder_2_json: str | None = None
    guidance_scale: float | None = None  # the model's own default (model card, kit), else the family's

    @property
    def family(self) -> PlanFamily:
        return plan_family(self.pipeline_class)

    @property
    def transformer(self) -> dict:
        return json.loads(self.transformer_json)

    @property
    def text_encoder(self) -> dict:
        return json.loads(self.text_encoder_json)

    def text_encoder_configs(self) -> dict[str, dict]:
        """Each text encoder's config by pipeline component name (`text_encoder`, `text_encoder_2`)."""
        configs = {"text_encoder": self.text_encoder_json, "text_encoder_2": self.text_encoder_2_json}
        return {name: json.loads(configs[name]) for name, _ in self.family.text_encoders}

    @property
    def vae(self) -> dict:
        return json.loads(self.vae_json)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.get("block_out_channels", (128, 256, 512, 512))) - 1)

    @property
    def default_guidance_scale(self) -> float:
        return self.guidance_scale if self.guidance_scale is not None else self.family.default_guidance(self)

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether sampling at this guidance runs the negative prompt too (true classifier-free guidance)."""
        return self.family.uses_cfg(self, guidance_scale)

    def latent_numel(self, height: int, width: int) -> int:
        """Elements of one sample's latents (the search noise `[C, h, w]`, however the family packs it)."""
        factor = self.vae_scale_factor
        return self.vae.get("latent_channels", 32) * (height // factor) * (width // factor)


def _to_json(config: Any) -> str:
    return json.dumps(dict(config), sort_keys=True, default=list)


def _read_pipeline_dir(model: str, directory: Path, source: str) -> PipelineSpec:
    """Read the component configs of a saved pipeline directory of a planned family (no weights)."""
    import diffusers
    from transformers import AutoConfig

    from ..tiny.kit import generator_settings

    index = json.loads((directory / "model_index.json").read_text())
    family = plan_family(index.get("_class_name"))
    transformer = getattr(diffusers, family.transformer_class).load_config(
        str(directory), subfolder="transformer"
    )
    vae = getattr(diffusers, family.vae_class).load_config(str(directory), subfolder="vae")
    text_encoders = [
        AutoConfig.from_pretrained(str(directory / name)).to_dict() for name, _ in family.text_encoders
    ]
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
        text_encoder_json=_to_json(text_encoders[0]),
        vae_json=_to_json(vae),
        is_distilled=bool(index.get("is_distilled", False)),
        default_resolution=int(extra.get("default_resolution", 128 * vae_scale_factor)),
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=int(extra.get("max_sequence_length", family.max_sequence_length)),
        text_encoder_out_layers=tuple(extra.get("text_encoder_out_layers", family.text_encoder_out_layers)),
        reward_clip_json=reward_clip,
        pipeline_class=family.pipeline_class,
        text_encoder_2_json=_to_json(text_encoders[1]) if len(text_encoders) > 1 else None,
        guidance_scale=extra.get("guidance_scale"),
    )


def _known_spec(model: str, known: dict, source: str) -> PipelineSpec:
    family = plan_family(known["pipeline_class"])
    vae_scale_factor = 2 ** (len(known["vae"]["block_out_channels"]) - 1)
    return PipelineSpec(
        model=model,
        source=source,
        transformer_json=_to_json(known["transformer"]),
        text_encoder_json=_to_json(known["text_encoder"]),
        vae_json=_to_json(known["vae"]),
        is_distilled=bool(known.get("is_distilled", False)),
        default_resolution=128 * vae_scale_factor,
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=int(known.get("max_sequence_length", family.max_sequence_length)),
        text_encoder_out_layers=tuple(family.text_encoder_out_layers),
        pipeline_class=family.pipeline_class,
        text_encoder_2_json=_to_json(known["text_encoder_2"]) if "text_encoder_2" in known else None,
    )


def _with_model_card_settings(spec: PipelineSpec, model: str) -> PipelineSpec:
    """A known checkpoint's model-card guidance and text length (its family's `Checkpoint.settings`: e.g.
    Z-Image-Turbo runs without CFG, though its pipeline class defaults to it)."""
    settings = checkpoint_settings(model)
    overrides: dict[str, Any] = {}
    if "guidance_scale" in settings:
        overrides["guidance_scale"] = float(settings["guidance_scale"])
    if "max_sequence_length" in settings:
        overrides["max_sequence_length"] = int(settings["max_sequence_length"])
    return dataclasses.replace(spec, **overrides) if overrides else spec


def _hub_cache_dir(model: str) -> Path | None:
    """The model's configs from the local HF cache, if they are there (never the network)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                model, allow_patterns=["model_index.json", "*/config.json"], local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - any failure means "not cached"; the bundled configs follow
        return None
    return (
        path
        if (path / "model_index.json").is_file() and (path / "transformer" / "config.json").is_file()
        else None
    )


@functools.lru_cache(maxsize=16)
def resolve_pipeline_spec(model: str) -> PipelineSpec:
    """Component configs for `model`: the kit's dir, a local dir, the HF cache, or the bundled copy.

    Raises ValueError/FileNotFoundError with the fix for a model it cannot describe.
    """
    from ..loading import DIMS_MODEL
    from ..real_configs import FLUX2_KLEIN_4B

    if model == DIMS_MODEL:
        # The real-dimension kit: FLUX.2-klein-4B dimensions with one double and one single block.
        known = known_pipeline_config(FLUX2_KLEIN_4B)
        known["transformer"].update(num_layers=1, num_single_layers=1)
        return _known_spec(model, known, "bundled klein-4B config, 1 + 1 blocks")
    from ..loading import SHAPES_MODEL, check_model_source, kit_names, kit_pipeline_dir

    if model in kit_names():
        label = "shipped shapes model" if model == SHAPES_MODEL else "tiny kit"
        return _read_pipeline_dir(model, kit_pipeline_dir(model), label)
    source = check_model_source(model)
    if Path(source).is_dir():
        return _read_pipeline_dir(model, Path(source), "local dir")
    cached = _hub_cache_dir(source)
    known = known_pipeline_config(source)
    if cached is not None:
        try:
            return _with_model_card_settings(_read_pipeline_dir(model, cached, "HF cache"), source)
        except OSError:  # a partly cached snapshot (e.g. without text_encoder_2/config.json)
            if known is None:
                raise
    if known is None:
        raise ValueError(
            f"no component configs for {model!r}: it is not in the local HF cache and not a bundled model "
            f"({', '.join(known_models())}); pass a local pipeline dir."
        )
    return _with_model_card_settings(_known_spec(model, known, "bundled config"), source)


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


def meta_transformer(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, checkpointing: bool = False
):
    """The family's transformer on the meta device (no weights), with the LoRA and checkpointing of a run.

    A LoRA preset name (`attention`, ...) is the family's (`ModelFamily.lora_targets`), as in training.
    """
    import diffusers

    from ..lora import add_lora

    family = spec.family
    with _quiet_diffusers(), torch.device("meta"):
        transformer = getattr(diffusers, family.transformer_class).from_config(spec.transformer).to(dtype)
    transformer.requires_grad_(False)
    if lora is not None:
        add_lora(
            transformer,
            rank=lora.rank,
            target_modules=lora.target_modules,
            presets=dict(get_family(spec.pipeline_class).lora_targets),
        )
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
    import diffusers

    with _quiet_diffusers(), torch.device("meta"):
        return getattr(diffusers, spec.family.vae_class).from_config(spec.vae).to(dtype).requires_grad_(False)


def meta_text_encoders(spec: PipelineSpec, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The family's text encoders on the meta device, by pipeline component name, in encoding order."""
    import transformers

    configs = spec.text_encoder_configs()
    encoders = {}
    for name, class_name in spec.family.text_encoders:
        model_class = getattr(transformers, class_name)
        config = model_class.config_class.from_dict(configs[name])
        # The GPU attention kernel where the model has one (T5 has only its own eager attention).
        config._attn_implementation = "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"
        with torch.device("meta"):
            encoders[name] = model_class(config).to(dtype).requires_grad_(False).eval()
    return encoders


def base_transformer_on_meta(model: str) -> torch.nn.Module:
    """`model`'s transformer on the meta device (shapes only): from `tscale plan`'s description where its family has
    one, else from the saved pipeline's `transformer/config.json` (a kit, a local dir or the HF cache) and the
    family's transformer class, so a family `tscale plan` does not describe (Qwen-Image, FLUX.2-dev, SD3) can still
    be checked against."""
    import diffusers

    from ..families import get_family
    from ..loading import check_model_source, kit_names, kit_pipeline_dir

    try:
        return meta_transformer(resolve_pipeline_spec(model), torch.bfloat16, None)
    except ValueError:  # (the real-dimension kit always has a description: no build here)
        if model in kit_names():
            directory = kit_pipeline_dir(model)
        else:
            source = check_model_source(model)
            directory = Path(source) if Path(source).is_dir() else _hub_cache_dir(source)
        if directory is None or not (directory / "model_index.json").is_file():
            raise
    pipeline_class = json.loads((directory / "model_index.json").read_text()).get("_class_name")
    transformer_class = getattr(diffusers, get_family(pipeline_class).transformer_class)
    config = transformer_class.load_config(str(directory), subfolder="transformer")
    with _quiet_diffusers(), torch.device("meta"):
        return transformer_class.from_config(config).to(torch.bfloat16)


def _meta_clip(clip_json: str, dtype: torch.dtype = torch.float32):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_dict(json.loads(clip_json))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return CLIPModel(config).to(dtype).requires_grad_(False).eval()


@functools.lru_cache(maxsize=64)
def component_bytes(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None = None, quantize: str = "none"
) -> dict[str, int]:
    """Weights of each component: transformer, lora (fp32), vae, text_encoder (all of them; in `dtype`).

    With `quantize` ("fp8"), the transformer's and text encoders' weights as `tscale_train.quantization` stores
    them (float8 linears, the rest in `dtype`), and `upcast_block` / `upcast_all`: the bytes of the largest
    transformer block's float8 weights, and of all of them, cast up to `dtype` (what a forward holds on top)."""
    from ..quantization import quantize_text_encoder, quantize_transformer

    transformer = meta_transformer(spec, dtype, lora)
    quantize_transformer(transformer, quantize, dtype)
    encoders = meta_text_encoders(spec, dtype)
    for encoder in encoders.values():
        quantize_text_encoder(encoder, quantize, dtype)
    sizes = {
        "transformer": module_bytes(transformer, lambda name: "lora_" not in name),
        "lora": module_bytes(transformer, lambda name: "lora_" in name),
        "vae": module_bytes(_meta_vae(spec, dtype)),
        "text_encoder": sum(module_bytes(encoder) for encoder in encoders.values()),
    }
    if quantize != "none":
        sizes["upcast_block"], sizes["upcast_all"] = _upcast_bytes(transformer, dtype)
    return sizes


def _upcast_bytes(transformer: torch.nn.Module, dtype: torch.dtype) -> tuple[int, int]:
    """(largest block's, all) bytes of the layerwise-cast weights in `dtype`; a block is an entry of one of the
    transformer's ModuleLists (FLUX.2: its double and single blocks)."""
    size = torch.empty((), dtype=dtype).element_size()

    def cast_bytes(module: torch.nn.Module) -> int:
        return sum(
            parameter.numel() * size
            for child in module.modules()
            if getattr(child, "_diffusers_hook", None) is not None
            and child._diffusers_hook.get_hook("layerwise_casting") is not None
            for parameter in child.parameters(recurse=False)
        )

    blocks = [
        block for child in transformer.children() if isinstance(child, torch.nn.ModuleList) for block in child
    ]
    return max((cast_bytes(block) for block in blocks), default=0), cast_bytes(transformer)


@functools.lru_cache(maxsize=16)
def reward_bytes(clip_json: str | None) -> int:
    """Weights of the reward model (float32, as `load_reward_for` loads it)."""
    return 0 if clip_json is None else module_bytes(_meta_clip(clip_json))
