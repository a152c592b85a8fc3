"""The tiny offline model kit.

Real models cannot be downloaded where this project is built and tested, so the kit builds tiny
random-weight versions of every component (FLUX.2-klein distilled and base, a PickScore-style CLIP,
an open_clip model), saves them with `save_pretrained` into one directory, and everything that loads
real models loads these from that directory through the same code. The model name `tiny` selects it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

from filelock import FileLock

from ..io_utils import atomic_directory, respect_umask

TINY_MODEL_NAME = "tiny"
# Bump when a tiny config changes, so stale caches are rebuilt instead of silently reused.
KIT_VERSION = "v1"
FLUX2_DISTILLED_SUBDIR = "flux2-klein"
FLUX2_BASE_SUBDIR = "flux2-klein-base"
_COMPLETE_MARKER = ".complete"
# Written next to each kit pipeline: the settings its generator needs (see `generator_settings`).
KIT_MARKER = "tscale_tiny.json"


def default_kit_dir() -> Path:
    """`$TSCALE_TINY_DIR`, else `~/.cache/tscale_train/tiny-<version>`."""
    env_dir = os.environ.get("TSCALE_TINY_DIR")
    if env_dir:
        return Path(env_dir)
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "tscale_train" / f"tiny-{KIT_VERSION}"


def build_tiny_kit(out_dir: str | Path, seed: int = 0) -> Path:
    """Build every tiny component into `out_dir` (overwrites). Deterministic given `seed`."""
    from .flux2 import build_tiny_flux2_klein
    from .rewards import build_tiny_rewards

    out_dir = Path(out_dir)
    build_tiny_flux2_klein(out_dir / FLUX2_DISTILLED_SUBDIR, distilled=True, seed=seed)
    build_tiny_flux2_klein(out_dir / FLUX2_BASE_SUBDIR, distilled=False, seed=seed)
    build_tiny_rewards(out_dir, seed=seed)
    (out_dir / _COMPLETE_MARKER).write_text(f"seed={seed}\n")
    return out_dir


def ensure_tiny_kit(kit_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Return a complete kit directory, building it once if needed.

    Safe to call from several processes at once (`accelerate launch`): one builds under a file lock
    into a temporary directory that is renamed into place, the others wait and reuse it, and an
    interrupted build never leaves a half kit behind.
    """
    kit_dir = Path(kit_dir) if kit_dir is not None else default_kit_dir()
    return _build_once(
        kit_dir, lambda staging: build_tiny_kit(staging, seed=seed), f"seed={seed}\n", exact=False
    )


@contextmanager
def _saving_on_any_rank() -> Iterator[None]:
    """Let `save_pretrained` write from whichever process builds the kit.

    Under `accelerate launch` the process group is up before a model is loaded, and transformers'
    `save_pretrained` silently writes nothing on a process whose global rank is not 0: the kit of a
    node whose builder is not rank 0 (every node but the first with a node-local TSCALE_TINY_DIR, or
    any rank that wins the lock) came out without its text encoders and reward weights, marked
    complete. The build runs no collective, so it is done as if no process group were up.
    """
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield
        return
    with patch.object(torch.distributed, "is_initialized", lambda: False):
        yield


def _build_once(target: Path, build: Callable[[Path], object], stamp: str, *, exact: bool = True) -> Path:
    """Build `target` once: under a file lock, into a temporary sibling renamed into place.

    Complete means `target/.complete` exists (and, with `exact`, holds `stamp`); other processes wait
    on the lock and reuse what the first one built, and an interrupted build leaves nothing behind.
    """
    marker = target / _COMPLETE_MARKER

    def complete() -> bool:
        return marker.is_file() and (not exact or marker.read_text() == stamp)

    if complete():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if complete():
            return target
        with atomic_directory(target, remove_stale=True) as staging:  # under the lock: no one else builds it
            staging.mkdir()
            with _saving_on_any_rank():
                build(staging)
            (staging / _COMPLETE_MARKER).write_text(stamp)
            # save_pretrained writes 0600 weights (safetensors >= 0.8): a kit dir shared by a node's users needs the umask's modes.
            respect_umask(staging)
    return target


def save_kit_pipeline(pipe, out_dir: str | Path, marker: dict) -> Path:
    """`save_pretrained` a kit pipeline into `out_dir` and write its `KIT_MARKER` (`marker` as JSON) next
    to it, which `generator_settings` reads back; returns `out_dir`."""
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
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


def tiny_pipeline_dir(distilled: bool = True, kit_dir: str | Path | None = None) -> Path:
    """The saved tiny `Flux2KleinPipeline` directory (building the kit if needed)."""
    kit = ensure_tiny_kit(kit_dir)
    return kit / (FLUX2_DISTILLED_SUBDIR if distilled else FLUX2_BASE_SUBDIR)


# The real-dimension kit (`--model dims-klein-4b`): ~550 M parameters, 1.1 GB, built only on request.
DIMS_MODEL_NAME = "dims-klein-4b"
DIMS_SUBDIR = DIMS_MODEL_NAME


def dims_kit_dir(kit_dir: str | Path | None = None) -> Path:
    """Where the real-dimension pipeline lives: `<tiny kit dir>/dims-klein-4b`."""
    kit = Path(kit_dir) if kit_dir is not None else default_kit_dir()
    return kit / DIMS_SUBDIR


def _dims_stamp(seed: int) -> str:
    from .real_dims import DIMS_KIT_VERSION

    return f"version={DIMS_KIT_VERSION} seed={seed}\n"


def ensure_dims_kit(kit_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Return the real-dimension `Flux2KleinPipeline` directory, building it once if needed.

    It lives inside the tiny kit directory, which is made complete first (so that a tiny-kit build never
    replaces a directory holding it, and its reward models are there for `--reward pickscore`). Built
    like the tiny kit: under a file lock, into a temporary sibling renamed into place; a kit from
    another version or seed is rebuilt.
    """
    from .real_dims import build_dims_flux2_klein

    target = dims_kit_dir(ensure_tiny_kit(kit_dir))
    return _build_once(target, lambda staging: build_dims_flux2_klein(staging, seed=seed), _dims_stamp(seed))


def dims_pipeline_dir(kit_dir: str | Path | None = None) -> Path:
    """The saved real-dimension `Flux2KleinPipeline` directory (building it if needed)."""
    return ensure_dims_kit(kit_dir)


# One tiny kit per further pipeline family (`--model tiny-flux1`, ...): model name -> "module:builder".
# A builder `build(out_dir: Path, seed: int) -> Path` saves the pipeline with `save_pretrained` and
# writes `KIT_MARKER` ({"kind": ..., "resolution": ..., "generator_kwargs": {...}}). Each is built on
# first use, inside the tiny kit directory, like the real-dimension kit.
FAMILY_KITS = {
    "tiny-flux1": "tscale_train.tiny.flux1:build_tiny_flux1",
    "tiny-flux2-dev": "tscale_train.tiny.flux2_dev:build_tiny_flux2_dev",
    "tiny-qwen-image": "tscale_train.tiny.qwen_image:build_tiny_qwen_image",
    "tiny-sd3": "tscale_train.tiny.sd3:build_tiny_sd3",
    "tiny-z-image": "tscale_train.tiny.z_image:build_tiny_z_image",
}
FAMILY_KIT_VERSION = "v1"


def family_pipeline_dir(model: str, kit_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The saved tiny pipeline of a `FAMILY_KITS` model (building it once if needed)."""
    import importlib

    if model not in FAMILY_KITS:
        raise ValueError(f"unknown tiny family {model!r}; known: {', '.join(sorted(FAMILY_KITS))}.")
    module, _, name = FAMILY_KITS[model].partition(":")
    build = getattr(importlib.import_module(module), name)
    target = ensure_tiny_kit(kit_dir) / model
    return _build_once(
        target, lambda staging: build(staging, seed=seed), f"version={FAMILY_KIT_VERSION} seed={seed}\n"
    )
