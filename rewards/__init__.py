"""Reward models: `reward(images, prompts) -> Tensor[N]` (float32 on the CPU, higher is better).

```python
from rewards import load_reward
reward = load_reward("pickscore", device="cuda", dtype=torch.float16)
scores = reward(images, prompts)
```

`images`: a list of PIL images or a float tensor `[N, 3, H, W]` in [0, 1] on any device;
`prompts`: one string for all images or a list of N. Built-in names: "pickscore", "hpsv2", "clip",
"verifier" and "shapes-clip" (the shapes world's judge and CLIP-style reward, `rewards.shapes`);
any "package.module:callable" string (e.g. "rewards.synthetic:brightness") is imported and used
with the same call signature. `load_reward_spec("pickscore:1.0,hpsv2:0.5")` loads a `WeightedReward`:
each reward standardised per prompt, then weighted (see `rewards.weighted`). This package never imports `tscale_train`, and the model libraries
(transformers, open_clip) are imported only when a reward that needs them is loaded.
"""

from .base import EmbeddingReward, RewardModel, images_to_pixels, normalize_prompts, resize_crop_normalize
from .names import BUILTIN_REWARDS
from .registry import (
    CallableReward,
    available_rewards,
    check_reward_arguments,
    check_reward_name,
    check_reward_spec,
    load_reward,
    load_reward_spec,
)
from .weighted import WeightedReward, parse_reward_spec, short_reward_names

__all__ = [
    "BUILTIN_REWARDS",
    "CallableReward",
    "EmbeddingReward",
    "RewardModel",
    "WeightedReward",
    "available_rewards",
    "check_reward_arguments",
    "check_reward_name",
    "check_reward_spec",
    "images_to_pixels",
    "load_reward",
    "load_reward_spec",
    "parse_reward_spec",
    "short_reward_names",
    "normalize_prompts",
    "resize_crop_normalize",
]
