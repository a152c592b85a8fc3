"""Guards against reward hacking: what is watched at every eval, and when a run stops itself.

A trained reward can keep rising while the images degrade (grid artefacts, over-saturation, one look
for every seed). At every eval, on the held-out prompts at budget 0, the trainer logs:

- `guard/<name>`: each held-out judge of `guard_rewards` (never used to make pairs);
- `guard/diversity`: for each eval prompt, the mean pairwise distance between the images of
  `guard_diversity_seeds` seeds, in the training reward's image embedding (unit CLIP embeddings;
  16x16 pooled pixels for a reward without an image encoder), averaged over prompts, divided by its
  value before training (1.0 at round -1; `guard/diversity_distance` is the raw distance);
- `guard/<statistic>_drift` for brightness, saturation and high-frequency energy of the same images:
  the relative change since round -1 (`guard/image_<statistic>` is the raw value).

`GuardMonitor` applies the policy: a guard fails when a judge or the diversity falls below its
round -1 value by more than `guard_tolerance` (a share of that value), or, with `guard_max_drift`, a
statistic drifts by more than that share either way. After `guard_patience` failing evals in a row,
`guard_policy=stop` ends the run with the LoRA of the last eval where every guard held; `warn` warns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Settings vocabulary, with the guards' reserved metric names that the settings check judge names against.
from .config import IMAGE_STATISTICS

# The side of the pooled-pixel "embedding" of a reward without an image encoder.
PIXEL_EMBEDDING_SIZE = 16
# Below this a round -1 value is taken as zero: a relative drift from it is not defined.
_NEGLIGIBLE = 1e-12


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """`[N, 3]` per image: mean brightness, mean saturation (max minus min channel) and high-frequency
    energy (mean square of the image minus its 2x2-average-pooled copy, i.e. above half the Nyquist frequency)."""
    images = images.float()
    brightness = images.mean(dim=(1, 2, 3))
    saturation = (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))
    height, width = images.shape[-2] // 2 * 2, images.shape[-1] // 2 * 2
    cropped = images[..., :height, :width]
    smooth = F.interpolate(F.avg_pool2d(cropped, 2), scale_factor=2, mode="nearest")
    high_frequency = (cropped - smooth).square().mean(dim=(1, 2, 3))
    return torch.stack([brightness, saturation, high_frequency], dim=1)


def embedding_function(reward) -> Callable[[torch.Tensor], torch.Tensor]:
    """How `guard/diversity` sees an image: the reward's image encoder (the first one of a weighted
    reward that has one), else pooled pixels. Returns `images [N, 3, H, W] -> [N, D]` on the CPU."""
    candidates = [reward, *getattr(reward, "components", {}).values()]
    for candidate in candidates:
        if hasattr(candidate, "image_embeddings"):
            return candidate.image_embeddings

    def pooled_pixels(images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.float(), PIXEL_EMBEDDING_SIZE).flatten(1)
        return (pooled / math.sqrt(pooled.shape[1])).cpu()  # a distance of 1: pixels 1 apart on average

    return pooled_pixels


def mean_pairwise_distance(embeddings: torch.Tensor) -> float:
    """Mean Euclidean distance over the pairs of rows of `[S, D]`; NaN for fewer than two rows."""
    if embeddings.shape[0] < 2:
        return float("nan")
    return float(torch.pdist(embeddings.double()).mean())


def drift_metrics(before: dict[str, float] | None, now: dict[str, float]) -> dict[str, float]:
    """`guard/<statistic>_drift`: relative change of each image statistic since round -1 (0 at round -1)."""
    drifts = {}
    for name in IMAGE_STATISTICS:
        value = now.get(f"guard/image_{name}")
        reference = value if before is None else before.get(f"guard/image_{name}")
        if value is None or reference is None or abs(reference) < _NEGLIGIBLE:
            continue
        drifts[f"guard/{name}_drift"] = (value - reference) / abs(reference)
    return drifts


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class GuardVerdict:
    """One eval's outcome: which guards failed (readable lines), the failing streak, and the action."""

    round: int
    failures: list[str]
    streak: int
    action: str | None = None  # None, "warn" or "stop"

    @property
    def held(self) -> bool:
        return not self.failures


@dataclass
class GuardMonitor:
    """The guard policy over a run's evals (see the module docstring).

    `reward_keys`: the `guard/<name>` metric of each held-out judge. State (the failing streak and the
    last round where every guard held) is a function of the logged metrics, so a resumed run
    rebuilds it with `replay` from `metrics.jsonl`.
    """

    reward_keys: list[str]
    diversity: bool
    tolerance: float
    patience: int
    policy: str = "stop"
    max_drift: float | None = None
    streak: int = 0
    last_good_round: int | None = None
    history: list[GuardVerdict] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether anything is enforced (else the metrics are only logged)."""
        return bool(self.reward_keys) or self.diversity or self.max_drift is not None

    def failures(self, before: dict[str, float], now: dict[str, float]) -> list[str]:
        """Readable lines, one per guard that does not hold at `now` against round -1's `before`."""
        failed = []
        limits = [(key, before.get(key)) for key in self.reward_keys]
        if self.diversity:
            limits.append(("guard/diversity", 1.0))
        for key, reference in limits:
            if key not in now:
                continue  # not measured at this eval
            # metrics.jsonl writes NaN as null: a replayed row must judge as the live one did.
            value, reference = _number(now[key]), _number(reference)
            floor = reference - self.tolerance * abs(reference)
            if not value >= floor:  # NaN fails too
                failed.append(
                    f"{key} = {value:.6g} fell below {floor:.6g} (round -1: {reference:.6g}, tolerance {self.tolerance:g})"
                )
        if self.max_drift is not None:
            for name in IMAGE_STATISTICS:
                if f"guard/{name}_drift" not in now:
                    continue
                drift = _number(now[f"guard/{name}_drift"])
                if not abs(drift) <= self.max_drift:
                    failed.append(f"guard/{name}_drift = {drift:+.3g} beyond ±{self.max_drift:g}")
        return failed

    def observe(
        self, round_index: int, before: dict[str, float] | None, now: dict[str, float]
    ) -> GuardVerdict:
        """Update the streak with one eval's metrics; round -1 (the reference) always holds."""
        failed = [] if round_index < 0 or before is None else self.failures(before, now)
        self.streak = self.streak + 1 if failed else 0
        if not failed:
            self.last_good_round = round_index
        action = None
        if failed and self.active:
            action = "stop" if self.policy == "stop" and self.streak >= self.patience else "warn"
        verdict = GuardVerdict(round_index, failed, self.streak, action)
        self.history.append(verdict)
        return verdict

    def replay(self, rows: Iterable[dict]) -> None:
        """Rebuild the state from logged metric rows (a resumed run's `metrics.jsonl`)."""
        rows = [row for row in rows if "guard/held" in row]
        before = next((row for row in rows if row["round"] == -1), None)
        for row in rows:
            self.observe(row["round"], before, row)

    def stop_message(self, verdict: GuardVerdict) -> str:
        """What fired, since when, and which LoRA the run keeps."""
        first = verdict.round if verdict.streak == 1 else self.history[-verdict.streak].round
        kept = (
            "the untrained LoRA (round -1)"
            if self.last_good_round == -1
            else f"the LoRA of round {self.last_good_round}"
        )
        return (
            f"guard stopped the run at round {verdict.round}: failing since round {first} "
            f"({verdict.streak} evals, guard_patience={self.patience}): "
            + "; ".join(verdict.failures)
            + f". The final LoRA is {kept}, the last eval where every guard held."
        )
