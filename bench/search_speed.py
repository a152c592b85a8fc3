"""How fast SES runs on the CPU, and how little of its time is the search itself.

1. SES through `tscale_train.ses.search_prompts` on a klein-shaped model built in memory: a
   `Flux2KleinPipeline` whose transformer has FLUX.2-klein-4B's real input layout (128 channels = 32 VAE
   latent channels x a 2x2 patch, patch_size 1, rope over 4 axes, mlp_ratio 3) and its real VAE latent
   channels (32), but 2 double + 2 single blocks of 4 heads x 32 and a tiny Qwen3 text encoder (random
   weights, seeded). At 256px and 512px, 4 preview steps, one prompt: candidates per second scored one at
   a time (eval batch 1) against in batches, and where the wall time goes: generation (the pipeline call,
   VAE decode included), scoring (the reward), prompt encoding, and the rest, OUTSIDE generation and
   scoring (wavelet transforms, CEM updates, copies, bookkeeping) = total - the timed parts.
2. The search's own cost at FLUX.2-klein's 1024px latent [128, 64, 64]: ask() + tell() time per
   candidate (objective excluded) with the torch Haar backend and the PyWavelets backend, next to the
   published SES loop (DiffSynth-Studio's, `bench/reference_ses.py`), which rebuilds every candidate
   in NumPy with PyWavelets, one at a time.

Every ratio is measured side by side in one run; each cell is the best of `--repeats` runs. Prints
markdown tables and writes a plot (`--plot`). The reward defaults to the tiny kit's PickScore-style
CLIP (built on first use, like `load_pipeline("tiny")`); `--reward rewards.synthetic:brightness`
makes scoring nearly free.

Usage: python bench/search_speed.py [--resolutions 256,512] [--batch-sizes 1,10] [--budget 30]
       [--repeats 2] [--reward pickscore] [--threads 1] [--plot bench/results/speed.png] [--profile]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search import SESConfig, SpectralEvolutionSearch
from tscale_train.generation import FlowGenerator, PromptEmbeds, generator_for_pipeline
from tscale_train.real_configs import (
    FLUX2_KLEIN_4B_TRANSFORMER,
    FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
    FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS,
    FLUX2_VAE,
    QWEN3_4B_TEXT_ENCODER,
)
from tscale_train.ses import search_prompts

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from reference_ses import reference_ses_search  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPT = "a red cube on a wooden table"
OVERHEAD_LATENT = (128, 64, 64)  # FLUX.2 latent of a 1024px image: low band 128x4x4 = 2048 numbers


# ---- a FLUX.2-klein pipeline built in memory from the real configs ------------------------------------
@dataclass(frozen=True)
class KleinArchitecture:
    """The component configs of a FLUX.2-klein pipeline and the text settings its generator needs."""

    transformer: dict[str, Any]
    text_encoder: dict[str, Any]
    vae: dict[str, Any]
    text_encoder_out_layers: tuple[int, ...] = FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS
    max_sequence_length: int = FLUX2_KLEIN_MAX_SEQUENCE_LENGTH
    distilled: bool = True


def klein_architecture(
    transformer: dict[str, Any] | None = None,
    text_encoder: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    **settings: Any,
) -> KleinArchitecture:
    """FLUX.2-klein-4B's real component configs (`tscale_train.real_configs`) with per-component overrides;
    no override gives the real architecture at full depth. `settings`: the other `KleinArchitecture` fields."""
    return KleinArchitecture(
        transformer={**FLUX2_KLEIN_4B_TRANSFORMER, **(transformer or {})},
        text_encoder={**QWEN3_4B_TEXT_ENCODER, **(text_encoder or {})},
        vae={**FLUX2_VAE, **(vae or {})},
        **settings,
    )


def small_klein_architecture() -> KleinArchitecture:
    """The CPU benchmark's model: klein's real 128-channel input and 32-channel VAE latents, a few M parameters."""
    from tscale_train.tiny.flux2 import (
        TINY_MAX_SEQUENCE_LENGTH,
        TINY_TEXT_ENCODER_OUT_LAYERS,
        TINY_TEXT_HIDDEN,
    )
    from tscale_train.tiny.real_dims import SHAPES_VAE_OVERRIDES

    return klein_architecture(
        transformer={
            "num_layers": 2,
            "num_single_layers": 2,
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "axes_dims_rope": (8, 8, 8, 8),  # sums to the head dim, as (32, 32, 32, 32) does for 128
            "joint_attention_dim": TINY_TEXT_HIDDEN * len(TINY_TEXT_ENCODER_OUT_LAYERS),
        },
        # The tiny kit's Qwen3 (byte-level vocabulary, 2 layers of width 32).
        text_encoder={
            "vocab_size": 320,
            "hidden_size": TINY_TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
        },
        # The real-dimension kit's small VAE at the tiny kit's width (16): at 32 its 512px decode alone took ~1.5 s
        # on these CPUs, 3x the four transformer steps, where on a GPU the real klein's transformer dominates.
        vae={**SHAPES_VAE_OVERRIDES, "block_out_channels": (16, 16, 16, 16)},
        text_encoder_out_layers=TINY_TEXT_ENCODER_OUT_LAYERS,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
    )


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's global RNG (the CPU's and `device`'s) seeded with `seed` inside, restored after."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def build_klein_pipeline(
    architecture: KleinArchitecture,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A random-weight `Flux2KleinPipeline` of `architecture`, built directly on `device` in `dtype`.

    Each module is constructed under `device` with `dtype` as torch's default dtype, so the weights are
    born where they live: a 4B model in bf16 on a GPU never exists in float32 on the CPU. The default
    initialisations draw from the global RNG, seeded here (and restored after), so a build is
    deterministic on a given device. The tokenizer is the tiny kit's byte-level Qwen2 tokenizer.
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tscale_train.tiny.flux2 import FLUX2_SCHEDULER, _byte_level_tokenizer

    device = torch.device(device)
    tokenizer = _byte_level_tokenizer()
    text_settings = {
        key: value for key, value in architecture.text_encoder.items() if key not in ("dtype", "torch_dtype")
    }
    text_settings.update(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None
    )
    text_config = Qwen3Config.from_dict(text_settings)
    default_dtype = torch.get_default_dtype()
    with seeded(device, seed):
        torch.set_default_dtype(dtype)
        try:
            with device:
                text_encoder = Qwen3ForCausalLM(text_config)
                # `from_config` ignores the `_class_name`-style keys a saved config carries.
                transformer = Flux2Transformer2DModel.from_config(architecture.transformer)
                vae = AutoencoderKLFlux2.from_config(architecture.vae)
        finally:
            torch.set_default_dtype(default_dtype)
    for module in (text_encoder, transformer, vae):
        module.requires_grad_(False).eval()
        # A no-op when construction already gave `dtype`; catches a module that pins its own dtype.
        torch.nn.Module.to(module, dtype)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=architecture.distilled,
    )


def klein_generator(
    pipe, architecture: KleinArchitecture, resolution: int, eval_batch_size: int
) -> FlowGenerator:
    """The project's `FlowGenerator` for a pipeline from `build_klein_pipeline` (square images)."""
    return generator_for_pipeline(
        pipe,
        height=resolution,
        width=resolution,
        eval_batch_size=eval_batch_size,
        text_encoder_out_layers=architecture.text_encoder_out_layers,
        max_sequence_length=architecture.max_sequence_length,
    )


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ---- timing a search and its parts ---------------------------------------------------------------------
def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (a GPU's kernels run asynchronously); a no-op on the CPU."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class Timed:
    """Wraps a callable and accumulates the seconds spent inside it, device work included."""

    def __init__(self, function: Callable, synchronize: Callable[[], None] = lambda: None) -> None:
        self.function, self.synchronize, self.seconds = function, synchronize, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            result = self.function(*args, **kwargs)
            self.synchronize()
            return result
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class SearchTiming:
    """Wall seconds of one `search_prompts` call and of its timed parts."""

    budget: int
    seconds: float
    generation: float
    scoring: float
    encoding: float
    best_score: float = math.nan

    @property
    def outside(self) -> float:
        return self.seconds - self.generation - self.scoring - self.encoding

    @property
    def candidates_per_second(self) -> float:
        return self.budget / self.seconds

    def share(self, seconds: float) -> float:
        return 100.0 * seconds / self.seconds


def time_search(
    generator: FlowGenerator,
    reward: Callable,
    prompt: str,
    seed: int,
    budget: int,
    config: SESConfig,
    method: str = "ses",
) -> SearchTiming:
    """One search of `prompt` through `search_prompts`, its generation, scoring and encoding timed apart.

    Generation is timed per batch at `FlowGenerator._generate_batch`, the pipeline call that
    `iter_batches` makes for each eval batch (wrapping `generate` would time nothing: the search never
    calls it). The prompt is encoded inside the call, through `embeds=`, so nothing is left out.
    """
    synchronize = synchronizer(generator.device)
    generate = Timed(generator._generate_batch, synchronize)
    score = Timed(reward, synchronize)
    encode = Timed(lambda prompts: [generator.encode_prompt(text) for text in prompts], synchronize)
    generator._generate_batch = generate  # an instance attribute shadows the method for this search only
    try:
        synchronize()
        started = time.perf_counter()
        (result,) = search_prompts(
            generator,
            score,
            [prompt],
            [seed],
            budget=budget,
            config=config,
            embeds=encode,
            progress=False,
            method=method,
        )
        synchronize()
        seconds = time.perf_counter() - started
    finally:
        del generator._generate_batch
    return SearchTiming(
        budget, seconds, generate.seconds, score.seconds, encode.seconds, result.search.best_score
    )


def best_of(timings: Sequence[SearchTiming]) -> SearchTiming:
    """The fastest run: the least disturbed by other work on a shared machine."""
    return min(timings, key=lambda timing: timing.seconds)


def load_bench_reward(name: str, device: str | torch.device = "cpu") -> Callable:
    """`pickscore`/`hpsv2`/`clip` from the tiny kit (random weights, real code path), or a `module:callable`."""
    from rewards import load_reward
    from tscale_train.loading import reward_kwargs_for

    return load_reward(name, device=device, **reward_kwargs_for(name, "tiny"))


# ---- table 1: SES through search_prompts ---------------------------------------------------------------
@dataclass
class SpeedRow:
    resolution: int
    noise_shape: tuple[int, int, int]
    batch_size: int
    timing: SearchTiming


def search_speed_rows(
    pipe,
    architecture: KleinArchitecture,
    reward: Callable,
    resolutions: Sequence[int],
    batch_sizes: Sequence[int],
    budget: int,
    popsize: int,
    repeats: int,
) -> list[SpeedRow]:
    rows = []
    config = SESConfig(popsize=popsize)
    for resolution in resolutions:
        generators = {
            batch_size: klein_generator(pipe, architecture, resolution, batch_size)
            for batch_size in batch_sizes
        }
        for batch_size, generator in generators.items():
            # Warm-up: first calls allocate buffers and pick kernels; one batch is enough.
            embeds = generator.encode_prompt(PROMPT)
            generator.generate(generator.initial_noise(0, batch_size), embeds, generator.preview_steps)
        # The batch sizes take turns within each repeat, so a burst of other work on the machine hits them alike.
        timings: dict[int, list[SearchTiming]] = {batch_size: [] for batch_size in batch_sizes}
        for repeat in range(repeats):
            for batch_size, generator in generators.items():
                timings[batch_size].append(time_search(generator, reward, PROMPT, repeat, budget, config))
        for batch_size, generator in generators.items():
            rows.append(SpeedRow(resolution, generator.noise_shape, batch_size, best_of(timings[batch_size])))
    return rows


def print_speed_table(
    rows: list[SpeedRow], budget: int, popsize: int, reward_name: str, repeats: int, threads: int
) -> None:
    print(
        f"## SES on a klein-shaped model (CPU, float32, {threads} torch thread{'s' if threads > 1 else ''}): "
        f"budget {budget}, popsize {popsize}, 4 preview steps, "
        f"reward {reward_name}, best of {repeats}\n"
    )
    print(
        "| resolution | noise | eval batch | candidates/s | vs batch 1 | generation % | scoring % | prompt encode % "
        "| outside % | outside ms / candidate |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    single = {row.resolution: row.timing.candidates_per_second for row in rows if row.batch_size == 1}
    for row in rows:
        timing = row.timing
        speedup = (
            timing.candidates_per_second / single[row.resolution] if row.resolution in single else math.nan
        )
        print(
            f"| {row.resolution}px | {'x'.join(map(str, row.noise_shape))} | {row.batch_size} | "
            f"{timing.candidates_per_second:.2f} | {speedup:.2f}x | {timing.share(timing.generation):.1f} | "
            f"{timing.share(timing.scoring):.1f} | {timing.share(timing.encoding):.2f} | {timing.share(timing.outside):.2f} | "
            f"{1e3 * timing.outside / timing.budget:.2f} |"
        )
    print()


# ---- table 2: the search's own cost at a 1024px latent ---------------------------------------------------
def time_ask_tell(base: torch.Tensor, backend: str, budget: int, repeats: int) -> float:
    """Best-of-repeats seconds per candidate spent in ask() + tell(), objective excluded."""
    synchronize = synchronizer(base.device)

    def scores_of(noises: torch.Tensor) -> torch.Tensor:  # a trivial objective, outside the timed spans
        return noises[:, :, :4, :4].float().sum(dim=(1, 2, 3))

    best = math.inf
    for repeat in range(repeats + 1):  # the first run warms up (allocations, kernels)
        search = SpectralEvolutionSearch(
            base, budget, SESConfig(backend=backend), generator=torch.Generator().manual_seed(repeat)
        )
        spent = 0.0
        while not search.done:
            started = time.perf_counter()
            noises = search.ask()
            synchronize()
            spent += time.perf_counter() - started
            scores = scores_of(noises)
            synchronize()
            started = time.perf_counter()
            search.tell(scores)
            synchronize()
            spent += time.perf_counter() - started
        if repeat:
            best = min(best, spent / budget)
    return best


def time_published_ses(base: torch.Tensor, budget: int, repeats: int) -> float:
    """Best-of-repeats seconds per candidate of the published SES loop (DiffSynth-Studio's, as re-implemented in
    `bench/reference_ses.py`: one candidate per call, rebuilt in NumPy with PyWavelets), objective time excluded."""
    synchronize = synchronizer(base.device)
    objective = Timed(lambda noise: float(noise[:, :, :4, :4].float().sum()), synchronize)
    best = math.inf
    for repeat in range(repeats + 1):  # the first run warms up
        objective.seconds = 0.0
        synchronize()
        started = time.perf_counter()
        reference_ses_search(objective, base, budget, generator=torch.Generator().manual_seed(repeat))
        synchronize()
        if repeat:
            best = min(best, (time.perf_counter() - started - objective.seconds) / budget)
    return best


@dataclass
class OverheadRow:
    device: str
    threads: int
    dtype: str
    torch_ms: float
    pywt_ms: float
    published_ms: float


def overhead_rows(budget: int, repeats: int) -> list[OverheadRow]:
    rows = []
    default_threads = torch.get_num_threads()
    settings = [("cpu", threads) for threads in sorted({1, default_threads})]
    if torch.cuda.is_available():
        settings.append(("cuda", default_threads))
    try:
        for device, threads in settings:
            torch.set_num_threads(threads)
            for dtype in (torch.float32, torch.bfloat16):
                base = torch.randn(OVERHEAD_LATENT, generator=torch.Generator().manual_seed(0)).to(
                    device, dtype
                )
                rows.append(
                    OverheadRow(
                        torch.cuda.get_device_name() if device == "cuda" else "cpu",
                        threads,
                        str(dtype).removeprefix("torch."),
                        time_ask_tell(base, "torch", budget, repeats) * 1e3,
                        time_ask_tell(base, "pywt", budget, repeats) * 1e3,
                        time_published_ses(base, budget, repeats) * 1e3,
                    )
                )
    finally:
        torch.set_num_threads(default_threads)
    return rows


def print_overhead_table(rows: list[OverheadRow], budget: int, repeats: int) -> None:
    print(
        f"## The search's own cost per candidate, latent {list(OVERHEAD_LATENT)} (low band 2048), budget {budget}\n"
    )
    print(
        f"Our SES: ask() + tell() time divided by the number of candidates; the published SES (DiffSynth-Studio's "
        f"loop, `bench/reference_ses.py`): its whole search minus the objective's time, divided likewise. Best of "
        f"{repeats} runs each; the objective is a trivial sum.\n"
    )
    print(
        "| device | torch threads | dtype | ours, torch Haar (ms) | ours, pywt Haar (ms) | published, per-candidate pywt (ms) "
        "| published / ours torch Haar |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.device} | {row.threads} | {row.dtype} | {row.torch_ms:.3f} | {row.pywt_ms:.3f} | "
            f"{row.published_ms:.3f} | {row.published_ms / row.torch_ms:.1f}x |"
        )
    print()


# ---- the plot and the profile ----------------------------------------------------------------------------
def save_plot(rows: list[SpeedRow], path: Path) -> None:
    """Candidates/s per resolution and eval batch, and the share of each search outside generation and scoring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted({row.resolution for row in rows})
    batch_sizes = sorted({row.batch_size for row in rows})
    figure, (rate_axis, share_axis) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    width = 0.8 / len(batch_sizes)
    for offset, batch_size in enumerate(batch_sizes):
        rates = [
            next(
                row.timing.candidates_per_second
                for row in rows
                if row.resolution == res and row.batch_size == batch_size
            )
            for res in resolutions
        ]
        positions = [index + offset * width for index in range(len(resolutions))]
        rate_axis.bar(positions, rates, width, label=f"eval batch {batch_size}")
    rate_axis.set_xticks([index + width * (len(batch_sizes) - 1) / 2 for index in range(len(resolutions))])
    rate_axis.set_xticklabels([f"{res}px" for res in resolutions])
    rate_axis.set_ylabel("candidates / s")
    rate_axis.set_title("SES throughput (CPU)")
    rate_axis.legend()
    labels = [f"{row.resolution}px\nbatch {row.batch_size}" for row in rows]
    share_axis.bar(labels, [row.timing.share(row.timing.outside) for row in rows], color="tab:red")
    share_axis.axhline(2.0, color="gray", linestyle="--", label="2% target")
    share_axis.set_ylim(0, max(2.5, *(1.2 * row.timing.share(row.timing.outside) for row in rows)))
    share_axis.set_ylabel("% of search wall time")
    share_axis.set_title("time outside generation, scoring and encoding")
    share_axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a reader never sees half a PNG.
    handle, temporary = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)


def print_profile(generator: FlowGenerator, budget: int, popsize: int, top: int = 15) -> None:
    """cProfile of one search with generation and scoring stubbed out to constants, so what remains is
    the time outside them: the search, the evaluator's copies and the bookkeeping."""
    import cProfile
    import io
    import pstats

    from tscale_train.generation import GenerationOutput

    images = generator.generate(generator.initial_noise(0), generator.encode_prompt(PROMPT), 1).images
    embeds = [generator.encode_prompt(PROMPT)]

    def fake_batch(noises: torch.Tensor, batch_embeds: list[PromptEmbeds], steps: int) -> GenerationOutput:
        return GenerationOutput(images.expand(noises.shape[0], -1, -1, -1), noises)

    generator._generate_batch = fake_batch
    try:
        profiler = cProfile.Profile()
        profiler.enable()
        search_prompts(
            generator,
            lambda batch, prompts: batch.mean(dim=(1, 2, 3)),
            [PROMPT],
            [0],
            budget=budget,
            config=SESConfig(popsize=popsize),
            embeds=embeds,
            progress=False,
        )
        profiler.disable()
    finally:
        del generator._generate_batch
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    print(
        f"## cProfile of one search at {generator.height}px, generation and scoring stubbed out (top {top} by own time)\n"
    )
    print("```")
    print(stream.getvalue().strip())
    print("```\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", default="256,512", help="image sizes, comma-separated")
    parser.add_argument(
        "--batch-sizes", default="1,10", help="eval batch sizes, comma-separated (1 = one at a time)"
    )
    parser.add_argument("--budget", type=int, default=30, help="candidates per search (table 1)")
    parser.add_argument("--popsize", type=int, default=10, help="SES population per generation")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per cell; the fastest is reported")
    parser.add_argument(
        "--reward", default="pickscore", help="pickscore (tiny kit), hpsv2, clip, or module:callable"
    )
    parser.add_argument("--overhead-budget", type=int, default=50, help="candidates per search (table 2)")
    parser.add_argument("--overhead-repeats", type=int, default=3, help="timed runs per cell of table 2")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model weights")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "speed.png", help="where the plot goes")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of the time outside generation"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of table 1 (table 2 runs 1 and torch's default side by side)",
    )
    args = parser.parse_args()
    resolutions = [int(value) for value in args.resolutions.split(",")]
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]

    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    architecture = small_klein_architecture()
    pipe = build_klein_pipeline(architecture, seed=args.seed)
    reward = load_bench_reward(args.reward)
    print(
        f"klein-shaped model: transformer {parameter_count(pipe.transformer) / 1e6:.2f} M parameters "
        f"({architecture.transformer['num_layers']} double + {architecture.transformer['num_single_layers']} single "
        f"blocks, {architecture.transformer['num_attention_heads']} heads x {architecture.transformer['attention_head_dim']}, "
        f"in_channels {architecture.transformer['in_channels']}), VAE {parameter_count(pipe.vae) / 1e6:.2f} M "
        f"({architecture.vae['latent_channels']} latent channels), text encoder {parameter_count(pipe.text_encoder) / 1e6:.2f} M; "
        f"torch {torch.__version__}, {args.threads} torch thread(s) (of {torch.get_num_threads()}) in table 1\n"
    )

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = search_speed_rows(
            pipe, architecture, reward, resolutions, batch_sizes, args.budget, args.popsize, args.repeats
        )
    finally:
        torch.set_num_threads(default_threads)
    print_speed_table(rows, args.budget, args.popsize, args.reward, args.repeats, args.threads)
    print_overhead_table(
        overhead_rows(args.overhead_budget, args.overhead_repeats),
        args.overhead_budget,
        args.overhead_repeats,
    )
    if args.profile:
        print_profile(
            klein_generator(pipe, architecture, max(resolutions), max(batch_sizes)), args.budget, args.popsize
        )
    save_plot(rows, args.plot)
    print(f"plot: {args.plot}")
    print(f"total bench time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
