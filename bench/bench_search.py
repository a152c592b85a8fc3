"""Benchmarks of the `search` package; prints markdown tables (not a test).

1. Search quality: SES vs best-of-N random search (and a score-blind SES control) on a synthetic
   objective that depends only on the noise's low-frequency content, at budgets 10 / 30 / 50,
   averaged over seeds.
2. Search overhead: time spent inside the search itself (ask + tell, objective excluded) per candidate
   for a FLUX.2-klein-sized latent [128, 64, 64], with the torch Haar backend and the PyWavelets
   backend side by side, next to a DiffSynth-Studio-style per-candidate NumPy reconstruction; on CUDA
   too when available.

Usage: python bench/bench_search.py [--seeds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import pywt
import torch

from search import SESConfig, SpectralEvolutionSearch, random_search, ses_search
from search.synthetic import low_frequency_objective, random_target

QUALITY_SHAPE = (8, 32, 32)  # low band 8x2x2 = 32 searched numbers at level 4
LATENT_SHAPE = (128, 64, 64)  # FLUX.2 latent of a 1024px image: low band 128x4x4 = 2048


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def score_blind_ses(objective, base, budget: int, seed: int) -> float:
    """SES told random scores (its elites are random): true best it visited. The no-information control."""
    search = SpectralEvolutionSearch(base, budget, generator=torch.Generator().manual_seed(seed))
    coin = torch.Generator().manual_seed(99 + seed)
    best = -math.inf
    while not search.done:
        noises = search.ask()
        best = max(best, float(objective(noises).max()))
        search.tell(torch.randn(noises.shape[0], generator=coin))
    return best


def quality_table(seeds: int) -> None:
    print(f"## Search quality: best score (higher is better), mean ± sd over {seeds} seeds\n")
    print(f"Objective: -mean((2^4 * avgpool16(noise) - target)^2) on a {list(QUALITY_SHAPE)} noise "
          "(a random noise scores about -2).\n")
    print("| budget | base noise | random search | score-blind SES | SES | SES - random (sd units) |")
    print("|---:|---:|---:|---:|---:|---:|")
    channels, height, width = QUALITY_SHAPE
    for budget in (10, 30, 50):
        base_scores, random_best, blind_best, ses_best = [], [], [], []
        for seed in range(seeds):
            base = torch.randn(QUALITY_SHAPE, generator=torch.Generator().manual_seed(1000 + seed))
            target = random_target((channels, height // 16, width // 16), 50_000 + seed)
            objective = low_frequency_objective(target, 4)
            ses = ses_search(objective, base, budget, generator=torch.Generator().manual_seed(seed))
            rnd = random_search(objective, base, budget, generator=torch.Generator().manual_seed(seed))
            base_scores.append(ses.base_score)
            ses_best.append(ses.best_score)
            random_best.append(rnd.best_score)
            blind_best.append(score_blind_ses(objective, base, budget, seed))
        spread = math.sqrt((statistics.variance(ses_best) + statistics.variance(random_best)) / 2)
        gain = (statistics.mean(ses_best) - statistics.mean(random_best)) / spread
        print(f"| {budget} | {mean_sd(base_scores)} | {mean_sd(random_best)} | {mean_sd(blind_best)} | "
              f"{mean_sd(ses_best)} | {gain:+.2f} |")
    print()


def time_ses(base: torch.Tensor, backend: str, budget: int, repeats: int) -> float:
    """Best-of-repeats seconds per candidate spent in ask() + tell(), objective excluded."""
    scores_of = lambda noises: noises[:, :, :4, :4].float().sum(dim=(1, 2, 3))  # noqa: E731 - trivial objective
    best = math.inf
    for repeat in range(repeats + 1):  # the first run warms up (allocations, CUDA kernels)
        search = SpectralEvolutionSearch(
            base, budget, SESConfig(backend=backend), generator=torch.Generator().manual_seed(repeat)
        )
        spent = 0.0
        while not search.done:
            start = time.perf_counter()
            noises = search.ask()
            if noises.is_cuda:
                torch.cuda.synchronize()
            spent += time.perf_counter() - start
            scores = scores_of(noises)
            if scores.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            search.tell(scores)
            spent += time.perf_counter() - start
        if repeat:
            best = min(best, spent / budget)
    return best


def time_reference_style(base: torch.Tensor, budget: int, repeats: int) -> float:
    """Seconds per candidate of DiffSynth-Studio's way: one pywt 'symmetric' waverec2 in NumPy per candidate."""
    best = math.inf
    for _ in range(repeats + 1):
        start = time.perf_counter()
        coeffs = pywt.wavedec2(base.cpu().float().numpy(), "db1", mode="symmetric", level=4, axes=(-2, -1))
        low_shape = coeffs[0].shape
        for _ in range(budget):
            low = torch.randn(low_shape).numpy()
            noise = pywt.waverec2([low, *coeffs[1:]], "db1", mode="symmetric", axes=(-2, -1))
            noise = torch.from_numpy(np.ascontiguousarray(noise[..., : base.shape[-2], : base.shape[-1]]))
            noise = noise.unsqueeze(0).to(base.device, base.dtype)
        if base.is_cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / budget)
    return best


def overhead_table(repeats: int, budget: int = 50) -> None:
    print(f"## Search overhead per candidate, latent {list(LATENT_SHAPE)} (low band 2048), budget {budget}\n")
    print(f"ask() + tell() time divided by the number of candidates, best of {repeats} runs; objective excluded. "
          "The DiffSynth-style column is only its per-candidate reconstruction loop, for scale.\n")
    print("| device | torch threads | dtype | torch Haar (ms) | pywt Haar (ms) | DiffSynth-style per-candidate pywt (ms) |")
    print("|---|---:|---|---:|---:|---:|")
    default_threads = torch.get_num_threads()
    settings = [("cpu", threads) for threads in sorted({1, default_threads})]
    if torch.cuda.is_available():
        settings.append(("cuda", default_threads))
    for device, threads in settings:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            base = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            torch_ms = time_ses(base, "torch", budget, repeats) * 1e3
            pywt_ms = time_ses(base, "pywt", budget, repeats) * 1e3
            reference_ms = time_reference_style(base, budget, repeats) * 1e3
            name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
            print(f"| {name} | {threads} | {str(dtype).removeprefix('torch.')} | {torch_ms:.3f} | {pywt_ms:.3f} | "
                  f"{reference_ms:.3f} |")
    torch.set_num_threads(default_threads)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds averaged in the quality table")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best is reported)")
    args = parser.parse_args()
    start = time.perf_counter()
    quality_table(args.seeds)
    overhead_table(args.repeats)
    print(f"total bench time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
