"""One preference pair: :class:`PairRecord` and :func:`records_from_search`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from search import SearchResult

from .selection import PairIndices, select_pairs

__all__ = ["PairRecord", "SearchedPrompt", "records_from_search"]


class SearchedPrompt(Protocol):
    """What a pair is cut from: one prompt's finished search and what each candidate made.

    `tscale_train.ses`'s `PromptSearch` is one. Pairs are core and the search driver a layer above them, so
    they name the fields they read rather than import its class (imports run one way: tests/test_layering.py).
    """

    prompt: str
    seed: int
    search: SearchResult
    clean_latents: Tensor | None  # [budget, *noise_shape], evaluation order
    previews: Tensor | None  # [budget, 3, s, s] uint8, evaluation order


@dataclass
class PairRecord:
    """One stored preference pair: where it came from, its scores, latents and previews.

    The single spelling of a pair's layout: the store's columns (:data:`PAIR_FEATURES`) and the keys
    of the dict records :meth:`PairStore.write_shard` still accepts derive from these fields.
    """

    prompt: str
    prompt_index: int  # the prompt's position in the run's prompt list
    round: int
    seed: int  # the base noise's seed
    strategy: str  # the pairing strategy (:data:`PAIRING_STRATEGIES`)
    chosen_index: int  # evaluation indices in the search, 0 = base noise
    rejected_index: int
    chosen_score: float
    rejected_score: float
    # Clean latents in the transformer's input space, CPU tensors of one shape (any float dtype;
    # stored as float32, which bf16 converts to exactly).
    chosen_latents: Tensor
    rejected_latents: Tensor
    # uint8 [3, s, s] thumbnails, PNG-encoded only when written; None when not kept or not loaded.
    chosen_preview: Tensor | None = None
    rejected_preview: Tensor | None = None

    @property
    def margin(self) -> float:
        """``chosen_score - rejected_score``."""
        return self.chosen_score - self.rejected_score

    @classmethod
    def from_search(
        cls,
        search_result: SearchedPrompt,
        pair: PairIndices,
        prompt_index: int,
        round_index: int,
        strategy: str,
    ) -> PairRecord:
        """The record of ``pair`` in a finished search (run with ``keep_latents=True``).

        ``prompt_index`` is the caller's index of the prompt (duplicated prompts keep their own).
        Latents and previews are copied out of the search's per-candidate tensors, so keeping the
        record does not keep the whole search's candidates alive.
        """
        if search_result.clean_latents is None:
            raise ValueError(
                "PairRecord.from_search: the search kept no clean latents; run search_prompts with keep_latents=True"
            )
        scores, previews = search_result.search.scores, search_result.previews
        chosen, rejected = pair.chosen_index, pair.rejected_index
        return cls(
            prompt=search_result.prompt,
            prompt_index=int(prompt_index),
            round=int(round_index),
            seed=int(search_result.seed),
            strategy=strategy,
            chosen_index=chosen,
            rejected_index=rejected,
            chosen_score=float(scores[chosen]),
            rejected_score=float(scores[rejected]),
            chosen_latents=search_result.clean_latents[chosen].clone(),
            rejected_latents=search_result.clean_latents[rejected].clone(),
            chosen_preview=None if previews is None else previews[chosen].clone(),
            rejected_preview=None if previews is None else previews[rejected].clone(),
        )


def records_from_search(
    result: SearchedPrompt,
    prompt_index: int,
    round_index: int,
    strategy: str,
    k: int = 1,
    min_margin: float = 0.0,
) -> list[PairRecord]:
    """The :class:`PairRecord` s of one finished search, chosen by :func:`select_pairs`, best pair first."""
    return [
        PairRecord.from_search(result, pair, prompt_index, round_index, strategy)
        for pair in select_pairs(result.search.scores, strategy, k=k, min_margin=min_margin)
    ]
