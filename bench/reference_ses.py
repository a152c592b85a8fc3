"""The published SES, re-implemented independently, as the baseline our SES must equal or beat.

This follows DiffSynth-Studio's ``ses_search`` step by step (read for the facts, written anew), with
one change: its random numbers come from a ``torch.Generator`` argument instead of torch's global RNG
(``generator=None`` keeps the global RNG, as published). It deliberately keeps everything the
published version does differently from ours (`search.ses`):

- the base noise is never scored: all ``budget`` evaluations are samples of the CEM distribution,
  and the first generation samples plain N(0, 1) low bands (mean 0, variance 1);
- candidates are scored ONE AT A TIME: ``objective`` gets ``[1, C, H, W]`` and returns one score;
- each candidate is rebuilt on the CPU in NumPy with PyWavelets ``waverec2`` (mode ``'symmetric'``)
  from its low band and the base noise's detail bands (``wavedec2`` of the first batch item), then
  cropped to ``H x W`` and moved to the base noise's device and dtype;
- every generation draws ``popsize`` samples ``mu + randn(popsize, numel) * std`` with
  ``std = sqrt(clamp(var, min=1e-9))``, scores them until the budget runs out, and keeps an elite
  archive of the best ``k_elites`` over all evaluations so far (a stable sort: on equal scores older
  elites come first); the next ``mu`` is the archive's mean and ``var`` its unbiased variance plus
  1e-7, or, with a single elite, the previous ``var``;
- the best candidate is the first one with the highest score (strictly greater replaces it);
  if no score ever beats -inf (all NaN), the base noise's own low band is returned, as published.

It imports nothing from our ``search`` package, so it can check that package's SES.
Usage: ``from reference_ses import reference_ses_search`` (with ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pywt
import torch
from torch import Tensor

# The published version has no constraint on popsize vs budget: it loops (budget // popsize) + 5
# generations and stops when the budget is spent.
EXTRA_GENERATIONS = 5
VARIANCE_EPS = 1e-7
MIN_VARIANCE = 1e-9


@dataclass
class ReferenceResult:
    """What the published SES produces, in the shape our searches report it.

    Attributes:
        best_noise: ``[1, C, H, W]`` noise of the best candidate (base device and dtype).
        best_score: its score (-inf if no candidate beat -inf).
        best_index: its evaluation index (-1 if none; the base noise is never evaluated).
        scores: ``[budget]`` float64 scores in evaluation order, as the objective returned them.
        low_bands: ``[budget, C, h, w]`` float32 low band of every candidate.
        distributions: ``(mu, var)`` flat float32 tensors each generation sampled from, in order.
    """

    best_noise: Tensor
    best_score: float
    best_index: int
    scores: Tensor
    low_bands: Tensor
    distributions: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    @property
    def num_evaluated(self) -> int:
        return int(self.scores.numel())

    def best_so_far(self) -> Tensor:
        """``[num_evaluated]`` running maximum of the scores (NaN counted as -inf)."""
        ranked = torch.nan_to_num(self.scores, nan=-math.inf)
        return torch.cummax(ranked, dim=0).values


def split_detail_bands(base_noise: Tensor, wavelet: str, level: int) -> tuple[np.ndarray, list]:
    """PyWavelets ``wavedec2`` (mode 'symmetric') of the first batch item: ``(low [C, h, w], detail bands)``."""
    noise = base_noise.detach().to("cpu", torch.float32)
    if noise.dim() == 4:
        noise = noise[0]  # the published version keeps only the first item's details
    if noise.dim() != 3:
        raise ValueError(f"base_noise must be [C, H, W] or [B, C, H, W], got shape {tuple(base_noise.shape)}")
    coeffs = pywt.wavedec2(noise.numpy(), wavelet, level=level, mode="symmetric", axes=(-2, -1))
    return coeffs[0], list(coeffs[1:])


def reconstruct(low: np.ndarray, details: list, wavelet: str, height: int, width: int) -> Tensor:
    """One candidate's full noise ``[1, C, H, W]`` (CPU float32) from its low band and the fixed details."""
    noise = pywt.waverec2([low, *details], wavelet, mode="symmetric", axes=(-2, -1))
    noise = noise[..., :height, :width]
    return torch.from_numpy(np.ascontiguousarray(noise)).unsqueeze(0)


def reference_ses_search(
    objective: Callable[[Tensor], Tensor | float],
    base_noise: Tensor,
    budget: int = 30,
    popsize: int = 10,
    k_elites: int = 5,
    wavelet: str = "db1",
    level: int = 4,
    generator: torch.Generator | None = None,
) -> ReferenceResult:
    """Run the published SES for exactly ``budget`` one-candidate objective calls.

    Args:
        objective: ``noise [1, C, H, W] -> score`` (a float or a one-element tensor), higher is better.
        base_noise: ``[C, H, W]`` or ``[B, C, H, W]``; only its (first item's) detail bands are used.
        budget, popsize, k_elites, wavelet, level: as published (defaults too).
        generator: CPU generator for the samples (None: torch's global RNG, as published).
    """
    if budget < 1 or popsize < 1 or k_elites < 1:
        raise ValueError(f"budget, popsize and k_elites must be >= 1, got {budget}, {popsize}, {k_elites}")
    height, width = base_noise.shape[-2:]
    base_low, details = split_detail_bands(base_noise, wavelet, level)
    low_shape = base_low.shape
    numel = int(base_low.size)
    mu = torch.zeros(numel, dtype=torch.float32)
    var = torch.ones(numel, dtype=torch.float32)

    scores: list[float] = []
    low_bands: list[Tensor] = []
    distributions: list[tuple[Tensor, Tensor]] = []
    elites: list[tuple[float, Tensor]] = []  # (score, flat low band), best first
    best_score, best_index = -math.inf, -1
    best_low = torch.from_numpy(np.ascontiguousarray(base_low)).reshape(-1)
    for _ in range(budget // popsize + EXTRA_GENERATIONS):
        if len(scores) >= budget:
            break
        distributions.append((mu.clone(), var.clone()))
        std = torch.sqrt(torch.clamp(var, min=MIN_VARIANCE))
        samples = mu + torch.randn(popsize, numel, generator=generator) * std
        generation: list[tuple[float, Tensor]] = []
        for sample in samples:
            if len(scores) >= budget:
                break
            noise = reconstruct(sample.reshape(low_shape).numpy(), details, wavelet, height, width)
            score_value = torch.as_tensor(objective(noise.to(base_noise.device, base_noise.dtype)))
            if score_value.numel() != 1:
                raise ValueError(
                    f"objective must return one score per call, got shape {tuple(score_value.shape)}"
                )
            score = float(score_value.reshape(()))
            generation.append((score, sample))
            if score > best_score:  # NaN never compares greater, so a NaN candidate is never best
                best_score, best_index, best_low = score, len(scores), sample
            scores.append(score)
            low_bands.append(sample.reshape(low_shape))
        if not generation:
            break
        # list.sort is stable, also with reverse=True: among equal scores older elites stay first.
        elites = sorted(elites + generation, key=lambda item: item[0], reverse=True)[:k_elites]
        elite_lows = torch.stack([low for _, low in elites])
        mu = elite_lows.mean(dim=0)
        if len(elites) > 1:
            var = torch.var(elite_lows, dim=0, correction=1) + VARIANCE_EPS
        # One elite: the unbiased variance is undefined; the previous variance is kept, as published.

    best_noise = reconstruct(best_low.reshape(low_shape).numpy(), details, wavelet, height, width)
    return ReferenceResult(
        best_noise=best_noise.to(base_noise.device, base_noise.dtype),
        best_score=best_score,
        best_index=best_index,
        scores=torch.tensor(scores, dtype=torch.float64),
        low_bands=torch.stack(low_bands),
        distributions=distributions,
    )
