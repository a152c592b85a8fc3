"""Loading pipelines, LoRAs and rewards from hub ids, local paths, or the tiny offline kit.

The same functions load the real models and the tiny ones (`tiny`), so the tests exercise the code
that users run. Every check that can fail on bad input runs before any weights are loaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from rewards.paths import looks_like_local_path

from .generation import GENERATOR_CLASSES, GENERATOR_DEFAULTS_ATTRIBUTE
from .lora import LORA_WEIGHT_NAME

# The diffusers pipeline classes that have a `FlowGenerator` (the class name in model_index.json).
SUPPORTED_PIPELINES = tuple(GENERATOR_CLASSES)
DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-4B"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}.")
    return _DTYPES[dtype]


# The offline kit's model names (`tscale_train.tiny` is imported only when one is used).
# `tiny` is the distilled tiny klein, `tiny-base` the undistilled (CFG) flavour.
TINY_MODELS = {"tiny": True, "tiny-base": False}
# Kits beyond `tiny`, built on first use: `dims-klein-4b` has FLUX.2-klein-4B's real widths with
# one block of each kind; `tiny-<family>` is a tiny pipeline of each further family
# (`tscale_train.tiny.FAMILY_KITS`).
FAMILY_KIT_MODELS = ("tiny-flux1", "tiny-flux2-dev", "tiny-qwen-image", "tiny-sd3", "tiny-z-image")
# `shapes` is the trained miniature FLUX.2-klein of the shapes world, shipped with the package.
SHAPES_MODEL = "shapes"
KIT_MODELS = (SHAPES_MODEL, "dims-klein-4b", *FAMILY_KIT_MODELS)

# Settings that a known checkpoint needs and its pipeline class cannot say: a distilled model shares
# its class with the undistilled one (Z-Image-Turbo is a `ZImagePipeline`, whose defaults are the base
# model's 50 steps with CFG). From the model cards; an explicit setting still wins.
KNOWN_MODEL_SETTINGS: dict[str, dict] = {
    "Tongyi-MAI/Z-Image-Turbo": {"num_inference_steps": 9, "guidance_scale": 0.0},
    "black-forest-labs/FLUX.1-schnell": {
        "num_inference_steps": 4,
        "guidance_scale": 0.0,
        "max_sequence_length": 256,
    },
    "stabilityai/stable-diffusion-3.5-large-turbo": {"num_inference_steps": 4, "guidance_scale": 0.0},
    "stabilityai/stable-diffusion-3.5-medium": {"num_inference_steps": 40, "guidance_scale": 4.5},
}


def is_tiny(model: str) -> bool:
    """A model of the offline kit (`tiny`, `tiny-base`, `shapes`, `dims-klein-4b`, `tiny-<family>`): uses the kit's reward models."""
    return model in TINY_MODELS or model in KIT_MODELS


def _kit_pipeline_dir(model: str) -> Path:
    from .tiny import dims_pipeline_dir, family_pipeline_dir, tiny_pipeline_dir

    if model in TINY_MODELS:
        return tiny_pipeline_dir(distilled=TINY_MODELS[model])
    if model in FAMILY_KIT_MODELS:
        return family_pipeline_dir(model)
    if model == SHAPES_MODEL:
        return shapes_model_dir()
    return dims_pipeline_dir()


def shapes_model_dir() -> Path:
    """The shipped shapes pipeline (`--model shapes`); a clear error when a checkout lacks its weights."""
    from .shapes import SHIPPED_PIPELINE_DIR

    if not (SHIPPED_PIPELINE_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shapes model is missing from {SHIPPED_PIPELINE_DIR}; rebuild it with "
            "`python scripts/train_shapes_model.py` (about 2 hours on 2 CPU cores), or reinstall the package."
        )
    return SHIPPED_PIPELINE_DIR


def _local_pipeline_dir(model: str) -> Path | None:
    """The directory a `--model` value loads from, when it is local (a kit model or a path)."""
    if is_tiny(model):
        return _kit_pipeline_dir(model)
    return Path(model).expanduser() if looks_like_local_path(model) else None


def generator_defaults(model: str) -> dict:
    """`generator_for_pipeline` keyword arguments that `model` itself needs: {} for real models.

    A kit model (or a local copy of one) records its text-encoder layers, text length and default
    size next to its pipeline, and a known hub checkpoint has its model card's steps and guidance
    (`KNOWN_MODEL_SETTINGS`); pass them on: `generator_for_pipeline(pipe, **generator_defaults(model))`.
    """
    directory = _local_pipeline_dir(model)
    if directory is None:
        return dict(KNOWN_MODEL_SETTINGS.get(model, {}))
    from .tiny import generator_settings

    return generator_settings(directory)


def check_model_source(model: str) -> str:
    """Validate a `--model` value without loading anything; returns the local path or hub id.

    Accepted: a kit model (`tiny`, `tiny-base`, `shapes`, `dims-klein-4b`, `tiny-<family>`), a local pipeline
    directory (with `model_index.json` naming a supported class), or a hub id `org/name`.
    """
    if not model or not model.strip():
        raise ValueError(
            "--model is empty; pass a hub id (e.g. black-forest-labs/FLUX.2-klein-4B), a local dir, or 'tiny'."
        )
    if is_tiny(model):
        return model
    if looks_like_local_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"--model path {str(path)!r} does not exist; pass a saved pipeline directory, a hub id, or 'tiny'."
            )
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(
                f"--model {str(path)!r} is not a diffusers pipeline directory (no model_index.json); save one with "
                "pipe.save_pretrained(dir)."
            )
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (ValueError, AttributeError) as error:  # JSON, UTF-8 or not a mapping
            raise ValueError(
                f"--model {str(path)!r}: its model_index.json is not a JSON object ({error}); save the pipeline again."
            ) from error
        _check_supported(class_name, str(path))
        return str(path)
    if not _HUB_ID.match(model):
        raise ValueError(
            f"--model {model!r} is an unknown model: not 'tiny', not an existing local directory, and not a hub id of the "
            "form org/name; pass one of those."
        )
    return model


def _check_supported(class_name: str | None, source: str) -> str:
    if class_name not in SUPPORTED_PIPELINES:
        raise ValueError(
            f"--model {source!r} holds a {class_name}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}. "
            "Pass a checkpoint of one of those classes."
        )
    return class_name


def pipeline_class_name(source: str) -> str:
    """The diffusers pipeline class in `source`'s model_index.json (a local directory or a hub id),
    checked against `SUPPORTED_PIPELINES`. For a hub id only that small file is fetched (or read from
    the local cache offline), so an unsupported model is refused before any weights are downloaded."""
    path = Path(source)
    if path.is_dir():
        index = path / "model_index.json"
    else:
        from huggingface_hub import constants, hf_hub_download

        try:
            index = Path(
                hf_hub_download(source, "model_index.json", local_files_only=constants.HF_HUB_OFFLINE)
            )
        except Exception as error:  # noqa: BLE001 - hub errors come in many classes; all mean "not reachable"
            raise OSError(
                f"could not load {source!r} (its model_index.json): {str(error).splitlines()[0]} Check the hub id and "
                "your network/HF_TOKEN; offline, pass a local directory or a kit model such as 'tiny'."
            ) from error
    return _check_supported(json.loads(index.read_text()).get("_class_name"), source)


def load_pipeline(
    model: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device | None = None,
):
    """Load any supported pipeline (`SUPPORTED_PIPELINES`) from a hub id, a local directory, or a kit model.

    The class comes from the checkpoint's model_index.json, so `--model Tongyi-MAI/Z-Image-Turbo` loads a
    `ZImagePipeline` and `--model black-forest-labs/FLUX.2-klein-4B` a `Flux2KleinPipeline`. A real
    checkpoint says itself whether it is distilled where its class can tell (klein's `is_distilled`);
    the settings a known checkpoint or a kit model needs besides travel with the pipeline
    (`generator_defaults`). Remote code is never run.
    """
    import diffusers

    source = check_model_source(model)
    torch_dtype = parse_dtype(dtype)
    directory = _local_pipeline_dir(source)
    if directory is not None:
        source = str(directory)
    from huggingface_hub import constants

    pipeline_class = getattr(diffusers, pipeline_class_name(source))
    try:
        # Offline, ask for the local cache directly: diffusers would first try the Hub and log a
        # traceback about it before falling back.
        pipe = pipeline_class.from_pretrained(
            source, dtype=torch_dtype, local_files_only=constants.HF_HUB_OFFLINE
        )
    except OSError as error:
        if directory is not None:  # a local directory: nothing to do with the network
            raise OSError(
                f"could not load --model {source!r}: {str(error).splitlines()[0]} A weight file of this directory is missing "
                "or damaged; save the pipeline again (pipe.save_pretrained(dir)) or copy it again."
            ) from error
        raise OSError(
            f"could not load {source!r}: {str(error).splitlines()[0]} If this is a hub id, check the name and your "
            "network/HF_TOKEN; offline, pass a local directory or 'tiny'."
        ) from error
    if device is not None:
        pipe.to(device)
    # What `generator_defaults(model)` gives, carried by the pipeline for `generator_for_pipeline`.
    setattr(pipe, GENERATOR_DEFAULTS_ATTRIBUTE, generator_defaults(model))
    return pipe


def check_lora_source(lora: str) -> str:
    """Validate a `--lora` value: a local dir/file with diffusers LoRA weights (complete: see
    `check_safetensors_file`), or a hub id."""
    path = Path(lora).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"--lora directory {str(path)!r} has no .safetensors file; pass a directory holding "
                "pytorch_lora_weights.safetensors (as save_lora_weights and the training recipe write it)."
            )
        # The file diffusers loads from a directory: the standard name, else the only one.
        for file in [path / LORA_WEIGHT_NAME] if (path / LORA_WEIGHT_NAME).is_file() else files:
            check_safetensors_file(file, "--lora")
        return str(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"--lora file {str(path)!r} is not .safetensors, and only safetensors LoRAs are loaded (no pickles); "
                "convert it with safetensors.torch.save_file, or pass the .safetensors file."
            )
        check_safetensors_file(path, "--lora")
        return str(path)
    if looks_like_local_path(lora) or not _HUB_ID.match(lora):
        raise FileNotFoundError(
            f"--lora {lora!r} not found: pass a directory with pytorch_lora_weights.safetensors or a hub id."
        )
    return lora


# A safetensors header larger than this is not a LoRA's (the format itself caps it at 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000


def check_safetensors_file(path: str | Path, what: str = "--lora", fix: str | None = None) -> int:
    """Check that `path` is a complete safetensors file from its header alone (no tensor is read); returns
    the number of tensors. A file cut short (an interrupted copy or download) fails here, in one line, rather
    than deep inside a loader whose error blames the network or the model."""
    path = Path(path)
    size = path.stat().st_size
    fix = fix or "copy or download it again, or save it again with save_lora_weights."
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{what} file {str(path)!r} is {size} bytes, too short for a safetensors file; {fix}"
            )
        header_size = int.from_bytes(prefix, "little")
        if header_size > min(_MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError(
                f"{what} file {str(path)!r} is truncated or not a safetensors file (its header needs {header_size} bytes, "
                f"the file holds {size}); {fix}"
            )
        try:
            header = json.loads(handle.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ValueError(
                f"{what} file {str(path)!r} has a damaged safetensors header ({error}); {fix}"
            ) from error
    if not isinstance(header, dict):
        raise ValueError(
            f"{what} file {str(path)!r} has a damaged safetensors header (not a JSON object); {fix}"
        )
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    try:
        needed = max((int(entry["data_offsets"][1]) for entry in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"{what} file {str(path)!r} has a damaged safetensors header (bad data_offsets); {fix}"
        ) from error
    held = size - 8 - header_size
    if needed > held:
        raise ValueError(
            f"{what} file {str(path)!r} is truncated: its header lists {len(tensors)} tensors in {needed} bytes, but the "
            f"file holds {held}; {fix}"
        )
    return len(tensors)


def load_lora(pipe, lora: str, adapter_name: str = "default", scale: float = 1.0) -> None:
    """`pipe.load_lora_weights(lora)`, then check the adapter really attached to the transformer.

    diffusers only warns when no key of a LoRA matches the model; a LoRA made for another model is
    an error here, with its cause.
    """
    source = check_lora_source(lora)
    kwargs = {"adapter_name": adapter_name}
    path = Path(source)
    if path.is_file():
        kwargs["weight_name"] = path.name
        source = str(path.parent)
    elif not path.is_dir():
        # A hub id: name the diffusers file, so offline mode can use a cached copy.
        kwargs["weight_name"] = LORA_WEIGHT_NAME
    try:
        pipe.load_lora_weights(source, **kwargs)
    except OSError as error:  # not downloadable / not cached: nothing to do with the model
        if path.exists():  # a local file: the network and HF_TOKEN have nothing to do with it
            raise OSError(
                f"could not read --lora {lora!r}: {str(error).splitlines()[0]} The file is damaged or incomplete; copy it "
                "again, or save it again with save_lora_weights."
            ) from error
        raise OSError(
            f"could not fetch LoRA {lora!r}: {str(error).splitlines()[0]} Check the hub id and your network or "
            "HF_TOKEN, or pass a local directory."
        ) from error
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(
            f"--lora {lora!r} does not match this model ({type(pipe.transformer).__name__}): {error}. "
            "Use a LoRA trained for the same base model."
        ) from error
    adapters = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {}
    if adapter_name not in adapters.get("transformer", []):
        raise ValueError(
            f"--lora {lora!r} has no weights for this model's transformer; it was made for another model. "
            "Use a LoRA trained for the same base model."
        )
    if not math.isfinite(scale):
        raise ValueError(f"--lora_scale must be a finite number, got {scale}; e.g. --lora_scale 1.0.")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])


def reward_kwargs_for(reward: str, model: str, overrides: dict | None = None) -> dict:
    """Keyword arguments for `rewards.load_reward`: the tiny kit's reward models when `model` is tiny."""
    kwargs: dict = {}
    if is_tiny(model):
        from .tiny import default_kit_dir, ensure_tiny_kit
        from .tiny.rewards import tiny_reward_kwargs

        kwargs.update(tiny_reward_kwargs(reward, ensure_tiny_kit(default_kit_dir())))
    kwargs.update(overrides or {})
    return kwargs


def check_reward_overrides(reward: str, overrides: dict) -> list[str]:
    """The reward setting's names, once `overrides` (`--reward-arg`) are known to fit it: they go to a single
    reward only (with several, which one they meant is unclear), and must be arguments it takes."""
    from rewards import check_reward_arguments, check_reward_spec

    names = list(check_reward_spec(reward))
    if overrides and len(names) > 1:
        raise ValueError(
            f"--reward-arg {sorted(overrides)} is ambiguous with several rewards ({', '.join(names)}); use it with one "
            "--reward, or set each reward's arguments in its own callable."
        )
    if overrides:
        try:
            check_reward_arguments(names[0], overrides)
        except ValueError as error:
            raise ValueError(f"--reward-arg: {error}") from error
    return names


def load_reward_for(
    reward: str,
    model: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    batch_size: int | None = None,
    **overrides,
):
    """`rewards.load_reward_spec(reward, ...)`, with the tiny reward models when `model` is `tiny`.

    `reward` is one name or weighted names ("pickscore:1.0,hpsv2:0.5", see `rewards.weighted`);
    `overrides` (`--reward-arg`) go to a single reward only (`check_reward_overrides`).
    """
    from rewards import load_reward_spec

    names = check_reward_overrides(reward, overrides)
    return load_reward_spec(
        reward,
        component_kwargs={name: reward_kwargs_for(name, model, overrides) for name in names},
        device=device,
        dtype=parse_dtype(dtype),
        batch_size=batch_size,
    )
