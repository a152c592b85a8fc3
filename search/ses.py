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

That is the published algorithm (DiffSynth-Studio's ``ses_search``), kept unchanged as
``SESConfig(variant="published")`` except for what never changes a result's quality: whole generations
are scored in one batch, the base noise is evaluated first (so the result is never worse than it), the
transform runs batched on the noise's device (Haar in torch) instead of per candidate in NumPy, and
non-power-of-two latents are padded with extra Gaussian values so candidates stay standard Gaussian.

The default, ``variant="surrogate"``, reaches the published algorithm's budget-50 reward at half the
evaluations on every objective of ``bench/search_quality.py`` (analytic and tiny-kit objectives), but
not on the shapes world's learned reward (``bench/shapes_search.py``: at budget 25 it is ahead of
best-of-N, behind the published algorithm at 50; README, Performance). It changes three things:

- the first generation is the base noise and ``popsize - 1`` FRESH standard Gaussian noises (every
  coefficient drawn, as best-of-N does), and the detail bands held fixed afterwards are those of the
  best of them, not necessarily the base noise's: a reward that also depends on the details gets the
  best-of-N start, and the search then refines the low band around it;
- after each elite update it fits a ridge regression of the standardised scores of EVERY candidate
  scored so far (not only the elites) on ``[x, -|x|^2, 1]`` (x: the flattened low band; one isotropic
  curvature, so ``numel + 2`` unknowns, which ``ridge`` keeps well posed with fewer scores than that)
  and, when the fitted curvature is positive, moves the mean to the fit's optimum ``g / 2c``; the
  variance is then multiplied by ``variance_decay`` so the search narrows around it;
- the next candidates stay on the shell of a standard Gaussian band: when their expected squared norm
  ``|mean|^2 + sum(var)`` exceeds ``numel + shell_sd * sqrt(2 numel)`` (``shell_sd`` standard deviations
  of a chi-square's spread above its mean), the mean is scaled down to it. Without this the fit's
  optimum can grow the low band's amplitude far beyond anything a diffusion model was trained on (on
  the tiny kit such noises "win" by saturating colours).

Every candidate of the first generation is therefore standard Gaussian at any latent size, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
            (see :func:`search.wavelets.max_level`: for Haar, ``2**level <= min(H, W)``). None: the
            deepest level up to 4 that keeps a 4x4 low band (:func:`search.wavelets.auto_level`; 4 on a
            1024px FLUX latent), which the product's settings use by default.
        popsize: candidates per generation (the first generation includes the base noise).
        k_elites: size of the elite archive (best candidates over all generations so far).
        init_mean, init_var: the initial search distribution N(init_mean, init_var) per coefficient;
            N(0, 1) makes the first candidates ordinary standard Gaussian noises.
        var_eps: added to the elite variance so the distribution never collapses to zero width.
        backend: ``"auto"`` (torch for Haar, PyWavelets otherwise), ``"torch"`` (Haar only) or
            ``"pywt"`` (force PyWavelets, e.g. to compare speed).
        variant: ``"surrogate"`` (the default, see the module docstring) or ``"published"`` (DiffSynth-
            Studio's algorithm unchanged: popsize 10, no surrogate, no decay, no shell, the level as set).
        surrogate: move the mean to the ridge fit's optimum after each generation.
        ridge: the fit's ridge on standardised scores; it matters when there are fewer scores than
            low-band numbers, which is every search at a real latent size.
        variance_decay: factor on the variance after each update (1: none).
        shell_sd: cap on the next candidates' expected squared norm, in standard deviations of a
            standard Gaussian band's (``math.inf``: no cap).
        fresh_first: first generation of fresh full noises; the best one's detail bands are kept.
        popsize, surrogate, variance_decay, shell_sd, fresh_first: None takes the variant's value
            (``SES_VARIANTS``).
    """

    wavelet: str = "db1"
    level: int | None = 4
    popsize: int | None = None
    k_elites: int = 5
    init_mean: float = 0.0
    init_var: float = 1.0
    var_eps: float = 1e-7
    backend: str = "auto"
    variant: str = "surrogate"
    surrogate: bool | None = None
    ridge: float = 10.0
    variance_decay: float | None = None
    shell_sd: float | None = None
    fresh_first: bool | None = None

    def __post_init__(self) -> None:
        if self.variant not in SES_VARIANTS:
            raise ValueError(
                f"SESConfig.variant must be one of {', '.join(SES_VARIANTS)}, got {self.variant!r}"
            )
        preset = SES_VARIANTS[self.variant]
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
            elif self.variant == "published" and name != "popsize" and getattr(self, name) != value:
                raise ValueError(
                    f"SESConfig(variant='published') is the published algorithm unchanged; it takes no {name}="
                    f"{getattr(self, name)!r} (use variant='surrogate' to change it)"
                )
        validate_wavelet(self.wavelet)
        resolve_backend(self.wavelet, self.backend)
        if self.level is not None:
            check_positive_int(self.level, "SESConfig.level")
        check_positive_int(self.popsize, "SESConfig.popsize")
        check_positive_int(self.k_elites, "SESConfig.k_elites")
        if not math.isfinite(self.init_mean):
            raise ValueError(f"SESConfig.init_mean must be finite, got {self.init_mean!r}")
        if not (math.isfinite(self.init_var) and self.init_var > 0):
            raise ValueError(f"SESConfig.init_var must be a finite number > 0, got {self.init_var!r}")
        if not (math.isfinite(self.var_eps) and self.var_eps >= 0):
            raise ValueError(f"SESConfig.var_eps must be a finite number >= 0, got {self.var_eps!r}")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"SESConfig.ridge must be a finite number > 0, got {self.ridge!r}")
        if not (0 < self.variance_decay <= 1):
            raise ValueError(f"SESConfig.variance_decay must be in (0, 1], got {self.variance_decay!r}")
        if not self.shell_sd >= 0:
            raise ValueError(f"SESConfig.shell_sd must be >= 0 (math.inf: no cap), got {self.shell_sd!r}")


# What each variant gives the fields left at None (set one explicitly to ablate it).
SES_VARIANTS: dict[str, dict] = {
    "surrogate": {
        "popsize": 10,
        "surrogate": True,
        "variance_decay": 0.7,
        "shell_sd": 3.0,
        "fresh_first": True,
    },
    "published": {
        "popsize": 10,
        "surrogate": False,
        "variance_decay": 1.0,
        "shell_sd": math.inf,
        "fresh_first": False,
    },
}


def published_variant(config: SESConfig) -> SESConfig:
    """The published algorithm with ``config``'s shared settings (wavelet, level, popsize, elites, init)."""
    if config.variant == "published":
        return config
    # Every setting the published algorithm fixes, at its value (popsize is shared, not fixed).
    fixed = {name: value for name, value in SES_VARIANTS["published"].items() if name != "popsize"}
    return replace(config, variant="published", **fixed)


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
        self._fresh_count = 0  # size of a `fresh_first` first generation, once asked

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

    def _draw_fresh(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` standard Gaussian noises at the codec's padded size, on the noise's device (work dtype)."""
        fresh = torch.randn((count, *self.codec.padded_shape), generator=generator, dtype=torch.float32)
        return fresh.to(device=self.codec.device, dtype=self.codec.work_dtype)

    def _crop(self, padded: Tensor) -> Tensor:
        _, height, width = self.codec.shape
        return padded[:, :, :height, :width].to(self.codec.dtype).contiguous()

    def _propose_fresh(self, n: int) -> Tensor:
        """The first generation of ``fresh_first``: the base noise and ``n - 1`` fresh noises, all coefficients drawn."""
        self._fresh_state = self.generator.get_state()  # noise_at redraws them instead of keeping them
        self._fresh_count = n
        self._fresh_padded = self._draw_fresh(n - 1, self.generator)  # dropped once the generation is scored
        self._low_bands[0] = self.codec.base_low.to(device="cpu", dtype=torch.float32)
        if n > 1:
            self._low_bands[1:n] = self.codec.forward_low(self._fresh_padded).to(
                device="cpu", dtype=torch.float32
            )
        return torch.cat((self.base_noise.unsqueeze(0), self._crop(self._fresh_padded)))

    def _propose(self, n: int) -> Tensor:
        start = self._num_asked
        if start == 0 and self.config.fresh_first:
            return self._propose_fresh(n)
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
        if start == 0 and self.config.fresh_first:
            # From now on, search the low band around the best first candidate's detail bands (its low band
            # is in the archive like every other candidate's). The base keeps its own; so does an all-NaN start.
            best = int(torch.argmax(ranking))
            if best > 0 and ranking[best] > -math.inf:
                self.codec = self.codec.rebased(self._fresh_padded[best - 1])
            del self._fresh_padded
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
        if self.config.surrogate:
            optimum = self._surrogate_optimum(start + ranking.numel())
            if optimum is not None:
                self._mean = optimum
        self._var = self._var * self.config.variance_decay
        if math.isfinite(self.config.shell_sd):
            # The next candidates' expected squared norm is |mean|^2 + sum(var); a standard Gaussian band's
            # is chi-square: mean numel, sd sqrt(2 numel).
            numel = self._mean.numel()
            room = max(numel + self.config.shell_sd * math.sqrt(2 * numel) - float(self._var.sum()), 0.0)
            squared_norm = float(self._mean.square().sum())
            if squared_norm > room:
                self._mean = self._mean * math.sqrt(room / squared_norm)

    def _surrogate_optimum(self, num_scored: int) -> Tensor | None:
        """Optimum of a ridge fit ``score ~ g.x - c|x|^2 + b`` over every finite score so far, or None.

        Scores are standardised first, so ``ridge`` means the same whatever the reward's scale. None
        when fewer than 3 scores are finite, they are all equal, or the fitted curvature is not positive.
        """
        scores = self._scores[:num_scored].double()
        finite = torch.isfinite(scores)
        if int(finite.sum()) < 3:
            return None
        lows = self._low_bands[:num_scored][finite].reshape(int(finite.sum()), -1).double()
        scores = scores[finite]
        spread = scores.std()
        if not spread > 0:
            return None
        targets = (scores - scores.mean()) / spread
        features = torch.cat((lows, -lows.square().sum(dim=1, keepdim=True)), dim=1)
        # An unpenalised intercept is the same as centring; then the ridge solution in its dual form,
        # features.T @ (K + ridge I)^-1 @ targets with K the n x n Gram matrix, costs an n x n solve
        # (n <= budget) instead of a (numel + 1)-square one (2049 at a 1024px klein latent).
        features = features - features.mean(dim=0)
        gram = features @ features.T
        dual = torch.linalg.solve(
            gram + self.config.ridge * torch.eye(len(scores), dtype=torch.float64), targets
        )
        weights = features.T @ dual
        gradient, curvature = weights[:-1], float(weights[-1])
        if curvature <= 1e-6:
            return None  # no maximum to move to (flat or convex fit): keep the elite mean
        return (gradient / (2 * curvature)).float()

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
        fresh_rows = (indices > 0) & (indices < self._fresh_count)
        if bool(fresh_rows.any()):
            redrawn = self._crop(
                self._draw_fresh(self._fresh_count - 1, torch.Generator().set_state(self._fresh_state))
            )
            noises[fresh_rows.to(noises.device)] = redrawn[indices[fresh_rows] - 1]
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
