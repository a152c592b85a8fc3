"""The tiny offline model kit.

Real models cannot be downloaded where this project is built and tested, so the kit builds tiny
random-weight versions of every component (FLUX.2-klein distilled and base, a PickScore-style CLIP,
an open_clip model), saves them with `save_pretrained` into one directory, and everything that loads
real models loads these from that directory through the same code. The model name `tiny` selects it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

TINY_MODEL_NAME = "tiny"
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
    if (kit_dir / _COMPLETE_MARKER).exists():
        return kit_dir
    kit_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(kit_dir) + ".lock"):
        if (kit_dir / _COMPLETE_MARKER).exists():
            return kit_dir
        staging = Path(tempfile.mkdtemp(prefix=kit_dir.name + ".", dir=kit_dir.parent))
        try:
            build_tiny_kit(staging, seed=seed)
            if kit_dir.exists():
                shutil.rmtree(kit_dir)
            os.replace(staging, kit_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return kit_dir


def tiny_pipeline_dir(distilled: bool = True, kit_dir: str | Path | None = None) -> Path:
    """The saved tiny `Flux2KleinPipeline` directory (building the kit if needed)."""
    kit = ensure_tiny_kit(kit_dir)
    return kit / (FLUX2_DISTILLED_SUBDIR if distilled else FLUX2_BASE_SUBDIR)
