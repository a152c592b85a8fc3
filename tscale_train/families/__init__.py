"""The pipeline families tscale-train supports, one module each, and the registry they register in.

    from tscale_train.families import get_family
    family = get_family("ZImagePipeline")
    family.lora_targets["attention"], family.generator_class(), family.plan, family.kits

A family module declares everything the package needs of its family in one `ModelFamily`: the pipeline,
transformer and generator classes, the LoRA target presets, the hub checkpoints it recognises (their
model-card settings and bundled configs), its offline kits, what `tscale plan` runs and the ComfyUI key
map. Importing this package registers the built-in families; see docs/families.md to add one.
"""

from __future__ import annotations

from .plan import PlanFamily, PlanSpec
from .registry import (
    Checkpoint,
    ComfyUIKeys,
    ModelFamily,
    checkpoint_settings,
    family_kits,
    family_of_checkpoint,
    get_family,
    iter_families,
    known_models,
    known_pipeline_config,
    load_attribute,
    pipeline_classes,
    register_family,
)

# The built-in families, in the order they are listed to users (klein first). Registered on import.
from . import flux2_klein, flux2_dev, flux1, qwen_image, sd3, z_image  # noqa: E402, F401, I001  isort: skip

__all__ = [
    "Checkpoint",
    "ComfyUIKeys",
    "ModelFamily",
    "PlanFamily",
    "PlanSpec",
    "checkpoint_settings",
    "family_kits",
    "family_of_checkpoint",
    "get_family",
    "iter_families",
    "known_models",
    "known_pipeline_config",
    "load_attribute",
    "pipeline_classes",
    "register_family",
]
