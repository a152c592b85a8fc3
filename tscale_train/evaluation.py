"""Eval of the online loop: held-out prompts, fixed seeds, reward at budget 0 and after SES.

Also the train/held-out split of the prompts and the one-line learning summary read from
`metrics.jsonl` at the end of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from rewards.weighted import WeightedReward, short_reward_names
from search import SESConfig

from .config import SEARCH_METHODS, OnlineDPOConfig
from .distributed import derive_seed, gather_by_slot, shard_evenly
from .generation import FlowGenerator
from .guards import IMAGE_STATISTICS, drift_metrics, image_statistics, mean_pairwise_distance
from .io_utils import atomic_save_image
from .prompt_cache import PromptEmbeddingCache
from .prompts import load_prompts
from .run_dir import read_metrics
from .ses.driver import search_prompts
from .ses.images import labelled_grid, to_pil
from .ses.scoring import raw_scorer, weighted_reward, weighted_scores

# The eval grid's name in the trackers (`eval/round_NNNNN.png` on disk).
GRID_NAME = "eval/grid"


def split_eval_prompts(prompts: list[str], config: OnlineDPOConfig) -> tuple[list[str], list[str]]:
    """Train/held-out split: `eval_prompts` if given, else a seeded `eval_fraction` of `prompts`.

    A split that holds none out although eval is on (`eval_every`, `eval_fraction` and `max_eval_prompts`
    all above 0: a prompts file of one or a few prompts) is an error: the run would train without a single
    eval, and without the guards and the learning summary that read them.
    """
    if config.eval_prompts:
        return prompts, load_prompts(config.eval_prompts, column=config.prompt_column, flag="--eval_prompts")[
            : config.max_eval_prompts
        ]
    count = min(config.max_eval_prompts, int(round(len(prompts) * config.eval_fraction)))
    if count == 0 or len(prompts) - count < 1:
        if config.eval_every > 0 and config.eval_fraction > 0 and config.max_eval_prompts > 0:
            source = repr(str(config.prompts)) if config.prompts else "the bundled prompts"
            raise ValueError(
                f"--prompts {source} holds {len(prompts)} prompt(s), too few for --eval_fraction {config.eval_fraction} to "
                "hold any out for eval (and keep one to train on), so no eval would run; pass --eval_prompts FILE, raise "
                "--eval_fraction (with more prompts), or set --eval_every 0 to train without eval."
            )
        return prompts, []
    order = torch.randperm(
        len(prompts), generator=torch.Generator().manual_seed(derive_seed(config.seed, "eval-split"))
    )
    held_out = set(order[:count].tolist())
    return [p for i, p in enumerate(prompts) if i not in held_out], [prompts[i] for i in sorted(held_out)]


class Evaluator:
    """Scores the current LoRA on the held-out prompts; every process must call it (it gathers).

    `search` is the trainer's `search_prompts`, handed in so pairs and eval search the same way.
    `guard_rewards` (metric key -> reward) are the held-out judges and `embed` the image embedding of
    `guard/diversity` (see `guards.py`); both are scored on the budget-0 images of every eval prompt
    from `config.guard_diversity_seeds` seeds (the eval reward on the first seed's, as without guards).
    """

    def __init__(
        self,
        config: OnlineDPOConfig,
        accelerator,
        generator: FlowGenerator,
        model: torch.nn.Module,
        reward,
        prompt_cache: PromptEmbeddingCache,
        prompts: list[str],
        output_dir: Path,
        search_config: Callable[[], SESConfig],
        search: Callable = search_prompts,
        guard_rewards: dict[str, object] | None = None,
        embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.accelerator = accelerator
        self.generator = generator
        self.model = model
        self.reward = reward
        self.prompt_cache = prompt_cache
        self.prompts = prompts
        self.output_dir = Path(output_dir)
        self.search_config = search_config
        self.search = search
        self.guard_rewards = dict(guard_rewards or {})
        self.embed = embed
        # Round -1's metrics: the denominator of `eval/amortisation_ratio`, the reference of every guard,
        # and a weighted eval reward's statistics.
        self.before: dict[str, float] | None = None
        # The latest eval's grid (main process; None elsewhere and without eval prompts), for the trackers.
        self.grid: Image.Image | None = None

    @property
    def seeds_per_prompt(self) -> int:
        """Images per eval prompt at budget 0: several when `guard/diversity` is measured."""
        return max(1, self.config.guard_diversity_seeds) if self.embed is not None else 1

    @property
    def weighted(self) -> WeightedReward | None:
        return weighted_reward(self.reward)

    @torch.no_grad()
    def __call__(self, round_index: int, with_search: bool) -> dict[str, float]:
        """Mean reward on held-out prompts with fixed seeds: at budget 0 (the LoRA alone) and after SES,
        plus the guards' metrics.

        Both rewards are scored at the search's preview steps, so `eval/reward_ses - eval/reward_budget0` is
        what the search adds (for a base model, 12-step previews against 50-step images would not be).
        """
        self.grid = None
        if not self.prompts:
            return {}
        config, accelerator = self.config, self.accelerator
        slots = list(enumerate(self.prompts))
        local = shard_evenly(slots, accelerator.num_processes, accelerator.process_index)
        local_slots = [slot for slot, _ in local]
        prompts = [prompt for _, prompt in local]
        seeds = [derive_seed(config.seed, "eval", slot) % (2**31) for slot in local_slots]
        steps = config.preview_steps or self.generator.preview_steps
        self.model.eval()
        embeds = self.prompt_cache.get(prompts)  # before any reward visits the device
        per_prompt, grid_images = self._budget0(seeds, local_slots, embeds, prompts, steps)
        # Padding repeats slots; gather (slot, values) and keep each slot once.
        gathered = {
            name: gather_by_slot(accelerator, local_slots, values) for name, values in per_prompt.items()
        }
        # A weighted reward's statistics: this eval's own before training, round -1's afterwards.
        metrics = self._reward_metrics(
            gathered["reward"], "eval/reward_budget0", None if round_index == -1 else self.before
        )
        metrics["eval/prompts"] = len(slots)
        # The grid: this process's first eval prompts, each image with its reward and prompt under it.
        count = grid_images.shape[0]
        # The scale of the logged means (a weighted reward's, standardised with round -1's statistics).
        reference = metrics if round_index == -1 else self.before
        grid_rows = [
            (
                f"round {round_index}: budget 0",
                grid_images,
                self._scores_to_show(per_prompt["reward"][:count], reference),
            )
        ]
        if with_search:
            self.reward.to(accelerator.device)
            results = self.search(
                self.generator,
                self.reward,
                prompts,
                seeds,
                budget=config.eval_budget or config.budget,
                config=self.search_config(),
                preview_steps=config.preview_steps,
                embeds=embeds,
                group_size=config.search_group_size,
                progress=False,
                method=config.search,
            )
            best = [
                result.best_components.tolist() if self.weighted else result.search.best_score
                for result in results
            ]
            searched = self._reward_metrics(
                gather_by_slot(accelerator, local_slots, best), "eval/reward_ses", reference
            )
            # The spread too: the before -> after SES gain's standard error needs both sides' spreads.
            metrics["eval/reward_ses"] = searched["eval/reward_ses"]
            metrics["eval/reward_ses_std"] = searched["eval/reward_ses_std"]
            if accelerator.is_main_process:
                best_noises = torch.cat(
                    [result.search.best_noise.float().cpu() for result in results[:count]]
                )
                ses_images = torch.cat(
                    [
                        output.images.float().cpu()
                        for _, output in self.generator.iter_batches(best_noises, embeds[:count], steps)
                    ]
                )
                grid_rows.append(
                    (
                        f"{SEARCH_METHODS[config.search]}, budget {config.eval_budget or config.budget}",
                        ses_images,
                        self._scores_to_show(best[:count], reference),
                    )
                )
            if config.offload_reward:
                self.reward.to("cpu")
        if accelerator.is_main_process:
            self.grid = self._save_grid(round_index, grid_rows, prompts[:count])
        metrics.update(self._guard_metrics(gathered))
        if round_index == -1:
            self.before = metrics
        metrics.update(drift_metrics(self.before, metrics))
        ratio = amortisation_ratio(self.before, metrics) if round_index >= 0 else None
        if ratio is not None:
            metrics["eval/amortisation_ratio"] = ratio
        return metrics

    def _budget0(self, seeds, slots, embeds, prompts, steps, grid_count: int = 8):
        """Generate every eval prompt's images at budget 0 and score them batch by batch, keeping only numbers
        (and the first `grid_count` first-seed images for the eval grid, on the CPU).

        Returns per-prompt lists: "reward" (the first seed's score, or each reward's raw score for a weighted
        reward), and when guarded each judge's mean, "statistics" (means over seeds) and "diversity".
        """
        count = self.seeds_per_prompt
        noises = torch.cat(
            [
                self.generator.initial_noise(
                    seed
                    if index == 0
                    else derive_seed(self.config.seed, "eval-diversity", slot, index) % (2**31)
                )
                for seed, slot in zip(seeds, slots, strict=True)
                for index in range(count)
            ]
        )
        row_embeds = [embed for embed in embeds for _ in range(count)]
        row_prompts = [prompt for prompt in prompts for _ in range(count)]
        score = raw_scorer(self.reward)
        # Every reward waits on the device while the images are made once: a 1024px image is 12.6 MB,
        # and 16 prompts x 4 seeds of them held for a second pass would be 0.8 GB per process.
        rewards = [self.reward, *self.guard_rewards.values()]
        owner = getattr(self.embed, "__self__", None)  # the reward whose image encoder `guard/diversity` uses
        if count > 1 and hasattr(owner, "to") and all(owner is not reward for reward in rewards):
            rewards.append(owner)
        for reward in rewards:
            reward.to(self.accelerator.device)
        columns: dict[str, list[torch.Tensor]] = {}
        kept: list[torch.Tensor] = []
        for batch, output in self.generator.iter_batches(noises, row_embeds, steps):
            rows = torch.arange(len(row_prompts))[batch]
            batch_prompts = row_prompts[batch]
            first = rows % count == 0  # the eval reward: on the first seed's images only
            if first.any():
                images = output.images[first.to(output.images.device)]
                columns.setdefault("reward", []).append(
                    score(images, [row_prompts[i] for i in rows[first]]).float().cpu()
                )
                if sum(len(image) for image in kept) < grid_count:
                    kept.append(images.float().cpu())
            for name, judge in self.guard_rewards.items():
                columns.setdefault(f"judge/{name}", []).append(
                    judge(output.images, batch_prompts).float().cpu()
                )
            columns.setdefault("statistics", []).append(image_statistics(output.images).cpu())
            if count > 1:
                columns.setdefault("embeddings", []).append(self.embed(output.images).float().cpu())
            del output
        if self.config.offload_reward:
            for reward in rewards:
                reward.to("cpu")
        per_prompt: dict[str, list] = {"reward": torch.cat(columns["reward"]).tolist()}
        for name in self.guard_rewards:
            per_prompt[f"judge/{name}"] = (
                torch.cat(columns[f"judge/{name}"]).view(len(prompts), count).mean(dim=1).tolist()
            )
        per_prompt["statistics"] = (
            torch.cat(columns["statistics"]).view(len(prompts), count, -1).mean(dim=1).tolist()
        )
        if "embeddings" in columns:
            embeddings = torch.cat(columns["embeddings"]).view(len(prompts), count, -1)
            per_prompt["diversity"] = [mean_pairwise_distance(group) for group in embeddings]
        return per_prompt, torch.cat(kept)[:grid_count]

    def _reward_metrics(self, values: list, key: str, reference: dict[str, float] | None) -> dict[str, float]:
        """The mean (and spread) over prompts of the eval reward. A weighted reward is standardised with the
        eval prompts' per-reward budget-0 mean and spread in `reference` (round -1's; None: these values'
        own). Returns `<key>` and `<key>_std`, and each reward's raw mean and spread as `<key>/<name>` and
        `<key>_std/<name>` (the caller keeps those of budget 0 only)."""
        if not self.weighted:
            scores = torch.tensor(values, dtype=torch.float64)
            return {key: float(scores.mean()), f"{key}_std": float(scores.std()) if len(scores) > 1 else 0.0}
        components = torch.tensor(values, dtype=torch.float64)
        names = short_reward_names(self.weighted.names)
        metrics = {f"{key}/{name}": float(components[:, k].mean()) for k, name in enumerate(names)}
        metrics.update(
            {
                f"{key}_std/{name}": float(components[:, k].std()) if len(components) > 1 else 0.0
                for k, name in enumerate(names)
            }
        )
        combined = self._combined(components, metrics if reference is None else reference)
        metrics[key] = float(combined.mean())
        metrics[f"{key}_std"] = float(combined.std()) if len(combined) > 1 else 0.0
        return metrics

    def _combined(self, components: torch.Tensor, reference: dict[str, float]) -> torch.Tensor:
        """A weighted reward's raw scores `[N, K]` -> its combined scores `[N]`, each reward standardised with
        the budget-0 mean and spread of `reference` (a metrics row)."""
        names = short_reward_names(self.weighted.names)
        mean = torch.tensor(
            [_reference(reference, f"eval/reward_budget0/{name}", "eval_reward") for name in names],
            dtype=torch.float64,
        )
        spread = torch.tensor(
            [
                _reference(reference, f"eval/reward_budget0_std/{name}", "eval_reward") or 1.0
                for name in names
            ],
            dtype=torch.float64,
        )
        combined, _ = weighted_scores(self.weighted, components, (mean, spread), dtype=torch.float64)
        return combined

    def _scores_to_show(self, values: list, reference: dict[str, float] | None) -> list[float]:
        """Per-image scores on the scale of the logged eval reward: a single reward's own, a weighted
        reward's combined with `reference`'s statistics (as `_reward_metrics` combines them)."""
        if not self.weighted or not values:
            return [float(value) for value in values]
        return self._combined(torch.tensor(values, dtype=torch.float64), reference).tolist()

    def _guard_metrics(self, gathered: dict[str, list]) -> dict[str, float]:
        metrics = {
            f"guard/{name}": float(torch.tensor(gathered[f"judge/{name}"]).mean())
            for name in self.guard_rewards
        }
        statistics = torch.tensor(gathered["statistics"], dtype=torch.float64).mean(dim=0)
        metrics.update(
            {
                f"guard/image_{name}": float(value)
                for name, value in zip(IMAGE_STATISTICS, statistics, strict=True)
            }
        )
        if "diversity" in gathered:
            distance = float(torch.tensor(gathered["diversity"], dtype=torch.float64).mean())
            metrics["guard/diversity_distance"] = distance
            reference = (
                distance
                if self.before is None
                else _reference(self.before, "guard/diversity_distance", "guard_diversity_seeds")
            )
            metrics["guard/diversity"] = distance / reference if reference > 0 else float("nan")
        return metrics

    def _save_grid(
        self, round_index: int, rows: list[tuple[str, torch.Tensor, list[float]]], prompts: list[str]
    ) -> Image.Image:
        """`eval/round_NNNNN.png`: one row per (label, images, scores) of `rows` (budget 0; SES on evals with a
        search), one column per prompt, each image's reward and prompt under it. Returns the image."""
        count = min(len(prompts), *(images.shape[0] for _, images, _ in rows))
        image = labelled_grid(
            [to_pil(images[:count]) for _, images, _ in rows],
            prompts[:count],
            [label for label, _, _ in rows],
            cell_labels=[[f"reward {score:.4f}" for score in scores[:count]] for _, _, scores in rows],
        )
        atomic_save_image(image, self.output_dir / "eval" / f"round_{round_index:05d}.png")
        return image


def _reference(before: dict, key: str, setting: str) -> float:
    """A round -1 value a later eval is measured against; a resume under other settings lacks it."""
    value = before.get(key)
    if value is None:
        raise ValueError(
            f"the eval before training (round -1 in metrics.jsonl) has no {key}: it ran with another {setting}. "
            f"Resume with the {setting} the run started with, or start afresh with --overwrite_output_dir."
        )
    return value


def amortisation_ratio(before: dict[str, float] | None, now: dict[str, float]) -> float | None:
    """How much of what the search gained before training the model now gets without searching.

    R = (budget-0 reward now - budget-0 before) / (searched reward before - budget-0 before), all on the
    same held-out prompts and seeds: 0 means training moved nothing, 1 means one sample from the trained
    model is as good as a search of `eval_budget` candidates was on the untrained one. None when the
    search gained nothing before training (the ratio is undefined) or round -1 was not evaluated.
    """
    if before is None or before.get("eval/reward_ses") is None or now.get("eval/reward_budget0") is None:
        return None
    gain = before["eval/reward_ses"] - before["eval/reward_budget0"]
    if not gain > 0:
        return None
    return (now["eval/reward_budget0"] - before["eval/reward_budget0"]) / gain


def learning_summary(metrics_path: Path, final_round: int | None = None) -> str | None:
    """One line: budget-0 eval reward before -> after training, and what the search gained before training.

    Shifts are in units of the eval prompts' spread before training (round -1), so rewards of any
    scale read alike. `final_round`: the eval of the LoRA the run kept (a guard stop's last good round;
    default the last eval). None when the run has no eval before and after training.
    """
    evals = [row for row in read_metrics(metrics_path) if "eval/reward_budget0" in row]
    before = next((row for row in evals if row["round"] == -1), None)
    if final_round is not None:
        evals = [row for row in evals if row["round"] <= final_round]
    if before is None or len(evals) < 2:
        return None
    after = evals[-1]
    if before["eval/reward_budget0"] is None or after["eval/reward_budget0"] is None:
        return None  # a non-finite eval reward, written as null
    spread = before.get("eval/reward_budget0_std") or float("nan")

    def shift(value: float) -> str:
        return f"{(value - before['eval/reward_budget0']) / spread:+.1f} sd"

    line = (
        f"learning: eval reward at budget 0 {before['eval/reward_budget0']:.4f} -> {after['eval/reward_budget0']:.4f} "
        f"({shift(after['eval/reward_budget0'])}) after {after['round'] + 1} rounds"
    )
    if before.get("eval/reward_ses") is not None:
        line += f"; before training, the search reached {before['eval/reward_ses']:.4f} ({shift(before['eval/reward_ses'])})"
    if after.get("eval/amortisation_ratio") is not None:
        line += f"; amortisation ratio {after['eval/amortisation_ratio']:.2f}"
    return line
