"""What the shapes-world benchmarks share: the model, the two judges, held-out (prompt, seed) items, statistics.

The shapes world (`rewards/shapes/`) has a ground-truth judge, the `verifier`, and a learned proxy,
`shapes-clip`; the benchmarks search or train with one and judge with the other. Items are (task family,
held-out prompt, noise seed), balanced over the five families (`tscale_train.shapes.evaluation`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence

import torch

from rewards.shapes.world import FAMILIES

REWARDS = ("shapes-clip", "verifier")
# Noise seeds of the benchmarks' items: apart from the evaluation's (7_000_000) and training runs' (0, 1, ...).
BENCH_SEED = 8_000_000


def setup(threads: int) -> None:
    """Quiet, offline, `threads` torch threads (2 on a 2-core machine; more only oversubscribes)."""
    import datasets

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")


def load_generator(eval_batch_size: int = 16, lora: str | None = None):
    """The shipped shapes model's `FlowGenerator` (float32; with `lora` loaded when given).

    16 images a batch: on 2 CPU cores the 64px model runs fastest there (26 previews/s at 8 steps, 18/s at
    a batch of 200, whose activations leave the caches)."""
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_lora, load_pipeline

    pipe = load_pipeline("shapes", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        load_lora(pipe, lora)
    return generator_for_pipeline(pipe, eval_batch_size=eval_batch_size)


def load_judges() -> dict:
    """Both rewards of the shapes world by name."""
    from rewards import load_reward

    return {name: load_reward(name) for name in REWARDS}


def held_out_items(per_family: int) -> list[tuple[str, str, int]]:
    """(family, prompt, seed): `per_family` items of each task family, cycling through its held-out prompts
    (`rewards.shapes.world.evaluation_prompts`) with a new noise seed each pass."""
    from rewards.shapes.world import evaluation_prompts

    items = []
    for family, prompts in evaluation_prompts().items():
        for index in range(per_family):
            passes, position = divmod(index, len(prompts))
            items.append((family, prompts[position], BENCH_SEED + 1000 * passes + position))
    return items


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN se for one value) of the finite `values`."""
    from tscale_train.shapes.evaluation import mean_and_se

    finite = [float(value) for value in values if value is not None and math.isfinite(value)]
    return mean_and_se(torch.tensor(finite, dtype=torch.float64))


def fmt(values: Sequence[float], digits: int = 3, signed: bool = False) -> str:
    """`mean ± se` of `values`."""
    mean, se = mean_se(values)
    if not math.isfinite(mean):
        return "n/a"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:{sign}.{digits}f}"


def families_and_overall(families: Sequence[str]) -> list[tuple[str, list[int]]]:
    """(row label, item indices) for each task family present, then "overall" (every item)."""
    rows = [(family, [i for i, item in enumerate(families) if item == family]) for family in FAMILIES]
    return [row for row in rows if row[1]] + [("overall", list(range(len(families))))]


def correct(verifier_scores: torch.Tensor | Sequence[float]) -> list[float]:
    """1.0 where the verifier found every clause of the prompt true (the accuracy the benchmarks report)."""
    from tscale_train.shapes.evaluation import all_clauses_met

    return all_clauses_met(verifier_scores).tolist()


def machine_line() -> str:
    """Commit and machine, for docs/benchmarks.md."""
    import platform

    from tscale_train.shapes.card import git_commit

    return (
        f"commit {git_commit()}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


@torch.no_grad()
def final_scores(
    generator,
    judges: dict,
    items: Sequence[tuple[str, str, int]],
    noises: torch.Tensor | None = None,
    steps: int | None = None,
) -> dict:
    """Both judges' scores of each item's image (default: its seed's noise, i.e. budget 0) at `steps`
    sampler steps (default: the final image's)."""
    prompts = [prompt for _, prompt, _ in items]
    embeds = {prompt: generator.encode_prompt(prompt) for prompt in dict.fromkeys(prompts)}
    if noises is None:
        noises = torch.cat([generator.initial_noise(seed) for _, _, seed in items])
    scores: dict[str, list[float]] = {name: [] for name in judges}
    for batch, output in generator.iter_batches(noises, [embeds[prompt] for prompt in prompts], steps):
        for name, judge in judges.items():
            scores[name].extend(judge(output.images, prompts[batch]).float().tolist())
    return scores


def searched_scores(
    generator, judges: dict, items: Sequence[tuple[str, str, int]], budget: int, reward: str, config=None
) -> dict:
    """Both judges' scores of the final image of each item's search (`tscale ses` with `reward` at `budget`)."""
    from search import SESConfig
    from tscale_train.ses import search_prompts

    results = search_prompts(
        generator,
        judges[reward],
        [prompt for _, prompt, _ in items],
        [seed for _, _, seed in items],
        budget=budget,
        config=config or SESConfig(level=None),
        group_size=None,
        progress=False,
    )
    return final_scores(
        generator, judges, items, torch.stack([result.search.best_noise[0] for result in results])
    )


def minus_shapes_clip(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """`shapes-clip` negated: the reversed-pairs control trains toward what the proxy likes least (a reward
    spec takes no negative weight, so the control is this callable: `shapes_common:minus_shapes_clip`)."""
    return -_shapes_clip()(images, prompts)


@functools.lru_cache(maxsize=1)
def _shapes_clip():
    from rewards import load_reward

    return load_reward("shapes-clip")
