"""The search driver: one Spectral Evolution Search (or best-of-N) per (prompt, seed), batched.

`search_prompts` runs one search per (prompt, seed) in lockstep through the ask/tell object, so every
generation of every search is generated and scored in shared batches. Under `accelerate launch` with
`split_across=PartialState()`, each batch of candidates is divided between the processes and the scores
gathered, so every process keeps the same CEM state and N processes search N times faster.
`ses_generate` is the one-prompt convenience API; `render_result` renders a finished search.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from search import RandomSearch, SESConfig, SpectralEvolutionSearch, published_variant

from ..config import DEFAULT_POPSIZE, SEARCH_METHODS, check_search_budget
from ..distributed import derive_seed
from ..generation import FlowGenerator, PromptEmbeds, generator_for_pipeline
from ..progress import Progress, progress_bar
from .images import to_pil
from .results import PromptSearch, SESOutput
from .scoring import (
    NONFINITE_KINDS,
    Reward,
    Statistics,
    count_nonfinite,
    describe_nonfinite,
    raw_scorer,
    score_counts,
    weighted_reward,
    weighted_scores,
)

if TYPE_CHECKING:
    from accelerate import PartialState

logger = logging.getLogger(__name__)

# Prompts searched in lockstep: one generation is popsize x this many candidates, scored batch by batch.
DEFAULT_SEARCH_GROUP_SIZE = 8


class _Evaluator:
    """Generates and scores a batch of candidates, optionally sharing the work across processes."""

    def __init__(
        self,
        generator: FlowGenerator,
        reward: Reward,
        num_inference_steps: int,
        split_across: PartialState | None = None,
        keep_latents: bool = False,
        preview_size: int | None = None,
    ) -> None:
        self.generator = generator
        self.reward = reward
        self.num_inference_steps = num_inference_steps
        self.state = split_across if split_across is not None and split_across.num_processes > 1 else None
        if self.state is not None and (keep_latents or preview_size):
            raise ValueError(
                "keeping latents or previews needs every candidate on one process; pass split_across=None."
            )
        self.keep_latents = keep_latents
        self.preview_size = preview_size

    def __call__(self, noises: torch.Tensor, embeds: list[PromptEmbeds]) -> tuple[torch.Tensor, dict]:
        if self.state is None:
            return self._evaluate(noises, embeds)
        from accelerate.utils import gather_object

        # Contiguous chunks keep each process's batch whole; gathering them in rank order restores the order.
        chunks = torch.tensor_split(torch.arange(noises.shape[0]), self.state.num_processes)
        local = chunks[self.state.process_index]
        local_scores = (
            self._evaluate(noises[local], [embeds[i] for i in local.tolist()])[0]
            if len(local)
            else torch.empty(0)
        )
        gathered = gather_object(local_scores.tolist())
        return torch.tensor(gathered, dtype=torch.float32), {}

    def _evaluate(self, noises, embeds):
        """Score each decoded batch at once and keep only what was asked for, off the accelerator.

        A whole generation's images are never held together: at 1024px one float32 candidate is
        12.6 MB plus the reward's copy, and a generation of a prompt group is popsize x group size.
        """
        prompts = [item.prompt for item in embeds]
        # A weighted reward's scores are standardised per search (see `_search_group`): score each reward raw.
        score = raw_scorer(self.reward)
        scores: list[torch.Tensor] = []
        extras: dict[str, list[torch.Tensor]] = {}
        for batch, output in self.generator.iter_batches(noises, embeds, self.num_inference_steps):
            scores.append(score(output.images, prompts[batch]).float().cpu())
            if self.keep_latents:
                extras.setdefault("clean_latents", []).append(output.clean_latents.detach().cpu())
            if self.preview_size:
                thumbnails = F.interpolate(
                    output.images.float(), size=self.preview_size, mode="area", antialias=False
                )
                extras.setdefault("previews", []).append(
                    (thumbnails.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                )
            del output
        return torch.cat(scores), {name: torch.cat(values) for name, values in extras.items()}


def search_prompts(
    generator: FlowGenerator,
    reward: Reward,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    budget: int = 20,
    config: SESConfig | None = None,
    preview_steps: int | None = None,
    embeds: Sequence[PromptEmbeds] | Callable[[Sequence[str]], list[PromptEmbeds]] | None = None,
    split_across: PartialState | None = None,
    keep_latents: bool = False,
    preview_size: int | None = None,
    group_size: int | None = DEFAULT_SEARCH_GROUP_SIZE,
    progress: bool = True,
    method: str = "ses",
    reward_statistics: Sequence[Statistics | None] | None = None,
) -> list[PromptSearch]:
    """Run one SES per (prompt, seed), in lockstep groups of `group_size` prompts sharing batches.

    `method="random"` runs the best-of-N baseline instead (`SEARCH_METHODS`): the same base noise
    first, then fresh Gaussian noises, `popsize` per batch, at the same budget.

    The base noise of search i is `generator.initial_noise(seeds[i])`, and the search's own random
    numbers come from a generator seeded from the same seed (`derive_seed(seed, "search")`), so a result depends only on (prompt, seed),
    not on which other prompts share the batch, the group size, or how many processes evaluate it.

    `embeds`: one `PromptEmbeds` per prompt, or a function that encodes a list of prompts (called one
    group at a time, so a long prompt file is never encoded all at once); default: encode each
    group with `generator.encode_prompt`. `group_size` bounds the candidates of one generation to
    `popsize x group_size` (None: every prompt in one group).

    `reward_statistics` (a `WeightedReward` only): per prompt, the `(mean, spread)` of each reward to
    standardise with instead of the search's own first generation's (None entries fit their own), so
    several searches of one prompt can share one scale (`--compare`).
    """
    # As in `SearchConfig`: a budget below the default population is one generation, not an error.
    if method not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {method!r}; choose from {', '.join(SEARCH_METHODS)}.")
    config = config or SESConfig(popsize=min(DEFAULT_POPSIZE, budget))
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds.")
    check_search_budget(budget, config.popsize)
    if method == "ses-published":
        config = published_variant(config)
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1 (or None for one group), got {group_size}.")
    if embeds is None:

        def embeds(group: Sequence[str]) -> list[PromptEmbeds]:
            return [generator.encode_prompt(prompt) for prompt in group]

    elif not callable(embeds) and len(embeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(embeds)} prompt embeddings.")
    if reward_statistics is not None and len(reward_statistics) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(reward_statistics)} reward statistics.")
    statistics = list(reward_statistics) if reward_statistics is not None else [None] * len(prompts)
    evaluate = _Evaluator(
        generator,
        reward,
        preview_steps or generator.preview_steps,
        split_across=split_across,
        keep_latents=keep_latents,
        preview_size=preview_size,
    )
    bar = SearchProgress(
        progress_bar(
            total=budget * len(prompts),
            desc=SEARCH_METHODS[method],
            unit="cand",
            enabled=progress,
            # Candidates split over processes: one bar, the main process's. Without `split_across` (one process,
            # or prompts sharded over processes): the launch's main process shows its own searches.
            main=None if split_across is None else split_across.is_main_process,
        )
    )
    step = group_size or max(1, len(prompts))
    results: list[PromptSearch] = []
    for start in range(0, len(prompts), step):
        group = slice(start, start + step)
        group_embeds = embeds(prompts[group]) if callable(embeds) else list(embeds[group])
        results += _search_group(
            generator,
            evaluate,
            prompts[group],
            seeds[group],
            group_embeds,
            budget,
            config,
            bar,
            method,
            statistics[group],
        )
    bar.close()
    counts = score_counts(results)
    if any(counts[kind] for kind in NONFINITE_KINDS):
        warnings.warn(
            f"the reward gave no finite score for {sum(counts[kind] for kind in NONFINITE_KINDS)} of {counts['candidates']} "
            f"candidates ({describe_nonfinite(counts)}); they were never selected (a reward must return finite numbers).",
            stacklevel=2,
        )
    return results


def best_so_far(previous: float, scores: Sequence[float]) -> float:
    """The best score seen: the larger of `previous` and `scores`, NaN scores left out (NaN while no score
    is a number). Never falls, whichever prompts' searches `scores` come from."""
    numbers = [score for score in (previous, *scores) if not math.isnan(score)]
    return max(numbers) if numbers else math.nan


class SearchProgress:
    """The search bar: candidates scored, and the best score of any search so far (over every group of
    prompts, so the number a person watches only rises)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.best = math.nan

    def update(self, candidates: int, best_scores: Sequence[float]) -> None:
        """`candidates` more were scored; `best_scores` are the current group's searches' bests."""
        self.best = best_so_far(self.best, best_scores)
        self.bar.update(candidates)
        self.bar.set_postfix(best=f"{self.best:.4f}")

    def close(self) -> None:
        self.bar.close()


def start_search(
    generator: FlowGenerator, seed: int, budget: int, config: SESConfig, method: str = "ses"
) -> RandomSearch | SpectralEvolutionSearch:
    """The ask/tell search `search_prompts` runs for `seed`: its base noise is `generator.initial_noise(seed)`,
    its own random numbers a stream derived from the seed. Telling a new one the scores a finished search
    recorded replays that search exactly (`noise_at` then gives any candidate's noise without generating it).
    `config` is used as given (`search_prompts` has already turned it into the published variant)."""
    # The search's own stream must not be the base noise's: seeded alike, its first fresh noise
    # (best-of-N's, and the default SES's first generation) would be the base noise again.
    base, rng = (
        generator.initial_noise(seed)[0],
        torch.Generator().manual_seed(derive_seed(int(seed), "search")),
    )
    if method == "random":
        return RandomSearch(base, budget, generator=rng, batch_size=config.popsize)
    return SpectralEvolutionSearch(base, budget=budget, config=config, generator=rng)


def _search_group(
    generator: FlowGenerator,
    evaluate: _Evaluator,
    prompts: Sequence[str],
    seeds: Sequence[int],
    embeds: list[PromptEmbeds],
    budget: int,
    config: SESConfig,
    bar: SearchProgress,
    method: str,
    statistics: list[Statistics | None],
) -> list[PromptSearch]:
    """The searches of one group, in lockstep.

    Non-finite scores (NaN, and +-inf, which would otherwise win or poison the search's statistics) are told
    as NaN, so no search selects them; each result counts them (`PromptSearch.nonfinite`).

    With a `WeightedReward` the evaluator returns raw scores `[N, K]`; each search standardises them with
    `statistics[i]`, or where that is None with those of its own first generation, kept for the rest of
    the search so its scores stay on one scale whatever the batching.
    """

    searches = [start_search(generator, seed, budget, config, method) for seed in seeds]
    kept: list[dict[str, list[torch.Tensor]]] = [{} for _ in searches]
    statistics = list(statistics)  # filled in as first generations are scored
    weighted = weighted_reward(evaluate.reward)
    nonfinite = [dict.fromkeys(NONFINITE_KINDS, 0) for _ in searches]
    while not all(search.done for search in searches):
        active = [index for index, search in enumerate(searches) if not search.done]
        asked = [searches[index].ask() for index in active]
        sizes = [noises.shape[0] for noises in asked]
        batch_embeds = [embeds[index] for index, size in zip(active, sizes, strict=True) for _ in range(size)]
        scores, extras = evaluate(torch.cat(asked), batch_embeds)
        offset = 0
        for index, size in zip(active, sizes, strict=True):
            chunk = scores[offset : offset + size]
            if weighted is not None:
                kept[index].setdefault("component_scores", []).append(chunk)
                chunk, statistics[index] = weighted_scores(weighted, chunk, statistics[index])
            for kind, count in count_nonfinite(chunk).items():
                nonfinite[index][kind] += count
            searches[index].tell(
                torch.where(torch.isfinite(chunk), chunk, torch.full_like(chunk, float("nan")))
            )
            for name, values in extras.items():
                kept[index].setdefault(name, []).append(values[offset : offset + size])
            offset += size
        bar.update(sum(sizes), [search.best_score for search in searches])
    results = [
        PromptSearch(
            prompt=prompt,
            seed=int(seed),
            search=search.result(),
            clean_latents=torch.cat(extra["clean_latents"]) if "clean_latents" in extra else None,
            previews=torch.cat(extra["previews"]) if "previews" in extra else None,
            component_scores=torch.cat(extra["component_scores"]) if "component_scores" in extra else None,
            reward_statistics=stats,
            nonfinite=counts,
        )
        for prompt, seed, search, extra, stats, counts in zip(
            prompts, seeds, searches, kept, statistics, nonfinite, strict=True
        )
    ]
    return results


def ses_generate(
    pipe,
    prompt: str,
    reward: Reward,
    *,
    budget: int = 20,
    seed: int = 0,
    config: SESConfig | None = None,
    preview_steps: int | None = None,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance_scale: float | None = None,
    eval_batch_size: int = 4,
    split_across: PartialState | None = None,
    progress: bool = True,
) -> SESOutput:
    """Search the initial noise of `pipe` for `prompt` and render the best one.

    `pipe` is any supported diffusers pipeline the caller holds, with or without a LoRA loaded.
    `preview_steps` are the sampler steps used to score candidates (default: the pipeline's default
    steps), `steps` those of the final image.
    """
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty; pass a non-empty prompt.")
    generator = generator_for_pipeline(
        pipe,
        height=height,
        width=width,
        guidance_scale=guidance_scale,
        eval_batch_size=eval_batch_size,
    )
    (result,) = search_prompts(
        generator,
        reward,
        [prompt],
        [seed],
        budget=budget,
        config=config,
        preview_steps=preview_steps,
        split_across=split_across,
        progress=progress,
    )
    return render_result(generator, result, steps)


def render_result(generator: FlowGenerator, result: PromptSearch, steps: int | None = None) -> SESOutput:
    """Generate the best and the base noise of a finished search at `steps` steps."""
    embeds = generator.encode_prompt(result.prompt)
    noises = torch.cat([result.search.best_noise.float().cpu(), generator.initial_noise(result.seed)])
    images = to_pil(generator.generate(noises, embeds, steps).images)
    return SESOutput(
        prompt=result.prompt, seed=result.seed, image=images[0], base_image=images[1], search=result.search
    )
