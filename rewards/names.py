"""The built-in reward names and where their classes live: the bottom of the package.

`registry` (which loads rewards) and `weighted` (which parses weighted reward settings, and whose
`WeightedReward` the registry builds) both need the names; keeping them here lets imports run one way,
`registry -> weighted -> names`, without either importing the other back.
"""

from __future__ import annotations

BUILTIN_REWARDS = ("pickscore", "hpsv2", "clip", "verifier", "shapes-clip")
# Where each built-in reward's class lives, as (module under this package, class name); imported only when that
# reward is asked for.
BUILTIN_CLASSES = {
    "pickscore": ("pickscore", "PickScoreReward"),
    "hpsv2": ("hpsv2", "HPSv2Reward"),
    "clip": ("clip", "ClipScoreReward"),
    "verifier": ("shapes.verifier", "ShapesVerifierReward"),
    "shapes-clip": ("shapes.clip", "ShapesClipReward"),
}
# Rewards that need no downloaded weights: the shapes world's judge and its shipped learned proxy.
SHIPPED_REWARDS = ("verifier", "shapes-clip")

__all__ = ["BUILTIN_CLASSES", "BUILTIN_REWARDS", "SHIPPED_REWARDS"]
