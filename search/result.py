"""The search result and the ask/tell bookkeeping shared by SES and random search."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]
Progress = Callable[[int, float], None]


@dataclass
class SearchResult:
    """Outcome of one search over the initial noise.

    Attributes:
        best_noise: ``[1, C, H, W]`` best noise found, on the base noise's device and dtype.
        best_score: its score (NaN only when every score was NaN; the base noise is returned then).
        best_index: evaluation index of the best noise (0 = the base noise).
        scores: ``[num_evaluated]`` float32 CPU scores in evaluation order (index 0 = base noise), as the
            objective returned them (NaN kept).
        low_bands: ``[num_evaluated, C, h, w]`` float32 CPU approximation band of every candidate
            (SES only; None for random search).
        trace: one dict per generation / batch: ``num_evaluated``, ``best_score``, ``generation_best``,
            ``generation_mean`` and, for SES, ``mean_abs_mu`` and ``mean_sigma`` of the search
            distribution after that generation's update.
        level: wavelet level actually used (after automatic lowering); None for random search.
    """

    best_noise: Tensor
    best_score: float
    best_index: int
    scores: Tensor
    low_bands: Tensor | None = None
    trace: list[dict] = field(default_factory=list)
    level: int | None = None

    @property
    def num_evaluated(self) -> int:
        """How many candidates were scored (the budget, for a finished search)."""
        return int(self.scores.numel())

    @property
    def base_score(self) -> float:
        """Score of the unsearched base noise (evaluation index 0)."""
        return float(self.scores[0])

    def best_so_far(self) -> Tensor:
        """``[num_evaluated]`` running maximum of the scores (NaN counted as -inf)."""
        return torch.cummax(ranking_scores(self.scores), dim=0).values


def ranking_scores(scores: Tensor) -> Tensor:
    """Scores used for ranking: NaN becomes -inf, so a NaN candidate is never best nor an elite."""
    return torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)


def rank_best_first(scores: Tensor | Sequence[float]) -> list[int]:
    """Evaluation indices ordered best first: higher score first, equal scores in evaluation order.

    Non-finite scores (NaN, +-inf: a failed decode or reward) are left out, so the list may be
    shorter than ``scores`` (or empty).
    """
    score_tensor = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if score_tensor.ndim != 1:
        raise ValueError(
            f"rank_best_first: scores must be 1-D (one search), got shape {tuple(score_tensor.shape)}"
        )
    values = score_tensor.tolist()
    finite = [index for index, value in enumerate(values) if math.isfinite(value)]
    return sorted(finite, key=lambda index: (-values[index], index))


def check_base_noise(base_noise: Tensor) -> Tensor:
    """Validate ``base_noise`` ([C, H, W] or [1, C, H, W], floating, finite); return it as [C, H, W]."""
    if not isinstance(base_noise, Tensor):
        raise ValueError(
            f"base_noise must be a torch.Tensor [C, H, W] or [1, C, H, W], got {type(base_noise).__name__}"
        )
    if base_noise.dim() == 4:
        if base_noise.shape[0] != 1:
            raise ValueError(
                f"base_noise has batch size {base_noise.shape[0]}, but a search optimises one noise: run one "
                "search per sample (ask/tell objects let several searches share one batched evaluation)"
            )
        base_noise = base_noise[0]
    elif base_noise.dim() != 3:
        raise ValueError(f"base_noise must be [C, H, W] or [1, C, H, W], got shape {tuple(base_noise.shape)}")
    if not base_noise.is_floating_point():
        raise ValueError(f"base_noise must be a floating-point tensor, got dtype {base_noise.dtype}")
    if base_noise.numel() == 0:
        raise ValueError(f"base_noise is empty (shape {tuple(base_noise.shape)})")
    if not bool(torch.isfinite(base_noise).all()):
        raise ValueError("base_noise contains NaN or inf values: pass a finite Gaussian noise")
    return base_noise.detach()


def check_positive_int(value: int, name: str) -> int:
    """Raise ValueError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """Return a CPU generator to sample from.

    ``None`` means "use torch's global RNG": a fresh CPU generator is seeded with a number drawn by
    ``torch.randint`` from the global generator, so ``torch.manual_seed(s)`` before the search makes it
    reproducible, and the global stream advances by exactly one draw. A CUDA generator is refused:
    sampling happens on the CPU so results do not depend on the device the noise lives on.
    """
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return torch.Generator().manual_seed(seed)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (got one on {generator.device}): the search samples on "
            "the CPU and moves samples to the noise's device, so results are the same on every device"
        )
    return generator


class BatchedSearch:
    """Ask/tell state shared by the searches: budget, scores, best candidate, trace.

    Subclasses implement ``_propose(n)`` (the next ``n`` candidates' noises, recording whatever
    ``noise_at`` needs), ``_update(start, ranking)`` (learn from the batch just told) and ``noise_at``.
    """

    def __init__(self, base_noise: Tensor, budget: int) -> None:
        self.base_noise = check_base_noise(base_noise)
        self.budget = check_positive_int(budget, "budget")
        self._scores = torch.full((self.budget,), math.nan, dtype=torch.float32)
        self._num_asked = 0
        self._num_told = 0
        self._pending = 0  # size of the batch asked but not told yet
        self._best_index = 0
        self._best_ranking = -math.inf
        self.trace: list[dict] = []

    @property
    def batch_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def done(self) -> bool:
        """True once ``budget`` candidates have been told."""
        return self._num_told >= self.budget

    @property
    def num_evaluated(self) -> int:
        """How many candidates have been told so far."""
        return self._num_told

    @property
    def best_score(self) -> float:
        """Best score told so far (-inf before the first tell; NaN if every score so far was NaN)."""
        if self._num_told == 0:
            return -math.inf
        return float(self._scores[self._best_index])

    @property
    def best_index(self) -> int:
        """Evaluation index of the best candidate told so far (0 before any tell)."""
        return self._best_index

    def ask(self) -> Tensor:
        """Next batch of candidate noises ``[n, C, H, W]``, ``n = min(batch size, remaining budget)``.

        The first batch holds the base noise itself as element 0.
        """
        if self.done:
            raise RuntimeError(f"the search is done ({self.budget} candidates scored): call result()")
        if self._pending:
            raise RuntimeError(
                f"call tell() with the {self._pending} scores of the last ask() before asking again"
            )
        n = min(self.batch_size, self.budget - self._num_asked)
        noises = self._propose(n)
        self._num_asked += n
        self._pending = n
        return noises

    def tell(self, scores: Tensor) -> None:
        """Scores ``[n]`` (higher is better, any device) for the batch of the last :meth:`ask`.

        NaN scores are allowed: they rank as -inf, so such a candidate is never best nor an elite.
        """
        if not self._pending:
            raise RuntimeError("tell() called without a pending ask(): call ask() first")
        values = torch.as_tensor(scores).detach().to(device="cpu", dtype=torch.float32)
        # Accept [n] and harmless variants ([n, 1], a scalar when n == 1), nothing that needs guessing.
        if values.numel() != self._pending or values.squeeze().dim() > 1:
            raise ValueError(
                f"tell() expects {self._pending} scores (shape [{self._pending}]) for the last ask(), "
                f"got shape {tuple(values.shape)}"
            )
        values = values.reshape(-1)
        start, n = self._num_told, self._pending
        self._scores[start : start + n] = values
        ranking = ranking_scores(values)
        batch_best = int(torch.argmax(ranking))  # first maximum: earlier evaluations win ties
        if self._num_told == 0 or float(ranking[batch_best]) > self._best_ranking:
            self._best_index = start + batch_best
            self._best_ranking = float(ranking[batch_best])
        self._num_told += n
        self._pending = 0
        self._update(start, ranking)
        finite = values[~torch.isnan(values)]
        entry = {
            "num_evaluated": self._num_told,
            "best_score": self.best_score,
            "generation_best": float(values[batch_best]),
            "generation_mean": float(finite.mean()) if finite.numel() else math.nan,
        }
        entry.update(self._trace_extra())
        self.trace.append(entry)

    def _propose(self, n: int) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _update(self, start: int, ranking: Tensor) -> None:
        """Learn from the ``ranking`` scores of candidates ``start .. start + len(ranking)``."""

    def _trace_extra(self) -> dict:
        return {}

    def noise_at(self, index: int | Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_indices(self, index: int | Tensor) -> Tensor:
        """Evaluation indices as a 1-D CPU long tensor, each in [0, number asked)."""
        indices = torch.as_tensor(index).reshape(-1).to("cpu")
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"noise_at() takes integer evaluation indices, got dtype {indices.dtype}")
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self._num_asked):
            raise ValueError(
                f"noise_at() index out of range: valid evaluation indices are 0..{self._num_asked - 1} "
                f"(candidates asked so far), got {indices.tolist()}"
            )
        return indices

    def _result(self, low_bands: Tensor | None, level: int | None) -> SearchResult:
        if self._num_told == 0:
            raise RuntimeError(
                "no candidate has been scored yet: ask() and tell() at least once before result()"
            )
        count = self._num_told
        return SearchResult(
            best_noise=self.noise_at(self._best_index),
            best_score=self.best_score,
            best_index=self._best_index,
            scores=self._scores[:count].clone(),
            low_bands=None if low_bands is None else low_bands[:count].clone(),
            trace=[dict(entry) for entry in self.trace],
            level=level,
        )


def run_loop(search: BatchedSearch, objective: Objective, progress: Progress | None) -> None:
    """Drive an ask/tell search to its budget: one objective call per batch."""
    while not search.done:
        noises = search.ask()
        search.tell(objective(noises))
        if progress is not None:
            progress(search.num_evaluated, search.best_score)
