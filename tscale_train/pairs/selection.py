"""Choosing preference pairs: (chosen, rejected) candidate indices from one search's scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from search import rank_best_first

__all__ = ["PAIRING_STRATEGIES", "PairIndices", "select_pairs"]

PAIRING_STRATEGIES = ("best_vs_worst", "best_vs_base", "top_k_vs_bottom_k")


@dataclass(frozen=True)
class PairIndices:
    """One preference pair inside a search: evaluation indices (0 = base noise) and score margin."""

    chosen_index: int
    rejected_index: int
    margin: float  # chosen score - rejected score, always > 0


def select_pairs(
    scores: Tensor | Sequence[float],
    strategy: str = "best_vs_worst",
    *,
    k: int = 1,
    min_margin: float = 0.0,
) -> list[PairIndices]:
    """Choose (chosen, rejected) candidates from one search's scores.

    Args:
        scores: ``Tensor[budget]`` in evaluation order; index 0 is the base (unsearched) noise.
            Non-finite scores (NaN, +-inf: a failed decode or reward) are never used.
        strategy:
            ``"best_vs_worst"``: the best vs the worst candidate.
            ``"best_vs_base"``: the best candidate vs the base noise (what the search bought).
            ``"top_k_vs_bottom_k"``: the i-th best vs the i-th worst for ``i < k``; no candidate
            is used twice, so with fewer than ``2 * k`` valid candidates fewer pairs come out.
        k: the number of pairs for ``"top_k_vs_bottom_k"`` (ignored by the other strategies).
        min_margin: pairs whose score margin is below this are dropped. Pairs with a margin
            ``<= 0`` are always dropped: a tie is no preference, and chosen == rejected never occurs.

    Ranking: candidates are ordered by score, highest first; equal scores keep evaluation order
    (the earlier-evaluated candidate ranks higher). So among tied best candidates the earliest is
    chosen, and among tied worst candidates the latest is rejected.

    Returns:
        The pairs, best pair first (possibly empty).

    Raises:
        ValueError: unknown strategy, ``scores`` not 1-D, ``k < 1`` or ``min_margin`` not a
            finite number >= 0.
    """
    if strategy not in PAIRING_STRATEGIES:
        raise ValueError(
            f"select_pairs: unknown strategy {strategy!r}; choose one of {', '.join(PAIRING_STRATEGIES)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"select_pairs: k must be an integer >= 1, got {k!r}")
    try:
        min_margin_value = float(min_margin)
    except (TypeError, ValueError):
        min_margin_value = math.nan
    if not (math.isfinite(min_margin_value) and min_margin_value >= 0):
        raise ValueError(f"select_pairs: min_margin must be a finite number >= 0, got {min_margin!r}")
    score_tensor = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if score_tensor.ndim != 1:
        raise ValueError(
            f"select_pairs: scores must be a 1-D tensor (one search, in evaluation order), got shape "
            f"{tuple(score_tensor.shape)}; call it once per search"
        )
    values = score_tensor.tolist()
    ranked = rank_best_first(score_tensor)

    candidates: list[tuple[int, int]]
    if len(ranked) < 1:
        candidates = []
    elif strategy == "best_vs_worst":
        candidates = [(ranked[0], ranked[-1])]
    elif strategy == "best_vs_base":
        candidates = [(ranked[0], 0)] if 0 in ranked else []
    else:  # top_k_vs_bottom_k
        num_pairs = min(k, len(ranked) // 2)
        candidates = [(ranked[i], ranked[len(ranked) - 1 - i]) for i in range(num_pairs)]

    pairs = []
    for chosen, rejected in candidates:
        margin = values[chosen] - values[rejected]
        if chosen == rejected or margin <= 0 or margin < min_margin_value:
            continue
        pairs.append(PairIndices(chosen_index=chosen, rejected_index=rejected, margin=margin))
    return pairs
