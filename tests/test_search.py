"""Tests of the `search` package: SES (ask/tell and loop), random search, wavelet codec statistics."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import warnings

import numpy as np
import pytest
import pywt
import torch

from search import (
    LowBandCodec,
    RandomSearch,
    SearchResult,
    SESConfig,
    SpectralEvolutionSearch,
    random_search,
    ses_search,
)
from search.synthetic import low_frequency_objective, random_target
from search.wavelets import haar_wavedec2, haar_waverec2, wavedec2, waverec2


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run single-threaded: the tensors here are small, and on a busy 2-core machine intra-op threads
    fighting other processes made the statistics tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder:
    """Wraps an objective and records every batch it was called with."""

    def __init__(self, objective):
        self.objective = objective
        self.batches: list[torch.Tensor] = []

    def __call__(self, noises: torch.Tensor) -> torch.Tensor:
        self.batches.append(noises.clone())
        return self.objective(noises)

    @property
    def sizes(self) -> list[int]:
        return [batch.shape[0] for batch in self.batches]


def default_objective(shape=(4, 32, 32), level=4, seed=12345):
    channels, height, width = shape
    step = 2**level
    return low_frequency_objective(random_target((channels, height // step, width // step), seed), level)


def expected_batches(budget: int, batch: int) -> list[int]:
    sizes, left = [], budget
    while left:
        sizes.append(min(batch, left))
        left -= sizes[-1]
    return sizes


# --------------------------------------------------------------------------------------------------------
# Budget, batching, base first
# --------------------------------------------------------------------------------------------------------

BUDGET_CASES = [(50, 10), (7, 10), (1, 10), (23, 10), (5, 1), (13, 4)]


@pytest.mark.parametrize(("budget", "popsize"), BUDGET_CASES)
def test_ses_scores_exactly_budget_in_whole_generations(budget, popsize):
    objective = Recorder(default_objective())
    result = ses_search(objective, make_noise((4, 32, 32), 0), budget, SESConfig(popsize=popsize), gen(1))
    assert objective.sizes == expected_batches(budget, popsize)
    assert result.scores.shape == (budget,) and result.scores.dtype == torch.float32
    assert result.scores.device.type == "cpu"
    assert result.low_bands.shape == (budget, 4, 2, 2)
    assert [entry["num_evaluated"] for entry in result.trace] == list(np.cumsum(objective.sizes))


@pytest.mark.parametrize(("budget", "batch_size"), BUDGET_CASES)
def test_random_search_scores_exactly_budget_in_batches(budget, batch_size):
    objective = Recorder(default_objective())
    result = random_search(objective, make_noise((4, 32, 32), 0), budget, gen(1), batch_size=batch_size)
    assert objective.sizes == expected_batches(budget, batch_size)
    assert result.scores.shape == (budget,)
    assert result.low_bands is None


@pytest.mark.parametrize("kind", ["ses", "random"])
@pytest.mark.parametrize("base_shape", [(4, 32, 32), (1, 4, 32, 32)])
def test_base_noise_is_evaluated_first_and_never_beaten(kind, base_shape):
    base = make_noise(base_shape, 3)
    objective = Recorder(default_objective())
    if kind == "ses":
        result = ses_search(objective, base, 25, generator=gen(4))
    else:
        result = random_search(objective, base, 25, generator=gen(4))
    first_batch = objective.batches[0]
    assert torch.equal(first_batch[0], base.reshape(4, 32, 32))
    assert result.scores[0] == objective.objective(base.reshape(1, 4, 32, 32))[0]
    assert result.base_score == result.scores[0]
    assert result.best_score >= result.scores[0]
    assert result.best_score == result.scores.max()
    assert result.best_noise.shape == (1, 4, 32, 32)
    scored = torch.cat(objective.batches)
    assert torch.equal(result.best_noise[0], scored[result.best_index])
    assert objective.objective(result.best_noise)[0] == result.best_score


def test_search_improves_on_base_for_a_smooth_objective():
    result = ses_search(default_objective(), make_noise((4, 32, 32), 5), 50, generator=gen(6))
    assert result.best_index > 0 and result.best_score > result.scores[0]
    running = result.best_so_far()
    assert torch.all(running[1:] >= running[:-1]) and running[-1] == result.best_score


# --------------------------------------------------------------------------------------------------------
# Reproducibility and the ask/tell contract
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ses", "random"])
def test_same_generator_seed_is_identical_and_different_seed_differs(kind):
    base = make_noise((4, 40, 24), 7)
    search_fn = ses_search if kind == "ses" else random_search

    def run(generator):
        return search_fn(default_objective((4, 48, 32)), base, 30, generator=generator)

    first, again, other = run(gen(11)), run(gen(11)), run(gen(12))
    assert torch.equal(first.scores, again.scores)
    assert torch.equal(first.best_noise, again.best_noise)
    assert first.trace == again.trace
    assert not torch.equal(first.scores[1:], other.scores[1:])
    assert first.scores[0] == other.scores[0]  # the base noise, whatever the seed


def test_generator_none_draws_from_torch_global_rng():
    base = make_noise((4, 32, 32), 0)
    torch.manual_seed(123)
    first = ses_search(default_objective(), base, 20)
    torch.manual_seed(123)
    again = ses_search(default_objective(), base, 20)
    torch.manual_seed(124)
    other = ses_search(default_objective(), base, 20)
    assert torch.equal(first.scores, again.scores)
    assert not torch.equal(first.scores, other.scores)


@pytest.mark.parametrize("config", [SESConfig(), SESConfig(wavelet="db2", level=3, popsize=6, k_elites=3)])
def test_ask_tell_loop_equals_ses_search_bit_for_bit(config):
    base = make_noise((3, 37, 50), 8)
    objective = default_objective((3, 48, 64), level=config.level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ses_search(objective, base, 27, config, gen(9))
        search = SpectralEvolutionSearch(base, 27, config, gen(9))
    while not search.done:
        search.tell(objective(search.ask()))
    got = search.result()
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.low_bands, expected.low_bands)
    assert torch.equal(got.best_noise, expected.best_noise)
    assert got.best_index == expected.best_index and got.trace == expected.trace


@pytest.mark.parametrize("kind", ["ses-haar", "ses-db2", "random"])
def test_noise_at_reproduces_what_was_scored(kind):
    base = make_noise((2, 33, 45), 10)
    objective = Recorder(default_objective((2, 32, 48)))
    if kind == "random":
        search = RandomSearch(base, 17, gen(3), batch_size=5)
    else:
        wavelet = "db1" if kind == "ses-haar" else "db2"
        search = SpectralEvolutionSearch(base, 17, SESConfig(wavelet=wavelet, level=3, popsize=5), gen(3))
    while not search.done:
        search.tell(objective(search.ask()))
    scored = torch.cat(objective.batches)
    assert torch.equal(search.noise_at(torch.arange(17)), scored)
    assert torch.equal(search.noise_at(6), scored[6:7])
    assert torch.equal(search.noise_at(torch.tensor([16, 0])), scored[[16, 0]])
    with pytest.raises(ValueError, match="out of range"):
        search.noise_at(17)


def test_protocol_errors_are_clear():
    search = SpectralEvolutionSearch(make_noise((4, 32, 32), 0), 12, SESConfig(popsize=10), gen(0))
    with pytest.raises(RuntimeError, match="ask"):
        search.tell(torch.zeros(10))
    with pytest.raises(RuntimeError, match="no candidate"):
        search.result()
    noises = search.ask()
    with pytest.raises(RuntimeError, match="tell"):
        search.ask()
    with pytest.raises(ValueError, match="expects 10 scores"):
        search.tell(torch.zeros(9))
    with pytest.raises(ValueError, match="expects 10 scores"):
        search.tell(torch.zeros(2, 5))
    search.tell(torch.zeros(noises.shape[0], 1))  # [n, 1] is unambiguous and accepted
    partial = search.result()
    assert partial.num_evaluated == 10 and not search.done
    last = search.ask()
    assert last.shape[0] == 2  # the remainder of the budget
    search.tell(last.sum(dim=(1, 2, 3)))
    assert search.done
    with pytest.raises(RuntimeError, match="done"):
        search.ask()


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "budget", "match"),
    [
        (torch.randn(32, 32), 10, r"\[C, H, W\]"),
        (torch.randn(1, 1, 4, 32, 32), 10, r"\[C, H, W\]"),
        (torch.randn(2, 4, 32, 32), 10, "batch size 2"),
        (torch.zeros(4, 32, 32, dtype=torch.long), 10, "floating"),
        (torch.full((4, 32, 32), math.nan), 10, "NaN"),
        (np.zeros((4, 32, 32)), 10, "torch.Tensor"),
        (torch.randn(4, 32, 32), 0, "budget"),
        (torch.randn(4, 32, 32), 2.5, "budget"),
        (torch.randn(4, 1, 32), 10, "too small"),
    ],
)
def test_bad_input_raises_clear_value_error(base, budget, match):
    with pytest.raises(ValueError, match=match):
        ses_search(default_objective(), base, budget, generator=gen(0))


def test_bad_generator_raises():
    with pytest.raises(ValueError, match="torch.Generator"):
        ses_search(default_objective(), torch.randn(4, 32, 32), 10, generator=0)
    with pytest.raises(ValueError, match="torch.Generator"):
        random_search(default_objective(), torch.randn(4, 32, 32), 10, generator="seed")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"popsize": 0}, "popsize"),
        ({"k_elites": 0}, "k_elites"),
        ({"level": 0}, "level"),
        ({"wavelet": "nope"}, "unknown wavelet"),
        ({"wavelet": "bior2.2"}, "not orthogonal"),
        ({"wavelet": "morl"}, "unknown wavelet"),
        ({"init_var": 0.0}, "init_var"),
        ({"var_eps": -1.0}, "var_eps"),
        ({"backend": "jax"}, "backend"),
        ({"wavelet": "db2", "backend": "torch"}, "only Haar"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SESConfig(**kwargs)


# --------------------------------------------------------------------------------------------------------
# The cross-entropy update, elites, NaN
# --------------------------------------------------------------------------------------------------------


def test_cem_update_uses_elite_archive_across_generations():
    config = SESConfig(popsize=8, k_elites=3, var_eps=1e-7, variant="published")
    search = SpectralEvolutionSearch(make_noise((4, 32, 32), 1), 24, config, gen(2))
    objective = default_objective()
    for _ in range(3):
        search.tell(objective(search.ask()))
        result = search.result()
        # The archive holds the best k over EVERYTHING scored so far, not just the last generation.
        top = torch.topk(result.scores, 3).indices
        assert sorted(search.elite_indices.tolist()) == sorted(top.tolist())
        elite_lows = result.low_bands[top].flatten(1)
        assert torch.allclose(search.mean.flatten(), elite_lows.mean(0), atol=1e-6)
        expected_var = elite_lows.var(0, correction=1) + 1e-7
        assert torch.allclose(search.var.flatten(), expected_var, atol=1e-6)
        assert result.trace[-1]["mean_abs_mu"] == pytest.approx(
            float(elite_lows.mean(0).abs().mean()), rel=1e-5
        )


def test_single_elite_keeps_previous_variance():
    search = SpectralEvolutionSearch(
        make_noise((4, 32, 32), 1), 20, SESConfig(k_elites=1, init_var=0.7, variant="published"), gen(2)
    )
    objective = default_objective()
    while not search.done:
        search.tell(objective(search.ask()))
        best = search.result().low_bands[search.best_index]
        assert torch.equal(search.mean, best)
        assert torch.allclose(search.var, torch.full_like(search.var, 0.7))


def test_nan_scores_are_never_best_nor_elite():
    objective = default_objective()
    counter = {"seen": 0}

    def half_nan(noises):
        scores = objective(noises)
        index = torch.arange(counter["seen"], counter["seen"] + noises.shape[0])
        counter["seen"] += noises.shape[0]
        # NaN exactly where the real score would be high, so a NaN-ignorant max would pick them.
        return torch.where(index % 2 == 1, torch.full_like(scores, math.nan), scores)

    search = SpectralEvolutionSearch(make_noise((4, 32, 32), 1), 40, SESConfig(), gen(3))
    while not search.done:
        search.tell(half_nan(search.ask()))
        assert torch.all(search.elite_indices % 2 == 0)
    result = search.result()
    assert result.best_index % 2 == 0 and math.isfinite(result.best_score)
    assert result.scores.isnan().sum() == 20
    assert result.best_score == result.scores.nan_to_num(nan=-math.inf).max()
    assert all(math.isfinite(entry["generation_mean"]) for entry in result.trace)


def test_all_nan_scores_keep_the_initial_distribution_and_return_the_base():
    base = make_noise((4, 32, 32), 1)
    result = ses_search(lambda x: torch.full((x.shape[0],), math.nan), base, 30, generator=gen(3))
    assert result.best_index == 0 and math.isnan(result.best_score)
    assert torch.equal(result.best_noise[0], base)
    assert all(entry["mean_abs_mu"] == 0.0 and entry["mean_sigma"] == 1.0 for entry in result.trace)


def test_progress_callback_reports_each_generation():
    calls = []
    result = ses_search(
        default_objective(),
        make_noise((4, 32, 32), 0),
        35,
        generator=gen(0),
        progress=lambda n, best: calls.append((n, best)),
    )
    assert [n for n, _ in calls] == [10, 20, 30, 35]
    assert calls[-1][1] == result.best_score
    assert all(b2 >= b1 for (_, b1), (_, b2) in zip(calls, calls[1:], strict=False))


# --------------------------------------------------------------------------------------------------------
# Wavelets and the codec
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wavelet", "backend", "level"),
    [("db1", "torch", 3), ("db1", "pywt", 3), ("db2", "pywt", 3), ("sym4", "pywt", 2)],
)
def test_wavelet_round_trip_and_energy(wavelet, backend, level):
    x = make_noise((2, 3, 64, 48), 0).double()
    low, details = wavedec2(x, wavelet, level, backend)
    assert low.shape == (2, 3, 64 // 2**level, 48 // 2**level)
    assert torch.allclose(waverec2(low, details, wavelet, backend=backend), x, atol=1e-10)
    energy = low.square().sum() + sum(band.square().sum() for bands in details for band in bands)
    assert torch.allclose(energy, x.square().sum(), rtol=1e-10)  # orthonormal: Parseval holds


def test_torch_haar_matches_pywavelets():
    x = make_noise((2, 32, 16), 1).double()
    low, details = haar_wavedec2(x, 3)
    reference = pywt.wavedec2(x.numpy(), "haar", mode="periodization", level=3, axes=(-2, -1))
    assert np.allclose(low.numpy(), reference[0])
    for ours, theirs in zip(details, reference[1:], strict=True):
        for band, ref_band in zip(ours, theirs, strict=True):
            assert np.allclose(band.numpy(), ref_band)
    zero_details = [tuple(torch.zeros_like(b) for b in bands) for bands in details]
    assert torch.equal(haar_waverec2(low, None, 3), haar_waverec2(low, zero_details))


@pytest.mark.parametrize("shape", [(3, 166, 166), (3, 48, 85), (3, 64, 64)])
def test_torch_and_pywt_backends_decode_the_same_noise(shape):
    base = make_noise(shape, 4)
    torch_codec = LowBandCodec(base, "db1", 4, gen(0), backend="torch")
    pywt_codec = LowBandCodec(base, "db1", 4, gen(0), backend="pywt")
    assert torch.allclose(torch_codec.base_low, pywt_codec.base_low, atol=1e-5)
    lows = torch.randn((5, *torch_codec.low_shape), generator=gen(1)) * 2 + 1
    fast = torch_codec.decode(lows)
    assert torch.allclose(fast, pywt_codec.decode(lows), atol=1e-5)
    # The single-pass Haar decode equals the generic padded_base + synthesis path bit for bit.
    generic = torch_codec.padded_base + torch_codec.synthesize_low(lows - torch_codec.base_low)
    assert torch.equal(fast, generic[:, :, : shape[1], : shape[2]])


@pytest.mark.parametrize("wavelet", ["db1", "db2"])
@pytest.mark.parametrize("shape", [(4, 166, 166), (4, 48, 85), (4, 7, 9), (16, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_decoding_the_base_low_band_returns_the_base_exactly(wavelet, shape, dtype):
    base = make_noise(shape, 2).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = LowBandCodec(base, wavelet, 4, gen(0))
    decoded = codec.decode(codec.base_low.unsqueeze(0))
    assert decoded.dtype == dtype and decoded.shape == (1, *shape)
    assert torch.equal(decoded[0], base)


def reference_style_noise(shape, count, seed):
    """DiffSynth-Studio's recombination (pywt 'symmetric' mode, N(0,1) low band, crop): the control."""
    generator = gen(seed)
    out = []
    for _ in range(count):
        base = torch.randn(shape, generator=generator).numpy()
        coeffs = pywt.wavedec2(base, "db1", mode="symmetric", level=4, axes=(-2, -1))
        coeffs[0] = torch.randn(coeffs[0].shape, generator=generator).numpy()
        rebuilt = pywt.waverec2(coeffs, "db1", mode="symmetric", axes=(-2, -1))[..., : shape[1], : shape[2]]
        out.append(torch.from_numpy(np.ascontiguousarray(rebuilt)).float())
    return torch.stack(out)


def codec_noise(shape, count, seed, wavelet="db1"):
    """Fresh base noise and a fresh N(0,1) low band per sample, recombined by the codec."""
    generator = gen(seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(count):
            codec = LowBandCodec(torch.randn(shape, generator=generator), wavelet, 4, generator)
            out.append(codec.decode(torch.randn((1, *codec.low_shape), generator=generator))[0])
    return torch.stack(out), codec.level


def gaussian_violations(noise: torch.Tensor, block: int) -> list[str]:
    """Checks that ``noise [N, C, H, W]`` is i.i.d. N(0,1); returns what failed (tolerances: 5 standard errors)."""
    maps = noise.flatten(0, 1).double()  # [N*C, H, W]
    count, height, width = maps.shape
    failures = []

    def check_std(values: torch.Tensor, name: str) -> None:
        n = values.numel()
        if abs(float(values.mean())) > 5 / math.sqrt(n):
            failures.append(f"{name} mean {float(values.mean()):+.4f}")
        if abs(float(values.std()) - 1) > 5 / math.sqrt(2 * n):
            failures.append(f"{name} std {float(values.std()):.4f}")

    check_std(maps, "all")
    check_std(maps[:, 0], "first row")
    check_std(maps[:, -1], "last row")
    check_std(maps[:, :, 0], "first column")
    check_std(maps[:, :, -1], "last column")
    check_std(maps[:, height // 2 - 1 : height // 2 + 1, width // 2 - 1 : width // 2 + 1], "interior")
    for name, left, right in [
        ("horizontal", maps[:, :, :-1], maps[:, :, 1:]),
        ("vertical", maps[:, :-1], maps[:, 1:]),
    ]:
        correlation = float((left * right).mean())
        if abs(correlation) > 5 / math.sqrt(left.numel()):
            failures.append(f"{name} neighbour correlation {correlation:+.4f}")
    # Normalised sums over every wavelet block, partial border blocks included: exactly what a wrongly
    # padded low band gets wrong (their variance is not 1).
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = torch.nn.functional.pad(maps, (0, cols * block - width, 0, rows * block - height))
    sums = padded.reshape(count, rows, block, cols, block).sum(dim=(2, 4))
    pixels = torch.nn.functional.pad(
        torch.ones(height, width), (0, cols * block - width, 0, rows * block - height)
    )
    pixels = pixels.reshape(rows, block, cols, block).sum(dim=(1, 3)).double()
    normalised = sums / pixels.sqrt()  # [N*C, rows, cols], each N(0, 1) if the noise is i.i.d. N(0, 1)
    full = pixels == block * block
    worst = float((normalised[:, full].std(dim=0) - 1).abs().max())
    if worst > 5 / math.sqrt(2 * count):
        failures.append(f"full block sums: std off by {worst:.4f}")
    if bool((~full).any()):
        check_std(normalised[:, ~full], "partial border block sums")
    return failures


@pytest.mark.parametrize(
    ("shape", "count", "wavelet", "level"),
    [
        ((2, 166, 166), 200, "db1", 4),
        ((2, 48, 85), 300, "db1", 4),
        ((4, 7, 9), 2000, "db1", 2),
        ((2, 48, 85), 300, "db2", 4),
    ],
)
def test_candidates_are_standard_gaussian_at_odd_sizes(shape, count, wavelet, level):
    noise, used_level = codec_noise(shape, count, seed=5, wavelet=wavelet)
    assert used_level == level
    assert gaussian_violations(noise, 2**level) == []


def decode_jacobian(shape, wavelet, level, with_padding_inputs=True):
    """Exact Jacobian of the codec's output w.r.t. every Gaussian input: base noise, padding values, low band.

    decode is linear in those inputs, so with all of them i.i.d. N(0,1) the output covariance is J @ J.T.
    Each column is one codec built with a unit input (the padding values are set the way the
    constructor sets them: padded tensor = base in the crop, the drawn values outside).
    """
    channels, height, width = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = LowBandCodec(torch.zeros(shape, dtype=torch.float64), wavelet, level, gen(0))
    outside = torch.ones(probe.padded_shape, dtype=torch.bool)
    outside[:, :height, :width] = False
    sizes = [math.prod(shape), int(outside.sum()) if with_padding_inputs else 0, math.prod(probe.low_shape)]
    columns = []
    for i in range(sum(sizes)):
        unit = torch.zeros(sum(sizes), dtype=torch.float64)
        unit[i] = 1.0
        base, pad, low = unit.split(sizes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codec = LowBandCodec(base.reshape(shape), wavelet, level, gen(0))
        codec.padded_base[outside] = pad if with_padding_inputs else 0.0
        codec.base_low = codec.forward_low(codec.padded_base.unsqueeze(0))[0]
        columns.append(codec.decode(low.reshape(1, *probe.low_shape)).flatten())
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize(
    ("shape", "wavelet", "level"), [((1, 7, 9), "db1", 2), ((2, 5, 6), "db1", 2), ((1, 13, 11), "db2", 1)]
)
def test_candidate_covariance_is_exactly_identity(shape, wavelet, level):
    jacobian = decode_jacobian(shape, wavelet, level)
    identity = torch.eye(math.prod(shape), dtype=torch.float64)
    assert torch.allclose(jacobian @ jacobian.T, identity, atol=1e-12)
    # Control: zero padding (padding values not Gaussian inputs) leaves the border with the wrong covariance.
    zero_padded = decode_jacobian(shape, wavelet, level, with_padding_inputs=False)
    assert not torch.allclose(zero_padded @ zero_padded.T, identity, atol=1e-3)


def test_gaussian_check_catches_symmetric_padding():
    # Control: the reference's symmetric-mode recombination at 166x166 must fail the same checks.
    noise = reference_style_noise((2, 166, 166), 200, seed=5)
    assert any("border block" in failure for failure in gaussian_violations(noise, 16))


def test_level_is_lowered_with_a_warning_on_small_latents():
    with pytest.warns(UserWarning, match="level 4 is too deep"):
        search = SpectralEvolutionSearch(make_noise((4, 7, 9), 0), 5, SESConfig(level=4), gen(0))
    assert search.level == 2 and search.low_shape == (4, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search = SpectralEvolutionSearch(make_noise((4, 16, 16), 0), 5, SESConfig(level=4), gen(0))
    assert search.level == 4 and search.low_shape == (4, 1, 1)


def test_design_shape_flux2_latent():
    result = ses_search(
        default_objective((128, 64, 64)), make_noise((1, 128, 64, 64), 0), 12, generator=gen(0)
    )
    assert result.low_bands.shape == (12, 128, 4, 4)
    assert result.low_bands[0].numel() == 2048
    assert result.level == 4 and result.best_noise.shape == (1, 128, 64, 64)


# --------------------------------------------------------------------------------------------------------
# SES does search: beats best-of-N on a low-frequency objective, and a score-blind SES does not
# --------------------------------------------------------------------------------------------------------


def test_ses_beats_random_search_and_a_score_blind_control():
    shape, budget, seeds = (8, 32, 32), 50, range(10)
    ses_best, random_best, blind_best = [], [], []
    for seed in seeds:
        base = make_noise(shape, 1000 + seed)
        objective = low_frequency_objective(random_target((8, 2, 2), 50_000 + seed), 4)
        ses_best.append(ses_search(objective, base, budget, generator=gen(seed)).best_score)
        random_best.append(random_search(objective, base, budget, generator=gen(seed)).best_score)
        # Broken SES: told random scores, so its elites are random; we track the true best it visited.
        blind = SpectralEvolutionSearch(base, budget, generator=gen(seed))
        coin, best = gen(99 + seed), -math.inf
        while not blind.done:
            noises = blind.ask()
            best = max(best, float(objective(noises).max()))
            blind.tell(torch.randn(noises.shape[0], generator=coin))
        blind_best.append(best)
    spread = math.sqrt((statistics.variance(ses_best) + statistics.variance(random_best)) / 2)
    margin = 0.5 * spread
    random_mean = statistics.mean(random_best)
    assert statistics.mean(ses_best) > random_mean + margin
    assert statistics.mean(blind_best) < random_mean + margin  # the margin is out of reach without scores
    assert sum(s > r for s, r in zip(ses_best, random_best, strict=True)) >= 7


def test_search_result_is_a_dataclass_with_helpers():
    result = random_search(default_objective(), make_noise((4, 32, 32), 0), 12, gen(0), batch_size=5)
    assert isinstance(result, SearchResult)
    assert result.num_evaluated == 12 and result.level is None
    assert [entry["num_evaluated"] for entry in result.trace] == [5, 10, 12]


def test_search_does_not_import_diffusion_code():
    code = "import sys, search; print(sorted(m for m in ('diffusers', 'tscale_train', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_gives_the_same_search_as_cpu():
    base = make_noise((16, 64, 64), 0)
    objective = default_objective((16, 64, 64))
    cpu = SpectralEvolutionSearch(base, 10, generator=gen(1))
    cuda = SpectralEvolutionSearch(base.cuda(), 10, generator=gen(1))
    cpu_noises, cuda_noises = cpu.ask(), cuda.ask()
    assert cuda_noises.device.type == "cuda"
    assert torch.allclose(cpu_noises, cuda_noises.cpu(), atol=1e-6)
    cpu.tell(objective(cpu_noises))
    cuda.tell(objective(cuda_noises))
    assert torch.allclose(cpu.result().low_bands, cuda.result().low_bands)


def test_rank_best_first_and_base_score():
    from search import SearchResult, rank_best_first

    scores = torch.tensor([0.3, 0.9, float("nan"), 0.9, float("inf"), 0.1, float("-inf"), 0.3])
    assert rank_best_first(scores) == [1, 3, 0, 7, 5]  # ties keep evaluation order; non-finite dropped
    assert rank_best_first([0.2, 0.5]) == [1, 0] and rank_best_first(torch.tensor([math.nan])) == []
    with pytest.raises(ValueError, match="1-D"):
        rank_best_first(torch.zeros(2, 2))
    result = SearchResult(best_noise=torch.zeros(1, 1, 2, 2), best_score=0.9, best_index=1, scores=scores)
    assert result.base_score == pytest.approx(0.3) and isinstance(result.base_score, float)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((64, 64), 4), ((128, 96), 4), ((32, 48), 3), ((16, 16), 2), ((8, 8), 1), ((4, 4), 2), ((2, 2), 1)],
)
def test_auto_level_keeps_a_4x4_low_band(shape, expected):
    """level=None: 4 on a 1024px FLUX latent (64x64), lower on smaller latents so the band keeps 4x4; below 8 px
    (the tiny kit's 4x4) the deepest level that fits, as an explicit 4 gives; never 0."""
    from search.wavelets import auto_level, resolve_level

    assert auto_level(*shape, "db1") == resolve_level(*shape, "db1", None) == expected
    codec = LowBandCodec(torch.zeros(2, *shape), "db1", None, gen(0))
    assert codec.level == expected
