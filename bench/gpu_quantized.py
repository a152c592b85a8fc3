"""A float8 frozen base (`--quantize_base fp8`) against bf16 on one GPU: memory, speed and error, next to `tscale plan`.

The REAL FLUX.2-klein transformer (`--size 4b`: 5 + 20 blocks, 3.88 B parameters; `--size 9b`: 8 + 24 blocks, 9.08 B)
with random bf16 weights, built on the GPU from `tscale_train.real_configs`, a rank-16 attention LoRA, gradient
checkpointing, at `--resolution` (1024px: 4,096 image tokens and klein's 512 text tokens). For each base storage
(`none`: bf16, `fp8`: `tscale_train.quantization`), one row per measurement:

- weights: GPU memory of the transformer and its LoRA once stored (`torch.cuda.memory_allocated`);
- sampling: one no-grad transformer forward at batch 1 (a denoising step): seconds and peak GPU memory;
- DPO step: as the trainer's micro-step at one pair (2 samples): a no-grad reference forward with the LoRA disabled,
  the trained forward, a loss, the backward and an AdamW step on the LoRA: seconds and peak GPU memory, next to
  `tscale plan`'s estimate of the same parts (transformer, LoRA, AdamW states, float8 up-cast, activations);
- error: the float8 base's velocity against the bf16 one on the same inputs (relative L2).

Peaks are `torch.cuda.max_memory_allocated`, reset per measurement (the plan's 1 GiB CUDA context is not in them,
nor in the plan parts compared). `--tiny` runs the same code on the CPU in float32 with the tiny kit's transformer
(64px), for CI and CPU-only sessions: no GPU memory figures. One command, a few minutes on an 80 GB GPU.

Usage: python bench/gpu_quantized.py [--size 4b|9b] [--resolution 1024] [--repeats 3] [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from functools import partial

import torch

from tscale_train.families.flux2_klein import FLUX2_LORA_TARGETS
from tscale_train.lora import add_lora
from tscale_train.quantization import quantize_transformer
from tscale_train.real_configs import (
    FLUX2_KLEIN_4B,
    FLUX2_KLEIN_4B_TRANSFORMER,
    FLUX2_KLEIN_9B,
    FLUX2_KLEIN_9B_TRANSFORMER,
    FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
)

GIB = 1024**3
SIZES = {
    "4b": (FLUX2_KLEIN_4B, FLUX2_KLEIN_4B_TRANSFORMER),
    "9b": (FLUX2_KLEIN_9B, FLUX2_KLEIN_9B_TRANSFORMER),
}
LORA_RANK = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="4b", help="klein 4B or 9B (default 4b)")
    parser.add_argument("--resolution", type=int, default=1024, help="pixels per side (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny kit's transformer on the CPU (a smoke run)"
    )
    args = parser.parse_args(argv)
    if args.resolution % 16 or args.resolution < 16 or args.repeats < 1:
        parser.error("--resolution must be a positive multiple of 16 and --repeats >= 1")
    return args


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype, quantize: str):
    """Random weights (seeded), the LoRA (B != 0, so it matters), checkpointing, then the base's storage."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        transformer = Flux2Transformer2DModel(**config).to(dtype)
    transformer.requires_grad_(False)
    lora = add_lora(transformer, rank=LORA_RANK, target_modules="attention", presets=FLUX2_LORA_TARGETS)
    with torch.no_grad():
        for parameter in lora[1::2]:  # lora_B: away from peft's zero start
            parameter.normal_(0, 1e-3)
    transformer.enable_gradient_checkpointing()
    quantize_transformer(transformer, quantize, compute_dtype=dtype)
    return transformer, lora


def make_inputs(config: dict, batch: int, resolution: int, text_tokens: int, device, dtype) -> dict:
    tokens = (resolution // 16) ** 2
    generator = torch.Generator(device="cpu").manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    return dict(
        hidden_states=randn(batch, tokens, config["in_channels"]),
        encoder_hidden_states=randn(batch, text_tokens, config["joint_attention_dim"]),
        timestep=torch.full((batch,), 0.6, device=device, dtype=dtype),
        guidance=None,
        txt_ids=torch.zeros(batch, text_tokens, 4, device=device, dtype=torch.long),
        img_ids=torch.zeros(batch, tokens, 4, device=device, dtype=torch.long),
        return_dict=False,
    )


def measure(function: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """(median seconds, peak GiB or None on the CPU) of `function`, after one warm-up call."""
    function()
    seconds = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None
    return sorted(seconds)[len(seconds) // 2], peak


def plan_parts(model: str, resolution: int, quantize: str) -> float:
    """`tscale plan`'s DPO-phase GiB of what this script holds: weights, LoRA, AdamW states, up-cast, activations."""
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.plan import plan_training

    config = OnlineDPOConfig(
        model=model,
        dtype="bfloat16",
        height=resolution,
        width=resolution,
        reward="rewards.synthetic:brightness",
        train_batch_size=1,
        lora_rank=LORA_RANK,
        quantize_base=quantize,
    )
    dpo = plan_training(config, suggest=False).breakdown["dpo"]
    kept = ("transformer", "LoRA", "AdamW states", "float8", "activations")
    return sum(value for name, value in dpo.items() if name.startswith(kept))


def run(args: argparse.Namespace) -> list[dict]:
    if args.tiny:
        from tscale_train.plan import resolve_pipeline_spec

        model, config = "tiny", resolve_pipeline_spec("tiny").transformer
        device, dtype, resolution, text_tokens = torch.device("cpu"), torch.float32, 64, 16
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: run with --tiny on a CPU")
        model, config = SIZES[args.size]
        device, dtype, resolution, text_tokens = (
            torch.device("cuda"),
            torch.bfloat16,
            args.resolution,
            FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
        )
    rows, velocities = [], {}
    for quantize in ("none", "fp8"):
        base_rows, velocities[quantize] = measure_base(
            quantize, config, device, dtype, resolution, text_tokens, args.repeats
        )
        if not args.tiny:
            base_rows[-1]["plan"] = plan_parts(model, resolution, quantize)
        rows += base_rows
    reference = velocities["none"]
    error = float((velocities["fp8"] - reference).norm() / reference.norm())
    rows.append(dict(quantize="fp8", what="velocity error vs bf16 (relative L2)", value=error))
    return rows


def measure_base(
    quantize: str, config: dict, device, dtype, resolution: int, text_tokens: int, repeats: int
) -> tuple[list[dict], torch.Tensor]:
    """The weights, sampling and DPO rows of one base storage, and its velocity on a fixed input (on the CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    transformer, lora = build_transformer(config, device, dtype, quantize)
    weights = torch.cuda.memory_allocated() / GIB if device.type == "cuda" else None
    rows = [dict(quantize=quantize, what="weights (transformer + LoRA)", seconds=None, peak=weights)]
    sample = make_inputs(config, 1, resolution, text_tokens, device, dtype)
    with torch.no_grad():
        velocity = transformer(**sample)[0].float().cpu()
    seconds, peak = measure(partial(_no_grad_forward, transformer, sample), device, repeats)
    rows.append(dict(quantize=quantize, what="sampling forward, batch 1", seconds=seconds, peak=peak))
    pair = make_inputs(config, 2, resolution, text_tokens, device, dtype)
    optimizer = torch.optim.AdamW(lora, lr=1e-6)
    seconds, peak = measure(partial(_dpo_step, transformer, pair, optimizer), device, repeats)
    rows.append(dict(quantize=quantize, what="DPO step, 1 pair", seconds=seconds, peak=peak))
    return rows, velocity


def _no_grad_forward(transformer, inputs: dict) -> None:
    with torch.no_grad():
        transformer(**inputs)


def _dpo_step(transformer, inputs: dict, optimizer: torch.optim.Optimizer) -> None:
    transformer.disable_adapters()
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    transformer.enable_adapters()
    prediction = transformer(**inputs)[0]
    loss = (prediction.float() - reference.float()).square().mean() + prediction.float().square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    where = (
        "CPU, tiny kit, float32" if args.tiny else f"{torch.cuda.get_device_name()}, klein {args.size}, bf16"
    )
    print(f"float8 base vs bf16 ({where}, {64 if args.tiny else args.resolution}px, LoRA rank {LORA_RANK})\n")
    print("| base | measurement | seconds | peak GiB | tscale plan GiB |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if "value" in row:
            continue
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.3f}"
        peak = "" if row["peak"] is None else f"{row['peak']:.2f}"
        plan = "" if row.get("plan") is None else f"{row['plan']:.2f}"
        print(f"| {row['quantize']} | {row['what']} | {seconds} | {peak} | {plan} |")
    for row in rows:
        if "value" in row:
            print(f"\n{row['what']}: {row['value']:.4f}")


def main(argv: list[str] | None = None) -> None:
    from diffusers.utils import logging as diffusers_logging

    args = parse_args(argv)
    diffusers_logging.set_verbosity_error()  # `.to(dtype)` on random weights: no float32 modules to keep
    print_table(run(args), args)


if __name__ == "__main__":
    main()
