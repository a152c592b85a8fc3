"""FLUX.2-klein-4B on one GPU: search speed, a DPO step's time and memory against `tscale plan`, and MFU.

The REAL FLUX.2-klein-4B architecture at full depth with random bf16 weights, built directly on the GPU
from `tscale_train.real_configs` (transformer FLUX2_KLEIN_4B_TRANSFORMER: 5 double + 20 single blocks,
3.88 B parameters; text encoder QWEN3_4B_TEXT_ENCODER: Qwen3-4B, 36 layers, real vocabulary; VAE
FLUX2_VAE), with klein's 512 text tokens and the tiny kit's byte-level tokenizer. Per resolution
(512px, 1024px), one table:

- generation (4 preview steps + VAE decode, klein distilled): seconds per candidate one at a time (eval
  batch 1) and in one batch (`--batch-size`), through the project's `FlowGenerator`;
- a full SES search of one prompt (budget `--budget`, popsize 10) through `tscale_train.ses.search_prompts`
  with a synthetic brightness reward: wall seconds, and the share of it outside generation and scoring;
- one DPO step (`tscale_train.dpo.FlowDPOStep`, as the trainer runs it: reference forward with the LoRA
  disabled, trained forward under bf16 autocast, backward, AdamW step) with a rank-16 attention LoRA,
  pair batch 1 and 4, with and without gradient checkpointing;

each with its seconds, peak GPU memory (`torch.cuda.max_memory_allocated`, reset per measurement; the
reserved peak in brackets) next to `tscale plan`'s estimate of the same setting (`plan_ses` for generation,
`plan_training`'s DPO phase, both called as a library; the plan adds 1 GiB for the CUDA context, which
the allocator's counters do not see), and the model FLOPs utilisation: transformer FLOPs counted with
`torch.utils.flop_counter.FlopCounterMode` (one forward at batch 1 for generation, counted VAE-free; one
DPO step at 1 pair without checkpointing for DPO, scaled by the pairs: recomputation is not counted) per
second, divided by the bf16 rate of a `torch.mm` of two 8192x8192 matrices measured on the same GPU.
A setting that runs out of memory is reported as OOM. During generation and search the text encoder
stays on the GPU (as in `tscale ses`); before the DPO steps it moves to the CPU (the trainer's default
`offload_text_encoder`), and the plans assume the same.

`--tiny` runs the same code on the CPU in float32 with the tiny kit's configs (64px and 128px, smaller
sizes), for CI and CPU-only sessions: its MFU is against a CPU float32 matmul and it has no GPU memory
figures. One command, under 10 minutes on an H200 or 80 GB GPU; under a minute with `--tiny`.

Usage: python bench/gpu_klein.py [--resolutions 512,1024] [--batch-size 10] [--budget 50] [--pairs 1,4]
       [--repeats 3] [--matmul-size 8192] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from search import SESConfig
from tscale_train.dpo import FlowDPOStep
from tscale_train.generation import FlowGenerator, PromptEmbeds
from tscale_train.real_configs import FLUX2_KLEIN_4B

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from search_speed import (  # noqa: E402 - the model builder and the search timing live there
    KleinArchitecture,
    build_klein_pipeline,
    klein_architecture,
    klein_generator,
    parameter_count,
    seeded,
    synchronizer,
    time_search,
)

GIB = 1024**3
PROMPT = "a red fox sitting in fresh snow, golden hour, photograph"
REWARD = "rewards.synthetic:brightness"
LORA_RANK = 16
LORA_TARGETS = "attention"
TINY_MODEL = "tiny"


@dataclass
class Row:
    resolution: int
    what: str
    setting: str
    seconds: float | None = None  # wall seconds of the measurement
    per_item: float | None = None  # seconds per candidate / per pair
    peak_gib: float | None = None
    reserved_gib: float | None = None
    plan_gib: float | None = None
    mfu: float | None = None
    note: str = ""
    oom: bool = False


# ---- device helpers --------------------------------------------------------------------------------------
class Device:
    """What differs between the GPU run and `--tiny` on the CPU: synchronisation, memory counters, autocast."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.is_cuda = device.type == "cuda"
        self.synchronize = synchronizer(device)

    @property
    def name(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.device)
        threads = torch.get_num_threads()
        return f"CPU ({threads} torch thread{'s' if threads > 1 else ''})"

    @property
    def total_gib(self) -> float:
        return torch.cuda.get_device_properties(self.device).total_memory / GIB if self.is_cuda else 80.0

    def reset_peak(self) -> None:
        if self.is_cuda:
            self.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[float | None, float | None]:
        """(peak allocated, peak reserved) GiB since `reset_peak`; None on the CPU."""
        if not self.is_cuda:
            return None, None
        self.synchronize()
        return torch.cuda.max_memory_allocated(self.device) / GIB, torch.cuda.max_memory_reserved(
            self.device
        ) / GIB

    def free(self) -> None:
        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The GPU accelerate configs' bf16 mixed precision; float32 runs without autocast (as the plan assumes)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def timed(self, function: Callable[[], object]) -> float:
        self.synchronize()
        started = time.perf_counter()
        function()
        self.synchronize()
        return time.perf_counter() - started


def matmul_rate(device: Device, size: int, seconds: float = 1.0) -> float:
    """FLOP/s of `torch.mm` on two `size` x `size` matrices in the run's dtype, the MFU denominator."""
    generator = torch.Generator(device=device.device).manual_seed(0)
    left = torch.randn(size, size, device=device.device, dtype=device.dtype, generator=generator)
    right = torch.randn(size, size, device=device.device, dtype=device.dtype, generator=generator)
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        torch.mm(left, right)
    iterations, elapsed = 0, 0.0
    device.synchronize()
    started = time.perf_counter()
    while elapsed < seconds or iterations < 3:
        torch.mm(left, right)
        iterations += 1
        device.synchronize()
        elapsed = time.perf_counter() - started
    return 2 * size**3 * iterations / elapsed


@contextlib.contextmanager
def out_of_memory_as_row(row: Row, device: Device) -> Iterator[None]:
    """Turn an out-of-memory error in the block into an "OOM" row instead of a crashed run."""
    try:
        yield
    except torch.OutOfMemoryError:
        row.oom = True
        row.seconds = row.per_item = row.peak_gib = row.reserved_gib = row.mfu = None
    finally:
        device.free()


# ---- FLOP counting -------------------------------------------------------------------------------------------
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of `function` (matmuls, convolutions, attention) counted by `FlopCounterMode` as it runs.

    The CPU's fused attention kernel is not in torch's formula table (the GPU kernels are), so it is
    counted with the same formula, for `--tiny` to count what the GPU run counts.
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        function()
    return counter.get_total_flops()


# ---- the model and the plan ----------------------------------------------------------------------------------
def tiny_architecture() -> KleinArchitecture:
    """The tiny kit's klein, as `tscale plan` reads it (so the plan describes exactly what is built)."""
    from tscale_train.plan import resolve_pipeline_spec

    spec = resolve_pipeline_spec(TINY_MODEL)
    return KleinArchitecture(
        transformer=spec.transformer,
        text_encoder=spec.text_encoder,
        vae=spec.vae,
        text_encoder_out_layers=spec.text_encoder_out_layers,
        max_sequence_length=spec.max_sequence_length,
        distilled=spec.is_distilled,
    )


def plan_mismatch(model: str, architecture: KleinArchitecture) -> str:
    """'' when the plan's component configs for `model` are the built ones; else what differs."""
    from tscale_train.plan import resolve_pipeline_spec

    spec = resolve_pipeline_spec(model)

    def normalise(value):
        return list(value) if isinstance(value, tuple) else value

    differences = []
    for name, planned, built in (
        ("transformer", spec.transformer, architecture.transformer),
        ("vae", spec.vae, architecture.vae),
    ):
        for key in sorted(set(planned) & set(built)):
            if not key.startswith("_") and normalise(planned[key]) != normalise(built[key]):
                differences.append(f"{name}.{key}: plan {planned[key]!r}, built {built[key]!r}")
    return "; ".join(differences)


def training_config(model: str, device: Device, resolution: int, pairs: int, checkpointing: bool):
    """The `OnlineDPOConfig` of one DPO setting: what the plan estimates and the optimizer is made from."""
    from tscale_train.config import OnlineDPOConfig

    return OnlineDPOConfig(
        model=model,
        dtype="float32" if device.dtype == torch.float32 else "bfloat16",
        height=resolution,
        width=resolution,
        reward=REWARD,
        train_batch_size=pairs,
        gradient_checkpointing=checkpointing,
        offload_text_encoder=True,
        offload_reward=True,
        lora_rank=LORA_RANK,
        lora_target_modules=LORA_TARGETS,
        progress=False,
    )


def plan_dpo_gib(config, device: Device) -> float:
    from tscale_train.plan import plan_training

    return plan_training(config, num_processes=1, gpu_memory_gib=device.total_gib, suggest=False).phases[
        "dpo"
    ]


def plan_generation_gib(model: str, device: Device, resolution: int, batch_size: int) -> float:
    from tscale_train.plan import plan_ses

    plan = plan_ses(
        model,
        height=resolution,
        width=resolution,
        eval_batch_size=batch_size,
        reward=REWARD,
        dtype="float32" if device.dtype == torch.float32 else "bfloat16",
        gpu_memory_gib=device.total_gib,
        suggest=False,
    )
    return plan.phases["search"]


# ---- measurements ----------------------------------------------------------------------------------------------
def forward_flops(generator: FlowGenerator, embeds: PromptEmbeds) -> int:
    """FLOPs of one transformer forward at batch 1 (the sampler runs one per step per candidate)."""
    noise = generator.initial_noise(0).to(generator.device, generator.transformer.dtype)
    sigma = torch.tensor([1.0], device=generator.device)
    with torch.no_grad():
        return count_flops(lambda: generator.predict_velocity(generator.transformer, noise, sigma, [embeds]))


def generation_rows(
    model: str,
    pipe,
    architecture: KleinArchitecture,
    device: Device,
    resolution: int,
    embeds: PromptEmbeds,
    batch_size: int,
    repeats: int,
    peak_rate: float,
) -> list[Row]:
    """Seconds per candidate one at a time and batched, with peak memory, the plan and MFU."""
    rows = []
    flops = None
    for eval_batch in (1, batch_size):
        generator = klein_generator(pipe, architecture, resolution, eval_batch)
        if flops is None:
            with contextlib.suppress(torch.OutOfMemoryError):
                flops = forward_flops(generator, embeds)
        noises = generator.initial_noise(0, batch_size)
        setting = "one at a time (eval batch 1)" if eval_batch == 1 else f"eval batch {eval_batch}"
        row = Row(
            resolution,
            f"generation ({generator.preview_steps} steps + decode)",
            f"{batch_size} candidates, {setting}",
        )
        row.plan_gib = plan_generation_gib(model, device, resolution, eval_batch)
        device.free()
        with out_of_memory_as_row(row, device):
            generator.generate(noises[:eval_batch], embeds, generator.preview_steps)  # warm-up
            device.reset_peak()
            times = [
                device.timed(partial(generator.generate, noises, embeds, generator.preview_steps))
                for _ in range(repeats)
            ]
            row.peak_gib, row.reserved_gib = device.peaks()
            row.seconds = statistics.median(times)
            row.per_item = row.seconds / batch_size
            if flops is not None:
                row.mfu = flops * generator.preview_steps * batch_size / row.seconds / peak_rate
        rows.append(row)
    if not rows[0].oom and not rows[1].oom:
        rows[1].note = f"{rows[0].per_item / rows[1].per_item:.2f}x the candidates/s of one at a time"
    if flops is not None:
        rows[0].note = f"transformer forward: {_flops(flops)} at batch 1 (counted)"
    return rows


def search_row(
    pipe,
    architecture: KleinArchitecture,
    device: Device,
    resolution: int,
    batch_size: int,
    budget: int,
    popsize: int,
) -> Row:
    """One full SES search of one prompt through `search_prompts` (which encodes the prompt: it is timed too)."""
    from rewards import load_reward

    generator = klein_generator(pipe, architecture, resolution, batch_size)
    config = SESConfig(popsize=min(popsize, budget))
    row = Row(
        resolution,
        f"SES search, budget {budget}",
        f"1 prompt, popsize {config.popsize}, eval batch {batch_size}",
    )
    with out_of_memory_as_row(row, device):
        timing = time_search(generator, load_reward(REWARD), PROMPT, 0, budget, config)
        row.seconds, row.per_item = timing.seconds, timing.seconds / budget
        row.note = (
            f"generation {timing.share(timing.generation):.1f}%, scoring {timing.share(timing.scoring):.2f}%, "
            f"prompt encode {timing.share(timing.encoding):.2f}%, outside them {timing.share(timing.outside):.2f}%"
        )
    return row


def add_bench_lora(pipe, generator: FlowGenerator, seed: int) -> list[torch.nn.Parameter]:
    """The trainer's LoRA (rank 16 on the attention projections, fp32 adapters), seeded."""
    from tscale_train.lora import add_lora

    with seeded(generator.device, seed):
        return add_lora(
            pipe.transformer, rank=LORA_RANK, target_modules=LORA_TARGETS, presets=generator.lora_targets
        )


class DPOBench:
    """One DPO micro-step + optimizer step per setting, as the trainer runs them (`FlowDPOStep`, clipping,
    AdamW, scheduler), timed after a warm-up step that also creates the AdamW states (resident from then
    on, as in a run); with its peak memory, the plan's estimate and MFU."""

    def __init__(
        self,
        model: str,
        pipe,
        architecture: KleinArchitecture,
        device: Device,
        resolution: int,
        embeds: PromptEmbeds,
        lora_parameters: list[torch.nn.Parameter],
        peak_rate: float,
    ) -> None:
        self.model, self.device, self.resolution, self.embeds = model, device, resolution, embeds
        self.transformer = pipe.transformer
        self.generator = klein_generator(pipe, architecture, resolution, 1)
        self.lora_parameters = lora_parameters
        self.peak_rate = peak_rate

    def step(self, config) -> FlowDPOStep:
        generator = self.generator
        return FlowDPOStep(
            model=self.transformer,
            unwrapped_model=self.transformer,
            lora_parameters=self.lora_parameters,
            predict_velocity=generator.predict_velocity,
            sampler_sigmas=generator.sampler_sigmas,
            preview_steps=generator.preview_steps,
            beta=config.beta,
            sigma_sampling=config.sigma_sampling,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            weight_dtype=self.device.dtype,
            device=self.device.device,
            autocast=self.device.autocast,
        )

    def pair_latents(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Random stand-ins for kept clean latents: the step's cost does not depend on their values.
        latents = torch.randn(
            (2, pairs, *self.generator.noise_shape), generator=torch.Generator().manual_seed(pairs)
        )
        return latents[0], latents[1]

    def set_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    def flops_per_pair(self) -> int | None:
        """Model FLOPs of one step at 1 pair without checkpointing (a step at k pairs does k times as much);
        None if even that does not fit."""
        self.set_checkpointing(False)
        step = self.step(training_config(self.model, self.device, self.resolution, 1, False))
        chosen, rejected = self.pair_latents(1)

        def forward_backward() -> None:
            loss, _ = step(chosen, rejected, [self.embeds], torch.Generator().manual_seed(0))
            loss.backward()

        try:
            return count_flops(forward_backward)
        except torch.OutOfMemoryError:
            return None
        finally:
            for parameter in self.lora_parameters:
                parameter.grad = None
            self.device.free()

    def measure(self, pairs: int, checkpointing: bool, flops_per_pair: int | None) -> Row:
        from tscale_train.optimization import make_optimizer

        config = training_config(self.model, self.device, self.resolution, pairs, checkpointing)
        row = Row(
            self.resolution,
            "DPO step",
            f"{pairs} pair{'s' if pairs > 1 else ''}, "
            f"{'gradient checkpointing' if checkpointing else 'no checkpointing'}",
        )
        row.plan_gib = plan_dpo_gib(config, self.device)
        self.device.free()  # what an earlier setting's OOM left cached
        self.set_checkpointing(checkpointing)
        optimizer, scheduler = make_optimizer(config, self.lora_parameters, 1)
        step = self.step(config)
        chosen, rejected = self.pair_latents(pairs)
        rng = torch.Generator().manual_seed(1)

        def train_step() -> None:
            loss, _ = step(chosen, rejected, [self.embeds] * pairs, rng)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.lora_parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        with out_of_memory_as_row(row, self.device):
            try:
                train_step()  # warm-up; creates the AdamW states
                self.device.reset_peak()
                row.seconds = self.device.timed(train_step)
                row.peak_gib, row.reserved_gib = self.device.peaks()
                row.per_item = row.seconds / pairs
                if flops_per_pair is not None:
                    row.mfu = flops_per_pair * pairs / row.seconds / self.peak_rate
            finally:
                # The AdamW states go with the optimizer; after an OOM the grads must go too.
                optimizer.zero_grad(set_to_none=True)
                optimizer.state.clear()
        return row

    def rows(self, pair_counts: list[int]) -> list[Row]:
        self.transformer.train()
        try:
            flops_per_pair = self.flops_per_pair()
            rows = [
                self.measure(pairs, checkpointing, flops_per_pair)
                for pairs in pair_counts
                for checkpointing in (True, False)
            ]
        finally:
            self.set_checkpointing(False)
            self.transformer.eval()
        if flops_per_pair is not None and rows:
            rows[0].note = f"step at 1 pair: {_flops(flops_per_pair)} (counted, no recomputation)"
        return rows


def _flops(count: float) -> str:
    return f"{count / 1e12:.2f} TFLOP" if count >= 1e11 else f"{count / 1e9:.3f} GFLOP"


def _parameters(count: int) -> str:
    return f"{count / 1e9:.3f} B" if count >= 1e8 else f"{count / 1e6:.2f} M"


# ---- the table ---------------------------------------------------------------------------------------------------
def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gib(value: float | None) -> str:
    """GiB with one decimal, two below 10 GiB (the tiny model's plans are all about 1.0)."""
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def print_table(rows: list[Row]) -> None:
    print(
        "| resolution | what | setting | seconds | s / candidate or pair | peak GiB allocated (reserved) "
        "| tscale plan GiB | MFU % | notes |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if row.oom:
            cells = ["OOM", "OOM", "OOM", _gib(row.plan_gib), "-"]
        else:
            peak = "-" if row.peak_gib is None else f"{_gib(row.peak_gib)} ({_gib(row.reserved_gib)})"
            mfu = "-" if row.mfu is None else f"{100 * row.mfu:.1f}"
            cells = [_number(row.seconds, 3), _number(row.per_item, 4), peak, _gib(row.plan_gib), mfu]
        print(f"| {row.resolution}px | {row.what} | {row.setting} | {' | '.join(cells)} | {row.note} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny kit's configs on the CPU in float32 (CI)"
    )
    parser.add_argument(
        "--resolutions", default=None, help="comma-separated (default 512,1024; --tiny 64,128)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="eval batch of the batched rows (default 10; --tiny 4)"
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="SES budget of the search row (default 50; --tiny 20)"
    )
    parser.add_argument("--popsize", type=int, default=10, help="SES population per generation")
    parser.add_argument("--pairs", default="1,4", help="DPO pair batches, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed generation runs (median)")
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side of the peak-rate matmul (default 8192; --tiny 1024)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; --tiny 1)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible; run with --tiny to check the code path on the CPU.")
    resolutions = [
        int(value) for value in (args.resolutions or ("64,128" if args.tiny else "512,1024")).split(",")
    ]
    batch_size = args.batch_size or (4 if args.tiny else 10)
    budget = args.budget or (20 if args.tiny else 50)
    matmul_size = args.matmul_size or (1024 if args.tiny else 8192)
    pair_counts = [int(value) for value in args.pairs.split(",")]
    # The tiny model's ops are too small to gain from threads, and on a shared CPU a second thread that is
    # descheduled stalls every op at its barrier (steps of 0.04 s took 2.5 s now and then with 2 threads).
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)

    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # The tiny kit's 4x4 and 8x8 latents are too small for level 4; the search says so once per search.
    warnings.filterwarnings("ignore", message="wavelet level .* is too deep")
    device = Device(
        torch.device("cpu") if args.tiny else torch.device("cuda"),
        torch.float32 if args.tiny else torch.bfloat16,
    )
    model = TINY_MODEL if args.tiny else FLUX2_KLEIN_4B
    architecture = tiny_architecture() if args.tiny else klein_architecture()  # the real configs, no override
    dtype_name = str(device.dtype).removeprefix("torch.")
    peak_rate = matmul_rate(device, matmul_size)

    build_seconds = time.perf_counter()
    pipe = build_klein_pipeline(architecture, device=device.device, dtype=device.dtype, seed=args.seed)
    build_seconds = time.perf_counter() - build_seconds
    print(
        f"device: {device.name}; torch {torch.__version__}, diffusers {diffusers.__version__}; {dtype_name}"
    )
    print(
        f"model: {'the tiny kit' if args.tiny else 'FLUX.2-klein-4B'} architecture, random weights, built on the "
        f"device in {build_seconds:.1f} s: transformer {_parameters(parameter_count(pipe.transformer))} parameters "
        f"({architecture.transformer['num_layers']} double + {architecture.transformer['num_single_layers']} single "
        f"blocks), text encoder {_parameters(parameter_count(pipe.text_encoder))}, VAE {_parameters(parameter_count(pipe.vae))}; "
        f"{architecture.max_sequence_length} text tokens"
    )
    print(
        f"peak-rate reference: torch.mm {matmul_size}x{matmul_size} {dtype_name}: {peak_rate / 1e12:.2f} TFLOP/s"
    )
    mismatch = plan_mismatch(model, architecture)
    if mismatch:
        print(f"WARNING: tscale plan's configs for {model} differ from the built model: {mismatch}")
    print()

    rows: list[Row] = []
    # Klein's prompt conditioning does not depend on the image size: one encoding serves every row.
    embeds = klein_generator(pipe, architecture, resolutions[0], 1).encode_prompt(PROMPT)
    for resolution in resolutions:
        rows += generation_rows(
            model, pipe, architecture, device, resolution, embeds, batch_size, args.repeats, peak_rate
        )
        rows.append(search_row(pipe, architecture, device, resolution, batch_size, budget, args.popsize))
    # The trainer's default: the text encoder waits on the CPU while DPO trains (the prompts are encoded).
    pipe.text_encoder.to("cpu")
    device.free()
    lora_parameters = add_bench_lora(pipe, klein_generator(pipe, architecture, resolutions[0], 1), args.seed)
    for resolution in resolutions:
        bench = DPOBench(model, pipe, architecture, device, resolution, embeds, lora_parameters, peak_rate)
        rows += bench.rows(pair_counts)

    print(
        f"## FLUX.2-klein{' (tiny kit)' if args.tiny else '-4B'} on {device.name}, {dtype_name}, "
        f"random weights\n"
    )
    print_table(rows)
    print(
        f"MFU: transformer FLOPs counted with torch.utils.flop_counter.FlopCounterMode (generation: forwards only, "
        f"the VAE decode's time included in the denominator; DPO: reference forward + forward + backward at 1 pair "
        f"without recomputation, times the pairs), per second, over the {dtype_name} torch.mm rate "
        f"({peak_rate / 1e12:.2f} TFLOP/s)."
    )
    print(
        f"tscale plan GiB: `plan_ses` search phase (generation rows) and `plan_training` DPO phase (LoRA rank "
        f"{LORA_RANK} on {LORA_TARGETS}, text encoder and reward offloaded), both including 1.0 GiB for the CUDA "
        f"context and allocator that max_memory_allocated does not count."
    )
    print(f"total bench time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
