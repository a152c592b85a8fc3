"""Best-of-N random search: the baseline SES has to beat at equal budget."""

from __future__ import annotations

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


class RandomSearch(BatchedSearch):
    """Best-of-N as an ask/tell object: the base noise first, then fresh standard Gaussian noises.

    Noises are drawn on the CPU in float32 from ``generator`` and moved to the base noise's device and
    dtype. Only the generator state before each batch is kept, so :meth:`noise_at` re-creates any
    candidate by redrawing its batch instead of holding every noise in memory.
    """

    def __init__(
        self,
        base_noise: Tensor,
        budget: int,
        generator: torch.Generator | None = None,
        batch_size: int = 10,
    ) -> None:
        super().__init__(base_noise, budget)
        self._batch_size = check_positive_int(batch_size, "batch_size")
        self.generator = resolve_generator(generator)
        self._batches: list[tuple[int, int, bool, Tensor]] = []  # (start, n, includes base, RNG state)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def _draw(self, n: int, include_base: bool, generator: torch.Generator) -> Tensor:
        num_fresh = n - 1 if include_base else n
        fresh = torch.randn((num_fresh, *self.base_noise.shape), generator=generator, dtype=torch.float32)
        fresh = fresh.to(device=self.base_noise.device, dtype=self.base_noise.dtype)
        if include_base:
            return torch.cat((self.base_noise.unsqueeze(0), fresh))
        return fresh

    def _propose(self, n: int) -> Tensor:
        start = self._num_asked
        include_base = start == 0
        self._batches.append((start, n, include_base, self.generator.get_state()))
        return self._draw(n, include_base, self.generator)

    def noise_at(self, index: int | Tensor) -> Tensor:
        """Re-create candidate(s) by evaluation index -> ``[k, C, H, W]`` (identical to what was asked)."""
        indices = self._check_indices(index)
        rows = []
        for position in indices.tolist():
            for start, n, include_base, state in self._batches:
                if start <= position < start + n:
                    if include_base and position == 0:
                        rows.append(self.base_noise.unsqueeze(0))
                    else:
                        replay = torch.Generator().set_state(state)
                        rows.append(self._draw(n, include_base, replay)[position - start].unsqueeze(0))
                    break
        if not rows:
            return self.base_noise.new_empty((0, *self.base_noise.shape))
        return torch.cat(rows)

    def result(self) -> SearchResult:
        """The search's :class:`SearchResult` (partial if called before :attr:`done`)."""
        return self._result(None, None)


def random_search(
    objective: Objective,
    base_noise: Tensor,
    budget: int = 50,
    generator: torch.Generator | None = None,
    batch_size: int = 10,
    progress: Progress | None = None,
) -> SearchResult:
    """Best-of-N baseline: the base noise, then ``budget - 1`` fresh standard Gaussian noises.

    Evaluated in batches of ``batch_size`` (the first batch is the base plus ``batch_size - 1`` fresh
    noises), one objective call per batch. ``progress(num_evaluated, best_score)`` is called after each.
    """
    search = RandomSearch(base_noise, budget, generator=generator, batch_size=batch_size)
    run_loop(search, objective, progress)
    return search.result()
