"""The family registry: every family is declared once, and every part of the package reads that one declaration."""

from __future__ import annotations

import re

import pytest

from tscale_train import loading
from tscale_train.families import (
    ModelFamily,
    checkpoint_settings,
    family_kits,
    get_family,
    iter_families,
    known_models,
    known_pipeline_config,
    pipeline_classes,
    register_family,
)
from tscale_train.generation import generator_class

PRESETS = ("attention", "attention_ff", "all_linear")


def test_builtin_families_are_registered_klein_first():
    names = [family.name for family in iter_families()]
    assert names == ["FLUX.2-klein", "FLUX.2-dev", "FLUX.1", "Qwen-Image", "SD3", "Z-Image"]
    assert loading.SUPPORTED_PIPELINES == pipeline_classes()


@pytest.mark.parametrize("family", list(iter_families()), ids=lambda family: family.name)
def test_generator_and_presets_come_from_the_family(family: ModelFamily):
    cls = generator_class(family.pipeline_class)
    assert cls is family.generator_class()
    assert (cls.family, cls.pipeline_class) == (family.name, family.pipeline_class)
    assert dict(cls.lora_targets) == dict(family.lora_targets)
    assert set(family.lora_targets) == set(PRESETS)
    for regex in family.lora_targets.values():
        re.compile(regex)
    if family.plan is not None:
        assert (family.plan.pipeline_class, family.plan.transformer_class) == (
            family.pipeline_class,
            family.transformer_class,
        )


def test_kits_and_checkpoints_are_read_from_the_registry():
    kits = family_kits()
    assert set(kits) == {"tiny-flux1", "tiny-flux2-dev", "tiny-qwen-image", "tiny-sd3", "tiny-z-image"}
    assert set(loading.kit_names()) == {"tiny", "tiny-base", "shapes", "dims-klein-4b", *kits}
    for name in loading.kit_names():
        assert loading.check_model_source(name) == name
    assert loading.KNOWN_MODEL_SETTINGS["Tongyi-MAI/Z-Image-Turbo"] == {
        "num_inference_steps": 9,
        "guidance_scale": 0.0,
    }
    assert loading.generator_defaults("black-forest-labs/FLUX.1-schnell") == checkpoint_settings(
        "black-forest-labs/FLUX.1-schnell"
    )
    assert checkpoint_settings("black-forest-labs/FLUX.2-klein-4B") == {}
    assert known_models() == (
        "black-forest-labs/FLUX.2-klein-4B",
        "black-forest-labs/FLUX.2-klein-base-4B",
        "black-forest-labs/FLUX.2-klein-9B",
        "black-forest-labs/FLUX.2-klein-base-9B",
        "black-forest-labs/FLUX.1-dev",
        "black-forest-labs/FLUX.1-schnell",
        "Tongyi-MAI/Z-Image-Turbo",
    )
    config = known_pipeline_config("Tongyi-MAI/Z-Image-Turbo")
    assert config["pipeline_class"] == "ZImagePipeline" and config["max_sequence_length"] == 512
    config["transformer"]["n_layers"] = 1  # a copy: the registered configs stay as they are
    assert known_pipeline_config("Tongyi-MAI/Z-Image-Turbo")["transformer"]["n_layers"] == 30
    assert known_pipeline_config("org/unknown") is None


def test_unknown_classes_and_clashing_registrations_are_refused():
    with pytest.raises(ValueError, match="not supported; supported: Flux2KleinPipeline"):
        get_family("StableDiffusionXLPipeline")
    with pytest.raises(ValueError, match="registered already"):
        register_family(ModelFamily("Other", "FluxPipeline", "X", "m:C", {}))
    with pytest.raises(ValueError, match=r"kit names \['tiny-flux1'\]"):
        register_family(ModelFamily("Other", "OtherPipeline", "X", "m:C", {}, kits={"tiny-flux1": "m:b"}))
    assert "OtherPipeline" not in pipeline_classes()
    # Registering the same declaration again (a module imported twice) is harmless.
    assert register_family(get_family("FluxPipeline")) is get_family("FluxPipeline")


def test_comfyui_export_is_declared_by_the_flux2_families_only():
    from tscale_train.export.comfyui import comfyui_keys

    assert comfyui_keys("Flux2KleinPipeline") is comfyui_keys("Flux2Pipeline")
    with pytest.raises(ValueError, match="Z-Image LoRAs have no ComfyUI"):
        comfyui_keys("ZImagePipeline")


def test_a_folder_with_a_kit_marker_is_a_kit(tmp_path):
    from tscale_train.tiny import KIT_MARKER, kit_reward_models

    folder = tmp_path / "copy"
    folder.mkdir()
    assert not loading.is_offline_kit(str(folder)) and kit_reward_models(folder) is None
    (folder / KIT_MARKER).write_text(
        '{"reward_models": "../rewards", "generator_kwargs": {"num_inference_steps": 3}}'
    )
    assert loading.is_offline_kit(str(folder))
    assert kit_reward_models(folder) == (tmp_path / "rewards").resolve()
    assert loading.generator_defaults(str(folder)) == {"num_inference_steps": 3}
