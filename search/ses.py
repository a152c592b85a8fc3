"""Spectral Evolution Search (SES): cross-entropy method over the wavelet approximation band of a noise.

Per sample, an orthonormal 2-D DWT over (H, W) of every channel (Haar / ``db1``, level 4 by default)
splits the base noise into a low band (``C x h x w`` numbers, e.g. 128x4x4 = 2048 for a 128x64x64
latent) and detail bands. The details stay fixed; a diagonal Gaussian over the flattened low band,
N(init_mean, init_var) at the start, is refined by the cross-entropy method:

1. the first generation is the base noise itself plus ``popsize - 1`` samples, later ones ``popsize``
   samples (the last one fewer, so exactly ``budget`` candidates are scored);
2. each candidate's low band is recombined with the fixed details into a full noise
   (:class:`search.wavelets.LowBandCodec`), and the whole generation is scored in one objective call;
3. an elite archive keeps the ``k_elites`` best candidates seen so far, across all generations (NaN and
   -inf scores never enter it; ties go to the earlier evaluation);
4. the archive's mean and unbiased variance (``correction=1``) plus ``var_eps`` become the next
   distribution. With a single elite the variance is undefined: the mean moves to that elite and the
   previous variance is kept (as DiffSynth-Studio's reference does). With no elite (every score so far NaN
   or -inf) the distribution is unchanged.

This is the algorithm of DiffSynth-Studio's ``ses_search`` with these differences: whole generations
are scored in one batch, the base noise is evaluated first (so the result is never worse than it), the
transform runs batched on the noise's device (Haar in torch) instead of per candidate in NumPy, and
non-power-of-two latents are padded with extra Gaussian values so candidates stay standard Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from search.result import (
    BatchedSearch,
    Objective,
    Progress,
    SearchResult,
    check_positive_int,
    resolve_generator,
    run_loop,
)
from search.wavelets import LowBandCodec, resolve_backend, validate_wavelet


@dataclass
class SESConfig:
    """Settings of Spectral Evolution Search.

    Attributes:
        wavelet: orthogonal PyWavelets wavelet name; ``"db1"`` / ``"haar"`` run in pure torch.
        level: DWT level; lowered with a warning when the latent is too small
            (see :func:`search.wavelets.max_level`: for Haar, ``2**level <= min(H, W)``).
        popsize: candidates per generation (the first generation includes the base noise).
        k_elites: size of the elite archive (best candidates over all generations so far).
        init_mean, init_var: the initial search distribution N(init_mean, init_var) per coefficient;
            N(0, 1) makes the first candidates ordinary standard Gaussian noises.
        var_eps: added to the elite variance so the distribution never collapses to zero width.
        backend: ``"auto"`` (torch for Haar, PyWavelets otherwise), ``"torch"`` (Haar only) or
            ``"pywt"`` (force PyWavelets, e.g. to compare speed).
    """

    wavelet: str = "db1"
    level: int = 4
    popsize: int = 10
    k_elites: int = 5
    init_mean: float = 0.0
    init_var: float = 1.0
    var_eps: float = 1e-7
    backend: str = "auto"

    def __post_init__(self) -> None:
        validate_wavelet(self.wavelet)
        resolve_backend(self.wavelet, self.backend)
        check_positive_int(self.level, "SESConfig.level")
        check_positive_int(self.popsize, "SESConfig.popsize")
        check_positive_int(self.k_elites, "SESConfig.k_elites")
        if not math.isfinite(self.init_mean):
            raise ValueError(f"SESConfig.init_mean must be finite, got {self.init_mean!r}")
        if not (math.isfinite(self.init_var) and self.init_var > 0):
            raise ValueError(f"SESConfig.init_var must be a finite number > 0, got {self.init_var!r}")
        if not (math.isfinite(self.var_eps) and self.var_eps >= 0):
            raise ValueError(f"SESConfig.var_eps must be a finite number >= 0, got {self.var_eps!r}")


class SpectralEvolutionSearch(BatchedSearch):
    """SES as an ask/tell object, so several searches can share one batched evaluation.

    Example::

        search = SpectralEvolutionSearch(base_noise, budget=50, config=SESConfig(), generator=g)
        while not search.done:
            noises = search.ask()            # [n, C, H, W]; the first batch starts with the base noise
            search.tell(objective(noises))   # [n] scores, higher is better
        result = search.result()

    Args:
        base_noise: ``[C, H, W]`` or ``[1, C, H, W]``; supplies the fixed detail bands.
        budget: exact number of candidates to score, base noise included (>= 1).
        config: :class:`SESConfig` (defaults when None).
        generator: CPU generator all randomness comes from (padding values, then one draw per
            generation). None: a fresh generator seeded from torch's global RNG (see
            :func:`search.result.resolve_generator`).
    """

    def __init__(
        self,
        base_noise: Tensor,
        budget: int,
        config: SESConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(base_noise, budget)
        self.config = SESConfig() if config is None else config
        if not isinstance(self.config, SESConfig):
            raise ValueError(f"config must be an SESConfig or None, got {type(self.config).__name__}")
        self.generator = resolve_generator(generator)
        self.codec = LowBandCodec(
            self.base_noise, self.config.wavelet, self.config.level, self.generator, self.config.backend
        )
        # The search state lives on the CPU in float32: it is small (C*h*w numbers) and sampling there
        # keeps every run identical whatever device the noise is on.
        numel = self.codec.low_numel
        self._mean = torch.full((numel,), float(self.config.init_mean), dtype=torch.float32)
        self._var = torch.full((numel,), float(self.config.init_var), dtype=torch.float32)
        self._low_bands = torch.empty((self.budget, *self.codec.low_shape), dtype=torch.float32)
        self._elites = torch.empty(0, dtype=torch.long)  # evaluation indices, best first

    @property
    def batch_size(self) -> int:
        return self.config.popsize

    @property
    def level(self) -> int:
        """Wavelet level in use (the configured one, or lower for small latents)."""
        return self.codec.level

    @property
    def low_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of the searched approximation band."""
        return self.codec.low_shape

    @property
    def mean(self) -> Tensor:
        """Current search-distribution mean, ``[C, h, w]`` (a copy)."""
        return self._mean.reshape(self.low_shape).clone()

    @property
    def var(self) -> Tensor:
        """Current search-distribution variance, ``[C, h, w]`` (a copy)."""
        return self._var.reshape(self.low_shape).clone()

    @property
    def elite_indices(self) -> Tensor:
        """Evaluation indices of the elite archive, best first (a copy)."""
        return self._elites.clone()

    def _propose(self, n: int) -> Tensor:
        start = self._num_asked
        include_base = start == 0
        num_sampled = n - 1 if include_base else n
        lows = torch.empty((n, self.codec.low_numel), dtype=torch.float32)
        if include_base:
            lows[0] = self.codec.base_low.reshape(-1).to(device="cpu", dtype=torch.float32)
        if num_sampled:
            standard = torch.randn((num_sampled, self.codec.low_numel), generator=self.generator)
            lows[n - num_sampled :] = self._mean + standard * self._var.sqrt()
        lows = lows.reshape(n, *self.low_shape)
        self._low_bands[start : start + n] = lows
        if include_base:
            # Decoding the base's float32 low band would be exact too, but only when the work dtype is
            # float32; handing back the base itself guarantees element 0 is bit-identical to it.
            noises = self.codec.decode(lows)
            noises[0] = self.base_noise
            return noises
        return self.codec.decode(lows)

    def _update(self, start: int, ranking: Tensor) -> None:
        new = torch.arange(start, start + ranking.numel())[ranking > -math.inf]
        candidates = torch.cat((self._elites, new))
        if candidates.numel() == 0:
            return  # every score so far was NaN (or -inf): nothing to learn from
        candidate_scores = torch.cat((self._elite_ranking(), ranking[new - start]))
        # Stable sort keeps evaluation order among equal scores (older elites come first in `candidates`).
        order = torch.sort(candidate_scores, descending=True, stable=True).indices
        self._elites = candidates[order[: self.config.k_elites]]
        elite_lows = self._low_bands[self._elites].reshape(self._elites.numel(), -1)
        self._mean = elite_lows.mean(dim=0)
        if self._elites.numel() > 1:
            self._var = torch.var(elite_lows, dim=0, correction=1) + self.config.var_eps
        # One elite: the unbiased variance is undefined, so the previous variance is kept.

    def _elite_ranking(self) -> Tensor:
        scores = self._scores[self._elites]
        return torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)

    def _trace_extra(self) -> dict:
        return {
            "mean_abs_mu": float(self._mean.abs().mean()),
            "mean_sigma": float(self._var.sqrt().mean()),
        }

    def noise_at(self, index: int | Tensor) -> Tensor:
        """Re-create candidate(s) by evaluation index -> ``[k, C, H, W]`` (identical to what was asked)."""
        indices = self._check_indices(index)
        noises = self.codec.decode(self._low_bands[indices])
        base_rows = indices == 0
        if bool(base_rows.any()):
            noises[base_rows.to(noises.device)] = self.base_noise
        return noises

    def result(self) -> SearchResult:
        """The search's :class:`SearchResult` (partial if called before :attr:`done`)."""
        return self._result(self._low_bands, self.level)


def ses_search(
    objective: Objective,
    base_noise: Tensor,
    budget: int = 50,
    config: SESConfig | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """Run Spectral Evolution Search to its budget and return the best noise found.

    Args:
        objective: ``noises [N, C, H, W] -> scores [N]``, higher is better; called once per generation
            with the whole generation.
        base_noise: ``[C, H, W]`` or ``[1, C, H, W]``; evaluated first, supplies the fixed detail bands.
        budget: exact number of candidates scored, base included.
        config: :class:`SESConfig`.
        generator: CPU generator (None: seeded from torch's global RNG).
        progress: optional ``callable(num_evaluated, best_score)`` called after each generation.

    A thin loop over :class:`SpectralEvolutionSearch`: same generator, bit-identical result.
    """
    search = SpectralEvolutionSearch(base_noise, budget, config=config, generator=generator)
    run_loop(search, objective, progress)
    return search.result()
