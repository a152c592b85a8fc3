"""The shapes model judged by ground truth: budget-0 verifier accuracy per task family on the held-out
prompts, and the learned proxy's mean, with standard errors; base and LoRA on the same noises.

    python -m tscale_train.shapes.evaluation --lora runs/demo

prints one line per metric, `before -> after (difference +- its paired standard error)`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewards.shapes.world import FAMILIES, evaluation_prompts

# Seeds of the evaluation noises: far from the seeds training runs use by default (0, 1, ...).
EVAL_SEED = 7_000_000


@dataclass
class ShapesScores:
    """Per image: the prompt's family, the verifier's clause fraction and the proxy reward."""

    families: list[str] = field(default_factory=list)
    verifier: list[float] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)

    def correct(self) -> torch.Tensor:
        return all_clauses_met(self.verifier)

    def mask(self, family: str | None) -> torch.Tensor:
        return torch.tensor([family is None or item == family for item in self.families])

    def to_json(self) -> dict:
        return {"families": self.families, "verifier": self.verifier, "proxy": self.proxy}


def all_clauses_met(verifier_scores) -> torch.Tensor:
    """1.0 where the verifier's clause fraction is 1 (every clause of the prompt true): the accuracy."""
    return (torch.as_tensor(verifier_scores, dtype=torch.float64) >= 1.0 - 1e-6).double()


def spearman(first, second) -> float:
    """Spearman's rank correlation, ties given their mean rank; NaN when either side is constant."""

    def ranks(values) -> torch.Tensor:
        tensor = torch.as_tensor(values, dtype=torch.float64)
        rank = torch.empty_like(tensor)
        rank[tensor.argsort()] = torch.arange(len(tensor), dtype=torch.float64)
        for value in tensor.unique():
            tied = tensor == value
            rank[tied] = rank[tied].mean()
        return rank

    a, b = ranks(first), ranks(second)
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    if values.numel() == 0:
        return math.nan, math.nan
    se = values.std(unbiased=True).item() / math.sqrt(values.numel()) if values.numel() > 1 else math.nan
    return values.mean().item(), se


def evaluation_set(images_per_family: int = 80, per_family: int = 20) -> list[tuple[str, str, int]]:
    """(family, prompt, noise seed): about `images_per_family` images of each family's held-out prompts
    (every prompt the same number of seeds; single objects have 3 held-out prompts, so many seeds each)."""
    items = []
    for family, prompts in evaluation_prompts(per_family).items():
        seeds = math.ceil(images_per_family / len(prompts))
        for index, prompt in enumerate(prompts):
            items.extend((family, prompt, EVAL_SEED + 1000 * seed + index) for seed in range(seeds))
    return items


@torch.no_grad()
def score_generator(
    generator, items: list[tuple[str, str, int]], judge, proxy=None, progress: bool = True
) -> ShapesScores:
    """Generate one budget-0 image per item with `generator` and score it with `judge` (and `proxy`)."""
    from ..progress import progress_bar

    scores = ShapesScores()
    embeds = {prompt: generator.encode_prompt(prompt) for _, prompt, _ in items}
    noises = torch.cat([generator.initial_noise(seed) for _, _, seed in items])
    bar = progress_bar(total=len(items), desc="shapes eval", unit="image", leave=False, enabled=progress)
    for batch, output in generator.iter_batches(noises, [embeds[prompt] for _, prompt, _ in items]):
        prompts = [prompt for _, prompt, _ in items[batch]]
        scores.families.extend(family for family, _, _ in items[batch])
        scores.verifier.extend(judge(output.images, prompts).tolist())
        if proxy is not None:
            scores.proxy.extend(proxy(output.images, prompts).tolist())
        bar.update(len(prompts))
    bar.close()
    return scores


def evaluate_shapes(
    model: str = "shapes", lora: str | None = None, *, images_per_family: int = 80, progress: bool = True
) -> dict[str, ShapesScores]:
    """Budget-0 scores of the base model ("base") and, with `lora`, of the LoRA ("lora"), on the same noises."""
    from rewards import load_reward

    from ..generation import generator_for_pipeline
    from ..loading import load_lora, load_pipeline

    pipe = load_pipeline(model, dtype="float32")
    generator = generator_for_pipeline(pipe, eval_batch_size=32)
    judge, proxy = load_reward("verifier"), load_reward("shapes-clip")
    items = evaluation_set(images_per_family)
    results = {"base": score_generator(generator, items, judge, proxy, progress)}
    if lora is not None:
        load_lora(pipe, lora)
        results["lora"] = score_generator(generator, items, judge, proxy, progress)
    return results


def report_lines(scores: ShapesScores) -> list[str]:
    """Verifier accuracy per family and overall, and the proxy's mean, each with its standard error."""
    lines = []
    correct = scores.correct()
    for family in (*FAMILIES, None):
        mask = scores.mask(family)
        mean, se = mean_and_se(correct[mask])
        lines.append(
            f"verifier accuracy {family or 'overall':<19} {mean:.3f} +- {se:.3f}  (n={int(mask.sum())})"
        )
    if scores.proxy:
        mean, se = mean_and_se(torch.tensor(scores.proxy))
        lines.append(f"shapes-clip reward {'':<18} {mean:.4f} +- {se:.4f}")
    return lines


def comparison_lines(before: ShapesScores, after: ShapesScores) -> list[str]:
    """`before -> after (difference +- paired standard error)` per family, overall, and for the proxy."""
    lines = []
    correct_before, correct_after = before.correct(), after.correct()
    for family in (*FAMILIES, None):
        mask = before.mask(family)
        old, _ = mean_and_se(correct_before[mask])
        new, _ = mean_and_se(correct_after[mask])
        gain, se = mean_and_se(correct_after[mask] - correct_before[mask])
        lines.append(
            f"verifier accuracy {family or 'overall':<19} {old:.3f} -> {new:.3f}  ({gain:+.3f} +- {se:.3f}, n={int(mask.sum())})"
        )
    if before.proxy and after.proxy:
        old_proxy, new_proxy = torch.tensor(before.proxy), torch.tensor(after.proxy)
        gain, se = mean_and_se(new_proxy - old_proxy)
        lines.append(
            f"shapes-clip reward {'':<18} {old_proxy.mean():.4f} -> {new_proxy.mean():.4f}  ({gain:+.4f} +- {se:.4f})"
        )
    return lines


def ses_gain_lines(run_dir: str | Path) -> list[str]:
    """The search's gain over budget 0 on the run's eval prompts, before training -> after, from the run's
    `metrics.jsonl` (its evals with SES: round -1 and the last); the standard errors treat the two means as
    independent (an upper bound: they share prompts and seeds)."""
    from ..run_dir import read_metrics

    rows = [
        row for row in read_metrics(Path(run_dir) / "metrics.jsonl") if row.get("eval/reward_ses") is not None
    ]
    if len(rows) < 2 or rows[0].get("round") != -1:
        return []

    def gain(row: dict) -> tuple[float, float]:
        count = int(
            row.get("eval/prompts") or 16
        )  # runs from before `eval/prompts` was logged: the demo's 16
        spread = math.hypot(row.get("eval/reward_ses_std", 0.0), row.get("eval/reward_budget0_std", 0.0))
        return row["eval/reward_ses"] - row["eval/reward_budget0"], spread / math.sqrt(count)

    (old, old_se), (new, new_se) = gain(rows[0]), gain(rows[-1])
    return [
        f"SES gain over budget 0 (reward) {'':<6} {old:+.4f} +- {old_se:.4f} -> {new:+.4f} +- {new_se:.4f}  (round {rows[-1]['round']})"
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shapes")
    parser.add_argument(
        "--lora", default=None, help="a LoRA (dir or .safetensors) to compare with the base model"
    )
    parser.add_argument("--images_per_family", type=int, default=80, help="budget-0 images per task family")
    parser.add_argument("--json", default=None, help="also write every image's scores here")
    parser.add_argument(
        "--run", default=None, help="a training run's output dir: also print its SES gain before -> after"
    )
    args = parser.parse_args(argv)
    if args.images_per_family < 1:
        parser.error("--images_per_family must be >= 1")
    results = evaluate_shapes(args.model, args.lora, images_per_family=args.images_per_family)
    if "lora" in results:
        print("budget-0, held-out prompts: base -> LoRA (paired difference +- standard error)")
        print("\n".join(comparison_lines(results["base"], results["lora"])))
    else:
        print("budget-0, held-out prompts")
        print("\n".join(report_lines(results["base"])))
    if args.run:
        print("\n".join(ses_gain_lines(args.run)))
    if args.json:
        Path(args.json).write_text(json.dumps({name: scores.to_json() for name, scores in results.items()}))


if __name__ == "__main__":
    main()
