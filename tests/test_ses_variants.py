"""The default SES (`variant="surrogate"`) against the published algorithm it must beat, kept available unchanged."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch
from test_search import default_objective, gaussian_violations, gen, make_noise

from search import SESConfig, SpectralEvolutionSearch, published_variant, ses_search
from search.synthetic import low_frequency_objective, random_target
from search.wavelets import haar_wavedec2


def run_generations(search: SpectralEvolutionSearch, objective, count: int) -> None:
    for _ in range(count):
        search.tell(objective(search.ask()))


def test_first_generation_is_the_base_and_fresh_noises_then_the_best_ones_details_are_kept():
    base = make_noise((4, 32, 32), 0)
    search = SpectralEvolutionSearch(base, 30, SESConfig(popsize=10), gen(1))
    objective = default_objective()
    first = search.ask()
    assert torch.equal(first[0], base)
    _, base_details = haar_wavedec2(base.unsqueeze(0), 4)
    for candidate in first[1:]:  # every coefficient is new, not only the low band
        _, details = haar_wavedec2(candidate.unsqueeze(0), 4)
        assert not torch.allclose(details[0][0], base_details[0][0])
    scores = objective(first)
    search.tell(scores)
    best_first = first[int(torch.argmax(scores))]
    _, kept = haar_wavedec2(best_first.unsqueeze(0), 4)
    later = search.ask()
    for candidate in later:
        _, details = haar_wavedec2(candidate.unsqueeze(0), 4)
        for got_level, want_level in zip(details, kept, strict=True):
            for got, want in zip(got_level, want_level, strict=True):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Every candidate, fresh ones included, is re-created exactly from its index.
    search.tell(objective(later))
    asked = torch.cat((first, later))
    assert torch.equal(search.noise_at(torch.arange(len(asked))), asked)
    assert torch.equal(search.result().best_noise[0], asked[search.best_index])


@pytest.mark.parametrize(("shape", "searches", "level"), [((4, 7, 9), 200, 2), ((2, 48, 85), 34, 4)])
def test_fresh_first_candidates_are_standard_gaussian_at_odd_sizes(shape, searches, level):
    """The contract every variant keeps: the first generation's sampled candidates are i.i.d. N(0, 1)."""
    candidates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the level is lowered for the 7x9 latent
        for seed in range(searches):
            search = SpectralEvolutionSearch(
                make_noise(shape, 10_000 + seed), 20, SESConfig(level=4), gen(seed)
            )
            assert search.level == level
            candidates.append(search.ask()[1:])  # the base noise is the caller's, not a sample
    assert gaussian_violations(torch.cat(candidates), 2**level) == []


def test_the_mean_moves_to_the_ridge_fit_optimum_and_stays_on_the_gaussian_shell():
    config = SESConfig(popsize=8, k_elites=3)
    search = SpectralEvolutionSearch(make_noise((8, 32, 32), 3), 40, config, gen(4))
    objective = default_objective((8, 32, 32), seed=5)
    run_generations(search, objective, 2)
    result = search.result()
    lows, scores = result.low_bands.flatten(1).double(), result.scores.double()
    # The same fit, written out: standardised scores ~ [x, -|x|^2, 1] with a ridge on all but the intercept.
    targets = (scores - scores.mean()) / scores.std()
    features = torch.cat(
        (lows, -lows.square().sum(1, keepdim=True), torch.ones(len(lows), 1, dtype=torch.float64)), 1
    )
    penalty = torch.full((features.shape[1],), config.ridge, dtype=torch.float64)
    penalty[-1] = 0
    weights = torch.linalg.solve(features.T @ features + torch.diag(penalty), features.T @ targets)
    assert weights[-2] > 0  # a quadratic objective: the fit finds the curvature
    optimum = (weights[:-2] / (2 * weights[-2])).float()
    numel = optimum.numel()
    cap = numel + config.shell_sd * math.sqrt(2 * numel)
    mean, var = search.mean.flatten(), search.var.flatten()
    if float(optimum.square().sum() + var.sum()) <= cap:
        torch.testing.assert_close(mean, optimum, atol=1e-4, rtol=1e-4)
    else:  # scaled down along the same direction
        torch.testing.assert_close(mean / mean.norm(), optimum / optimum.norm(), atol=1e-4, rtol=0)
    assert float(mean.square().sum() + var.sum()) <= cap * (1 + 1e-5)


def test_a_runaway_fit_is_held_on_the_shell():
    """A reward linear in the noise (like brightness): the fit's optimum is far out; the mean stays on the shell."""
    config = SESConfig(popsize=8, k_elites=3)
    search = SpectralEvolutionSearch(make_noise((16, 32, 32), 0), 40, config, gen(0))
    numel = math.prod(search.low_shape)
    cap = numel + config.shell_sd * math.sqrt(2 * numel)
    while not search.done:
        noises = search.ask()
        search.tell(noises.flatten(1).mean(1))  # higher for a larger mean, without limit
        assert float(search.mean.square().sum() + search.var.sum()) <= cap * (1 + 1e-5)
    uncapped = SESConfig(popsize=8, k_elites=3, shell_sd=math.inf)
    unclipped = SpectralEvolutionSearch(make_noise((16, 32, 32), 0), 40, uncapped, gen(0))
    while not unclipped.done:
        noises = unclipped.ask()
        unclipped.tell(noises.flatten(1).mean(1))
    assert float(unclipped.mean.square().sum()) > cap  # without the cap the fit does run away


def test_published_variant_is_the_published_algorithm_and_refuses_changes():
    published = SESConfig(variant="published")
    assert (published.popsize, published.surrogate, published.variance_decay, published.fresh_first) == (
        10,
        False,
        1.0,
        False,
    )
    assert math.isinf(published.shell_sd)
    with pytest.raises(ValueError, match="published algorithm unchanged"):
        SESConfig(variant="published", surrogate=True)
    with pytest.raises(ValueError, match="variant must be one of"):
        SESConfig(variant="cmaes")
    converted = published_variant(SESConfig(level=3, popsize=6, k_elites=2))
    assert (converted.variant, converted.level, converted.popsize, converted.k_elites) == (
        "published",
        3,
        6,
        2,
    )
    # The published variant proposes the base noise, then CEM samples of the low band around the base's details.
    base = make_noise((4, 32, 32), 0)
    first = SpectralEvolutionSearch(base, 20, published, gen(0)).ask()
    _, base_details = haar_wavedec2(base.unsqueeze(0), 4)
    for candidate in first:
        _, details = haar_wavedec2(candidate.unsqueeze(0), 4)
        torch.testing.assert_close(details[0][0], base_details[0][0], atol=1e-5, rtol=0)


def test_the_default_at_half_the_budget_beats_the_published_algorithm():
    """What the default exists for, on the low-frequency objective (bench/search_quality.py measures the rest)."""
    shape, seeds = (16, 32, 32), range(12)
    default_25, published_50 = [], []
    for seed in seeds:
        base = make_noise(shape, 1000 + seed)
        objective = low_frequency_objective(random_target((16, 2, 2), 50_000 + seed), 4)
        default_25.append(ses_search(objective, base, 25, generator=gen(seed)).best_score)
        published_50.append(
            ses_search(objective, base, 50, SESConfig(variant="published"), gen(seed)).best_score
        )
    assert statistics.mean(default_25) > statistics.mean(published_50)
