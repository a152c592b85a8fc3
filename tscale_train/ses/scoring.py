"""How a search's candidates are scored: raw reward scores, a weighted reward's scale, non-finite counts.

A `WeightedReward` (`rewards.weighted`) sums standardised rewards, and where its statistics come from
decides the scale its scores are on. Every caller (the search, `--compare`, the trainer's eval, the CLI's
summary) goes through the functions here, so the policy lives in one place: score each reward raw
(`raw_scores`), then put the raw scores on one scale with given statistics, or with statistics fitted
on them (`weighted_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from rewards.weighted import WeightedReward, standardisation

if TYPE_CHECKING:
    from .results import PromptSearch

Reward = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
Statistics = tuple[torch.Tensor, torch.Tensor]
# The scores a reward may return that no search or pairing uses, as `PromptSearch.nonfinite` counts them.
NONFINITE_KINDS = ("NaN", "+inf", "-inf")


def weighted_reward(reward: Reward) -> WeightedReward | None:
    """`reward` when it is a `WeightedReward` (its scores need a scale), else None."""
    return reward if isinstance(reward, WeightedReward) else None


def raw_scorer(reward: Reward) -> Reward:
    """What scores candidates before any scale is chosen: each reward's raw score `[N, K]` for a weighted
    reward (standardised later, with statistics the caller keeps), else the reward itself `[N]`."""
    weighted = weighted_reward(reward)
    return weighted.component_scores if weighted is not None else reward


def weighted_scores(
    reward: WeightedReward,
    raw: torch.Tensor,
    statistics: Statistics | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, Statistics]:
    """A weighted reward's raw scores `[N, K]` -> its weighted standardised scores `[N]` and the statistics used.

    `statistics`: each reward's `(mean, spread)` to standardise with; None fits them on `raw` itself
    (`standardisation`: over its finite rows; a reward without spread stays raw). Callers keep the
    returned statistics to score later candidates on the same scale.
    """
    statistics = standardisation(raw) if statistics is None else statistics
    return reward.combine(raw, *statistics, dtype=dtype), statistics


def final_scores(
    reward: Reward, images: torch.Tensor, prompts: Sequence[str], statistics: Statistics | None = None
) -> list[float]:
    """`reward` of finished images, on the scale of the searches that found them: a weighted reward
    standardised with the searches' `statistics` (when given), any other reward as it scores."""
    weighted = weighted_reward(reward)
    if weighted is not None and statistics is not None:
        return weighted_scores(weighted, weighted.component_scores(images, prompts), statistics)[0].tolist()
    return reward(images, prompts).float().cpu().tolist()


def component_summary(reward: Reward, result: PromptSearch) -> dict[str, dict[str, float]] | None:
    """A weighted reward's raw score of each reward, for the base noise and the best candidate of `result`
    (the search's own scores are standardised); None for any other reward."""
    weighted = weighted_reward(reward)
    if weighted is None or result.component_scores is None:
        return None
    best = result.best_components
    return {
        name: {"base": float(result.component_scores[0, k]), "best": float(best[k])}
        for k, name in enumerate(weighted.names)
    }


def count_nonfinite(scores: torch.Tensor) -> dict[str, int]:
    """How many of `scores` are NaN, +inf and -inf."""
    return {
        "NaN": int(torch.isnan(scores).sum()),
        "+inf": int(torch.isposinf(scores).sum()),
        "-inf": int(torch.isneginf(scores).sum()),
    }


def describe_nonfinite(counts: dict[str, int]) -> str:
    """`{"NaN": 3, "+inf": 1, "-inf": 0}` -> "3 NaN and 1 +inf" ("none non-finite" when all are 0)."""
    parts = [f"{counts.get(kind, 0)} {kind}" for kind in NONFINITE_KINDS if counts.get(kind, 0)]
    if not parts:
        return "none non-finite"
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def score_counts(results: Sequence[PromptSearch]) -> dict[str, int]:
    """Candidates scored by `results` and how many of their scores were NaN, +inf and -inf."""
    counts = {"candidates": sum(len(result.search.scores) for result in results)}
    for kind in NONFINITE_KINDS:
        counts[kind] = sum((result.nonfinite or {}).get(kind, 0) for result in results)
    return counts


def unusable_scores_reason(counts: dict[str, int | float], min_margin: float = 0.0) -> str:
    """Why searches with these `score_counts` gave no preference pair, in words, with the numbers."""
    total = int(counts["candidates"])
    bad = {kind: int(counts.get(kind, 0)) for kind in NONFINITE_KINDS}
    finite = total - sum(bad.values())
    scores = f"of {total} candidate scores, {finite} finite" + (
        f", {describe_nonfinite(bad)}" if any(bad.values()) else ""
    )
    if finite == 0:
        return f"{scores}: nothing to rank (a reward must return finite numbers)"
    if min_margin > 0:
        return f"{scores}: within each search the finite scores were tied, or closer than --min_margin {min_margin:g}"
    return f"{scores}: within each search the finite scores were tied (or there was only one)"
