"""Search over the initial noise of a generative model. Knows nothing about diffusion.

Public API::

    from search import SESConfig, SpectralEvolutionSearch, ses_search, random_search, SearchResult

- :func:`ses_search` / :class:`SpectralEvolutionSearch`: Spectral Evolution Search (cross-entropy method
  over the wavelet approximation band, detail bands of the base noise held fixed).
- :func:`random_search` / :class:`RandomSearch`: best-of-N baseline.

Both score exactly ``budget`` candidates, the base noise first, in whole batches, reproducibly from a CPU
``torch.Generator``.
"""

from search.random_search import RandomSearch, random_search
from search.result import SearchResult, rank_best_first
from search.ses import SES_VARIANTS, SESConfig, SpectralEvolutionSearch, published_variant, ses_search
from search.wavelets import LowBandCodec

__all__ = [
    "LowBandCodec",
    "RandomSearch",
    "SES_VARIANTS",
    "SESConfig",
    "SearchResult",
    "SpectralEvolutionSearch",
    "published_variant",
    "random_search",
    "rank_best_first",
    "ses_search",
]
