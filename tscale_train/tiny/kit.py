"""What a kit pipeline folder says of itself: its `tscale_tiny.json` (`KIT_MARKER`).

Loading reads it from any local pipeline folder (`loading.generator_defaults`, `loading.reward_kwargs_for`),
so a kit is just a folder that carries one; the builders of `tscale_train.tiny` write it with
`save_kit_pipeline`. Light on purpose: no model is built or imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DIMS_MODEL_NAME", "KIT_MARKER", "TINY_KIT_REWARDS", "generator_settings", "save_kit_pipeline"]

# Written next to each kit pipeline: the settings its generator needs (see `generator_settings`) and the
# reward models that serve it (`kit_reward_models`). Any local pipeline folder may carry one.
KIT_MARKER = "tscale_tiny.json"
# The real-dimension kit's `--model` name (and its folder in the kit dir).
DIMS_MODEL_NAME = "dims-klein-4b"
# The `reward_models` value naming this kit's random-weight reward models (`ensure_tiny_kit`); the default.
TINY_KIT_REWARDS = "tiny-kit"


def save_kit_pipeline(pipe, out_dir: str | Path, marker: dict) -> Path:
    """`save_pretrained` a kit pipeline into `out_dir` and write its `KIT_MARKER` (`marker` as JSON, the
    tiny kit's reward models unless it names others) next to it, which `generator_settings` and
    `kit_reward_models` read back; returns `out_dir`."""
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # No `reward_models` key means the tiny kit's (the default), so kits built before the key existed are
    # byte-identical to new ones: node-local kit copies of a multi-node run must hash alike.
    (out_dir / KIT_MARKER).write_text(json.dumps(marker, indent=2))
    return out_dir


def generator_settings(pipeline_dir: str | Path) -> dict:
    """`FlowGenerator` keyword arguments a kit pipeline records in its `tscale_tiny.json`; {} elsewhere.

    `text_encoder_out_layers`, `max_sequence_length` and `default_resolution` (the marker's
    `resolution`), whichever the marker holds, plus its `generator_kwargs` as they are.
    """
    marker = Path(pipeline_dir) / KIT_MARKER
    if not marker.is_file():
        return {}
    recorded = json.loads(marker.read_text())
    # Anything else a family's generator takes (steps, guidance, ...), passed through as recorded.
    settings: dict = dict(recorded.get("generator_kwargs", {}))
    if "text_encoder_out_layers" in recorded:
        settings["text_encoder_out_layers"] = tuple(
            int(layer) for layer in recorded["text_encoder_out_layers"]
        )
    if "max_sequence_length" in recorded:
        settings["max_sequence_length"] = int(recorded["max_sequence_length"])
    if "resolution" in recorded:
        settings["default_resolution"] = int(recorded["resolution"])
    return settings
