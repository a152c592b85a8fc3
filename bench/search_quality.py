"""Search quality: our SES vs best-of-N vs the published SES, per budget, on five objectives.

What it measures: the TRUE score of the noise each search returns, at budgets 10/20/25/30/50/100, as mean
± standard error over seeds (default 30), for

- best-of-N (`search.random_search`: the base noise, then fresh Gaussian noises, batches of 10);
- the published SES (`bench/reference_ses.py`: DiffSynth-Studio's algorithm, one candidate per call) and
  our batched implementation of it (`SESConfig(variant="published")`), which must match it;
- our default SES (`search.ses_search`, `variant="surrogate"`: db1, level 4 or the deepest the latent
  allows, popsize 10, 5 elites), and after its table a line on the yardstick of issue 12: the default at
  budget 25 against the published SES at 50;
- the ablation: the default with each of its changes undone (`ABLATIONS`); on the analytic objectives
  also wavelet level one lower and higher, popsize 5 / 20 and 2 / 10 elites (``--pipeline-variants``);

on these objectives (each seed draws its own base noise, targets and prompt):

1. ``low-frequency``: minus the squared distance of the noise's level-4 band to a random target
   (`search.synthetic.low_frequency_objective`, one smooth optimum at 0);
2. ``two-optima``: a global optimum (0) and a lower decoy (``--decoy-height``, -0.5) whose branch is the
   higher one around ordinary noises (`search.synthetic.TwoOptimaObjective`, decoy target at half the
   scale); a second table gives the share of seeds whose returned noise lies in the global basin;
3. ``noisy``: the low-frequency objective plus Gaussian observation noise (``--observation-noise``;
   `search.synthetic.NoisyObjective`); searches see noisy scores, the table reports the noise-free
   score of the candidate each search picked (a lucky draw is not a better noise);
4. and 5. the tiny FLUX.2-klein pipeline (``load_pipeline("tiny")``, 64px, its 4 preview steps, three
   prompts, seed s using prompt s mod 3) scored with the synthetic ``brightness`` and ``redness``
   rewards, one score per candidate image, generated in batches through the `FlowGenerator`.

How the comparison is done: every method gets exactly ``budget`` objective evaluations. Ours spend the
first one on the seed's base noise (so they never return worse than it); the published SES never
scores the base noise and spends all of them on samples of its search distribution (it only borrows the
base noise's detail bands). All methods of one seed share its base noise and search seed (common random
numbers: our SES's first popsize - 1 samples are the published SES's first ones, both being N(0, 1) rows
drawn from the same generator, so paired differences show the algorithms, not the draws). Tables report
the gain over the base noise's true score: for the analytic objectives in objective units, for the
pipeline in units of the reward's standard deviation over fresh Gaussian noises of one prompt (from
best-of-N's samples), because the random tiny model's rewards barely move. Paired rows give SES minus
a baseline on the same seeds. The best score at each budget is read from one budget-100 run per seed
and method (the best-so-far after b evaluations): the script first checks, per method and latent
shape, that a budget-b run makes exactly the first b proposals of the budget-100 run, and runs the
budgets separately (marked †) where it does not (torch's CPU normal sampler gives size-dependent
values, so a truncated last generation can differ). Wall times: seconds per search at budget 50 for
each method, interleaved in the same run, no cache (median of ``--time-repeats``). On the pipeline,
quality runs share one cache of (prompt, noise) -> rewards, so a noise proposed twice (the base noise,
best-of-N's noises under the second reward, a first generation shared by SES variants) is generated
once; timing runs use no cache. Torch runs on one thread by default (``--threads``): on a shared
2-core machine the tiny model's many small ops lose more to thread hand-offs than they gain.

The plot (``--plot``, default ``bench/results/search_quality.png``) shows, per objective, the mean gain
of the best true score against evaluations with a shaded standard error.

Usage: python bench/search_quality.py [--seeds 30] [--budgets 10,20,25,30,50,100] [--quick] [--plot PATH]
       [--objectives low-frequency,two-optima,noisy,tiny-brightness,tiny-redness] [--shape 16,32,32]
       [--pipeline-variants ablation|level|all|none] [--time-repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from search import SESConfig, random_search, ses_search
from search.synthetic import NoisyObjective, TwoOptimaObjective, low_frequency_objective, random_target
from search.wavelets import max_level

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from reference_ses import reference_ses_search  # noqa: E402

ANALYTIC_OBJECTIVES = ("low-frequency", "two-optima", "noisy")
DEFAULT_OBJECTIVES = (*ANALYTIC_OBJECTIVES, "tiny-brightness", "tiny-redness")
DEFAULT_PROMPTS = ("a red cube on a wooden table", "sketch, a cat", "a lighthouse at dusk, oil painting")
OBJECTIVE_LEVEL = 4  # the analytic objectives look at the level-4 band (2x2 per channel on a 32x32 noise)
RANDOM_BATCH = 10  # best-of-N's batch: as many candidates per objective call as SES's default popsize
DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "search_quality.png"
VARIANT_COLORS = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")

Objective = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One search algorithm with its settings: ``kind`` is "random", "reference", "ses" or "variant"."""

    name: str
    kind: str
    config: SESConfig

    def run(self, objective: Objective, base_noise: Tensor, budget: int, seed: int) -> Tensor:
        """Run to ``budget`` evaluations with search seed ``seed``; return the scores in evaluation order."""
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "random":
            return random_search(
                objective, base_noise, budget, generator=generator, batch_size=RANDOM_BATCH
            ).scores
        if self.kind == "reference":
            config = self.config
            return reference_ses_search(
                objective,
                base_noise,
                budget,
                popsize=config.popsize,
                k_elites=config.k_elites,
                wavelet=config.wavelet,
                level=config.level,
                generator=generator,
            ).scores
        return ses_search(objective, base_noise, budget, config=self.config, generator=generator).scores


# Issue 12's yardstick: the default at this budget against the published SES at twice it.
HALF_BUDGET = 25

# The default SES with one of its changes undone: each row's loss is that change's contribution.
ABLATIONS: dict[str, dict] = {
    "no surrogate step": {"surrogate": False},
    "no variance decay": {"variance_decay": 1.0},
    "no shell cap": {"shell_sd": math.inf},
    "no fresh first generation": {"fresh_first": False},
}


def methods_for(noise_shape: Sequence[int], variants: str = "all") -> list[Method]:
    """Best-of-N, the published SES (reference and ours), our default SES, then variants of the default.

    ``variants``: ``"ablation"`` (the default with each change undone, ``ABLATIONS``), ``"all"`` (that,
    plus wavelet level one lower and higher where the latent allows, popsize 5 / 20, 2 / 10 elites),
    ``"level"`` (the level variants only) or ``"none"``. The published SES runs at our default's level.
    """
    deepest = max_level(noise_shape[-2], noise_shape[-1], "db1")
    level = min(4, deepest)
    default = SESConfig(level=level)
    published = SESConfig(level=level, variant="published")
    methods = [
        Method("best-of-N", "random", published),
        Method("published SES (1 per call)", "reference", published),
        Method("published SES (ours, batched)", "variant", published),
        Method("SES (default)", "ses", default),
    ]
    if variants in ("all", "ablation"):
        methods += [
            Method(f"SES default, {name}", "variant", SESConfig(level=level, **change))
            for name, change in ABLATIONS.items()
        ]
    if variants in ("all", "level"):
        for variant_level in (level - 1, level + 1):
            if 1 <= variant_level <= deepest:
                methods.append(
                    Method(f"SES level {variant_level}", "variant", SESConfig(level=variant_level))
                )
    if variants == "all":
        methods += [
            Method(f"SES popsize {size}", "variant", SESConfig(level=level, popsize=size)) for size in (5, 20)
        ]
        methods += [
            Method(f"SES {count} elites", "variant", SESConfig(level=level, k_elites=count))
            for count in (2, 10)
        ]
    return methods


def budget_prefix_consistent(method: Method, noise_shape: Sequence[int], budgets: Sequence[int]) -> bool:
    """Whether a budget-b run of ``method`` proposes exactly the first b candidates of the longest run.

    Checked on the proposed noises themselves, scored by a fixed random linear objective one candidate
    at a time (so a score never depends on which batch its candidate came in). Proposals depend on
    earlier scores only through the search's state, so equal prefixes here mean equal prefixes for any
    objective whose score of a candidate does not depend on the budget; what can break it is the
    search's random draws depending on batch sizes (a truncated last generation draws fewer rows).
    """
    weights = torch.randn(
        math.prod(noise_shape), generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    base_noise = torch.randn(tuple(noise_shape), generator=torch.Generator().manual_seed(8))

    def proposals(budget: int) -> Tensor:
        asked: list[Tensor] = []

        def objective(noises: Tensor) -> Tensor:
            asked.append(noises.detach().cpu().clone())
            return torch.stack([noise.double().flatten() @ weights for noise in noises]).float()

        method.run(objective, base_noise, budget, seed=0)
        return torch.cat(asked)

    longest = proposals(max(budgets))
    return all(torch.equal(proposals(budget), longest[:budget]) for budget in budgets)


# ---------------------------------------------------------------------------------------------------------
# Problems: a base noise and a fresh objective per (objective, seed)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One seed of one objective.

    ``make_objective()`` returns fresh ``(observed, true)`` objectives (the same callable when the
    score is exact); ``in_global_basin`` labels candidates for the two-optima objective.
    """

    base_noise: Tensor
    make_objective: Callable[[], tuple[Objective, Objective]]
    in_global_basin: Objective | None = None

    def base_true_score(self) -> float:
        _, true = self.make_objective()
        return float(true(self.base_noise.unsqueeze(0))[0])


class Recording:
    """Wraps an objective: records every candidate's observed and true score (and label) in evaluation order."""

    def __init__(self, observed: Objective, true: Objective, label: Objective | None = None) -> None:
        self.observed, self.true, self.label = observed, true, label
        self.observed_scores: list[float] = []
        self.true_scores: list[float] = []
        self.labels: list[bool] = []

    def __call__(self, noises: Tensor) -> Tensor:
        observed = self.observed(noises).detach().float().cpu().reshape(-1)
        true = (
            observed if self.true is self.observed else self.true(noises).detach().float().cpu().reshape(-1)
        )
        self.observed_scores += observed.tolist()
        self.true_scores += true.tolist()
        if self.label is not None:
            self.labels += self.label(noises).reshape(-1).tolist()
        return observed

    def best_indices(self) -> list[int]:
        """After each evaluation, the index of the best OBSERVED candidate so far (first on ties, NaN never)."""
        indices, best = [], 0
        for index, score in enumerate(self.observed_scores):
            best_score = self.observed_scores[best]
            if not math.isnan(score) and (math.isnan(best_score) or score > best_score):
                best = index
            indices.append(best)
        return indices


def analytic_problem(
    name: str, seed: int, shape: Sequence[int], observation_noise: float, decoy_height: float
) -> Problem:
    channels, height, width = shape
    step = 2**OBJECTIVE_LEVEL
    low_shape = (channels, height // step, width // step)
    base_noise = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(1000 + seed))
    target = random_target(low_shape, 50_000 + seed)
    if name == "low-frequency":
        objective = low_frequency_objective(target, OBJECTIVE_LEVEL)
        return Problem(base_noise, lambda: (objective, objective))
    if name == "two-optima":
        decoy = random_target(low_shape, 60_000 + seed, scale=0.5)
        two_optima = TwoOptimaObjective(target, decoy, OBJECTIVE_LEVEL, decoy_height=decoy_height)
        return Problem(base_noise, lambda: (two_optima, two_optima), two_optima.in_global_basin)
    if name == "noisy":

        def fresh() -> tuple[Objective, Objective]:
            noisy = NoisyObjective(target, OBJECTIVE_LEVEL, observation_noise, seed=70_000 + seed)
            return noisy, noisy.true

        return Problem(base_noise, fresh)
    raise ValueError(f"unknown analytic objective {name!r}")


class PipelineScorer:
    """Generates preview images for noises and scores each with every reward, caching per (prompt, noise).

    Quality runs share the cache so an identical candidate (the base noise, best-of-N's noises under a
    second reward) is generated once; its scores are those of its first generation, so repeats agree.
    """

    def __init__(self, generator, rewards: dict[str, Callable]) -> None:
        self.generator = generator
        self.rewards = rewards
        self.embeds: dict[str, object] = {}
        self.cache: dict[tuple[str, bytes], Tensor] = {}
        self.generated = 0

    def _embeds(self, prompt: str):
        if prompt not in self.embeds:
            self.embeds[prompt] = self.generator.encode_prompt(prompt)
        return self.embeds[prompt]

    def objective(self, reward_name: str, prompt: str) -> Objective:
        column = list(self.rewards).index(reward_name)

        def scores(noises: Tensor) -> Tensor:
            keys = [(prompt, noise.detach().cpu().float().numpy().tobytes()) for noise in noises]
            first_row: dict[tuple[str, bytes], int] = {}
            for row, key in enumerate(keys):
                if key not in self.cache:
                    first_row.setdefault(key, row)
            if first_row:
                batch = noises[list(first_row.values())]
                images = self.generator.generate(
                    batch, self._embeds(prompt), self.generator.preview_steps
                ).images
                table = torch.stack(
                    [reward(images, prompt).float().cpu() for reward in self.rewards.values()], dim=1
                )
                self.generated += len(first_row)
                for key, values in zip(first_row, table, strict=True):
                    self.cache[key] = values
            return torch.stack([self.cache[key][column] for key in keys])

        return scores

    def uncached_objective(self, reward_name: str, prompt: str) -> Objective:
        """Generate and score every call afresh, one reward only (for wall times)."""
        reward, embeds = self.rewards[reward_name], self._embeds(prompt)

        def scores(noises: Tensor) -> Tensor:
            images = self.generator.generate(noises, embeds, self.generator.preview_steps).images
            return reward(images, prompt).float().cpu()

        return scores


def pipeline_problem(scorer: PipelineScorer, reward_name: str, seed: int, prompts: Sequence[str]) -> Problem:
    prompt = prompts[seed % len(prompts)]
    # Apart from the search's stream (seeded with `seed` in `Method.run`): drawn alike, best-of-N's and the
    # default SES's first fresh noise would be the base noise again, as the analytic problems' 1000 + seed avoid.
    base_noise = scorer.generator.initial_noise(10_000 + seed)[0]
    objective = scorer.objective(reward_name, prompt)
    return Problem(base_noise, lambda: (objective, objective))


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ObjectiveResult:
    """Everything measured on one objective. Tensors are float64, one row or entry per seed."""

    title: str
    note: str
    methods: list[Method]
    base_scores: Tensor  # [seeds] true score of each seed's base noise
    curves: dict[str, Tensor] = field(default_factory=dict)  # [seeds, max budget] best true score so far
    at_budget: dict[str, dict[int, Tensor]] = field(default_factory=dict)  # budget -> [seeds]
    observed: dict[str, Tensor] = field(
        default_factory=dict
    )  # [seeds, max budget] scores as the search saw them
    in_global_basin: dict[str, dict[int, Tensor]] = field(default_factory=dict)  # two-optima only
    separate_runs: list[str] = field(default_factory=list)  # methods whose budgets ran separately
    scale: float = 1.0  # gains are divided by this

    def gains(self, name: str, budget: int) -> Tensor:
        return (self.at_budget[name][budget] - self.base_scores) / self.scale

    def method_of_kind(self, kind: str) -> Method:
        return next(method for method in self.methods if method.kind == kind)


def run_objective(
    title: str,
    note: str,
    problems: Sequence[Problem],
    methods: Sequence[Method],
    budgets: Sequence[int],
    consistent: dict[str, bool],
) -> ObjectiveResult:
    """Run every method on every problem (seed i searches with seed i)."""
    longest = max(budgets)
    base_scores = torch.tensor([problem.base_true_score() for problem in problems], dtype=torch.float64)
    result = ObjectiveResult(title, note, list(methods), base_scores)
    result.separate_runs = [method.name for method in methods if not consistent[method.name]]
    labelled = problems[0].in_global_basin is not None
    for method in methods:
        curves, observed = [], []
        values: dict[int, list[float]] = {budget: [] for budget in budgets}
        basins: dict[int, list[bool]] = {budget: [] for budget in budgets}
        for seed, problem in enumerate(problems):
            runs = {longest: Recording(*problem.make_objective(), problem.in_global_basin)}
            method.run(runs[longest], problem.base_noise, longest, seed)
            for budget in budgets:
                if budget not in runs and not consistent[method.name]:
                    runs[budget] = Recording(*problem.make_objective(), problem.in_global_basin)
                    method.run(runs[budget], problem.base_noise, budget, seed)
            full = runs[longest]
            if len(full.observed_scores) != longest:
                raise RuntimeError(
                    f"{method.name} scored {len(full.observed_scores)} candidates, expected {longest}"
                )
            full_best = full.best_indices()
            curves.append([full.true_scores[index] for index in full_best])
            observed.append(full.observed_scores)
            for budget in budgets:
                run = runs.get(budget, full)
                best = (full_best if run is full else run.best_indices())[budget - 1]
                values[budget].append(run.true_scores[best])
                if labelled:
                    basins[budget].append(run.labels[best])
        result.curves[method.name] = torch.tensor(curves, dtype=torch.float64)
        result.observed[method.name] = torch.tensor(observed, dtype=torch.float64)
        result.at_budget[method.name] = {
            b: torch.tensor(found, dtype=torch.float64) for b, found in values.items()
        }
        if labelled:
            result.in_global_basin[method.name] = {
                b: torch.tensor(found, dtype=torch.float64) for b, found in basins.items()
            }
        print(f"  {title}: {method.name} done", file=sys.stderr, flush=True)
    return result


def time_methods(
    methods: Sequence[Method], make: Callable[[int], tuple[Objective, Tensor]], budget: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per search of each method, one method after the other within each repeat (same machine load)."""
    times: dict[str, list[float]] = {method.name: [] for method in methods}
    for repeat in range(repeats):
        for method in methods:
            objective, base_noise = make(repeat)
            started = time.perf_counter()
            method.run(objective, base_noise, budget, seed=repeat)
            times[method.name].append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------


def format_mean_se(values: Tensor, digits: int, signed: bool = True) -> str:
    mean = float(values.mean())
    se = float(values.std(correction=1)) / math.sqrt(values.numel())
    return f"{mean:+.{digits}f} ± {se:.{digits}f}" if signed else f"{mean:.{digits}f} ± {se:.{digits}f}"


def print_quality_table(result: ObjectiveResult, budgets: Sequence[int], digits: int) -> None:
    seeds = result.base_scores.numel()
    print(f"### {result.title}\n")
    config = result.method_of_kind("ses").config
    print(
        f"{result.note} Mean ± standard error over {seeds} seeds; higher is better. SES and the published "
        f"SES: {config.wavelet} level {config.level}, popsize {config.popsize}, {config.k_elites} elites.\n"
    )
    header = "| method | " + " | ".join(f"budget {budget}" for budget in budgets) + " |"
    rule = "|---|" + "---:|" * len(budgets)
    print(header)
    print(rule)
    for method in result.methods:
        marker = " †" if method.name in result.separate_runs else ""
        cells = [format_mean_se(result.gains(method.name, budget), digits) for budget in budgets]
        print(f"| {method.name}{marker} | " + " | ".join(cells) + " |")
    ours = result.method_of_kind("ses").name
    for kind, label in (("random", "best-of-N"), ("reference", "published SES")):
        other = result.method_of_kind(kind).name
        cells = [format_mean_se(result.gains(ours, b) - result.gains(other, b), digits) for b in budgets]
        print(f"| *SES − {label} (paired)* | " + " | ".join(cells) + " |")
    print()
    half, full = HALF_BUDGET, 2 * HALF_BUDGET
    if half in budgets and full in budgets:
        reference = result.method_of_kind("reference").name
        ours_half, published_full = result.gains(ours, half).mean(), result.gains(reference, full).mean()
        ours_full = result.gains(ours, full).mean()
        verdict = "reached" if ours_half >= published_full else "NOT reached"
        print(
            f"Half the budget: SES (default) at {half} {float(ours_half):+.{digits}f} vs the published SES at {full} "
            f"{float(published_full):+.{digits}f}: {verdict}; at {full}: {float(ours_full):+.{digits}f} "
            f"({'never below' if ours_full >= published_full else 'BELOW'} the published SES).\n"
        )
    if result.in_global_basin:
        print(
            "Share of seeds whose returned noise lies in the global optimum's basin (the rest: the decoy's):\n"
        )
        print(header)
        print(rule)
        for method in result.methods:
            shares = result.in_global_basin[method.name]
            print(
                f"| {method.name} | " + " | ".join(f"{float(shares[b].mean()):.0%}" for b in budgets) + " |"
            )
        print()


def print_time_table(
    times: dict[str, dict[str, list[float]]],
    methods_by_title: dict[str, list[Method]],
    budget: int,
    repeats: int,
) -> None:
    titles = list(times)
    names = list(dict.fromkeys(method.name for title in titles for method in methods_by_title[title]))
    print(
        f"### Wall time: seconds per search at budget {budget} (median of {repeats}, interleaved, no cache)\n"
    )
    print("| method | " + " | ".join(titles) + " |")
    print("|---|" + "---:|" * len(titles))
    for name in names:
        cells = []
        for title in titles:
            if name not in times[title]:
                cells.append("")
                continue
            ours = next(method.name for method in methods_by_title[title] if method.kind == "ses")
            seconds = statistics.median(times[title][name])
            cells.append(f"{seconds:.3f} ({seconds / statistics.median(times[title][ours]):.1f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(in brackets: relative to our SES on the same objective)\n")


def method_styles(results: Sequence[ObjectiveResult]) -> dict[str, dict]:
    """Line style per method name, the same in every subplot: fixed colours for the three main methods,
    one colour per variant name in order of first appearance."""
    main = {
        "random": {"color": "gray", "linewidth": 2.0},
        "reference": {"color": "tab:red", "linewidth": 2.0},
        "ses": {"color": "tab:blue", "linewidth": 2.4},
    }
    styles: dict[str, dict] = {}
    for result in results:
        for method in result.methods:
            if method.name in styles:
                continue
            if method.kind in main:
                styles[method.name] = main[method.kind]
            else:
                color = VARIANT_COLORS[
                    sum(style.get("linestyle") == "--" for style in styles.values()) % len(VARIANT_COLORS)
                ]
                styles[method.name] = {"color": color, "linewidth": 1.0, "linestyle": "--"}
    return styles


def plot_curves(results: Sequence[ObjectiveResult], path: Path) -> None:
    """One subplot per objective: mean gain of the best true score vs evaluations, shaded standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(results))
    rows = math.ceil(len(results) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 3.6 * rows + 0.9), dpi=110, squeeze=False
    )
    legend: dict[str, object] = {}
    styles = method_styles(results)
    for axis, result in zip(axes.flat, results, strict=False):
        for method in result.methods:
            gains = (result.curves[method.name] - result.base_scores[:, None]) / result.scale
            mean = gains.mean(dim=0).numpy()
            se = (gains.std(dim=0, correction=1) / math.sqrt(gains.shape[0])).numpy()
            evaluations = range(1, gains.shape[1] + 1)
            style = styles[method.name]
            (line,) = axis.plot(evaluations, mean, label=method.name, **style)
            axis.fill_between(evaluations, mean - se, mean + se, color=style["color"], alpha=0.12)
            legend.setdefault(method.name, line)
        axis.set_title(result.title.split(",")[0], fontsize=10)
        axis.set_xlabel("evaluations")
        axis.set_ylabel("best true score - base" + (" (reward sd)" if result.scale != 1.0 else ""))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(results) :]:
        axis.axis("off")
    figure.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), fontsize=8
    )
    legend_rows = math.ceil(len(legend) / 4)
    figure.tight_layout(rect=(0, 0.035 * legend_rows / rows + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees a half-written PNG.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp_", suffix=".png", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        figure.savefig(temporary)
        os.chmod(temporary, 0o644)  # NamedTemporaryFile creates it private; the plot is for everyone to read
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        plt.close(figure)


def load_tiny(eval_batch_size: int):
    """The tiny klein's `FlowGenerator`, quietly (no progress bars or deprecation chatter)."""
    import diffusers
    import transformers

    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_pipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline("tiny", dtype="float32", device="cpu")
    return generator_for_pipeline(pipe, eval_batch_size=eval_batch_size)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=30, help="seeds per objective (default 30)")
    parser.add_argument("--budgets", default="10,20,25,30,50,100", help="comma-separated budgets")
    parser.add_argument(
        "--objectives",
        default=",".join(DEFAULT_OBJECTIVES),
        help="comma-separated subset; tiny-<name> uses rewards.synthetic:<name>",
    )
    parser.add_argument("--shape", default="16,32,32", help="C,H,W of the analytic objectives' noise")
    parser.add_argument(
        "--observation-noise", type=float, default=0.3, help="sd of the noisy objective's noise"
    )
    parser.add_argument("--decoy-height", type=float, default=-0.5, help="score of the two-optima decoy")
    parser.add_argument(
        "--prompts", default="|".join(DEFAULT_PROMPTS), help="'|'-separated; seed s uses prompt s mod n"
    )
    parser.add_argument(
        "--pipeline-variants",
        choices=("ablation", "level", "all", "none"),
        default="ablation",
        help="SES variants on the pipeline (the analytic objectives always get all)",
    )
    parser.add_argument("--time-budget", type=int, default=50, help="budget of the timed searches")
    parser.add_argument("--time-repeats", type=int, default=5, help="timed searches per method and objective")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="where to write the curves (PNG)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the tiny model's many small ops lose more to "
        "thread hand-offs on a shared 2-core machine than they gain)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 seeds, 1 timing repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.time_repeats = 3, 1
    args.budgets = sorted({int(value) for value in args.budgets.split(",")})
    args.objectives = [name.strip() for name in args.objectives.split(",") if name.strip()]
    unknown = [
        name for name in args.objectives if name not in ANALYTIC_OBJECTIVES and not name.startswith("tiny-")
    ]
    if unknown:
        parser.error(
            f"unknown objectives {unknown}; choose from {', '.join(DEFAULT_OBJECTIVES)} (tiny-<reward>)"
        )
    args.shape = tuple(int(value) for value in args.shape.split(","))
    args.prompts = [prompt for prompt in args.prompts.split("|") if prompt.strip()]
    if args.seeds < 2 or min(args.budgets) < 1 or len(args.shape) != 3 or args.time_repeats < 1:
        parser.error("need --seeds >= 2, budgets >= 1, --time-repeats >= 1 and --shape C,H,W")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    budgets, seeds = args.budgets, range(args.seeds)
    print("## Search quality: SES vs best-of-N vs the published SES\n")
    print(
        f"{args.seeds} seeds, budgets {budgets}, torch threads {torch.get_num_threads()}. Cells: gain of the "
        "best TRUE score found over the base noise's true score, at equal objective evaluations.\n"
    )
    results: list[ObjectiveResult] = []
    times: dict[str, dict[str, list[float]]] = {}
    methods_by_title: dict[str, list[Method]] = {}

    analytic = [name for name in args.objectives if name in ANALYTIC_OBJECTIVES]
    if analytic:
        methods = methods_for(args.shape, "all")
        consistent = {
            method.name: budget_prefix_consistent(method, args.shape, budgets) for method in methods
        }
        channels, height, width = args.shape
        low_numel = channels * (height // 2**OBJECTIVE_LEVEL) * (width // 2**OBJECTIVE_LEVEL)
        notes = {
            "low-frequency": "a random noise scores about -2, the optimum is 0",
            "two-optima": f"global optimum 0, decoy {args.decoy_height}",
            "noisy": f"observation noise sd {args.observation_noise}; cells are the picks' noise-free scores",
        }
        for name in analytic:
            problems = [
                analytic_problem(name, seed, args.shape, args.observation_noise, args.decoy_height)
                for seed in seeds
            ]
            title = f"{name}, noise {list(args.shape)} ({low_numel} numbers in the level-4 band it scores)"
            result = run_objective(title, "", problems, methods, budgets, consistent)
            result.note = (
                f"Gain in objective units ({notes[name]}; the base noises score "
                f"{float(result.base_scores.mean()):.3f} on average)."
            )
            print_quality_table(result, budgets, digits=3)
            results.append(result)

            def make(repeat: int, name: str = name) -> tuple[Objective, Tensor]:
                problem = analytic_problem(
                    name, repeat, args.shape, args.observation_noise, args.decoy_height
                )
                return problem.make_objective()[0], problem.base_noise

            times[name] = time_methods(methods, make, args.time_budget, args.time_repeats)
            methods_by_title[name] = methods

    reward_names = [name.removeprefix("tiny-") for name in args.objectives if name.startswith("tiny-")]
    if reward_names:
        from rewards import load_reward

        generator = load_tiny(eval_batch_size=20)
        rewards = {name: load_reward(f"rewards.synthetic:{name}") for name in reward_names}
        scorer = PipelineScorer(generator, rewards)
        methods = methods_for(generator.noise_shape, args.pipeline_variants)
        consistent = {
            method.name: budget_prefix_consistent(method, generator.noise_shape, budgets)
            for method in methods
        }
        for reward_name in reward_names:
            problems = [pipeline_problem(scorer, reward_name, seed, args.prompts) for seed in seeds]
            title = (
                f"tiny {reward_name}, FLUX.2-klein {generator.height}px, {generator.preview_steps} steps, "
                f"noise {list(generator.noise_shape)}, {len(args.prompts)} prompts"
            )
            result = run_objective(title, "", problems, methods, budgets, consistent)
            # The reward's spread over fresh Gaussian noises of one prompt: per seed (one prompt each), the sd
            # of best-of-N's scores after the base noise, averaged over seeds.
            result.scale = float(
                result.observed[result.method_of_kind("random").name][:, 1:].std(dim=1).mean()
            )
            result.note = (
                f"Gain in units of the reward's sd over fresh noises of one prompt (1 sd = "
                f"{result.scale:.5f}; the base noises score {float(result.base_scores.mean()):.4f} on average)."
            )
            print_quality_table(result, budgets, digits=2)
            results.append(result)
        print(f"(tiny pipeline: {scorer.generated} previews generated for the quality runs)", file=sys.stderr)

        prompt = args.prompts[0]
        scorer.uncached_objective(reward_names[0], prompt)(
            generator.initial_noise(0, batch_size=2)
        )  # warm-up

        def make_tiny(repeat: int) -> tuple[Objective, Tensor]:
            return scorer.uncached_objective(reward_names[0], prompt), generator.initial_noise(repeat)[0]

        timing_title = f"tiny {reward_names[0]}"
        times[timing_title] = time_methods(methods, make_tiny, args.time_budget, args.time_repeats)
        methods_by_title[timing_title] = methods

    if times:
        print_time_table(times, methods_by_title, args.time_budget, args.time_repeats)
    if results:
        plot_curves(results, args.plot)
        print(f"plot: {args.plot}\n")
    print(f"total bench time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
