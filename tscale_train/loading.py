"""Loading pipelines, LoRAs and rewards from hub ids, local paths, or the offline kits' names.

The same functions load the real models and the random-weight kits (`tiny`, ...), so the tests exercise
the code that users run: a kit name is an alias of a local pipeline folder (`kit_pipeline_dir`), and the
folder's own `tscale_tiny.json` says what else it needs (generator settings, reward models). Every check
that can fail on bad input runs before any weights are loaded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from rewards.paths import looks_like_local_path

from .families import checkpoint_settings, family_kits, iter_families, pipeline_classes
from .generation import GENERATOR_DEFAULTS_ATTRIBUTE
from .lora import LORA_WEIGHT_NAME
from .shapes import SHAPES_MODEL_NAME
from .tiny.kit import DIMS_MODEL_NAME

# The diffusers pipeline classes that have a registered family (the class name in model_index.json).
SUPPORTED_PIPELINES = pipeline_classes()
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


# The offline kits' `--model` names: `tiny` is the distilled tiny klein, `tiny-base` the undistilled (CFG)
# flavour, `dims-klein-4b` has FLUX.2-klein-4B's real widths with one block of each kind, `shapes` is the
# trained miniature klein of the shapes world shipped with the package, and each family registers its own
# `tiny-<family>` (`ModelFamily.kits`). A name is only an alias of a local pipeline folder
# (`kit_pipeline_dir`); everything after that treats the folder as any other.
SHAPES_MODEL = SHAPES_MODEL_NAME
DIMS_MODEL = DIMS_MODEL_NAME
_KLEIN_KITS = {"tiny": True, "tiny-base": False}  # name -> distilled


def kit_names() -> tuple[str, ...]:
    """Every offline kit name `--model` accepts."""
    return (*_KLEIN_KITS, SHAPES_MODEL, DIMS_MODEL, *family_kits())


def kit_pipeline_dir(model: str) -> Path:
    """The folder of the offline kit named `model` (see `kit_names`), built on first use.

    The one place a kit name means something: the kits' folders carry their own settings and choice of
    reward models (`tscale_tiny.json`), so loading goes on as for any local pipeline folder.
    """
    from . import tiny

    if model in _KLEIN_KITS:
        return tiny.tiny_pipeline_dir(distilled=_KLEIN_KITS[model])
    if model == SHAPES_MODEL:
        return shapes_model_dir()
    if model == DIMS_MODEL:
        return tiny.dims_pipeline_dir()
    if model in family_kits():
        return tiny.family_pipeline_dir(model)
    raise ValueError(f"{model!r} is not an offline kit; the kits are {', '.join(kit_names())}.")


# Settings that a known checkpoint needs and its pipeline class cannot say, by hub id: each family's
# `Checkpoint.settings` (from the model cards; an explicit setting still wins).
KNOWN_MODEL_SETTINGS: dict[str, dict] = {
    model: dict(checkpoint.settings)
    for family in iter_families()
    for model, checkpoint in family.checkpoints.items()
    if checkpoint.settings
}


def is_offline_kit(model: str) -> bool:
    """Whether `model` is an offline kit: a kit name, or a local pipeline folder carrying a kit's
    `tscale_tiny.json` (random weights: what it makes is test data). Nothing is built or loaded."""
    from .tiny.kit import KIT_MARKER

    if model in kit_names():
        return True
    return looks_like_local_path(model) and (Path(model).expanduser() / KIT_MARKER).is_file()


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
    """The directory a `--model` value loads from, when it is local (a kit name or a path)."""
    if model in kit_names():
        return kit_pipeline_dir(model)
    return Path(model).expanduser() if looks_like_local_path(model) else None


def generator_defaults(model: str) -> dict:
    """`generator_for_pipeline` keyword arguments that `model` itself needs: {} for real models.

    A local pipeline folder may record its text-encoder layers, text length and default size next to
    itself (a kit's `tscale_tiny.json`), and a known hub checkpoint has its model card's steps and guidance
    (its family's `Checkpoint.settings`); pass them on: `generator_for_pipeline(pipe, **generator_defaults(model))`.
    """
    directory = _local_pipeline_dir(model)
    if directory is None:
        return checkpoint_settings(model)
    from .tiny.kit import generator_settings

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
    if model in kit_names():
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
    supported = pipeline_classes()  # read now: a family registered after this module's import counts
    if class_name not in supported:
        raise ValueError(
            f"--model {source!r} holds a {class_name}; supported pipelines: {', '.join(supported)}. "
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
    """Keyword arguments for `rewards.load_reward`: those of the reward models a kit folder names (a kit's
    random-weight PickScore / open_clip); none for any other model."""
    from .tiny.rewards import needs_kit_weights, tiny_reward_kwargs

    kwargs: dict = {}
    # A reward without kit weights never builds the tiny kit, whatever folder the model is.
    reward_models = _reward_models_for(model) if needs_kit_weights(reward) else None
    if reward_models is not None:
        kwargs.update(tiny_reward_kwargs(reward, reward_models))
    kwargs.update(overrides or {})
    return kwargs


def _reward_models_for(model: str) -> Path | None:
    """The folder of the reward models a local pipeline folder names in its `tscale_tiny.json` (a kit's
    random-weight PickScore / open_clip: `tiny.kit_reward_models`); None for a model without one.

    A kit name is not built for this: every kit folder the package builds names the tiny kit's reward
    models (the marker's default), so `--reward pickscore` of `dims-klein-4b` (1.1 GB) costs no kit build.
    """
    from . import tiny

    if model in kit_names():
        return tiny.ensure_tiny_kit(tiny.default_kit_dir())
    if not looks_like_local_path(model):
        return None
    return tiny.kit_reward_models(Path(model).expanduser())


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
    """`rewards.load_reward_spec(reward, ...)`, with the reward models `model`'s folder names (`reward_kwargs_for`).

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
