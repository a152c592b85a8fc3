"""Tests for the flow-matching Diffusion-DPO loss, sigma sampling and flow interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tscale_train.dpo import (
    SIGMA_SAMPLING_MODES,
    UNIFORM_SIGMA_MIN,
    flow_dpo_loss,
    interpolate_flow,
    sample_sigmas,
)

SHAPE = (5, 4, 3, 6)  # [B, C, H, W]


def _random_inputs(seed: int = 0, shape: tuple[int, ...] = SHAPE, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(6)]


def _reference_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta):
    """The flow-matching Diffusion-DPO formula (docs/training.md), written out per sample in float64 NumPy."""
    arrays = [t.detach().double().numpy() for t in (pred_w, pred_l, ref_w, ref_l, target_w, target_l)]
    p_w, p_l, r_w, r_l, t_w, t_l = arrays
    losses, insides = [], []
    for i in range(p_w.shape[0]):
        m_theta_w = np.mean((p_w[i] - t_w[i]) ** 2)
        m_ref_w = np.mean((r_w[i] - t_w[i]) ** 2)
        m_theta_l = np.mean((p_l[i] - t_l[i]) ** 2)
        m_ref_l = np.mean((r_l[i] - t_l[i]) ** 2)
        inside = -(beta / 2) * ((m_theta_w - m_ref_w) - (m_theta_l - m_ref_l))
        insides.append(inside)
        losses.append(math.log1p(math.exp(-inside)))  # -log(sigmoid(x)) = log(1 + e^-x)
    return float(np.mean(losses)), np.array(insides)


@pytest.mark.parametrize("beta", [0.5, 5.0, 200.0])
def test_loss_matches_independent_computation(beta):
    inputs = _random_inputs(seed=int(beta * 10))
    loss, stats = flow_dpo_loss(*inputs, beta=beta)
    expected_loss, expected_inside = _reference_loss(*inputs, beta=beta)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    assert stats["inside"].item() == pytest.approx(expected_inside.mean(), rel=1e-4, abs=1e-5)
    assert stats["inside_abs"].item() == pytest.approx(np.abs(expected_inside).mean(), rel=1e-4, abs=1e-5)
    assert stats["implicit_acc"].item() == pytest.approx(float(np.mean(expected_inside > 0)))

    p_w, p_l, r_w, r_l, t_w, t_l = (t.double().numpy() for t in inputs)
    per_sample = {
        "mse_w": ((p_w - t_w) ** 2).reshape(SHAPE[0], -1).mean(1),
        "mse_l": ((p_l - t_l) ** 2).reshape(SHAPE[0], -1).mean(1),
        "ref_mse_w": ((r_w - t_w) ** 2).reshape(SHAPE[0], -1).mean(1),
        "ref_mse_l": ((r_l - t_l) ** 2).reshape(SHAPE[0], -1).mean(1),
    }
    for name, values in per_sample.items():
        assert stats[name].item() == pytest.approx(values.mean(), rel=1e-5)
    assert stats["chosen_improvement"].item() == pytest.approx(
        (per_sample["ref_mse_w"] - per_sample["mse_w"]).mean(), rel=1e-4, abs=1e-6
    )
    assert stats["rejected_improvement"].item() == pytest.approx(
        (per_sample["ref_mse_l"] - per_sample["mse_l"]).mean(), rel=1e-4, abs=1e-6
    )
    for value in stats.values():
        assert value.ndim == 0 and not value.requires_grad


def test_implicit_accuracy_counts_pairs_with_positive_inside():
    _, _, ref_w, ref_l, target_w, target_l = _random_inputs(seed=3)
    # Samples 0 and 1: theta is exact on the chosen sample and equals ref on the rejected one
    # (inside > 0). Samples 2-4: the other way round (inside < 0).
    pred_w = torch.cat([target_w[:2], ref_w[2:]])
    pred_l = torch.cat([ref_l[:2], target_l[2:]])
    _, stats = flow_dpo_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta=1.0)
    assert stats["implicit_acc"].item() == pytest.approx(2 / SHAPE[0])
    assert stats["chosen_improvement"].item() > 0 and stats["rejected_improvement"].item() > 0


def test_loss_sign_follows_chosen_and_rejected_errors():
    pred_w, pred_l, ref_w, ref_l, target_w, target_l = _random_inputs(seed=1)
    base_loss, base_stats = flow_dpo_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta=2.0)

    better_chosen = target_w + 0.5 * (pred_w - target_w)  # a quarter of the chosen squared error
    loss, stats = flow_dpo_loss(better_chosen, pred_l, ref_w, ref_l, target_w, target_l, beta=2.0)
    assert loss.item() < base_loss.item()
    assert stats["mse_w"].item() < base_stats["mse_w"].item()
    assert stats["inside"].item() > base_stats["inside"].item()

    better_rejected = target_l + 0.5 * (pred_l - target_l)
    loss, stats = flow_dpo_loss(pred_w, better_rejected, ref_w, ref_l, target_w, target_l, beta=2.0)
    assert loss.item() > base_loss.item()
    assert stats["inside"].item() < base_stats["inside"].item()


def test_equal_theta_and_ref_gives_log2_and_zero_accuracy():
    pred_w, pred_l, _, _, target_w, target_l = _random_inputs(seed=2)
    loss, stats = flow_dpo_loss(pred_w, pred_l, pred_w.clone(), pred_l.clone(), target_w, target_l, beta=7.0)
    assert stats["inside"].item() == 0.0
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert stats["implicit_acc"].item() == 0.0  # ties count as wrong
    assert stats["chosen_improvement"].item() == 0.0
    assert stats["rejected_improvement"].item() == 0.0


def test_gradients_reach_predictions_only():
    pred_w, pred_l, ref_w, ref_l, target_w, target_l = (
        t.requires_grad_(True) for t in _random_inputs(seed=4)
    )
    loss, _ = flow_dpo_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta=3.0)
    loss.backward()
    assert pred_w.grad is not None and pred_w.grad.abs().sum() > 0
    assert pred_l.grad is not None and pred_l.grad.abs().sum() > 0
    for constant in (ref_w, ref_l, target_w, target_l):
        assert constant.grad is None


def test_gradient_direction_pulls_chosen_towards_target():
    pred_w, pred_l, ref_w, ref_l, target_w, target_l = _random_inputs(seed=5)
    pred_w.requires_grad_(True)
    pred_l.requires_grad_(True)
    loss, _ = flow_dpo_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta=3.0)
    loss.backward()
    with torch.no_grad():
        step = 1e-2
        stepped, _ = flow_dpo_loss(
            pred_w - step * pred_w.grad,
            pred_l - step * pred_l.grad,
            ref_w,
            ref_l,
            target_w,
            target_l,
            beta=3.0,
        )
    assert stepped.item() < loss.item()
    # Descending moves the chosen prediction towards its target and the rejected one away.
    chosen_error_before = (pred_w - target_w).square().sum()
    chosen_error_after = (pred_w - step * pred_w.grad - target_w).square().sum()
    rejected_error_before = (pred_l - target_l).square().sum()
    rejected_error_after = (pred_l - step * pred_l.grad - target_l).square().sum()
    assert chosen_error_after < chosen_error_before
    assert rejected_error_after > rejected_error_before


def test_bf16_inputs_give_float32_loss():
    inputs = _random_inputs(seed=6, dtype=torch.bfloat16)
    loss, stats = flow_dpo_loss(*inputs, beta=4.0)
    assert loss.dtype == torch.float32
    assert all(value.dtype == torch.float32 for value in stats.values())
    expected, _ = _reference_loss(*inputs, beta=4.0)  # the bf16 values upcast exactly
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_one_dimensional_inputs_are_per_sample_scalars():
    inputs = _random_inputs(seed=7, shape=(6,))
    loss, _ = flow_dpo_loss(*inputs, beta=1.0)
    expected, _ = _reference_loss(*inputs, beta=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch_raises():
    inputs = _random_inputs(seed=8)
    inputs[3] = inputs[3][:, :2]
    with pytest.raises(ValueError, match="ref_pred_l"):
        flow_dpo_loss(*inputs, beta=1.0)


def test_empty_batch_raises():
    inputs = _random_inputs(seed=8, shape=(0, 3))
    with pytest.raises(ValueError, match="batch"):
        flow_dpo_loss(*inputs, beta=1.0)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), "five"])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        flow_dpo_loss(*_random_inputs(seed=9), beta=beta)


# ---- sample_sigmas ---------------------------------------------------------------------------


SAMPLER_SIGMAS = torch.tensor([1.0, 0.955, 0.875, 0.700, 0.0])


def test_sampler_mode_only_returns_the_sampler_sigmas():
    sigmas = sample_sigmas(
        4000, "sampler", generator=torch.Generator().manual_seed(0), sampler_sigmas=SAMPLER_SIGMAS
    )
    assert sigmas.shape == (4000,) and sigmas.dtype == torch.float32
    allowed = set(SAMPLER_SIGMAS[:-1].tolist())
    drawn = set(sigmas.tolist())
    assert drawn == allowed  # every non-zero sigma shows up in 4000 draws, and nothing else
    assert bool(torch.all(sigmas > 0))
    counts = torch.stack([(sigmas == value).sum() for value in SAMPLER_SIGMAS[:-1]]).float()
    assert counts.min() > 0.2 * 4000 and counts.max() < 0.3 * 4000  # uniform over the 4 sigmas


def test_logit_normal_and_uniform_ranges():
    generator = torch.Generator().manual_seed(1)
    logit = sample_sigmas(5000, "logit_normal", generator=generator)
    assert bool(torch.all((logit >= UNIFORM_SIGMA_MIN) & (logit <= 1)))
    assert logit.median().item() == pytest.approx(0.5, abs=0.03)
    shifted = sample_sigmas(5000, "logit_normal", generator=generator, logit_mean=1.0, logit_std=0.5)
    assert shifted.median().item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)
    extreme = sample_sigmas(1000, "logit_normal", generator=generator, logit_mean=-200.0)
    assert bool(torch.all(extreme > 0))

    uniform = sample_sigmas(5000, "uniform", generator=generator)
    assert bool(torch.all((uniform >= UNIFORM_SIGMA_MIN) & (uniform <= 1)))
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.03)
    assert uniform.min().item() < 0.01 and uniform.max().item() > 0.99


@pytest.mark.parametrize("mode", SIGMA_SAMPLING_MODES)
def test_sigmas_are_deterministic_from_the_generator(mode):
    def draw(seed: int) -> torch.Tensor:
        return sample_sigmas(
            64, mode, generator=torch.Generator().manual_seed(seed), sampler_sigmas=SAMPLER_SIGMAS
        )

    assert torch.equal(draw(11), draw(11))
    assert not torch.equal(draw(11), draw(12))
    on_device = sample_sigmas(
        64, mode, generator=torch.Generator().manual_seed(11), sampler_sigmas=SAMPLER_SIGMAS, device="cpu"
    )
    assert torch.equal(on_device, draw(11))


def test_sample_sigmas_errors():
    with pytest.raises(ValueError, match="logit_normal"):
        sample_sigmas(4, "cosine")
    with pytest.raises(ValueError, match="sampler_sigmas"):
        sample_sigmas(4, "sampler")
    with pytest.raises(ValueError, match="sampler_sigmas"):
        sample_sigmas(4, "sampler", sampler_sigmas=torch.zeros(3))
    with pytest.raises(ValueError, match="batch_size"):
        sample_sigmas(0, "uniform")
    with pytest.raises(ValueError, match="logit_std"):
        sample_sigmas(4, "logit_normal", logit_std=-1.0)


# ---- interpolate_flow ------------------------------------------------------------------------


def test_interpolate_flow_endpoints_and_target():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 4, 5, 5, generator=generator)
    noise = torch.randn(3, 4, 5, 5, generator=generator)
    noisy, target = interpolate_flow(clean, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(noisy[0], clean[0])
    assert torch.equal(noisy[1], noise[1])
    assert torch.allclose(noisy[2], 0.75 * clean[2] + 0.25 * noise[2])
    assert torch.equal(target, noise - clean)
    # The velocity target is the derivative of the path in sigma: x_t moves by target * d_sigma.
    later, _ = interpolate_flow(clean, noise, torch.tensor([0.1, 0.1, 0.35]))
    assert torch.allclose(later[2] - noisy[2], 0.1 * target[2], atol=1e-6)


def test_interpolate_flow_upcasts_bf16_and_validates():
    clean = torch.randn(2, 8, 16).to(torch.bfloat16)
    noise = torch.randn(2, 8, 16).to(torch.bfloat16)
    noisy, target = interpolate_flow(clean, noise, torch.tensor([0.3, 0.9]))
    assert noisy.dtype == torch.float32 and target.dtype == torch.float32
    assert torch.equal(target, noise.float() - clean.float())
    with pytest.raises(ValueError, match="same shape"):
        interpolate_flow(clean, noise[:1], torch.tensor([0.3]))
    with pytest.raises(ValueError, match="shape"):
        interpolate_flow(clean, noise, torch.tensor([0.3, 0.9, 0.1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_flow(clean, noise, torch.tensor([0.3, 1.5]))
