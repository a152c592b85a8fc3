"""The synthetic objectives of `search.synthetic` and the published-SES reference of `bench/reference_ses.py`.

The reference is a benchmark baseline, not part of the product, so it lives in bench/ (not a package)
and is imported here from its path; it must stay independent of our `search` SES.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from test_search import Recorder

from search import random_search
from search.synthetic import (
    NoisyObjective,
    TwoOptimaObjective,
    low_frequency_objective,
    pooled_low_band,
    random_target,
)

BENCH = Path(__file__).resolve().parents[1] / "bench"
LEVEL = 4
SHAPE = (4, 32, 32)
LOW_SHAPE = (4, 2, 2)


def load_bench_module(name: str):
    """Import ``bench/<name>.py`` by path (bench/ is not a package; its modules import each other by name)."""
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors: intra-op threads only cost time on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noise_with_band(band: torch.Tensor, level: int = LEVEL) -> torch.Tensor:
    """A noise ``[1, C, H, W]`` whose pooled band (block means times 2**level) is exactly ``band``."""
    step = 2**level
    return (band / step).repeat_interleave(step, dim=-2).repeat_interleave(step, dim=-1).unsqueeze(0)


def make_noise(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------


def test_pooled_band_is_the_haar_approximation_band():
    from search.wavelets import haar_wavedec2

    noise = make_noise(0).unsqueeze(0)
    low, _ = haar_wavedec2(noise, LEVEL)
    torch.testing.assert_close(pooled_low_band(noise, LOW_SHAPE[-2:], LEVEL), low, rtol=1e-5, atol=1e-5)


def test_objectives_map_batches_to_one_score_each():
    target, decoy = random_target(LOW_SHAPE, 1), random_target(LOW_SHAPE, 2, scale=0.5)
    noises = torch.stack([make_noise(seed) for seed in range(5)])
    objectives = [
        low_frequency_objective(target, LEVEL),
        TwoOptimaObjective(target, decoy, LEVEL),
        NoisyObjective(target, LEVEL, noise_std=0.3, seed=0),
    ]
    for objective in objectives:
        scores = objective(noises)
        assert scores.shape == (5,) and scores.dtype == torch.float32
        assert torch.isfinite(scores).all()


def test_two_optima_targets_are_local_optima_with_the_documented_heights():
    target, decoy = random_target(LOW_SHAPE, 1), random_target(LOW_SHAPE, 2, scale=0.5)
    objective = TwoOptimaObjective(target, decoy, LEVEL, decoy_height=-0.5)
    assert [height for _, height in objective.optima] == [0.0, -0.5]
    generator = torch.Generator().manual_seed(3)
    for optimum, height in objective.optima:
        at_optimum = noise_with_band(optimum)
        assert float(objective(at_optimum)) == pytest.approx(height, abs=1e-5)
        # Every small move of the band loses: a strict local maximum (the score is -mean(step^2) below it).
        steps = torch.randn((64, *LOW_SHAPE), generator=generator) * 0.05
        nearby = torch.cat([noise_with_band(optimum + step) for step in steps])
        expected = height - (steps**2).flatten(1).mean(dim=1)
        torch.testing.assert_close(objective(nearby), expected, rtol=1e-4, atol=1e-5)
        assert bool((objective(nearby) < height).all())
    assert objective.in_global_basin(noise_with_band(target)).item()
    assert not objective.in_global_basin(noise_with_band(decoy)).item()


def test_two_optima_decoy_is_the_higher_branch_around_ordinary_noise():
    """The documented trap: from N(0, 1) noises, the decoy's branch is usually the active one."""
    target, decoy = random_target(LOW_SHAPE, 1), random_target(LOW_SHAPE, 2, scale=0.5)
    objective = TwoOptimaObjective(target, decoy, LEVEL)
    noises = torch.randn((200, *SHAPE), generator=torch.Generator().manual_seed(4))
    assert float(objective.in_global_basin(noises).float().mean()) < 0.5


def test_two_optima_refuses_overlapping_peaks_and_a_non_negative_decoy():
    target = random_target(LOW_SHAPE, 1)
    with pytest.raises(ValueError, match="too close"):
        TwoOptimaObjective(target, target + 0.1, LEVEL, decoy_height=-0.5)
    with pytest.raises(ValueError, match="decoy_height"):
        TwoOptimaObjective(target, -target, LEVEL, decoy_height=0.0)


def test_noisy_objective_differs_on_repeats_and_its_true_score_does_not():
    target = random_target(LOW_SHAPE, 1)
    objective = NoisyObjective(target, LEVEL, noise_std=0.3, seed=5)
    noise = make_noise(0).unsqueeze(0)
    first, second = objective(noise), objective(noise)
    assert not torch.equal(first, second)
    assert torch.equal(objective.true(noise), objective.true(noise))
    assert torch.equal(objective.true(noise), low_frequency_objective(target, LEVEL)(noise))
    assert objective.num_evaluated == 2


def test_noisy_objective_stream_is_deterministic_and_independent_of_batching():
    target = random_target(LOW_SHAPE, 1)
    noises = torch.stack([make_noise(seed) for seed in range(7)])
    whole = NoisyObjective(target, LEVEL, noise_std=0.3, seed=5)(noises)
    again = NoisyObjective(target, LEVEL, noise_std=0.3, seed=5)(noises)
    one_by_one_objective = NoisyObjective(target, LEVEL, noise_std=0.3, seed=5)
    one_by_one = torch.cat([one_by_one_objective(noise.unsqueeze(0)) for noise in noises])
    assert torch.equal(whole, again)
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-6)
    other_seed = NoisyObjective(target, LEVEL, noise_std=0.3, seed=6)(noises)
    assert not torch.equal(whole, other_seed)
    # Spread: the observation noise has the documented standard deviation.
    stream = NoisyObjective(target, LEVEL, noise_std=0.3, seed=5).observation_noise(4000)
    assert float(stream.std()) == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------------------------------------
# The published-SES reference
# --------------------------------------------------------------------------------------------------------


def lowfreq(seed: int = 1):
    return low_frequency_objective(random_target(LOW_SHAPE, seed), LEVEL)


def reference():
    return load_bench_module("reference_ses")


def test_reference_is_independent_of_our_ses():
    source = (BENCH / "reference_ses.py").read_text()
    assert "from search" not in source and "import search" not in source


@pytest.mark.parametrize("budget", [1, 7, 10, 23])
def test_reference_scores_exactly_budget_candidates_one_per_call_never_the_base(budget):
    base = make_noise(0)
    calls = Recorder(lowfreq())
    result = reference().reference_ses_search(calls, base, budget, generator=torch.Generator().manual_seed(0))
    assert [batch.shape for batch in calls.batches] == [torch.Size([1, *SHAPE])] * budget
    assert result.scores.shape == (budget,) and result.low_bands.shape == (budget, *LOW_SHAPE)
    assert not any(torch.allclose(batch[0], base) for batch in calls.batches)
    assert result.best_index == int(torch.argmax(result.scores))
    torch.testing.assert_close(calls.batches[result.best_index], result.best_noise)
    assert result.best_score == float(result.scores.max())


def test_reference_first_generation_samples_standard_normal_low_bands_around_the_base_details():
    from search.wavelets import haar_wavedec2

    base = make_noise(0)
    calls = Recorder(lowfreq())
    result = reference().reference_ses_search(calls, base, 10, generator=torch.Generator().manual_seed(3))
    expected = torch.randn((10, math.prod(LOW_SHAPE)), generator=torch.Generator().manual_seed(3))
    assert torch.equal(result.low_bands.reshape(10, -1), expected)  # mean 0, std 1: the draws themselves
    _, base_details = haar_wavedec2(base.unsqueeze(0), LEVEL)
    for batch, low in zip(calls.batches, result.low_bands, strict=True):
        candidate_low, details = haar_wavedec2(batch, LEVEL)
        torch.testing.assert_close(candidate_low[0], low, rtol=1e-5, atol=1e-5)
        for got, want in zip(details, base_details, strict=True):
            for got_band, want_band in zip(got, want, strict=True):
                torch.testing.assert_close(got_band, want_band, rtol=1e-5, atol=1e-5)


def test_reference_is_deterministic_from_its_generator():
    base = make_noise(0)
    search = reference().reference_ses_search
    first = search(lowfreq(), base, 30, generator=torch.Generator().manual_seed(4))
    second = search(lowfreq(), base, 30, generator=torch.Generator().manual_seed(4))
    other = search(lowfreq(), base, 30, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.scores, second.scores) and torch.equal(first.best_noise, second.best_noise)
    assert not torch.equal(first.scores, other.scores)
    # generator=None draws from torch's global RNG, as published.
    state = torch.get_rng_state()
    try:
        torch.manual_seed(4)
        assert torch.equal(search(lowfreq(), base, 30).scores, first.scores)
    finally:
        torch.set_rng_state(state)


def test_reference_cem_update_uses_the_elite_archive_mean_and_unbiased_variance():
    base = make_noise(0)
    result = reference().reference_ses_search(
        lowfreq(), base, 30, k_elites=5, generator=torch.Generator().manual_seed(6)
    )
    lows = result.low_bands.reshape(30, -1)
    assert len(result.distributions) == 3
    for generation in (1, 2):
        seen = 10 * generation
        elites = torch.sort(result.scores[:seen], descending=True, stable=True).indices[:5]
        mu, var = result.distributions[generation]
        torch.testing.assert_close(mu, lows[elites].mean(dim=0))
        torch.testing.assert_close(var, lows[elites].var(dim=0, correction=1) + 1e-7)


def test_reference_with_one_elite_keeps_the_variance():
    base = make_noise(0)
    result = reference().reference_ses_search(
        lowfreq(), base, 40, k_elites=1, generator=torch.Generator().manual_seed(7)
    )
    lows = result.low_bands.reshape(40, -1)
    for generation, (mu, var) in enumerate(result.distributions):
        assert torch.equal(var, torch.ones_like(var))
        if generation:
            best = int(torch.argmax(result.scores[: 10 * generation]))
            assert torch.equal(mu, lows[best])


def test_reference_with_popsize_one_keeps_the_variance_until_a_second_elite():
    base = make_noise(0)
    result = reference().reference_ses_search(
        lowfreq(), base, 4, popsize=1, generator=torch.Generator().manual_seed(8)
    )
    lows = result.low_bands.reshape(4, -1)
    variances = [var for _, var in result.distributions]
    assert len(variances) == 4
    assert torch.equal(variances[0], torch.ones_like(variances[0]))
    assert torch.equal(variances[1], torch.ones_like(variances[1]))  # one elite after one evaluation
    torch.testing.assert_close(variances[2], lows[:2].var(dim=0, correction=1) + 1e-7)
    assert torch.equal(result.distributions[1][0], lows[0])


# --------------------------------------------------------------------------------------------------------
# The benchmark reads budgets off one long run only where that equals running each budget
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_shape", [(16, 32, 32), (16, 4, 4)])
def test_budget_prefix_check_of_the_search_quality_bench(noise_shape):
    """`bench/search_quality.py` reads budgets 10..50 off a budget-100 run only where its check passes.

    The check must accept best-of-N, the published SES and our default SES on both latents the bench
    uses (so their tables come from one run per seed), and reject a search whose proposals depend on
    the total budget.
    """
    bench = load_bench_module("search_quality")
    budgets = [10, 20, 30, 50, 100]
    methods = bench.methods_for(noise_shape, "all")
    for kind in ("random", "reference", "ses"):
        method = next(method for method in methods if method.kind == kind)
        assert bench.budget_prefix_consistent(method, noise_shape, budgets), method.name

    class BudgetDependent:
        """Best-of-N whose random stream is seeded by the budget: every prefix differs."""

        def run(self, objective, base_noise, budget, seed):
            generator = torch.Generator().manual_seed(seed * 1000 + budget)
            return random_search(objective, base_noise, budget, generator=generator).scores

    assert not bench.budget_prefix_consistent(BudgetDependent(), noise_shape, budgets)


def test_random_search_prefix_property_holds_for_multiples_of_its_batch():
    objective = lowfreq()
    base = make_noise(2)
    longest = random_search(objective, base, 100, generator=torch.Generator().manual_seed(0)).scores
    for budget in (10, 20, 30, 50):
        scores = random_search(objective, base, budget, generator=torch.Generator().manual_seed(0)).scores
        assert torch.equal(scores, longest[:budget])


def test_search_quality_reads_budgets_off_one_run_or_runs_them_separately():
    """Budgets read off the longest run equal separate runs for a consistent method; an inconsistent one
    (forced here) gets separate runs, and the noisy objective reports the picks' TRUE scores."""
    bench = load_bench_module("search_quality")
    shape, budgets = (4, 32, 32), [5, 10, 20]
    methods = bench.methods_for(shape, "none")
    problems = [bench.analytic_problem("noisy", seed, shape, 0.3, -0.5) for seed in range(2)]
    consistent = {method.name: method.kind != "ses" for method in methods}
    result = bench.run_objective("noisy", "", problems, methods, budgets, consistent)
    assert result.separate_runs == ["SES (default)"]
    for method in methods:
        for seed, problem in enumerate(problems):
            for budget in budgets:
                observed, true = problem.make_objective()
                recording = bench.Recording(observed, true)
                method.run(recording, problem.base_noise, budget, seed)
                best = int(torch.argmax(torch.tensor(recording.observed_scores)))
                assert float(result.at_budget[method.name][budget][seed]) == pytest.approx(
                    recording.true_scores[best]
                )


def test_recording_picks_the_first_best_observed_and_never_nan():
    bench = load_bench_module("search_quality")
    recording = bench.Recording(lambda noises: noises[:, 0, 0, 0], lambda noises: noises[:, 0, 0, 0] * 10)
    recording(torch.tensor([math.nan, 1.0, 3.0, 3.0, 2.0]).reshape(5, 1, 1, 1))
    assert recording.best_indices() == [0, 1, 2, 2, 2]
    assert recording.true_scores[2] == 30.0


def test_search_quality_script_runs_end_to_end_on_the_analytic_objectives(tmp_path, capsys):
    bench = load_bench_module("search_quality")
    plot = tmp_path / "results" / "quality.png"
    bench.main(
        [
            "--seeds",
            "2",
            "--budgets",
            "5,10",
            "--objectives",
            "low-frequency,two-optima,noisy",
            "--shape",
            "4,32,32",
            "--time-budget",
            "10",
            "--time-repeats",
            "1",
            "--plot",
            str(plot),
        ]
    )
    out = capsys.readouterr().out
    for heading in ("### low-frequency", "### two-optima", "### noisy", "### Wall time"):
        assert heading in out, heading
    assert "| *SES − best-of-N (paired)* |" in out and "global optimum's basin" in out
    assert plot.stat().st_size > 0 and not list(plot.parent.glob(".tmp_*"))
