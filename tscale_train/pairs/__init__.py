"""Preference pairs: choosing chosen/rejected candidates from a search, and storing them on disk.

A search scores ``budget`` candidate noises for one prompt (index 0 is the unsearched base noise).
:func:`select_pairs` turns those scores into (chosen, rejected) index pairs and
:func:`records_from_search` into :class:`PairRecord` s; the online loop then stores each pair's
clean latents, preview images and scores in a :class:`PairStore`: a Hugging Face
``datasets`` dataset on disk, one shard per (round, process), each written atomically so a crash
or a full disk never leaves half a shard behind. :func:`to_pickapic` exports a store in the
Pick-a-Pic layout that existing Diffusion-DPO training code reads.
"""

from __future__ import annotations

from .pickapic import PICKAPIC_FEATURES, to_pickapic
from .record import PairRecord, records_from_search
from .schema import _REQUIRED_RECORD_KEYS as _REQUIRED_RECORD_KEYS  # the record layout, checked by tests
from .schema import PAIR_FEATURES, record_latents
from .selection import PAIRING_STRATEGIES, PairIndices, select_pairs
from .store import PairStore

__all__ = [
    "PAIRING_STRATEGIES",
    "PAIR_FEATURES",
    "PICKAPIC_FEATURES",
    "PairIndices",
    "PairRecord",
    "PairStore",
    "record_latents",
    "records_from_search",
    "select_pairs",
    "to_pickapic",
]
