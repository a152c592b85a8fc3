"""`OnlineDPOConfig`: every setting of the online SES -> Diffusion-DPO loop.

TRL style: one dataclass, parsed by `HfArgumentParser` from a YAML file (`--config file.yaml`)
with command-line overrides (`--beta 5 --rounds 10`). `parse_config()` does both.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .lora import LORA_TARGET_PRESETS

SIGMA_SAMPLING = ("sampler", "logit_normal", "uniform")
REPORT_TO = ("none", "tensorboard", "wandb", "all")


def _help(text: str) -> dict:
    return {"metadata": {"help": text}}


@dataclass
class OnlineDPOConfig:
    # model
    model: str = field(default="black-forest-labs/FLUX.2-klein-4B", **_help("hub id, local pipeline dir, or offline 'tiny', 'tiny-base', 'shapes-klein-4b'"))
    dtype: str = field(default="bfloat16", **_help("weights dtype of the frozen model (LoRA parameters stay float32)"))
    height: int | None = field(default=None, **_help("image height (default: 1024, 64 for tiny)"))
    width: int | None = field(default=None, **_help("image width (default: 1024, 64 for tiny)"))
    guidance_scale: float | None = field(default=None, **_help("CFG scale; default 1 (distilled) or 4 (base)"))
    gradient_checkpointing: bool = field(default=True, **_help("recompute activations in the DPO backward (needed at 1024px)"))
    offload_text_encoder: bool = field(
        default=True,
        **_help("keep the text encoder on the CPU and move it to the GPU only to encode a round's prompts"),
    )
    offload_reward: bool = field(default=True, **_help("move the reward model to CPU while DPO trains"))
    # LoRA
    lora_rank: int = field(default=16, **_help("LoRA rank"))
    lora_alpha: float | None = field(default=None, **_help("LoRA alpha (default: rank)"))
    lora_dropout: float = field(default=0.0, **_help("LoRA dropout"))
    lora_target_modules: str = field(
        default="attention",
        **_help(f"regex over full module names, or a preset: {', '.join(LORA_TARGET_PRESETS)}"),
    )
    lora_init: str = field(default="default", **_help("'default' (B = 0) or a peft init name such as 'gaussian'"))
    # prompts
    prompts: str | None = field(default=None, **_help("a .txt/.jsonl/.csv file or a datasets name (default: the bundled set)"))
    prompt_column: str = field(default="prompt", **_help("column of a .jsonl/.csv/dataset holding the prompt"))
    eval_prompts: str | None = field(default=None, **_help("held-out prompts; default: split off `eval_fraction` of `prompts`"))
    eval_fraction: float = field(default=0.1, **_help("share of prompts held out for eval when eval_prompts is unset"))
    max_eval_prompts: int = field(default=16, **_help("cap on held-out eval prompts"))
    # search (what `tscale ses` takes)
    reward: str = field(default="pickscore", **_help("pickscore, hpsv2, clip, or package.module:callable"))
    eval_reward: str | None = field(default=None, **_help("reward of the eval metrics (default: `reward`)"))
    budget: int = field(default=20, **_help("SES candidates per prompt, base noise included"))
    popsize: int = field(default=10, **_help("CEM population per generation"))
    k_elites: int = field(default=5, **_help("elite archive size"))
    wavelet: str = field(default="db1", **_help("wavelet of the spectral decomposition"))
    level: int = field(default=4, **_help("wavelet level (lowered automatically for small latents)"))
    preview_steps: int | None = field(default=None, **_help("sampler steps while searching (default: the model's)"))
    eval_batch_size: int = field(default=4, **_help("candidates generated (and decoded) per batch"))
    reward_batch_size: int | None = field(default=None, **_help("images per reward forward (default: eval_batch_size)"))
    search_group_size: int = field(default=8, **_help("prompts searched in lockstep at once; bounds a generation's size"))
    max_cached_prompts: int = field(default=64, **_help("prompt embeddings kept in CPU memory per process (LRU)"))
    # pairing
    pairing: str = field(default="best_vs_worst", **_help("best_vs_worst, best_vs_base or top_k_vs_bottom_k"))
    pairs_per_prompt: int = field(default=1, **_help("k of top_k_vs_bottom_k"))
    min_margin: float = field(default=0.0, **_help("drop pairs whose reward margin is below this"))
    preview_size: int = field(default=64, **_help("side of the preview images kept with each pair"))
    # DPO
    beta: float = field(
        default=100.0,
        **_help("DPO beta; 100 as flow_grpo / Flow-Factory on SD3.5; 1-10 on the tiny model. Watch train/inside_abs"),
    )
    learning_rate: float = field(default=5e-4, **_help("AdamW learning rate"))
    adam_weight_decay: float = field(default=0.0, **_help("AdamW weight decay"))
    lr_scheduler: str = field(default="constant_with_warmup", **_help("diffusers.optimization scheduler name"))
    lr_warmup_steps: int = field(default=0, **_help("warmup optimizer steps"))
    train_batch_size: int = field(default=1, **_help("pairs per process per micro-step (2 latents each)"))
    gradient_accumulation_steps: int = field(default=1, **_help("micro-steps per optimizer step"))
    max_grad_norm: float = field(default=1.0, **_help("gradient clipping norm"))
    epochs_per_round: int = field(default=5, **_help("passes over a round's pairs"))
    replay_rounds: int = field(default=0, **_help("also train on the pairs of the last K rounds"))
    sigma_sampling: str = field(default="sampler", **_help("sampler, logit_normal or uniform"))
    logit_mean: float = field(default=0.0, **_help("logit-normal mean"))
    logit_std: float = field(default=1.0, **_help("logit-normal std"))
    # loop
    rounds: int = field(default=10, **_help("search -> pairs -> DPO rounds"))
    prompts_per_round: int = field(default=32, **_help("prompts searched per round, over all processes"))
    eval_every: int = field(default=1, **_help("eval budget-0 reward every N rounds (0: never)"))
    eval_ses_every: int = field(default=0, **_help("also eval the SES reward every N rounds (0: only at the end)"))
    eval_budget: int | None = field(default=None, **_help("SES budget of eval/reward_ses (default: budget)"))
    checkpoint_every: int = field(default=1, **_help("checkpoint every N rounds (0: only at the end)"))
    checkpoints_total_limit: int | None = field(default=3, **_help("keep only the last N checkpoints"))
    resume_from_checkpoint: str | None = field(default=None, **_help("'latest' or a checkpoint path"))
    seed: int = field(default=0, **_help("seed of everything"))
    # logging and output
    output_dir: str = field(default="runs/flux2_klein_dpo", **_help("where the LoRA, metrics, checkpoints and pairs go"))
    report_to: str = field(default="none", **_help("none, tensorboard, wandb or all (accelerate trackers)"))
    tracker_project: str = field(default="tscale-train", **_help("tracker project name"))
    progress: bool = field(default=True, **_help("progress bars on the main process"))

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}; about 100 for FLUX.2-klein-4B, 1-10 for the tiny model.")
        if self.sigma_sampling not in SIGMA_SAMPLING:
            raise ValueError(f"sigma_sampling {self.sigma_sampling!r} is not one of {SIGMA_SAMPLING}.")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to {self.report_to!r} is not one of {REPORT_TO}.")
        positive = (
            "rounds", "prompts_per_round", "budget", "popsize", "train_batch_size",
            "gradient_accumulation_steps", "epochs_per_round", "lora_rank", "k_elites", "eval_batch_size",
            "search_group_size", "max_cached_prompts",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.popsize > self.budget:
            raise ValueError(f"popsize ({self.popsize}) is larger than budget ({self.budget}); lower popsize or raise budget.")
        if self.reward_batch_size is not None and self.reward_batch_size < 1:
            raise ValueError(f"reward_batch_size must be >= 1 (or unset), got {self.reward_batch_size}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_config(args: list[str] | None = None) -> OnlineDPOConfig:
    """`--config file.yaml` supplies defaults; every other flag overrides them (TRL's TrlParser pattern)."""
    from transformers import HfArgumentParser

    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(OnlineDPOConfig)
    parser.add_argument("--config", default=None, help="YAML file of OnlineDPOConfig fields")
    if "--config" in args:
        position = args.index("--config")
        path = Path(args[position + 1])
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
        values = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(OnlineDPOConfig)})
        if unknown:
            raise ValueError(f"{str(path)!r} has unknown fields {unknown}; see OnlineDPOConfig for the valid ones.")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)[0]
