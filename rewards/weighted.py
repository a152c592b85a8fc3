"""Several rewards as one: each standardised per prompt, then weighted.

`"pickscore:1.0,hpsv2:0.5"` (or the YAML mapping `{pickscore: 1.0, hpsv2: 0.5}`) scores an image
`sum_k w_k * (r_k - mean_k) / std_k`, where `mean_k` and `std_k` are reward k's mean and spread over
images of the same prompt. Raw scales never decide: PickScore (about 20, spread 0.5) and HPSv2 (about
0.3, spread 0.01) weigh what their weights say.

Where the statistics come from is the caller's choice, because a batch of images rarely holds a
prompt's whole sample:

- `search_prompts` fits them per search on its first generation and keeps them for the rest of the
  search, so scores of one search stay on one scale. For the default SES and best-of-N that
  generation is fresh i.i.d. noises, an unbiased sample of what the model makes for the prompt; the
  published SES's first generation varies only the low band around the base noise, so its spreads
  are smaller and its scores read larger;
- the trainer's eval freezes them on the eval images before training (round -1);
- a plain call `reward(images, prompts)` standardises each prompt over its own images in that call,
  and so needs at least two images per prompt.

`component_scores` gives the raw scores, one column per reward, for callers that keep their own
statistics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from .base import ImagesInput, PromptsInput, RewardModel, images_to_pixels, normalize_prompts
from .names import BUILTIN_REWARDS

# A weight is the last `:number` of an entry; "package.module:callable" names keep their own colon.
_WEIGHT = re.compile(r"^(?P<name>.+):(?P<weight>[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$")
# A spread below this (relative to the scores' size) is no spread: that reward is not standardised.
_FLAT = 1e-8


def parse_reward_spec(spec: str | Mapping[str, float]) -> dict[str, float]:
    """`"a:1,b:0.5"` or `{"a": 1, "b": 0.5}` -> `{"a": 1.0, "b": 0.5}`; a single name -> `{name: 1.0}`.

    Only the syntax is checked here (see `check_reward_spec` for the names).
    """
    if isinstance(spec, Mapping):
        items = [(str(name).strip(), weight) for name, weight in spec.items()]
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(
                f"reward {spec!r} is empty; give a name such as 'pickscore' or weights such as 'pickscore:1.0,hpsv2:0.5'."
            )
        items = []
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                raise ValueError(
                    f"reward {spec!r} has an empty entry; write 'name:weight' pairs separated by single commas."
                )
            match = _WEIGHT.match(entry)
            if match:
                items.append((match["name"].strip(), match["weight"]))
                continue
            head, _, tail = entry.rpartition(":")
            # A callable's attribute never starts like a number, and a built-in reward has no attributes.
            if head and (
                tail.strip()[:1] in tuple("0123456789+-.") or head.strip().lower() in BUILTIN_REWARDS
            ):
                raise ValueError(
                    f"reward {head.strip()!r} has weight {tail.strip()!r}, which is not a number; write e.g. '{head.strip()}:0.5'."
                )
            items.append((entry, 1.0))
    weights: dict[str, float] = {}
    for name, weight in items:
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"reward {name!r} has weight {weight!r}, which is not a number.") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"reward {name!r} has weight {value}; weights must be positive numbers (drop a reward to turn it off)."
            )
        if not name:
            raise ValueError(f"reward {spec!r} has a weight without a reward name.")
        if name in weights:
            raise ValueError(f"reward {name!r} is listed twice in {spec!r}; give each reward once.")
        weights[name] = value
    if not weights:
        raise ValueError(
            "no reward given; pass e.g. --reward pickscore or --reward 'pickscore:1.0,hpsv2:0.5'."
        )
    return weights


def format_reward_spec(weights: Mapping[str, float]) -> str:
    """The flag form of a weights mapping: `{"a": 1, "b": 0.5}` -> `"a:1.0,b:0.5"`."""
    return ",".join(f"{name}:{float(weight)!r}" for name, weight in weights.items())


def is_weighted_spec(spec: str | Mapping[str, float]) -> bool:
    """Whether `spec` names more than one reward, or one with a weight (both load a `WeightedReward`)."""
    if isinstance(spec, Mapping):
        return True
    return "," in spec or bool(_WEIGHT.match(spec.strip()))


def short_reward_name(name: str) -> str:
    """A metric-friendly name: 'rewards.synthetic:darkness' -> 'darkness', 'pickscore' -> 'pickscore'."""
    return name.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def short_reward_names(names: list[str]) -> list[str]:
    """`short_reward_name` of each, or the full names when two short names would collide."""
    short = [short_reward_name(name) for name in names]
    return short if len(set(short)) == len(short) else [name.strip() for name in names]


def standardisation(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and spread of `scores [M, K]` over its finite rows.

    A column with fewer than two finite values, or no spread, gets mean 0 and spread 1 (left raw):
    there is nothing to measure its scale by.
    """
    scores = scores.double()
    finite = torch.isfinite(scores).all(dim=1)
    rows = scores[finite]
    mean = torch.zeros(scores.shape[1], dtype=torch.float64)
    spread = torch.ones(scores.shape[1], dtype=torch.float64)
    if rows.shape[0] >= 2:
        column_mean, column_std = rows.mean(dim=0), rows.std(dim=0)
        measurable = column_std > _FLAT * column_mean.abs().clamp(min=1.0)
        mean = torch.where(measurable, column_mean, mean)
        spread = torch.where(measurable, column_std, spread)
    return mean, spread


class WeightedReward(RewardModel):
    """`sum_k w_k * (r_k - mean_k) / std_k` over several rewards (see the module docstring).

    `components`: name -> loaded reward; `weights`: name -> positive weight (same names).
    """

    def __init__(self, components: Mapping[str, RewardModel], weights: Mapping[str, float]) -> None:
        if list(components) != list(weights):
            raise ValueError(
                f"rewards {list(components)} and weights {list(weights)} must name the same rewards in order."
            )
        first = next(iter(components.values()))
        super().__init__(device=first.device, dtype=first.dtype, batch_size=first.batch_size)
        self.components = dict(components)
        self.weights = torch.tensor([float(weights[name]) for name in components], dtype=torch.float64)
        self.names = list(components)
        self.name = format_reward_spec(weights)

    def _modules(self) -> list[Any]:
        return list(self.components.values())

    def to(self, device: str | torch.device) -> WeightedReward:
        for reward in self.components.values():
            reward.to(device)
        self._device = torch.device(device)
        return self

    def component_scores(self, images: ImagesInput, prompts: PromptsInput) -> torch.Tensor:
        """Raw scores `[N, K]` (float32, CPU), one column per reward, in `names` order."""
        pixels = images_to_pixels(images)  # once, not once per reward
        return torch.stack([reward(pixels, prompts) for reward in self.components.values()], dim=1)

    def combine(
        self,
        scores: torch.Tensor,
        mean: torch.Tensor,
        spread: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """`[N, K]` raw scores -> `[N]` weighted standardised scores, given each reward's statistics.

        Computed in float64 (raw scores differ in their fourth digit, and dividing by a small spread
        amplifies float32 rounding); returned as `dtype`.
        """
        standardised = (scores.double() - mean.double()) / spread.double()
        return (standardised * self.weights).sum(dim=1).to(dtype)

    def __call__(self, images: ImagesInput, prompts: PromptsInput) -> torch.Tensor:
        """Standardised per prompt over this call's images of that prompt, then weighted; float32 `[N]`."""
        scores = self.component_scores(images, prompts)
        prompt_list = normalize_prompts(prompts, scores.shape[0])
        combined = torch.empty(scores.shape[0], dtype=torch.float32)
        for prompt in dict.fromkeys(prompt_list):
            rows = torch.tensor([index for index, other in enumerate(prompt_list) if other == prompt])
            if len(rows) < 2:
                raise ValueError(
                    f"reward {self.name!r} standardises each reward over a prompt's images, but prompt {prompt[:40]!r} "
                    "has one image in this call; score at least two images per prompt, or use component_scores()."
                )
            combined[rows] = self.combine(scores[rows], *standardisation(scores[rows]))
        return combined

    def _score(self, pixels, prompts):  # pragma: no cover - __call__ is overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"WeightedReward({self.name!r}, device={str(self.device)!r})"
