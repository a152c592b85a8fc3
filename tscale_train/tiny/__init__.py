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

from ..families import family_kits, load_attribute
from ..io_utils import atomic_directory, respect_umask
from .kit import DIMS_MODEL_NAME as DIMS_MODEL_NAME
from .kit import KIT_MARKER as KIT_MARKER
from .kit import TINY_KIT_REWARDS
from .kit import generator_settings as generator_settings
from .kit import save_kit_pipeline as save_kit_pipeline

# Bump when a tiny config changes, so stale caches are rebuilt instead of silently reused.
KIT_VERSION = "v1"
FLUX2_DISTILLED_SUBDIR = "flux2-klein"
FLUX2_BASE_SUBDIR = "flux2-klein-base"
_COMPLETE_MARKER = ".complete"


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


def kit_reward_models(pipeline_dir: str | Path) -> Path | None:
    """The folder of the reward models that serve a pipeline folder, as its `KIT_MARKER` says; None without one.

    A kit's pipeline has random weights, so real reward models would judge noise (and cannot be fetched
    offline): its marker's `reward_models` is `TINY_KIT_REWARDS` (the tiny kit's, built on first use; also
    what a marker without the key means, as those of kits built before it) or a folder laid out as the kit's
    (`tiny.rewards`: pickscore/, open_clip/), relative to the pipeline folder.
    """
    marker = Path(pipeline_dir) / KIT_MARKER
    if not marker.is_file():
        return None
    reward_models = json.loads(marker.read_text()).get("reward_models", TINY_KIT_REWARDS)
    if reward_models == TINY_KIT_REWARDS:
        return ensure_tiny_kit(default_kit_dir())
    return (Path(pipeline_dir) / reward_models).resolve()


def tiny_pipeline_dir(distilled: bool = True, kit_dir: str | Path | None = None) -> Path:
    """The saved tiny `Flux2KleinPipeline` directory (building the kit if needed)."""
    kit = ensure_tiny_kit(kit_dir)
    return kit / (FLUX2_DISTILLED_SUBDIR if distilled else FLUX2_BASE_SUBDIR)


# The real-dimension kit (`--model dims-klein-4b`): ~550 M parameters, 1.1 GB, built only on request.
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


# One tiny kit per further pipeline family (`--model tiny-flux1`, ...), as each family registers it
# (`ModelFamily.kits`: model name -> "module:builder"). A builder `build(out_dir: Path, seed: int) -> Path`
# saves the pipeline with `save_kit_pipeline`. Each is built on first use, inside the tiny kit directory,
# like the real-dimension kit.
FAMILY_KIT_VERSION = "v1"


def __getattr__(name: str):
    # `FAMILY_KITS`, the registry's view (model name -> "module:builder"), as it was importable before.
    if name == "FAMILY_KITS":
        return family_kits()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def family_pipeline_dir(model: str, kit_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The saved tiny pipeline of a family's kit (`ModelFamily.kits`), building it once if needed."""
    kits = family_kits()
    if model not in kits:
        raise ValueError(f"unknown tiny family {model!r}; known: {', '.join(sorted(kits))}.")
    build = load_attribute(kits[model])
    target = ensure_tiny_kit(kit_dir) / model
    return _build_once(
        target, lambda staging: build(staging, seed=seed), f"version={FAMILY_KIT_VERSION} seed={seed}\n"
    )
