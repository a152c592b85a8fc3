"""The shapes world (:mod:`.world`): procedural images with GenEval-style captions, and rewards on it.

:mod:`.verifier` is the ground-truth judge (``load_reward("verifier")``); :mod:`.clip` a learned,
CLIP-style reward for the same world (``load_reward("shapes-clip")``). Nothing here imports a diffusion
library.
"""
