"""The family registry: one `ModelFamily` per diffusers pipeline family, declared by its own module.

In the manner of peft's tuner registry (`PEFT_TYPE_TO_CONFIG_MAPPING`, `register_peft_method`): each
module of `tscale_train.families` builds one `ModelFamily` and calls `register_family` on it, and every
other part of the package (loading, generation, LoRA presets, `tscale plan`, the ComfyUI export, the
offline kits) asks the registry instead of keeping its own table. Adding a family is one new module
in `tscale_train/families/` (imported by its `__init__`), its generator and its tiny kit builder.

This module imports nothing of `tscale_train`: heavy pieces (the generator class, the kit builder) are
named as "module:attribute" strings and imported on first use, so reading the registry stays cheap and
no import circle goes through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .plan import PlanFamily


@dataclass(frozen=True)
class Checkpoint:
    """A hub checkpoint a family recognises by its id.

    `settings` are the `FlowGenerator` keyword arguments its model card asks for and its pipeline class
    cannot say (a distilled model shares its class with the undistilled one: Z-Image-Turbo is a
    `ZImagePipeline`, whose defaults are the base model's 50 steps with CFG); an explicit setting still
    wins. `configs` are its component configs bundled for planning offline (`tscale plan`), with the keys
    of `known_pipeline_config`.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    configs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ComfyUIKeys:
    """How a family's diffusers LoRA module names map onto the original (BFL) layout ComfyUI loads.

    Module names are without their prefix. `fused_qkv`: an original fused projection -> the diffusers
    projections it splits into, in order; `swapped_halves`: modules whose original weight has its two
    output halves in the other order.
    """

    double_blocks: Mapping[str, str]
    single_blocks: Mapping[str, str]
    top_level: Mapping[str, str]
    fused_qkv: Mapping[str, tuple[str, ...]]
    swapped_halves: frozenset[str] = frozenset()
    # The diffusers and original names of the two kinds of block.
    double_block_name: tuple[str, str] = ("transformer_blocks", "double_blocks")
    single_block_name: tuple[str, str] = ("single_transformer_blocks", "single_blocks")


@dataclass(frozen=True)
class ModelFamily:
    """Everything the package knows of one diffusers pipeline family."""

    name: str  # what `FlowGenerator.family` says, e.g. "FLUX.2-klein"
    pipeline_class: str  # the diffusers pipeline class, as `model_index.json` names it
    transformer_class: str  # the diffusers denoiser class
    generator: str  # "module:FlowGenerator subclass"
    # LoRA target presets (`--lora_target_modules attention|attention_ff|all_linear`): regexes over full
    # module names of the denoiser (peft matches bare names by suffix, which is ambiguous).
    lora_targets: Mapping[str, str]
    checkpoints: Mapping[str, Checkpoint] = field(default_factory=dict)
    # Offline random-weight kits: `--model` name -> "module:builder", `builder(out_dir, seed) -> Path`
    # saving the pipeline with `save_pretrained` and its `tscale_tiny.json` (`tiny.save_kit_pipeline`).
    kits: Mapping[str, str] = field(default_factory=dict)
    plan: PlanFamily | None = None  # None: `tscale plan` cannot describe it yet
    comfyui: ComfyUIKeys | None = None  # None: no original-layout LoRA export
    hub_tag: str = ""  # the Hub tag of an exported adapter's model card

    def generator_class(self) -> type:
        """The family's `FlowGenerator` subclass (imported on first use)."""
        return load_attribute(self.generator)


def load_attribute(reference: str) -> Any:
    """ "package.module:attribute" -> the attribute."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


_FAMILIES: dict[str, ModelFamily] = {}  # by pipeline class


def register_family(family: ModelFamily) -> ModelFamily:
    """Add `family` to the registry (by its pipeline class); returns it, so a module can keep the constant."""
    existing = _FAMILIES.get(family.pipeline_class)
    if existing is not None and existing != family:
        raise ValueError(
            f"the pipeline class {family.pipeline_class} is registered already ({existing.name})."
        )
    taken = {kit: other.name for other in _FAMILIES.values() if other is not existing for kit in other.kits}
    clashes = sorted(set(family.kits) & set(taken))
    if clashes:
        raise ValueError(f"kit names {clashes} of {family.name} are registered already.")
    _FAMILIES[family.pipeline_class] = family
    return family


def iter_families() -> Iterator[ModelFamily]:
    """Every registered family, in registration order."""
    return iter(list(_FAMILIES.values()))


def pipeline_classes() -> tuple[str, ...]:
    """The diffusers pipeline classes that have a family (the class names in model_index.json)."""
    return tuple(_FAMILIES)


def get_family(pipeline_class: str | None) -> ModelFamily:
    """The family of a diffusers pipeline class name; ValueError naming the supported ones for any other."""
    if pipeline_class not in _FAMILIES:
        raise ValueError(
            f"pipelines of class {pipeline_class} are not supported; supported: {', '.join(sorted(_FAMILIES))}."
        )
    return _FAMILIES[pipeline_class]


def family_of_checkpoint(model: str) -> ModelFamily | None:
    """The family that recognises the hub id `model`, or None."""
    return next((family for family in _FAMILIES.values() if model in family.checkpoints), None)


def checkpoint_settings(model: str) -> dict[str, Any]:
    """The model-card generator settings of a recognised hub id ({} for any other model)."""
    family = family_of_checkpoint(model)
    return dict(family.checkpoints[model].settings) if family is not None else {}


def known_models() -> tuple[str, ...]:
    """The hub ids whose component configs are bundled for planning offline."""
    return tuple(
        model
        for family in _FAMILIES.values()
        for model, checkpoint in family.checkpoints.items()
        if checkpoint.configs is not None
    )


def known_pipeline_config(model: str) -> dict[str, Any] | None:
    """A deep copy of the bundled component configs of `model`, or None for a model without any.

    Keys: `pipeline_class` (the diffusers class in its model_index.json), `transformer`, `text_encoder`,
    `text_encoder_2` (FLUX.1's T5), `vae`, `is_distilled` (klein), and `max_sequence_length` where it is
    not the family's default.
    """
    import copy

    family = family_of_checkpoint(model)
    if family is None or family.checkpoints[model].configs is None:
        return None
    return {"pipeline_class": family.pipeline_class, **copy.deepcopy(dict(family.checkpoints[model].configs))}


def family_kits() -> dict[str, str]:
    """Every family's offline kits: `--model` name -> "module:builder"."""
    return {name: builder for family in _FAMILIES.values() for name, builder in family.kits.items()}
