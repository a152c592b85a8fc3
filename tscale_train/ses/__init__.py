"""Standalone SES inference: search the initial noise of a pipeline for one or many prompts.

One job a module:

- `driver`: the searches (`search_prompts`, `start_search`, `ses_generate`, `render_result`);
- `results`: what they return (`PromptSearch`, `SESOutput`);
- `scoring`: raw reward scores, a weighted reward's scale (`weighted_scores`), non-finite counts;
- `images`: tensors to PIL and labelled grids; `plots`: reward-versus-evaluations plots.

The public names are re-exported here: `from tscale_train.ses import search_prompts` keeps working.
"""

from .driver import DEFAULT_SEARCH_GROUP_SIZE, render_result, search_prompts, ses_generate, start_search
from .images import labelled_grid, labelled_tiles, side_by_side, to_pil
from .plots import plot_trace
from .results import PromptSearch, SESOutput
from .scoring import (
    NONFINITE_KINDS,
    Reward,
    count_nonfinite,
    describe_nonfinite,
    final_scores,
    raw_scorer,
    score_counts,
    unusable_scores_reason,
    weighted_scores,
)

__all__ = [
    "DEFAULT_SEARCH_GROUP_SIZE",
    "NONFINITE_KINDS",
    "PromptSearch",
    "Reward",
    "SESOutput",
    "count_nonfinite",
    "describe_nonfinite",
    "final_scores",
    "labelled_grid",
    "labelled_tiles",
    "plot_trace",
    "raw_scorer",
    "render_result",
    "score_counts",
    "search_prompts",
    "ses_generate",
    "side_by_side",
    "start_search",
    "to_pil",
    "unusable_scores_reason",
    "weighted_scores",
]
