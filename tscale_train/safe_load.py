"""No file of a checkpoint is ever unpickled with arbitrary globals.

accelerate reads its optimizer, scheduler and RNG files with `torch.load(weights_only=True)`, but it
drops an RNG file it cannot read without a word, and DeepSpeed's checkpoint engine reads the model and
optimizer partitions with `weights_only=False`: a pickle planted in any of them (a checkpoint copied
from a shared disk or a colleague) would run code under the user's account on resume. So resuming is
two steps, both here:

1. `check_checkpoint_files(path)`: every file of the checkpoint is read as what it claims to be before
   anything is loaded. A torch/pickle file (found by its first bytes, whatever its name) is read with
   `weights_only=True` and `allowed_globals()`; JSON must parse; safetensors must open. The first file
   that fails is named by an `UnsafeCheckpointError` (a pickle wanting more than the allow-list) or an
   `UnreadableCheckpointFile` (truncated or damaged).
2. `weights_only_loading()`: while the state loads, `torch.load` is `weights_only=True` with the same
   allow-list whatever its caller asks, so a file swapped in after the check is refused too.

The allow-list is what accelerate and DeepSpeed ZeRO write and nothing else: numpy arrays (the RNG
states), DeepSpeed's static loss scaler, its ZeRO stage enum and its parameter fragment addresses.
Each is rebuilt field by field by torch's weights-only unpickler; none runs code of the file's choosing.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "UnreadableCheckpointFile",
    "UnsafeCheckpointError",
    "allowed_globals",
    "check_checkpoint_files",
    "weights_only_loading",
]

# How pickled data begins: torch's zip container, or a pickle of protocol 2 or later.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_SAFETENSORS_SUFFIX = ".safetensors"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds pickled objects beyond tensors and plain data; nothing in it was run."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"checkpoint file {path} holds pickled objects other than tensors and plain data ({reason}); it was "
            "refused and nothing in it was run"
        )


class UnreadableCheckpointFile(ValueError):
    """A checkpoint file is not the data its kind says (truncated or damaged)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"checkpoint file {path} cannot be read ({reason})")


def allowed_globals() -> list:
    """The classes and functions a checkpoint's pickles may name (see the module docstring)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    allowed: list = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += (
        [kind for kind in vars(np.dtypes).values() if isinstance(kind, type)] if hasattr(np, "dtypes") else []
    )
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # no DeepSpeed: its checkpoints cannot be resumed anyway
        return allowed
    return [*allowed, LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    # torch's own message is a paragraph of advice to load with weights_only=False: keep only its finding.
    return text.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()[:200]


def _safe_torch_load(path: Path) -> None:
    with torch.serialization.safe_globals(allowed_globals()):
        torch.load(path, map_location="cpu", weights_only=True)


def check_checkpoint_files(checkpoint: str | Path) -> None:
    """Read every file under `checkpoint` as what it is; raise `UnsafeCheckpointError` naming the first
    one that holds a pickle needing more than `allowed_globals()`, or that is not the JSON or
    safetensors its name says. Files of other kinds (DeepSpeed's `latest` tag and its conversion
    scripts) are never loaded by a resume and are left alone."""
    from safetensors import safe_open

    for path in sorted(Path(checkpoint).rglob("*")):
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
        try:
            if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
                _safe_torch_load(path)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == _SAFETENSORS_SUFFIX:
                with safe_open(str(path), framework="pt"):
                    pass
        except pickle.UnpicklingError as error:  # the weights-only unpickler met something it will not build
            raise UnsafeCheckpointError(path, _reason(error)) from error
        except Exception as error:  # noqa: BLE001 - truncated zip, bad JSON, damaged safetensors...
            raise UnreadableCheckpointFile(path, _reason(error)) from error


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within this block every `torch.load` is `weights_only=True` with `allowed_globals()`, whatever
    its caller passes (DeepSpeed's checkpoint engine passes False); a refusal names the file."""
    original = torch.load

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed_globals()):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as error:
            raise UnsafeCheckpointError(Path(str(f)), _reason(error)) from error

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
