"""FLUX.2-dev (`Flux2Pipeline`): guidance-distilled, a Mistral-Small-3.1 text encoder.

Same transformer class and module names as klein, so the same LoRA presets and ComfyUI key map.
"""

from __future__ import annotations

from .flux2_klein import FLUX2_COMFYUI_KEYS, FLUX2_LORA_TARGETS
from .registry import ModelFamily, register_family

FLUX2_DEV = register_family(
    ModelFamily(
        name="FLUX.2-dev",
        hub_tag="flux2",
        pipeline_class="Flux2Pipeline",
        transformer_class="Flux2Transformer2DModel",
        generator="tscale_train.generators.flux2_dev:Flux2Generator",
        lora_targets=FLUX2_LORA_TARGETS,
        kits={"tiny-flux2-dev": "tscale_train.tiny.flux2_dev:build_tiny_flux2_dev"},
        comfyui=FLUX2_COMFYUI_KEYS,
    )
)
