"""What a search returns: `PromptSearch` (one finished search) and `SESOutput` (a rendered one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from search import SearchResult


@dataclass
class PromptSearch:
    """One finished search: its prompt, seed, `SearchResult`, and optionally what each candidate made."""

    prompt: str
    seed: int
    search: SearchResult
    clean_latents: torch.Tensor | None = None  # [budget, *noise_shape], CPU, evaluation order
    previews: torch.Tensor | None = None  # [budget, 3, s, s] uint8 thumbnails, CPU, evaluation order
    # A `WeightedReward` only: each reward's raw score [budget, K], and the per-reward mean and spread of
    # the first generation that standardised them (the search's scores are the weighted standardised ones).
    component_scores: torch.Tensor | None = None
    reward_statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    # How many of the reward's scores were NaN, +inf and -inf (`count_nonfinite`); the search saw each as NaN
    # (never selected), so `search.scores` holds NaN for all three.
    nonfinite: dict[str, int] | None = None

    @property
    def best_components(self) -> torch.Tensor | None:
        """Each reward's raw score `[K]` of the best candidate (None unless the reward is weighted)."""
        return None if self.component_scores is None else self.component_scores[self.search.best_index]


@dataclass
class SESOutput:
    prompt: str
    seed: int
    image: Image.Image  # the searched noise at full `steps`
    base_image: Image.Image  # the unsearched noise (the seed's own noise) at full `steps`
    search: SearchResult

    @property
    def best_score(self) -> float:
        return self.search.best_score

    @property
    def base_score(self) -> float:
        return self.search.base_score
