"""Eval of the online loop: held-out prompts, fixed seeds, reward at budget 0 and after SES.

Also the train/held-out split of the prompts and the one-line learning summary read from
`metrics.jsonl` at the end of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from search import SESConfig

from .config import OnlineDPOConfig
from .distributed import derive_seed, gather_by_slot, shard_evenly
from .generation import FlowGenerator
from .io_utils import atomic_save_image
from .prompt_cache import PromptEmbeddingCache
from .prompts import load_prompts
from .run_dir import read_metrics
from .ses import search_prompts, to_pil


def split_eval_prompts(prompts: list[str], config: OnlineDPOConfig) -> tuple[list[str], list[str]]:
    """Train/held-out split: `eval_prompts` if given, else a seeded `eval_fraction` of `prompts`."""
    if config.eval_prompts:
        return prompts, load_prompts(config.eval_prompts, column=config.prompt_column)[: config.max_eval_prompts]
    count = min(config.max_eval_prompts, int(round(len(prompts) * config.eval_fraction)))
    if count == 0 or len(prompts) - count < 1:
        return prompts, []
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(derive_seed(config.seed, "eval-split")))
    held_out = set(order[:count].tolist())
    return [p for i, p in enumerate(prompts) if i not in held_out], [prompts[i] for i in sorted(held_out)]


class Evaluator:
    """Scores the current LoRA on the held-out prompts; every process must call it (it gathers).

    `search` is the trainer's `search_prompts`, handed in so pairs and eval search the same way.
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
        # Round -1's budget-0 and searched rewards: the denominator of `eval/amortisation_ratio`.
        self.before: dict[str, float] | None = None

    @torch.no_grad()
    def __call__(self, round_index: int, with_search: bool) -> dict[str, float]:
        """Mean reward on held-out prompts with fixed seeds: at budget 0 (the LoRA alone) and after SES.

        Both are scored at the search's preview steps, so `eval/reward_ses - eval/reward_budget0` is
        what the search adds (for a base model, 12-step previews against 50-step images would not be).
        """
        if not self.prompts:
            return {}
        config, accelerator = self.config, self.accelerator
        slots = list(enumerate(self.prompts))
        local = shard_evenly(slots, accelerator.num_processes, accelerator.process_index)
        prompts = [prompt for _, prompt in local]
        seeds = [derive_seed(config.seed, "eval", slot) % (2**31) for slot, _ in local]
        steps = config.preview_steps or self.generator.preview_steps
        self.model.eval()
        self.reward.to(accelerator.device)
        noises = torch.cat([self.generator.initial_noise(seed) for seed in seeds])
        embeds = self.prompt_cache.get(prompts)
        budget0, grid_images = self._score_and_keep_grid(noises, embeds, prompts, steps)
        # Padding repeats slots; gather (slot, score) and keep each slot once.
        scored = gather_by_slot(accelerator, [slot for slot, _ in local], budget0.tolist())
        metrics = {
            "eval/reward_budget0": float(torch.tensor(scored).mean()),
            "eval/reward_budget0_std": float(torch.tensor(scored).std()) if len(scored) > 1 else 0.0,
        }
        if with_search:
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
            searched = gather_by_slot(accelerator, [slot for slot, _ in local], [result.search.best_score for result in results])
            metrics["eval/reward_ses"] = float(torch.tensor(searched).mean())
            if accelerator.is_main_process:
                count = grid_images.shape[0]
                best = torch.cat([result.search.best_noise.float().cpu() for result in results[:count]])
                _, ses_images = self._score_and_keep_grid(best, embeds[:count], None, steps)
                self._save_grid(round_index, grid_images, ses_images)
        if config.offload_reward:
            self.reward.to("cpu")
        if round_index == -1:
            self.before = metrics
        ratio = amortisation_ratio(self.before, metrics) if round_index >= 0 else None
        if ratio is not None:
            metrics["eval/amortisation_ratio"] = ratio
        return metrics

    def _score_and_keep_grid(self, noises, embeds, prompts, steps, grid_count: int = 8):
        """Scores (when `prompts` is given) batch by batch, and the first `grid_count` images on the CPU."""
        scores, kept = [], []
        for batch, output in self.generator.iter_batches(noises, embeds, steps):
            if prompts is not None:
                scores.append(self.reward(output.images, prompts[batch]).float().cpu())
            if sum(len(images) for images in kept) < grid_count:
                kept.append(output.images.float().cpu())
        grid = torch.cat(kept)[:grid_count]
        return (torch.cat(scores) if scores else torch.empty(0)), grid

    def _save_grid(self, round_index: int, budget0_images: torch.Tensor, ses_images: torch.Tensor) -> None:
        """`eval/round_NNNNN.png` (top: budget 0, bottom: SES), also sent to tensorboard/wandb if tracking."""
        from torchvision.utils import make_grid

        count = min(budget0_images.shape[0], ses_images.shape[0])
        grid = make_grid(torch.cat([budget0_images[:count], ses_images[:count]]).float(), nrow=count, padding=2)
        image = to_pil(grid[None])[0]
        atomic_save_image(image, self.output_dir / "eval" / f"round_{round_index:05d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("eval/budget0_vs_ses", grid.clamp(0, 1), round_index)
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"eval/budget0_vs_ses": wandb.Image(image, caption="top: budget 0, bottom: SES")}, step=round_index)


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


def learning_summary(metrics_path: Path) -> str | None:
    """One line: budget-0 eval reward before -> after training, and what the search gained before training.

    Shifts are in units of the eval prompts' spread before training (round -1), so rewards of any
    scale read alike. None when the run has no eval before and after training.
    """
    evals = [row for row in read_metrics(metrics_path) if "eval/reward_budget0" in row]
    before = next((row for row in evals if row["round"] == -1), None)
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
