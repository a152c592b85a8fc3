"""A synthetic objective that depends only on a noise's low-frequency content (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def low_frequency_objective(target: Tensor, level: int) -> Callable[[Tensor], Tensor]:
    """Objective ``noises [N, C, H, W] -> [N]``: minus the mean squared distance of block means to ``target``.

    Each noise is average-pooled to ``target``'s ``(h, w)`` grid and multiplied by ``2**level`` (for
    ``2**level x 2**level`` blocks of N(0, 1) noise that is the block's Haar approximation coefficient,
    itself N(0, 1)); the score is ``-mean((pooled - target)**2)``. A random noise scores about
    ``-(1 + mean(target**2))``; only the low band can move it, which is what SES searches.
    """
    if target.dim() != 3:
        raise ValueError(f"target must be [C, h, w], got shape {tuple(target.shape)}")
    scale = float(2**level)

    def objective(noises: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(noises.float(), target.shape[-2:]) * scale
        return -((pooled - target.to(pooled.device)) ** 2).flatten(1).mean(dim=1)

    return objective


def random_target(low_shape: tuple[int, int, int], seed: int, scale: float = 1.0) -> Tensor:
    """A fixed N(0, scale^2) pattern of shape ``low_shape`` from ``seed`` (CPU, float32)."""
    return torch.randn(low_shape, generator=torch.Generator().manual_seed(seed)) * scale
