"""Flow-matching Diffusion-DPO: the loss, the sigma sampling and the noising of clean latents.

Diffusion-DPO (Wallace et al. 2023) adapted to rectified flow. For a chosen (w) and rejected (l)
clean latent ``x0`` of one prompt, one noise ``e`` and one ``sigma`` are shared by the pair:

    x_t = (1 - sigma) * x0 + sigma * e,        target velocity v = e - x0

``m(.)`` is the per-sample mean squared error of a velocity prediction against ``v`` over all
non-batch dimensions, for the trained model (theta) and the frozen reference (ref):

    inside = -(beta / 2) * ((m_theta(w) - m_ref(w)) - (m_theta(l) - m_ref(l)))
    loss   = -logsigmoid(inside).mean()

The loss falls when the trained model improves on the reference more for the chosen sample than
for the rejected one. Nothing here knows about pipelines: the functions take velocity tensors, and
`FlowDPOStep` runs a model only through the callables it is handed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FlowDPOStep",
    "SIGMA_SAMPLING_MODES",
    "UNIFORM_SIGMA_MIN",
    "flow_dpo_loss",
    "interpolate_flow",
    "sample_sigmas",
]

SIGMA_SAMPLING_MODES = ("sampler", "logit_normal", "uniform")

# Lower bound for sampled sigmas in the continuous modes. At sigma -> 0 the noisy input is the
# clean latent itself and the velocity target carries no information about the model's denoising,
# and a distilled sampler never queries there anyway.
UNIFORM_SIGMA_MIN = 1e-3


def _per_sample_mse(prediction: Tensor, target: Tensor, compute_dtype: torch.dtype) -> Tensor:
    """Mean squared error over every non-batch dimension, computed in ``compute_dtype``: ``[B]``."""
    difference = prediction.to(compute_dtype) - target.to(compute_dtype)
    # reshape(B, -1) rather than mean(dim=tuple(range(1, ndim))): for a 1-D input the dim tuple would
    # be empty, which torch reads as "reduce everything".
    return difference.square().reshape(difference.shape[0], -1).mean(dim=1)


def flow_dpo_loss(
    pred_w: Tensor,
    pred_l: Tensor,
    ref_pred_w: Tensor,
    ref_pred_l: Tensor,
    target_w: Tensor,
    target_l: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Diffusion-DPO loss for rectified-flow velocity predictions.

    Args:
        pred_w, pred_l: the trained model's velocity predictions for the chosen (w) and rejected (l)
            noisy latents, ``[B, ...]``. The only inputs gradients flow through.
        ref_pred_w, ref_pred_l: the reference model's predictions for the same inputs. Treated as
            constants (detached), so passing tensors that require grad is harmless.
        target_w, target_l: the velocity targets ``e - x0`` (also detached).
        beta: the DPO temperature (> 0). It is a per-model setting: it multiplies differences of
            per-sample MSEs, whose size depends on the latent space and on how far training moved.

    Returns:
        ``(loss, stats)``: ``loss`` is a scalar; it is float32 when the inputs are bf16/fp16/float32
        (the MSEs are always computed in at least float32; float64 inputs stay float64).
        ``stats`` holds detached scalar tensors:

        - ``implicit_acc``: fraction of pairs with ``inside > 0`` (the model prefers the chosen
          sample more than the reference does). Ties count as wrong, so with a freshly initialised
          LoRA (B matrices at zero, theta == ref, ``inside`` exactly 0) it is 0, not 0.5.
        - ``inside``: mean of ``inside``.
        - ``inside_abs``: mean of ``|inside|``, the scale of the DPO logit. Far below 1 the loss is
          flat (beta too small to matter), far above ~5 the sigmoid saturates (beta too large).
        - ``mse_w``, ``mse_l``: mean of ``m_theta(w)``, ``m_theta(l)``.
        - ``ref_mse_w``, ``ref_mse_l``: mean of ``m_ref(w)``, ``m_ref(l)``.
        - ``chosen_improvement``: mean of ``m_ref(w) - m_theta(w)`` (positive: the trained model
          denoises the chosen samples better than the reference);
          ``rejected_improvement``: the same for the rejected samples.

    Raises:
        ValueError: shapes differ, the batch is empty, or ``beta`` is not a positive finite number.
    """
    try:
        beta_value = float(beta)
    except (TypeError, ValueError):
        beta_value = math.nan
    if not (math.isfinite(beta_value) and beta_value > 0):
        raise ValueError(
            f"flow_dpo_loss: beta must be a positive finite number, got {beta!r}; "
            "set the DPO beta to a value > 0 (e.g. 1-10 for the tiny model, larger for real models)"
        )
    named = {
        "pred_w": pred_w,
        "pred_l": pred_l,
        "ref_pred_w": ref_pred_w,
        "ref_pred_l": ref_pred_l,
        "target_w": target_w,
        "target_l": target_l,
    }
    shapes = {name: tuple(tensor.shape) for name, tensor in named.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"flow_dpo_loss: all six tensors must have one shape [B, ...], got {shapes}; "
            "pass chosen and rejected predictions/targets for the same batch of pairs"
        )
    if pred_w.ndim == 0 or pred_w.shape[0] == 0:
        raise ValueError(
            f"flow_dpo_loss: inputs need a non-empty batch dimension, got shape {tuple(pred_w.shape)}; "
            "pass velocity tensors shaped [B, ...] with B >= 1"
        )

    # bf16 MSEs of near-identical predictions would round the theta/ref difference away entirely.
    compute_dtype = torch.promote_types(pred_w.dtype, torch.float32)
    mse_theta_w = _per_sample_mse(pred_w, target_w.detach(), compute_dtype)
    mse_theta_l = _per_sample_mse(pred_l, target_l.detach(), compute_dtype)
    with torch.no_grad():
        mse_ref_w = _per_sample_mse(ref_pred_w.detach(), target_w.detach(), compute_dtype)
        mse_ref_l = _per_sample_mse(ref_pred_l.detach(), target_l.detach(), compute_dtype)

    chosen_delta = mse_theta_w - mse_ref_w
    rejected_delta = mse_theta_l - mse_ref_l
    inside = -(beta_value / 2.0) * (chosen_delta - rejected_delta)
    loss = -F.logsigmoid(inside).mean()

    with torch.no_grad():
        stats = {
            "implicit_acc": (inside > 0).to(compute_dtype).mean(),
            "inside": inside.mean(),
            "inside_abs": inside.abs().mean(),
            "mse_w": mse_theta_w.mean(),
            "mse_l": mse_theta_l.mean(),
            "ref_mse_w": mse_ref_w.mean(),
            "ref_mse_l": mse_ref_l.mean(),
            "chosen_improvement": (-chosen_delta).mean(),
            "rejected_improvement": (-rejected_delta).mean(),
        }
    return loss, {name: value.detach() for name, value in stats.items()}


def sample_sigmas(
    batch_size: int,
    mode: str,
    *,
    generator: torch.Generator | None = None,
    sampler_sigmas: Tensor | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one noise level per pair, ``Tensor[batch_size]`` (float32) in ``(0, 1]``.

    Modes:
        ``"sampler"``: a uniform choice among ``sampler_sigmas``, the scheduler's sigmas for the
            training resolution and step count (e.g. ``[1.0, 0.955, 0.875, 0.700, 0.0]`` for the
            4-step distilled klein at 64 px). The trailing 0 (and any non-positive entry) is
            dropped: it is the end of sampling, never a model query. This trains exactly the noise
            levels a distilled model is used at.
        ``"logit_normal"``: ``sigmoid(N(logit_mean, logit_std))`` (SD3-style), clamped to
            ``[UNIFORM_SIGMA_MIN, 1]`` so float32 rounding never yields 0.
        ``"uniform"``: uniform on ``[UNIFORM_SIGMA_MIN, 1)``.

    Draws are made on the CPU with ``generator`` (a CPU generator) and then moved to ``device``,
    so they are identical for one seed whatever the device.

    Raises:
        ValueError: unknown mode, ``"sampler"`` without usable ``sampler_sigmas``, a non-CPU
            generator, ``batch_size < 1`` or ``logit_std < 0``.
    """
    if mode not in SIGMA_SAMPLING_MODES:
        raise ValueError(
            f"sample_sigmas: unknown mode {mode!r}; choose one of {', '.join(SIGMA_SAMPLING_MODES)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sample_sigmas: batch_size must be an integer >= 1, got {batch_size!r}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"sample_sigmas: the generator must be a CPU generator (got one on {generator.device}); "
            "create it with torch.Generator() and pass device= for where the result should live"
        )

    if mode == "sampler":
        if sampler_sigmas is None:
            raise ValueError(
                "sample_sigmas: mode 'sampler' needs sampler_sigmas (the scheduler's sigmas for the "
                "resolution and step count); pass them, or use mode 'logit_normal' or 'uniform'"
            )
        candidates = torch.as_tensor(sampler_sigmas).detach().to("cpu", torch.float32).flatten()
        candidates = candidates[candidates > 0]
        if candidates.numel() == 0 or not bool(torch.all(candidates <= 1.0)):
            raise ValueError(
                f"sample_sigmas: sampler_sigmas must hold at least one sigma in (0, 1], got "
                f"{torch.as_tensor(sampler_sigmas).tolist()}; pass the scheduler's sigmas after set_timesteps"
            )
        choice = torch.randint(0, candidates.numel(), (batch_size,), generator=generator)
        sigmas = candidates[choice]
    elif mode == "logit_normal":
        if not (math.isfinite(logit_mean) and math.isfinite(logit_std) and logit_std >= 0):
            raise ValueError(
                f"sample_sigmas: logit_normal needs a finite logit_mean and logit_std >= 0, got "
                f"logit_mean={logit_mean!r}, logit_std={logit_std!r}"
            )
        normal = torch.randn(batch_size, generator=generator, dtype=torch.float32)
        sigmas = torch.sigmoid(normal * logit_std + logit_mean).clamp(UNIFORM_SIGMA_MIN, 1.0)
    else:  # uniform
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float32)
        # An affine map rather than a clamp: clamping would put a point mass at the lower bound.
        sigmas = UNIFORM_SIGMA_MIN + (1.0 - UNIFORM_SIGMA_MIN) * uniform
    return sigmas.to(device) if device is not None else sigmas


def interpolate_flow(clean_latents: Tensor, noise: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Noise clean latents along the rectified-flow path.

    Args:
        clean_latents: ``x0``, ``[B, ...]``.
        noise: ``e``, same shape as ``clean_latents``.
        sigmas: ``[B]`` (or a 0-d tensor / float for the whole batch), in ``[0, 1]``; broadcast over
            all non-batch dimensions.

    Returns:
        ``(noisy, target)``: ``noisy = (1 - sigma) * x0 + sigma * e`` and the velocity target
        ``e - x0``. Both are computed in at least float32 (bf16 latents are upcast: the caller casts
        ``noisy`` to the model's dtype when running it, and keeps ``target`` in float32 for the loss).

    Raises:
        ValueError: shapes do not match, or a sigma lies outside ``[0, 1]``.
    """
    if clean_latents.shape != noise.shape:
        raise ValueError(
            f"interpolate_flow: clean_latents {tuple(clean_latents.shape)} and noise {tuple(noise.shape)} "
            "must have the same shape; draw the noise with torch.randn_like(clean_latents)"
        )
    if clean_latents.ndim == 0:
        raise ValueError("interpolate_flow: clean_latents needs a batch dimension, got a 0-d tensor")
    compute_dtype = torch.promote_types(clean_latents.dtype, torch.float32)
    sigmas = torch.as_tensor(sigmas, device=clean_latents.device).to(compute_dtype)
    batch_size = clean_latents.shape[0]
    if sigmas.ndim == 0:
        sigmas = sigmas.expand(batch_size)
    if sigmas.shape != (batch_size,):
        raise ValueError(
            f"interpolate_flow: sigmas must have shape [{batch_size}] (one per sample), got "
            f"{tuple(sigmas.shape)}"
        )
    if not bool(torch.all((sigmas >= 0) & (sigmas <= 1))):
        raise ValueError(f"interpolate_flow: sigmas must lie in [0, 1], got {sigmas.tolist()}")
    sigma = sigmas.reshape(batch_size, *([1] * (clean_latents.ndim - 1)))
    x0 = clean_latents.to(compute_dtype)
    e = noise.to(compute_dtype)
    noisy = (1.0 - sigma) * x0 + sigma * e
    return noisy, e - x0


@dataclass(kw_only=True, eq=False)
class FlowDPOStep:
    """One Diffusion-DPO forward over a micro-batch of pairs, with the model and reference it needs.

    The reference is the trained transformer with its adapters disabled (no second copy). Nothing
    here imports a pipeline: the caller hands in `predict_velocity(model, noisy, sigmas, embeds)`,
    `sampler_sigmas(preview_steps)` (the generator's), the prepared `model` and its unwrapped
    module, and the accelerator's `autocast` context factory.
    """

    model: torch.nn.Module
    unwrapped_model: torch.nn.Module
    lora_parameters: list[torch.nn.Parameter]
    predict_velocity: Callable[..., Tensor]
    sampler_sigmas: Callable[[int | None], Tensor | None]
    preview_steps: int | None
    beta: float
    sigma_sampling: str
    logit_mean: float
    logit_std: float
    weight_dtype: torch.dtype
    device: torch.device | str
    autocast: Callable[[], AbstractContextManager]

    def __call__(
        self, chosen: Tensor, rejected: Tensor, embeds: list, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and stats for one micro-batch: one noise and sigma shared by each pair."""
        batch = chosen.shape[0]
        noise = torch.randn(chosen.shape, generator=generator)
        sigmas = sample_sigmas(
            batch,
            self.sigma_sampling,
            generator=generator,
            sampler_sigmas=self.sampler_sigmas(self.preview_steps),
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
        )
        noisy_w, target_w = interpolate_flow(chosen, noise, sigmas)
        noisy_l, target_l = interpolate_flow(rejected, noise, sigmas)
        # Chosen and rejected go through the model as one batch of 2B.
        noisy = torch.cat([noisy_w, noisy_l]).to(self.device, self.weight_dtype)
        both_sigmas = torch.cat([sigmas, sigmas]).to(self.device)
        both_embeds = list(embeds) * 2
        reference = self.reference_velocity(noisy, both_sigmas, both_embeds)
        with self.autocast():
            prediction = self.predict_velocity(self.model, noisy, both_sigmas, both_embeds)
        return flow_dpo_loss(
            prediction[:batch],
            prediction[batch:],
            reference[:batch],
            reference[batch:],
            target_w.to(self.device),
            target_l.to(self.device),
            beta=self.beta,
        )

    @torch.no_grad()
    def reference_velocity(self, noisy: Tensor, sigmas: Tensor, embeds: list) -> Tensor:
        """The reference model: the same transformer with its adapters disabled (no second copy)."""
        transformer = self.unwrapped_model
        transformer.disable_adapters()
        try:
            with self.autocast():
                return self.predict_velocity(transformer, noisy, sigmas, embeds)
        finally:
            transformer.enable_adapters()
            # peft's enable/disable toggles requires_grad of adapter weights; keep only LoRA trainable.
            for parameter in self.lora_parameters:
                parameter.requires_grad_(True)

    @torch.no_grad()
    def implicit_accuracy(
        self, chosen: Tensor, rejected: Tensor, embeds: list, generator: torch.Generator, batch_size: int
    ) -> list[float]:
        """Implicit accuracy of each `batch_size` micro-batch, once per pair it holds (so a mean weighs pairs alike)."""
        self.model.eval()
        count = chosen.shape[0]
        hits: list[float] = []
        for start in range(0, count, batch_size):
            stop = start + batch_size
            _, stats = self(chosen[start:stop], rejected[start:stop], embeds[start:stop], generator)
            hits += [float(stats["implicit_acc"])] * (min(stop, count) - start)
        return hits
