"""An exponential moving average of the LoRA, as flow_grpo and DanceGRPO offer.

`ema = decay * ema + (1 - decay) * lora` after every optimizer step. Only the LoRA's parameters are
averaged (a rank-16 LoRA of FLUX.2-klein-4B's attention is tens of MB), kept in float32 next to
them. `applied()` swaps the average into the model for eval and export and swaps the trained
weights back; the checkpoint holds it as `ema.safetensors` (no pickle).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

EMA_WEIGHT_NAME = "ema.safetensors"


class LoraEMA:
    """The moving average of `parameters` (the trainable LoRA tensors, in a fixed order)."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}.")
        self.parameters = list(parameters)
        self.decay = decay
        self.shadow = [parameter.detach().float().clone() for parameter in self.parameters]
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average (call after each optimizer step)."""
        for average, parameter in zip(self.shadow, self.parameters, strict=True):
            average.lerp_(parameter.detach().float(), 1.0 - self.decay)
        self.num_updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The average in the model for the duration (eval, saving), the trained weights after."""
        trained = [parameter.detach().clone() for parameter in self.parameters]
        for parameter, average in zip(self.parameters, self.shadow, strict=True):
            parameter.copy_(average.to(parameter.dtype))
        try:
            yield
        finally:
            for parameter, weights in zip(self.parameters, trained, strict=True):
                parameter.copy_(weights)

    def save(self, directory: str | Path) -> Path:
        """`directory/ema.safetensors`: the average and its update count."""
        from safetensors.torch import save_file

        from .io_utils import atomic_write

        path = Path(directory) / EMA_WEIGHT_NAME
        tensors = {
            f"shadow.{index}": average.detach().cpu().contiguous()
            for index, average in enumerate(self.shadow)
        }
        metadata = {"num_updates": str(self.num_updates), "decay": repr(self.decay)}
        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))

    def load(self, directory: str | Path) -> None:
        """Restore what `save` wrote; a missing file or other shapes is a clear error."""
        from safetensors import safe_open

        path = Path(directory) / EMA_WEIGHT_NAME
        if not path.is_file():
            raise ValueError(
                f"checkpoint {str(directory)!r} has no {EMA_WEIGHT_NAME}: it was saved without ema_decay. "
                "Resume without --ema_decay, or start afresh."
            )
        with safe_open(str(path), framework="pt") as handle:
            names = [f"shadow.{index}" for index in range(len(self.shadow))]
            if sorted(handle.keys()) != sorted(names):
                raise ValueError(
                    f"{str(path)!r} holds {len(list(handle.keys()))} tensors for a LoRA of {len(names)}; resume with the same LoRA settings."
                )
            loaded = [handle.get_tensor(name) for name in names]
            self.num_updates = int(handle.metadata().get("num_updates", 0))
        for average, tensor in zip(self.shadow, loaded, strict=True):
            if average.shape != tensor.shape:
                raise ValueError(
                    f"{str(path)!r} has a tensor of shape {tuple(tensor.shape)} for {tuple(average.shape)}."
                )
            average.copy_(tensor)
