"""`tscale ses --compare random,ses`: the inference-time scaling experiment in one command.

Every method searches the same base noise (the seed's) at the same budget with the same reward:
`random` is best-of-N (the base, then fresh Gaussian noises), `ses` is Spectral Evolution Search.
What comes out: the best noise of each rendered at the final step count next to the base noise's
image, a table of rewards, and the best-so-far reward of each method against evaluations in one plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .config import SEARCH_METHODS
from .generation import FlowGenerator
from .io_utils import atomic_write
from .ses.driver import search_prompts
from .ses.images import labelled_tiles, to_pil
from .ses.results import PromptSearch
from .ses.scoring import Reward, final_scores, weighted_reward


@dataclass
class Comparison:
    """One prompt's searches, one per method, from the same base noise."""

    prompt: str
    seed: int
    searches: dict[str, PromptSearch]  # method -> its search, in the order asked for
    final_scores: dict[str, float] | None = None  # "base" and each method: the reward of the final image

    @property
    def base_score(self) -> float:
        return next(iter(self.searches.values())).search.base_score


def compare_searches(
    generator: FlowGenerator,
    reward: Reward,
    prompts: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str],
    **search_kwargs,
) -> list[Comparison]:
    """Run each of `methods` (`SEARCH_METHODS` names) on every (prompt, seed); `search_kwargs` go to
    `search_prompts` (budget, config, preview_steps, split_across, group_size, progress)."""
    unknown = [method for method in methods if method not in SEARCH_METHODS]
    if unknown or not methods:
        raise ValueError(
            f"unknown search method(s) {unknown or methods}; choose from {', '.join(SEARCH_METHODS)}."
        )
    by_method = {
        methods[0]: search_prompts(generator, reward, prompts, seeds, method=methods[0], **search_kwargs)
    }
    # A weighted reward: every method on the first method's scale (its first generation's statistics), so the
    # table's rewards and gains compare. SES and best-of-N draw the same first generation anyway.
    shared = (
        [result.reward_statistics for result in by_method[methods[0]]]
        if weighted_reward(reward) is not None
        else None
    )
    for method in methods[1:]:
        by_method[method] = search_prompts(
            generator, reward, prompts, seeds, method=method, reward_statistics=shared, **search_kwargs
        )
    return [
        Comparison(prompt, int(seed), {method: by_method[method][index] for method in methods})
        for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True))
    ]


@torch.no_grad()
def render_comparison(
    generator: FlowGenerator, reward: Reward, comparison: Comparison, steps: int | None = None
) -> list[Image.Image]:
    """The base noise's image and each method's best, at `steps` (the final image's steps), scored by
    `reward`; the scores land in `comparison.final_scores`. Returns the images in that order."""
    embeds = generator.encode_prompt(comparison.prompt)
    noises = torch.cat(
        [generator.initial_noise(comparison.seed)]
        + [result.search.best_noise.float().cpu() for result in comparison.searches.values()]
    )
    images = generator.generate(noises, embeds, steps).images
    prompts = [comparison.prompt] * len(images)
    # On the scale of the searches' scores: the statistics every method of the comparison shares.
    first = next(iter(comparison.searches.values()))
    scores = final_scores(reward, images, prompts, first.reward_statistics)
    comparison.final_scores = dict(zip(["base", *comparison.searches], scores, strict=True))
    return to_pil(images)


def comparison_strip(images: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    """Images next to each other at the generated resolution, each with its label (method and reward) above
    it in a band of its own width (`labelled_tiles`)."""
    return labelled_tiles(list(images), list(labels))


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict]:
    """One row for the base noise and one per method: means over prompts of the best search reward,
    its gain over the base noise, the evaluations it took to reach its best, and the final image's reward."""

    def mean(values: list[float]) -> float:
        return float(torch.tensor(values, dtype=torch.float64).mean())

    finals = [comparison.final_scores for comparison in comparisons if comparison.final_scores]
    base = mean([comparison.base_score for comparison in comparisons])
    rows = [
        {
            "method": "base noise",
            "evaluations": 1,
            "best_reward": base,
            "gain": 0.0,
            "evaluations_to_best": 1,
            "final_reward": mean([scores["base"] for scores in finals]) if finals else None,
        }
    ]
    for method in comparisons[0].searches:
        searches = [comparison.searches[method].search for comparison in comparisons]
        best = mean([search.best_score for search in searches])
        rows.append(
            {
                "method": SEARCH_METHODS[method],
                "evaluations": len(searches[0].scores),
                "best_reward": best,
                "gain": best - base,
                "evaluations_to_best": mean([search.best_index + 1 for search in searches]),
                "final_reward": mean([scores[method] for scores in finals]) if finals else None,
            }
        )
    return rows


def format_table(rows: Sequence[dict], title: str) -> str:
    """`comparison_rows` as a Markdown table (readable in a terminal, pasteable into a README)."""
    lines = [
        title,
        "",
        "| method | evaluations | best reward (preview) | gain over base | evaluations to best | final image reward |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        final = "" if row["final_reward"] is None else f"{row['final_reward']:.4f}"
        lines.append(
            f"| {row['method']} | {row['evaluations']} | {row['best_reward']:.4f} | {row['gain']:+.4f} | "
            f"{row['evaluations_to_best']:.1f} | {final} |"
        )
    return "\n".join(lines)


def plot_curves(comparisons: Sequence[Comparison], path, title: str = "") -> None:
    """Best reward so far against evaluations, one line per method (mean over prompts), base as reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for method in comparisons[0].searches:
        curves = torch.stack(
            [comparison.searches[method].search.best_so_far().double() for comparison in comparisons]
        )
        axis.plot(range(1, curves.shape[1] + 1), curves.mean(0).numpy(), label=SEARCH_METHODS[method])
    axis.axhline(
        sum(comparison.base_score for comparison in comparisons) / len(comparisons),
        color="gray",
        linestyle="--",
        label="base noise",
    )
    axis.set_xlabel("evaluations")
    axis.set_ylabel(
        "best reward so far" + (f" (mean of {len(comparisons)} prompts)" if len(comparisons) > 1 else "")
    )
    axis.set_title(title[:70])
    axis.legend(loc="best")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
