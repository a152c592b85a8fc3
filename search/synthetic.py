"""Synthetic objectives over noises ``[N, C, H, W] -> [N]`` (tests and benchmarks).

Each depends only on a noise's low-frequency content: the noise is average-pooled to a ``(h, w)`` grid
and multiplied by ``2**level``. For ``2**level x 2**level`` blocks of N(0, 1) noise that is the block's
orthonormal Haar approximation coefficient, itself N(0, 1), so a random noise's "low band" is a
standard Gaussian pattern and only the band SES searches can move the score. Three shapes:

- :func:`low_frequency_objective`: one smooth optimum (minus the squared distance to a target);
- :class:`TwoOptimaObjective`: a global optimum and a lower decoy optimum, each a local maximum, so a
  search can settle on the wrong one;
- :class:`NoisyObjective`: the first one observed through Gaussian noise, with its noise-free score
  available as ``.true``.

All are deterministic: the targets come from :func:`random_target` seeds, and the noisy objective's
observation noise from a generator it owns, seeded at construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def pooled_low_band(noises: Tensor, grid: tuple[int, int], level: int) -> Tensor:
    """Block means of ``noises [N, C, H, W]`` on a ``grid = (h, w)`` grid, times ``2**level`` -> ``[N, C, h, w]``.

    For ``H = h * 2**level`` (and likewise W) this is exactly the level-``level`` Haar approximation band.
    """
    return F.adaptive_avg_pool2d(noises.float(), grid) * float(2**level)


def _check_target(target: Tensor, name: str = "target") -> None:
    if target.dim() != 3:
        raise ValueError(f"{name} must be [C, h, w], got shape {tuple(target.shape)}")


def _mean_squared_distance(low: Tensor, target: Tensor) -> Tensor:
    return ((low - target.to(low.device)) ** 2).flatten(1).mean(dim=1)


def low_frequency_objective(target: Tensor, level: int) -> Callable[[Tensor], Tensor]:
    """Objective ``noises [N, C, H, W] -> [N]``: minus the mean squared distance of block means to ``target``.

    Each noise is average-pooled to ``target``'s ``(h, w)`` grid and multiplied by ``2**level`` (for
    ``2**level x 2**level`` blocks of N(0, 1) noise that is the block's Haar approximation coefficient,
    itself N(0, 1)); the score is ``-mean((pooled - target)**2)``. A random noise scores about
    ``-(1 + mean(target**2))``; only the low band can move it, which is what SES searches. The optimum,
    0, is reached by any noise whose pooled band equals ``target``.
    """
    _check_target(target)
    grid = tuple(target.shape[-2:])

    def objective(noises: Tensor) -> Tensor:
        return -_mean_squared_distance(pooled_low_band(noises, grid, level), target)

    return objective


class TwoOptimaObjective:
    """Two separate optima of different heights: ``max(-d(x, global_target), decoy_height - d(x, decoy_target))``.

    ``d`` is the mean squared distance of the pooled band (see :func:`low_frequency_objective`) to a
    target. The global optimum scores 0 (at ``global_target``), the decoy scores ``decoy_height < 0``
    (at ``decoy_target``). Both are strict local maxima because the constructor requires the peaks to be
    apart: ``d(global_target, decoy_target) > -decoy_height``. With a decoy target of smaller norm than
    the global one (e.g. ``random_target(..., scale=0.5)`` against scale 1) the decoy's branch is the
    higher one around ordinary N(0, 1) noises, so a search that follows the local slope heads for the
    decoy first and can get stuck there.

    Attributes:
        global_target, decoy_target: ``[C, h, w]`` patterns of the pooled band at the two optima.
        level: the pooling level (blocks of ``2**level`` pixels).
        decoy_height: the decoy optimum's score (the global optimum's is 0).
    """

    def __init__(
        self, global_target: Tensor, decoy_target: Tensor, level: int, decoy_height: float = -0.5
    ) -> None:
        _check_target(global_target, "global_target")
        _check_target(decoy_target, "decoy_target")
        if global_target.shape != decoy_target.shape:
            raise ValueError(
                f"global_target {tuple(global_target.shape)} and decoy_target {tuple(decoy_target.shape)} differ in shape"
            )
        if not decoy_height < 0:
            raise ValueError(f"decoy_height must be < 0 (below the global optimum's 0), got {decoy_height!r}")
        separation = float(((global_target.float() - decoy_target.float()) ** 2).mean())
        if separation <= -decoy_height:
            raise ValueError(
                f"the targets are too close (mean squared distance {separation:.3f} <= {-decoy_height}): the decoy "
                "would sit on the global optimum's slope instead of being a separate optimum; use other seeds, a "
                "larger scale difference or a decoy_height closer to 0"
            )
        self.global_target = global_target.float()
        self.decoy_target = decoy_target.float()
        self.level = level
        self.decoy_height = float(decoy_height)
        self._grid = tuple(global_target.shape[-2:])

    @property
    def optima(self) -> list[tuple[Tensor, float]]:
        """``[(target, height)]``: the global optimum first, then the decoy."""
        return [(self.global_target, 0.0), (self.decoy_target, self.decoy_height)]

    def _branches(self, noises: Tensor) -> tuple[Tensor, Tensor]:
        low = pooled_low_band(noises, self._grid, self.level)
        towards_global = -_mean_squared_distance(low, self.global_target)
        towards_decoy = self.decoy_height - _mean_squared_distance(low, self.decoy_target)
        return towards_global, towards_decoy

    def __call__(self, noises: Tensor) -> Tensor:
        return torch.maximum(*self._branches(noises))

    def in_global_basin(self, noises: Tensor) -> Tensor:
        """``[N]`` bool: whether each noise is on the global optimum's side (its branch is the maximum).

        Both branches have the same curvature, so that side is a half-space of the pooled band, and it is
        exactly the global optimum's basin of attraction under steepest ascent.
        """
        towards_global, towards_decoy = self._branches(noises)
        return towards_global >= towards_decoy


class NoisyObjective:
    """:func:`low_frequency_objective` observed through Gaussian noise: ``true(x) + noise_std * e``.

    Each call scores its noises with fresh observation noise, so evaluating the same noise twice gives
    different scores; ``true`` is the noise-free objective. A search only sees the noisy scores and
    returns the candidate whose NOISY score was highest; what a user gets is that candidate's TRUE
    score, which is what a benchmark should report (a lucky draw is not a better noise).

    The observation noise of the ``i``-th evaluated candidate is the ``i``-th number of one stream drawn
    from a generator seeded with ``seed`` (in fixed-size chunks), so it does not depend on how the
    candidates are split into calls: a one-at-a-time search and a batched one at the same evaluation
    index see the same draw. Build a fresh object per search to replay the same stream.

    Attributes:
        true: the noise-free objective ``noises -> [N]``.
        noise_std: standard deviation of the observation noise.
        num_evaluated: candidates scored so far (the position in the stream).
    """

    _CHUNK = 1024

    def __init__(self, target: Tensor, level: int, noise_std: float, seed: int) -> None:
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.true = low_frequency_objective(target, level)
        self.noise_std = float(noise_std)
        self.num_evaluated = 0
        self._generator = torch.Generator().manual_seed(int(seed))
        self._stream = torch.empty(0)

    def observation_noise(self, count: int) -> Tensor:
        """The next ``count`` standard normal draws of the stream ``[count]`` (advances it)."""
        start, stop = self.num_evaluated, self.num_evaluated + count
        while self._stream.numel() < stop:
            # Always the same chunk size: torch's CPU normal sampler gives size-dependent values, so drawing
            # exactly `count` numbers per call would tie the stream to how candidates are batched.
            chunk = torch.randn(self._CHUNK, generator=self._generator)
            self._stream = torch.cat((self._stream, chunk))
        self.num_evaluated = stop
        return self._stream[start:stop]

    def __call__(self, noises: Tensor) -> Tensor:
        true_scores = self.true(noises)
        noise = self.observation_noise(true_scores.shape[0]).to(true_scores.device)
        return true_scores + self.noise_std * noise


def random_target(low_shape: tuple[int, int, int], seed: int, scale: float = 1.0) -> Tensor:
    """A fixed N(0, scale^2) pattern of shape ``low_shape`` from ``seed`` (CPU, float32)."""
    return torch.randn(low_shape, generator=torch.Generator().manual_seed(seed)) * scale
