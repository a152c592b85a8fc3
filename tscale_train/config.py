"""One settings vocabulary for `tscale ses`, `tscale train` and the recipe.

TRL's split: small dataclasses, each validated once in `__post_init__`, before any model loads:

- `ModelConfig`: which pipeline, in which dtype, at which image size and guidance;
- `SearchConfig`: the reward and the Spectral Evolution Search (shared by inference and training);
- `SESArguments`: what only `tscale ses` takes (prompts, output files, a LoRA to load);
- `OnlineDPOConfig`: `ModelConfig` + `SearchConfig` + the LoRA, pairs, DPO and loop settings.

`make_parser(*types)` builds the one `HfArgumentParser` for any of them, with a YAML file
(`--config file.yaml`) supplying values that flags then override (TRL's TrlParser pattern);
`parse_args(types, args)` does both, `parse_config(args)` for the training config alone.

`__post_init__` looks at the settings alone: it reads no file, probes no path or device and imports no
user code, so making a config has no side effects and gives the same answer on every machine. What looks
outside the settings (a local `--model` or `--lora`, `--out`, `--device`, importing a `module:callable`
reward) is `check_environment()`, which `parse_args` runs on each parsed config and `OnlineDPOTrainer`
runs again on its config (so a config made in code is checked too), both before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dpo import SIGMA_SAMPLING_MODES
from .lora import LORA_TARGET_PRESETS
from .parsing import make_parser, parse_args
from .quantization import QUANTIZE_CHOICES

__all__ = [
    "MAX_BUDGET",
    "MAX_RESOLUTION",
    "ModelConfig",
    "OnlineDPOConfig",
    "SESArguments",
    "SearchConfig",
    "check_search_budget",
    "make_parser",
    "parse_args",
    "parse_config",
]

REPORT_TO = ("none", "tensorboard", "wandb", "all")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# peft's `init_lora_weights` values that need no extra data; "default" is peft's True (B = 0).
LORA_INITS = ("default", "gaussian", "orthogonal", "pissa", "olora")
# FLUX.2: the VAE downsamples by 8 and the transformer packs 2x2 patches.
RESOLUTION_MULTIPLE = 16
DEFAULT_POPSIZE = 10
GUARD_POLICIES = ("stop", "warn")
# The image statistics the guards watch, and the guards' own `guard/<name>` metrics, which a judge of
# `guard_rewards` may not be named like. Settings vocabulary (the judge names are checked here), so they live
# with the settings; `tscale_train.guards`, a layer above, reads them from here.
IMAGE_STATISTICS = ("brightness", "saturation", "high_frequency")
RESERVED_GUARD_NAMES = (
    "held",
    "diversity",
    "diversity_distance",
    *(f"{name}_drift" for name in IMAGE_STATISTICS),
    *(f"image_{name}" for name in IMAGE_STATISTICS),
)
# Upper bounds, far above any real run and low enough that a typo (an extra digit, `1e12` written out) is
# refused when parsed, not met as an allocation failure or a loop of years after the model has loaded.
MAX_RESOLUTION = 4096  # px per side; the supported families make up to about 4 MP (2048 x 2048)
MAX_BUDGET = (
    10_000  # candidates per search: each keeps its score and low band, and in training its clean latents
)
MAX_STEPS = 1_000  # sampler steps; the scheduler allocates its timesteps up front
MAX_BATCH_SIZE = 4_096  # images or pairs in one batch
MAX_LORA_RANK = 8_192  # above the widest linear of any supported transformer
MAX_PROMPTS_PER_ROUND = 100_000  # a round's prompt slots are listed up front
MAX_PREVIEW_SIZE = 1_024  # px per side of the thumbnails kept with each pair
MAX_DIVERSITY_SEEDS = 256  # budget-0 images per eval prompt, made at once
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; prompt i of a file uses seed + i
# Schedulers whose warmup `lr_warmup_steps` would set; the others ignore it.
WARMUP_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")
# diffusers' piecewise_constant needs step rules, which this loop has no setting for.
UNSUPPORTED_SCHEDULERS = ("piecewise_constant",)


def _help(text: str, **extra: Any) -> dict:
    return {"metadata": {"help": text, **extra}}


def _check_at_least(config: object, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(
                f"--{name} must be >= {minimum}, got {value}; set --{name} to {minimum} or more."
            )


def _check_at_most(config: object, maximum: int, why: str, *names: str) -> None:
    """Integer settings that would allocate (or loop) absurdly: refused with the bound and the reason."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value > maximum:
            raise ValueError(
                f"--{name} {value} is above the most this takes, {maximum} ({why}); set --{name} {maximum} or less."
            )


def _check_number(
    config: object,
    name: str,
    fix: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> None:
    """A float setting: finite (argparse reads `nan` and `inf` as numbers) and inside its range."""
    value = getattr(config, name)
    if value is None:
        return
    bounds = []
    if above is not None or at_least is not None:
        low = above if above is not None else at_least
        if below is not None:
            bounds.append(f"in {'(' if above is not None else '['}{low:g}, {below:g})")
        else:
            bounds.append(f"{'>' if above is not None else '>='} {low:g}")
    elif below is not None:
        bounds.append(f"< {below:g}")
    inside = (
        math.isfinite(value)
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (below is None or value < below)
    )
    if not inside:
        needs = (
            f"{bounds[0]} and finite"
            if bounds and not math.isfinite(value)
            else (bounds[0] if bounds else "a finite number")
        )
        raise ValueError(f"--{name} must be {needs}, got {value}; {fix}")


def _check_choice(config: object, name: str, allowed: Sequence[str]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"--{name} {value!r} is not one of {', '.join(allowed)}; pick one of those.")


@dataclass
class ModelConfig:
    """The pipeline: where it comes from, its dtype, and the images it makes."""

    model: str = field(
        default="black-forest-labs/FLUX.2-klein-4B",
        **_help(
            "hub id or local pipeline dir of a supported family, or an offline kit: 'tiny', 'tiny-base', "
            "'shapes', 'dims-klein-4b', or a family's 'tiny-<family>' (docs/families.md lists them)"
        ),
    )
    dtype: str = field(
        default="auto", **_help("auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    )
    height: int | None = field(
        default=None, **_help("image height (default: the model's, 1024 for the real ones)")
    )
    width: int | None = field(
        default=None, **_help("image width (default: the model's, 1024 for the real ones)")
    )
    guidance_scale: float | None = field(
        default=None,
        **_help(
            "guidance (CFG or embedded, per family); default: the model's, see the README's family table"
        ),
    )
    quantize_base: str = field(
        default="none",
        **_help(
            "'fp8': store the frozen transformer's and text encoder's linear weights in float8 (e4m3) and compute "
            "in --dtype (diffusers' layerwise casting); the LoRA stays float32. Halves the weights' memory "
            "(docs/memory.md); 'none': keep them in --dtype"
        ),
    )

    def __post_init__(self) -> None:
        _check_choice(self, "dtype", DTYPES)
        _check_choice(self, "quantize_base", QUANTIZE_CHOICES)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % RESOLUTION_MULTIPLE):
                fixed = min(
                    MAX_RESOLUTION,
                    max(RESOLUTION_MULTIPLE, value // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE),
                )
                raise ValueError(
                    f"--{name} {value} is not a positive multiple of {RESOLUTION_MULTIPLE}; use e.g. --{name} {fixed}."
                )
            if value is not None and value > MAX_RESOLUTION:
                raise ValueError(
                    f"--{name} {value} is above {MAX_RESOLUTION} px, more than any supported model makes (about 2048 px "
                    f"at most); use e.g. --{name} 1024."
                )
        _check_number(
            self,
            "guidance_scale",
            "e.g. --guidance_scale 4.0, or leave it unset for the model's default.",
            at_least=0,
        )

    def check_environment(self) -> None:
        """The `--model` checks that read the disk (a local directory's `model_index.json`); see the module
        docstring. `load_pipeline` runs the same check, so a config made in code fails as clearly."""
        from .loading import check_model_source

        check_model_source(self.model)

    def torch_dtype(self, device):
        """The weights' dtype on `device`: `auto` is bfloat16 on a GPU and float32 on a CPU."""
        import torch

        from .loading import parse_dtype

        if self.dtype == "auto":
            return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        return parse_dtype(self.dtype)


@dataclass
class SearchConfig:
    """The reward and the search: what `tscale ses` runs, and what each training round runs."""

    reward: str = field(
        default="pickscore",
        **_help(
            "pickscore, hpsv2, clip, verifier, shapes-clip, or package.module:callable; several with weights, "
            "e.g. 'pickscore:1.0,hpsv2:0.5' (YAML: a mapping), each standardised per prompt before weighting"
        ),
    )
    reward_batch_size: int | None = field(
        default=None, **_help("images per reward forward (default: eval_batch_size)")
    )
    search: str = field(
        default="ses",
        **_help(
            "ses (Spectral Evolution Search with its surrogate step), ses-published (the published algorithm "
            "unchanged) or random (best-of-N: the base noise, then i.i.d. Gaussian noises)"
        ),
    )
    budget: int = field(
        default=20, **_help("candidates scored per prompt, the unsearched base noise included")
    )
    popsize: int | None = field(
        default=None,
        **_help(f"population per generation (default: {DEFAULT_POPSIZE}, or the budget if smaller)"),
    )
    k_elites: int = field(default=5, **_help("elite archive size"))
    wavelet: str = field(default="db1", **_help("wavelet of the spectral decomposition"))
    level: int | None = field(
        default=None,
        **_help(
            "wavelet level (default: the deepest up to 4 that keeps a 4x4 low band: 4 at 1024px, lower on small latents)"
        ),
    )
    preview_steps: int | None = field(
        default=None, **_help("sampler steps while searching (default: the model's)")
    )
    eval_batch_size: int = field(default=4, **_help("candidates generated (and decoded) per batch"))
    search_group_size: int = field(
        default=8, **_help("prompts searched in lockstep at once; bounds a generation's size")
    )

    def __post_init__(self) -> None:
        check_reward_setting("reward", self.reward, import_callables=False)
        _check_choice(self, "search", tuple(SEARCH_METHODS))
        _check_at_least(
            self,
            1,
            "budget",
            "k_elites",
            "level",
            "preview_steps",
            "eval_batch_size",
            "reward_batch_size",
            "search_group_size",
            "popsize",
        )
        _check_at_most(self, MAX_BUDGET, "an elite archive larger than any search", "k_elites")
        _check_at_most(self, MAX_STEPS, "sampler steps", "preview_steps")
        _check_at_most(self, MAX_BATCH_SIZE, "images in one batch", "eval_batch_size", "reward_batch_size")
        if self.popsize is None:
            # A budget below the default population is one generation, not an error.
            self.popsize = min(DEFAULT_POPSIZE, self.budget)
        check_search_budget(self.budget, self.popsize)
        try:
            self.ses_config()  # the wavelet and level checks live with the search
        except ValueError as error:
            raise ValueError(f"--wavelet {self.wavelet!r}: {error}") from error

    def check_environment(self) -> None:
        """Import a `module:callable` `--reward`, so a typo fails before any model loads (see the module
        docstring); `__post_init__` checked only its spelling."""
        check_reward_setting("reward", self.reward)

    def ses_config(self):
        """The `search.SESConfig` of these settings."""
        from search import SESConfig

        variant = "published" if self.search == "ses-published" else "surrogate"
        return SESConfig(
            variant=variant,
            wavelet=self.wavelet,
            level=self.level,
            popsize=self.popsize,
            k_elites=self.k_elites,
        )


def check_reward_setting(name: str, spec: str, *, import_callables: bool = True) -> dict[str, float]:
    """`rewards.check_reward_spec` of a reward setting, its error naming the flag (`--reward`, `--eval_reward`).
    `import_callables=False` checks a `module:callable` reward's spelling without importing it."""
    from rewards import check_reward_spec

    try:
        return check_reward_spec(spec, import_callables=import_callables)
    except ValueError as error:
        raise ValueError(f"--{name}: {error}") from error


def check_search_budget(budget: int, popsize: int, flag: str = "--budget") -> None:
    """The one budget rule: at least the base noise, at most `MAX_BUDGET`, and a full first generation.
    `flag` is the setting the budget came from (`--budget`, `--eval_budget`), as the error names it."""
    if budget < 1:
        raise ValueError(
            f"{flag} must be >= 1 (the base noise alone is budget 1), got {budget}; set {flag} 1 or more."
        )
    if budget > MAX_BUDGET:
        raise ValueError(
            f"{flag} {budget} is above the most a search takes, {MAX_BUDGET} (every candidate keeps its score and low "
            f"band); set {flag} {MAX_BUDGET} or less (50 is the published SES budget)."
        )
    if popsize > budget:
        raise ValueError(
            f"{flag}: popsize ({popsize}) is larger than {flag.removeprefix('--')} ({budget}); lower --popsize or raise {flag}."
        )


# `search_prompts(method=...)` and `tscale ses --compare`: the search over noise, and the best-of-N
# baseline it is compared with (i.i.d. fresh noises, drawn popsize at a time so both share the batch shape).
SEARCH_METHODS = {"random": "best-of-N", "ses": "SES", "ses-published": "published SES"}


@dataclass
class SESArguments:
    """What only `tscale ses` takes: prompts, a LoRA to load, the final image and the output files."""

    prompt: str | None = field(default=None, **_help("one prompt"))
    prompts_file: str | None = field(
        default=None, **_help(".txt (one per line), .jsonl or .csv (see --prompt_column)")
    )
    prompt_column: str = field(
        default="prompt", **_help("field of a .jsonl/.csv prompts file holding the prompt")
    )
    out: str | None = field(default=None, **_help("image path for --prompt; a directory for --prompts-file"))
    lora: str | None = field(
        default=None, **_help("LoRA dir/file (diffusers format) or hub id, loaded with load_lora_weights")
    )
    lora_scale: float = field(default=1.0, **_help("LoRA weight (with --lora; negative inverts the LoRA)"))
    reward_arg: list[str] = field(
        default_factory=list,
        **_help(
            "override a reward loading argument, e.g. model_name_or_path=DIR (repeatable)", action="append"
        ),
    )
    steps: int | None = field(
        default=None, **_help("sampler steps of the final image (default: the model's)")
    )
    seed: int = field(default=0, **_help("seed of the base noise, >= 0 (prompt i of a file uses seed + i)"))
    device: str | None = field(
        default=None, **_help("default: the accelerate process's device (cuda if available)")
    )
    save_trace: bool = field(
        default=False,
        **_help(
            "also write scores JSON, a reward plot and base-vs-SES image (not with --compare, which writes its own)"
        ),
    )
    compare: str | None = field(
        default=None,
        **_help(
            "compare searches at the same budget and seed, e.g. 'random,ses' (random = best-of-N): writes OUT "
            "(base and each method's best side by side), OUT_curves.png, OUT_compare.json and prints a table"
        ),
    )
    progress: bool = field(default=True, **_help("progress bar (--no-progress to hide it)"))

    def __post_init__(self) -> None:
        # `action="append"` with a list field gives one list per flag.
        self.reward_arg = [
            item for group in self.reward_arg for item in ([group] if isinstance(group, str) else group)
        ]
        if (self.prompt is None) == (self.prompts_file is None):
            given = "both" if self.prompt is not None else "neither"
            raise ValueError(f"--prompt and --prompts-file: {given} given; pass exactly one of them.")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("the prompt is empty; pass non-empty text with --prompt.")
        if not self.out:
            raise ValueError(
                "--out is required; pass an image path for --prompt, a directory for --prompts-file."
            )
        if self.prompt is not None and Path(self.out).suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"--out {self.out!r} is not an image path; with --prompt, pass a path ending in one of {', '.join(IMAGE_SUFFIXES)}."
            )
        _check_at_least(self, 1, "steps")
        _check_at_most(self, MAX_STEPS, "sampler steps", "steps")
        check_seed(self.seed)
        _check_number(self, "lora_scale", "e.g. --lora_scale 1.0 (0.5 for half the LoRA's effect).")
        if self.lora_scale != 1.0 and not self.lora:
            raise ValueError(
                f"--lora_scale {self.lora_scale} has no LoRA to scale; pass --lora DIR as well, or drop --lora_scale."
            )
        if self.compare is not None:
            methods = self.compare_methods()
            unknown = [method for method in methods if method not in SEARCH_METHODS]
            if unknown or not methods or len(set(methods)) != len(methods):
                raise ValueError(
                    f"--compare {self.compare!r}: give distinct methods from {', '.join(SEARCH_METHODS)}, comma-separated, "
                    "e.g. --compare random,ses."
                )
            if self.save_trace:
                raise ValueError(
                    "--save_trace has no effect with --compare, which writes its own curves and scores (OUT_curves.png, "
                    "OUT_compare.json); drop --save_trace."
                )
        self.reward_overrides()

    def check_environment(self) -> None:
        """What `__post_init__` cannot see in the settings alone: `--out` is writable (a search's results must never
        be lost at its end), `--device` exists on this machine, `--lora` is a complete local LoRA or a hub id."""
        check_writable_output(Path(self.out), directory=self.prompts_file is not None)
        if self.device is not None:
            check_device(self.device)
        if self.lora:
            from .loading import check_lora_source

            check_lora_source(self.lora)

    def compare_methods(self) -> list[str]:
        """`--compare random,ses` -> ["random", "ses"]; [] without --compare."""
        return [method.strip() for method in (self.compare or "").split(",") if method.strip()]

    def reward_overrides(self) -> dict[str, str]:
        """`--reward-arg KEY=VALUE` pairs as keyword arguments of the reward's loader."""
        overrides = {}
        for pair in self.reward_arg:
            key, separator, value = pair.partition("=")
            if not separator or not key:
                raise ValueError(
                    f"--reward-arg {pair!r} is not KEY=VALUE, e.g. --reward-arg model_name_or_path=/models/pickscore."
                )
            overrides[key] = value
        return overrides

    def load_prompts(self) -> list[str]:
        from .prompts import load_prompts

        prompts = (
            [self.prompt]
            if self.prompt is not None
            else load_prompts(self.prompts_file, column=self.prompt_column, flag="--prompts-file")
        )
        if any(not prompt.strip() for prompt in prompts):
            raise ValueError("a prompt is empty; remove empty lines from --prompts-file.")
        return prompts


def check_writable_output(out: Path, *, directory: bool) -> None:
    """Fail before any work if `out` cannot be written: a search's results must never be lost at the end."""
    import os

    if directory and out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {str(out)!r} is an existing file, but --prompts-file writes a directory of images; pass a directory."
        )
    if not directory and out.is_dir():
        raise ValueError(
            f"--out {str(out)!r} is a directory; pass an image path such as {str(out / 'image.png')!r}."
        )
    existing = out if directory and out.is_dir() else out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"--out {str(out)!r} cannot be written: {str(existing)!r} is not a writable directory; pass a path under one."
        )


def check_device(device: str) -> None:
    """A device this machine has: `--device cuda` without a GPU fails here, not in a traceback later."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(
            f"--device {device!r} is not a device name; pass e.g. --device cpu or --device cuda:0."
        ) from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device!r} asks for a GPU but torch sees none; drop --device or use --device cpu."
        )
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device!r} asks for GPU {index}, but torch sees {torch.cuda.device_count()} "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of those or drop --device."
        )


def check_repo_id(repo_id: str, what: str = "--repo-id") -> str:
    """`namespace/name` as the Hub accepts it, or a one-line error (no network: the Hub's own name rule).

    A settings check (`--hub_model_id` here, `tscale export --repo-id`), so it lives with the settings;
    `tscale_train.export.hub` re-exports it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"{what} {repo_id!r} is not of the form namespace/name (e.g. me/klein-cat-dpo).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"{what} {repo_id!r} is not a valid repo id: {str(error).splitlines()[0]}"
        ) from error
    return repo_id


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A seed torch takes (64-bit, and prompt i of a file uses seed + i), not negative."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{flag} must be in [0, 2**63 - 1], got {seed}; e.g. {flag} 0.")


@dataclass
class OnlineDPOConfig(ModelConfig, SearchConfig):
    """Every setting of the online SES -> Diffusion-DPO loop: the model and search settings plus these."""

    gradient_checkpointing: bool = field(
        default=True, **_help("recompute activations in the DPO backward (needed at 1024px)")
    )
    offload_text_encoder: bool = field(
        default=True,
        **_help("keep the text encoder on the CPU and move it to the GPU only to encode a round's prompts"),
    )
    offload_reward: bool = field(default=True, **_help("move the reward model to CPU while DPO trains"))
    max_cached_prompts: int = field(
        default=64, **_help("prompt embeddings kept in CPU memory per process (LRU)")
    )
    # LoRA
    lora_rank: int = field(default=16, **_help("LoRA rank"))
    lora_alpha: float | None = field(default=None, **_help("LoRA alpha (default: rank)"))
    lora_dropout: float = field(default=0.0, **_help("LoRA dropout"))
    lora_target_modules: str = field(
        default="attention",
        **_help(f"regex over full module names, or a preset: {', '.join(LORA_TARGET_PRESETS)}"),
    )
    lora_init: str = field(default="default", **_help(f"one of {', '.join(LORA_INITS)} ('default': B = 0)"))
    # prompts
    prompts: str | None = field(
        default=None, **_help("a .txt/.jsonl/.csv file or a datasets name (default: the bundled set)")
    )
    prompt_column: str = field(
        default="prompt", **_help("column of a .jsonl/.csv/dataset holding the prompt")
    )
    eval_prompts: str | None = field(
        default=None, **_help("held-out prompts; default: split off `eval_fraction` of `prompts`")
    )
    eval_fraction: float = field(
        default=0.1,
        **_help(
            "share of prompts held out for eval when eval_prompts is unset, in [0, 1). A prompts file too small to "
            "hold one out (e.g. a single prompt) is an error while eval_every > 0: pass --eval_prompts FILE, raise "
            "--eval_fraction, or set --eval_every 0 (or --eval_fraction 0) to train without eval"
        ),
    )
    max_eval_prompts: int = field(default=16, **_help("cap on held-out eval prompts"))
    eval_reward: str | None = field(
        default=None, **_help("reward of the eval metrics, one or weighted like `reward` (default: `reward`)")
    )
    # guards (see tscale_train/guards.py): watched at every eval, never used to make pairs
    guard_rewards: str | None = field(
        default=None,
        **_help(
            "held-out judges scored on the eval prompts at budget 0, comma-separated, e.g. 'hpsv2,clip' (YAML: a list)"
        ),
    )
    guard_diversity_seeds: int = field(
        default=4,
        **_help("seeds per eval prompt for guard/diversity (mean pairwise embedding distance); 0 or 1: off"),
    )
    guard_tolerance: float = field(
        default=0.05,
        **_help(
            "a guard fails when it falls below its value before training by more than this share (0.05 = 5%)"
        ),
    )
    guard_patience: int = field(default=2, **_help("evals in a row a guard must fail before the policy acts"))
    guard_policy: str = field(
        default="stop",
        **_help("stop (end the run, final LoRA = the last eval where every guard held) or warn (only warn)"),
    )
    guard_max_drift: float | None = field(
        default=None,
        **_help(
            "also fail when brightness, saturation or high-frequency energy moves by more than this share "
            "(e.g. 0.2); default: those drifts are only logged"
        ),
    )
    ema_decay: float | None = field(
        default=None,
        **_help("keep an EMA of the LoRA (e.g. 0.9) and use it for eval, guards and the final LoRA"),
    )
    # pairing
    pairing: str = field(default="best_vs_worst", **_help("best_vs_worst, best_vs_base or top_k_vs_bottom_k"))
    pairs_per_prompt: int = field(
        default=1, **_help("k of top_k_vs_bottom_k (the other pairings make one pair per prompt)")
    )
    min_margin: float = field(default=0.0, **_help("drop pairs whose reward margin is below this"))
    preview_size: int = field(default=64, **_help("side of the preview images kept with each pair"))
    # DPO
    beta: float = field(
        default=100.0,
        **_help(
            "DPO beta; 100 as flow_grpo / Flow-Factory on SD3.5; 1-10 on the tiny model. Watch train/inside_abs"
        ),
    )
    learning_rate: float = field(default=5e-4, **_help("AdamW learning rate"))
    adam_weight_decay: float = field(default=0.0, **_help("AdamW weight decay"))
    lr_scheduler: str = field(
        default="constant_with_warmup", **_help("diffusers.optimization scheduler name")
    )
    lr_warmup_steps: int = field(
        default=0, **_help(f"warmup optimizer steps (schedulers {', '.join(WARMUP_SCHEDULERS)})")
    )
    train_batch_size: int = field(default=1, **_help("pairs per process per micro-step (2 latents each)"))
    gradient_accumulation_steps: int = field(default=1, **_help("micro-steps per optimizer step"))
    max_grad_norm: float = field(default=1.0, **_help("gradient clipping norm (0: no clipping)"))
    epochs_per_round: int = field(default=5, **_help("passes over a round's pairs"))
    replay_rounds: int = field(default=0, **_help("also train on the pairs of the last K rounds"))
    sigma_sampling: str = field(default="sampler", **_help(f"one of {', '.join(SIGMA_SAMPLING_MODES)}"))
    logit_mean: float = field(default=0.0, **_help("logit-normal mean"))
    logit_std: float = field(default=1.0, **_help("logit-normal std"))
    # loop
    rounds: int = field(default=10, **_help("search -> pairs -> DPO rounds"))
    prompts_per_round: int = field(default=32, **_help("prompts searched per round, over all processes"))
    eval_every: int = field(
        default=1,
        **_help(
            "eval budget-0 reward on the held-out prompts every N rounds (0: only at the end, if any are held out)"
        ),
    )
    eval_ses_every: int = field(
        default=0,
        **_help(
            "also eval the searched reward every N rounds, a multiple of eval_every (0: only before training and at the end)"
        ),
    )
    eval_budget: int | None = field(default=None, **_help("SES budget of eval/reward_ses (default: budget)"))
    checkpoint_every: int = field(default=1, **_help("checkpoint every N rounds (0: only at the end)"))
    checkpoints_total_limit: int | None = field(
        default=3, **_help("keep only the last N checkpoints (0: keep all)")
    )
    resume_from_checkpoint: str | None = field(default=None, **_help("'latest' or a checkpoint path"))
    seed: int = field(default=0, **_help("seed of everything"))
    # logging and output
    output_dir: str = field(
        default="runs/flux2_klein_dpo", **_help("where the LoRA, metrics, checkpoints and pairs go")
    )
    push_to_hub: bool = field(
        default=False, **_help("at the end, push the LoRA with a model card to --hub_model_id")
    )
    hub_model_id: str | None = field(
        default=None, **_help("model repo for --push_to_hub, namespace/name (only with --push_to_hub)")
    )
    hub_private_repo: bool = field(
        default=False, **_help("create the --push_to_hub repo private (only with --push_to_hub)")
    )
    overwrite_output_dir: bool = field(
        default=False,
        **_help("start afresh in a non-empty output_dir (deleting what is there); default: refuse"),
    )
    report_to: str = field(default="none", **_help("none, tensorboard, wandb or all (accelerate trackers)"))
    tracker_project: str = field(default="tscale-train", **_help("tracker project name"))
    progress: bool = field(default=True, **_help("progress bars on the main process"))

    def __post_init__(self) -> None:
        ModelConfig.__post_init__(self)
        SearchConfig.__post_init__(self)
        from diffusers.optimization import SchedulerType

        from .pairs.selection import PAIRING_STRATEGIES

        _check_number(self, "beta", "e.g. --beta 100 for FLUX.2-klein-4B, 1-10 for the tiny model.", above=0)
        choices = {
            "sigma_sampling": SIGMA_SAMPLING_MODES,
            "report_to": REPORT_TO,
            "pairing": PAIRING_STRATEGIES,
            "lr_scheduler": tuple(
                kind.value for kind in SchedulerType if kind.value not in UNSUPPORTED_SCHEDULERS
            ),
            "lora_init": LORA_INITS,
            "guard_policy": GUARD_POLICIES,
        }
        for name, allowed in choices.items():
            _check_choice(self, name, allowed)
        _check_at_least(
            self,
            1,
            "rounds",
            "prompts_per_round",
            "train_batch_size",
            "gradient_accumulation_steps",
            "epochs_per_round",
            "lora_rank",
            "max_cached_prompts",
            "pairs_per_prompt",
            "eval_budget",
            "preview_size",
        )
        _check_at_least(self, 1, "guard_patience")
        _check_at_least(
            self,
            0,
            "guard_diversity_seeds",
            "replay_rounds",
            "eval_every",
            "eval_ses_every",
            "checkpoint_every",
            "lr_warmup_steps",
            "max_eval_prompts",
            "checkpoints_total_limit",
        )
        check_seed(self.seed)
        if self.quantize_base != "none" and not self.gradient_checkpointing:
            # Without checkpointing, autograd keeps every layer's up-cast weight until the backward: more memory
            # than not quantising at all (tscale_train/quantization.py).
            raise ValueError(
                f"--quantize_base {self.quantize_base} needs --gradient_checkpointing true (without it the DPO "
                "backward keeps a full-precision copy of every weight); set it, or --quantize_base none."
            )
        _check_at_most(
            self, MAX_PROMPTS_PER_ROUND, "a round's prompt slots are listed up front", "prompts_per_round"
        )
        _check_at_most(self, MAX_BATCH_SIZE, "pairs in one micro-batch", "train_batch_size")
        _check_at_most(self, MAX_LORA_RANK, "wider than any supported transformer's linears", "lora_rank")
        _check_at_most(self, MAX_PREVIEW_SIZE, "pixels per side of a kept thumbnail", "preview_size")
        _check_at_most(
            self,
            MAX_DIVERSITY_SEEDS,
            "budget-0 images per eval prompt, made at once",
            "guard_diversity_seeds",
        )
        if (
            self.eval_budget is not None
        ):  # the final round always searches at it: fail now, not after the last round
            check_search_budget(self.eval_budget, self.popsize, flag="--eval_budget")
        if self.eval_reward:
            check_reward_setting("eval_reward", self.eval_reward, import_callables=False)
        # Every float setting: argparse and YAML read `nan` and `inf` as numbers, and most ranges are open.
        _check_number(self, "learning_rate", "e.g. --learning_rate 5e-4.", above=0)
        _check_number(self, "adam_weight_decay", "e.g. --adam_weight_decay 0.01; 0 turns it off.", at_least=0)
        _check_number(self, "max_grad_norm", "e.g. --max_grad_norm 1.0; 0 turns clipping off.", at_least=0)
        _check_number(self, "lora_alpha", "e.g. --lora_alpha 16, or leave it unset for the rank.", above=0)
        _check_number(self, "lora_dropout", "e.g. --lora_dropout 0.1; 0 turns it off.", at_least=0, below=1)
        _check_number(self, "logit_mean", "e.g. --logit_mean 0.0.")
        _check_number(self, "logit_std", "e.g. --logit_std 1.0.", above=0)
        _check_number(
            self,
            "min_margin",
            "e.g. --min_margin 0.1; 0 keeps every pair whose chosen score is higher.",
            at_least=0,
        )
        _check_number(
            self, "eval_fraction", "e.g. --eval_fraction 0.1; 0 holds none out.", at_least=0, below=1
        )
        _check_number(
            self,
            "guard_tolerance",
            "a share of the value before training, e.g. --guard_tolerance 0.05.",
            at_least=0,
            below=1,
        )
        _check_number(
            self,
            "guard_max_drift",
            "e.g. --guard_max_drift 0.2 for 20%; leave it unset to only log the drifts.",
            above=0,
        )
        _check_number(self, "ema_decay", "e.g. --ema_decay 0.9; leave it unset for no EMA.", above=0, below=1)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Settings that are valid alone but do nothing, or contradict each other, together."""
        if self.push_to_hub:
            if not self.hub_model_id:
                raise ValueError(
                    "--push_to_hub needs --hub_model_id; pass --hub_model_id namespace/name as well, or drop --push_to_hub."
                )
            check_repo_id(self.hub_model_id, "--hub_model_id")
        else:
            for name in ("hub_model_id", "hub_private_repo"):
                if getattr(self, name):
                    raise ValueError(
                        f"--{name} is only used with --push_to_hub; add --push_to_hub, or drop it and publish the run "
                        "later with `tscale export RUN --repo-id ID`."
                    )
        if self.guard_reward_names() and self.eval_every == 0:
            raise ValueError(
                "--guard_rewards are judged at evals, but --eval_every is 0; set --eval_every 1 (or N), or drop the guards."
            )
        if self.eval_ses_every and (self.eval_every == 0 or self.eval_ses_every % self.eval_every):
            raise ValueError(
                f"--eval_ses_every {self.eval_ses_every} falls on rounds without an eval (--eval_every {self.eval_every}), so "
                "those searched evals would never run; make it a multiple of --eval_every, or 0."
            )
        if self.pairs_per_prompt != 1 and self.pairing != "top_k_vs_bottom_k":
            raise ValueError(
                f"--pairs_per_prompt {self.pairs_per_prompt} is only used by --pairing top_k_vs_bottom_k ({self.pairing} "
                "makes one pair per prompt); set --pairing top_k_vs_bottom_k, or drop --pairs_per_prompt."
            )
        if self.pairing == "top_k_vs_bottom_k" and 2 * self.pairs_per_prompt > self.budget:
            raise ValueError(
                f"--pairs_per_prompt {self.pairs_per_prompt} needs {2 * self.pairs_per_prompt} candidates per search (no "
                f"candidate is used twice), but --budget is {self.budget}; raise --budget or lower --pairs_per_prompt to "
                f"{max(1, self.budget // 2)}."
            )
        if self.lr_warmup_steps and self.lr_scheduler not in WARMUP_SCHEDULERS:
            raise ValueError(
                f"--lr_warmup_steps {self.lr_warmup_steps} has no effect with --lr_scheduler {self.lr_scheduler}; use "
                "--lr_scheduler constant_with_warmup, or drop --lr_warmup_steps."
            )
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError(
                "--resume_from_checkpoint continues the run in output_dir and --overwrite_output_dir deletes it; "
                "pass one of them."
            )

    def check_environment(self) -> None:
        """`ModelConfig`'s and `SearchConfig`'s, and the import of `module:callable` eval and guard rewards (see
        the module docstring)."""
        ModelConfig.check_environment(self)
        SearchConfig.check_environment(self)
        if self.eval_reward:
            check_reward_setting("eval_reward", self.eval_reward)
        self.guard_reward_names(import_callables=True)

    def guard_reward_names(self, *, import_callables: bool = False) -> list[str]:
        """`guard_rewards` as a list of reward names, each checked (one reward each, no weights).

        `import_callables`: also import `module:callable` names (`check_environment` does, once)."""
        if not self.guard_rewards:
            return []
        from rewards import check_reward_name
        from rewards.weighted import is_weighted_spec, short_reward_names

        names = [name.strip() for name in self.guard_rewards.split(",")]
        for name in names:
            if not name:
                raise ValueError(
                    f"--guard_rewards {self.guard_rewards!r} has an empty entry; separate reward names by single commas."
                )
            if is_weighted_spec(name):
                raise ValueError(
                    f"--guard_rewards entry {name!r} has a weight; each judge is one reward, logged on its own: drop ':{name.rsplit(':', 1)[-1]}'."
                )
            try:
                check_reward_name(name, import_callable=import_callables)
            except ValueError as error:
                raise ValueError(f"--guard_rewards: {error}") from error
        if len(set(names)) != len(names):
            raise ValueError(
                f"--guard_rewards {self.guard_rewards!r} lists a reward twice; give each judge once."
            )
        reserved = [
            name
            for name, short in zip(names, short_reward_names(names), strict=True)
            if short in RESERVED_GUARD_NAMES
        ]
        if reserved:
            raise ValueError(
                f"--guard_rewards {reserved} would be logged as a guard's own metric (guard/{', guard/'.join(RESERVED_GUARD_NAMES)}); "
                "rename the callable."
            )
        return names

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_config(args: Sequence[str] | None = None, prog: str | None = None) -> OnlineDPOConfig:
    """The training config from `--config file.yaml` and flag overrides (the recipe's and `tscale train`'s)."""
    return parse_args([OnlineDPOConfig], args, prog=prog)[0]
