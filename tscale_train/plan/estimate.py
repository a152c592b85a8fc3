"""The plan: GPU phases and CPU memory per process of a training run or `tscale ses`, and settings that fit."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from .components import (
    LoraSpec,
    PipelineSpec,
    component_bytes,
    resolve_pipeline_spec,
    reward_bytes,
    reward_clip_config_json,
)
from .measure import _search_transient, measure_dpo, measure_encode
from .memory import (
    CUDA_OVERHEAD_GIB,
    DEFAULT_GPU_MEMORY_GIB,
    GIB,
    PROCESS_CPU_OVERHEAD_GIB,
    MemoryPlan,
    _gib,
    _phase,
)
from .memory import _show as _show  # `tscale plan`'s table imports it from here
from .suggest import _suggest_ses, _suggest_training


def _resolution(spec: PipelineSpec, height: int | None, width: int | None) -> tuple[int, int]:
    height = height or spec.default_resolution
    width = width or spec.default_resolution
    multiple = spec.resolution_multiple
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ValueError(
                f"{name} {value} is not a positive multiple of {multiple}; use e.g. {max(multiple, value // multiple * multiple)}."
            )
    return height, width


def _reward_models(reward: str, spec: PipelineSpec) -> tuple[str | None, int]:
    """The CLIP config standing for a reward setting's largest model (None: no model), and all its models' bytes.

    A weighted setting ("pickscore:1.0,hpsv2:0.5") holds every one of its rewards on the GPU at once.
    """
    from rewards import parse_reward_spec

    configs = [reward_clip_config_json(name, spec) for name in parse_reward_spec(reward)]
    sized = sorted(
        ((reward_bytes(clip), clip) for clip in configs if clip is not None), key=lambda item: item[0]
    )
    return (sized[-1][1] if sized else None), sum(size for size, _ in sized)


def _upcast(sizes: dict[str, int], checkpointing: bool) -> dict[str, int]:
    """What a float8 base holds on top of its float8 weights (`component_bytes`'s upcast entries): a forward casts
    one layer up at a time, and the DPO backward keeps the up-cast copies of the block it recomputes, or of every
    layer without checkpointing. Counted in every phase, as the largest of them (a slight over-estimate outside DPO)."""
    if "upcast_block" not in sizes:
        return {}
    if checkpointing:
        return {"float8 weights cast up (one block)": sizes["upcast_block"]}
    return {"float8 weights cast up (every layer, no checkpointing)": sizes["upcast_all"]}


def _largest(parts: dict[str, int]) -> dict[str, int]:
    name = max(parts, key=parts.get)
    return {name: parts[name]}


def plan_training(
    config, num_processes: int = 1, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB, suggest: bool = True
) -> MemoryPlan:
    """The memory plan of an online SES -> DPO run (`OnlineDPOConfig`), per process.

    Phases: encode prompts (the text encoder on the GPU next to the resident transformer and VAE:
    with `offload_text_encoder` it stays on the CPU and visits the GPU only to encode a round's
    prompts), search and eval (sampling -> decode -> reward, one eval batch at a time), DPO step.
    """

    started = time.perf_counter()
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}.")
    if gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory must be > 0 GiB, got {gpu_memory_gib}.")
    spec = resolve_pipeline_spec(config.model)
    height, width = _resolution(spec, config.height, config.width)
    dtype = config.torch_dtype("cuda")  # planned for the GPU: "auto" is bfloat16 there
    # The GPU accelerate configs run bf16 mixed precision: the trainer's forwards run under autocast.
    autocast = dtype != torch.float32
    guidance = config.guidance_scale if config.guidance_scale is not None else spec.default_guidance_scale
    cfg = spec.uses_cfg(guidance)
    lora = LoraSpec(config.lora_rank, config.lora_target_modules)
    sizes = component_bytes(spec, dtype, lora, config.quantize_base)
    reward_clip, reward_gpu = _reward_models(config.reward, spec)
    eval_name = config.eval_reward or config.reward
    eval_clip, eval_gpu = _reward_models(eval_name, spec)
    eval_gpu = eval_gpu if eval_name != config.reward else 0
    # Guard rewards (held-out judges) wait on the GPU with the eval reward during an eval.
    guard_gpu = sum(_reward_models(name, spec)[1] for name in config.guard_reward_names())
    reward_batch = config.reward_batch_size or config.eval_batch_size
    text_encoder_resident = 0 if config.offload_text_encoder else sizes["text_encoder"]
    base = {
        "transformer": sizes["transformer"],
        "LoRA": sizes["lora"],
        "VAE": sizes["vae"],
        "text encoder (not offloaded)": text_encoder_resident,
        # From the second round on, the optimizer's states stay on the GPU through search and eval.
        "AdamW states": 2 * sizes["lora"],
        **_upcast(sizes, config.gradient_checkpointing),
    }
    phases: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}

    # Both reward models are loaded onto the GPU at set-up unless offloaded, so a distinct eval reward is there
    # too, and so are the judges.
    rewards_on_gpu = {"reward model": reward_gpu, "eval reward model": eval_gpu}
    if guard_gpu and not config.offload_reward:
        rewards_on_gpu["guard reward models"] = guard_gpu
    # The trainer encodes a round's prompts before its reward model moves to the GPU.
    rewards_resident = {} if config.offload_reward else rewards_on_gpu
    phases["encode"], breakdown["encode"] = _phase(
        {
            **{
                name: size
                for name, size in base.items()
                if name != "text encoder (not offloaded)" and not name.startswith("float8")
            },
            **rewards_resident,
            "text encoder": sizes["text_encoder"],
            f"text encoder forward ({spec.max_sequence_length} tokens)": measure_encode(spec, dtype),
        }
    )
    search = _search_transient(
        spec, dtype, lora, reward_clip, config.eval_batch_size, reward_batch, height, width, cfg, autocast
    )
    phases["search"], breakdown["search"] = _phase({**base, **rewards_on_gpu, **_largest(search)})
    pairs = config.train_batch_size
    dpo_peak, grads = measure_dpo(
        spec, dtype, lora, pairs, height, width, config.gradient_checkpointing, autocast
    )
    dpo = {
        **base,
        f"activations + grads ({2 * pairs} samples{', checkpointed' if config.gradient_checkpointing else ''})": dpo_peak,
    }
    if num_processes > 1:
        dpo["DDP gradient buckets"] = sizes["lora"]
    if not config.offload_reward:
        dpo.update(rewards_on_gpu)
    phases["dpo"], breakdown["dpo"] = _phase(dpo)
    evaluation = _search_transient(
        spec, dtype, lora, eval_clip, config.eval_batch_size, reward_batch, height, width, cfg, autocast
    )
    if eval_name == config.reward:
        eval_resident = {"reward model": reward_gpu}
    else:
        eval_resident = {
            "eval reward model": eval_gpu,
            "reward model": 0 if config.offload_reward else reward_gpu,
        }
    if guard_gpu:
        eval_resident["guard reward models"] = guard_gpu
    phases["eval"], breakdown["eval"] = _phase({**base, **eval_resident, **_largest(evaluation)})

    cpu_gib, cpu_breakdown = _training_cpu(
        config, spec, dtype, sizes, reward_gpu + eval_gpu + guard_gpu, height, width, cfg, num_processes
    )
    plan = MemoryPlan(
        kind="train",
        model=config.model,
        model_source=spec.source,
        height=height,
        width=width,
        dtype=str(dtype).removeprefix("torch."),
        num_processes=num_processes,
        gpu_memory_gib=gpu_memory_gib,
        phases=phases,
        breakdown=breakdown,
        cpu_gib=cpu_gib,
        cpu_breakdown=cpu_breakdown,
        settings={
            name: getattr(config, name)
            for name in (
                "gradient_checkpointing",
                "train_batch_size",
                "eval_batch_size",
                "reward_batch_size",
                "offload_text_encoder",
                "offload_reward",
                "lora_rank",
                "reward",
                "guidance_scale",
                "quantize_base",
            )
        },
        notes=_notes(spec, autocast),
    )
    if suggest and not plan.fits:
        _suggest_training(
            plan,
            config,
            lambda overrides: plan_training(
                dataclasses.replace(config, **overrides), num_processes, gpu_memory_gib, suggest=False
            ),
        )
    plan.seconds = round(time.perf_counter() - started, 2)
    return plan


def _notes(spec: PipelineSpec, autocast: bool) -> list[str]:
    notes = [
        f"component configs: {spec.source}; estimated from fake tensors, no weights loaded",
        f"includes {CUDA_OVERHEAD_GIB:.1f} GiB for the CUDA context and allocator; leave headroom for fragmentation",
    ]
    if autocast:
        notes.append(
            "forwards measured under bf16 autocast (the GPU accelerate configs use mixed_precision bf16)"
        )
    notes.extend(spec.family.notes)
    return notes


def _training_cpu(
    config,
    spec: PipelineSpec,
    dtype: torch.dtype,
    sizes: dict[str, int],
    rewards: int,
    height: int,
    width: int,
    cfg: bool,
    num_processes: int,
) -> tuple[float, dict[str, float]]:
    """CPU memory per process: offloaded models, the prompt embeddings (the LRU cache and the round's),
    a round's latents and pairs."""
    item = torch.empty((), dtype=dtype).element_size()
    latent = spec.latent_numel(height, width)
    prompts_here = math.ceil(config.prompts_per_round / num_processes)
    embedding = spec.family.prompt_embedding_numel(spec) * item
    parts = {
        "Python + CUDA libraries": PROCESS_CPU_OVERHEAD_GIB * GIB,
        "text encoder (offloaded)": sizes["text_encoder"] if config.offload_text_encoder else 0,
        "reward model(s) (offloaded)": rewards if config.offload_reward else 0,
        f"prompt-embedding cache ({config.max_cached_prompts} prompts{' + negative' if cfg else ''})": (
            (config.max_cached_prompts + (1 if cfg else 0)) * embedding
        ),
        # The trainer holds this round's shard of embeddings apart from the LRU cache until the next round.
        f"prompt embeddings of the round ({prompts_here} prompts)": prompts_here * embedding,
        # search_prompts keeps every candidate's clean latents of the round until pairs are chosen.
        f"candidate latents of a round ({prompts_here} prompts x budget {config.budget})": (
            prompts_here * config.budget * latent * item
        ),
        f"pairs ({prompts_here} prompts x {config.pairs_per_prompt} x (1 + {config.replay_rounds} replay))": (
            prompts_here * config.pairs_per_prompt * 2 * latent * 4 * (1 + config.replay_rounds)
        ),
        "previews": prompts_here * config.budget * 3 * config.preview_size**2,
    }
    parts = {name: value for name, value in parts.items() if value}
    return _gib(sum(parts.values())), {name: _gib(value) for name, value in parts.items()}


# ---- standalone SES ---------------------------------------------------------------------------------------
def plan_ses(
    model: str,
    *,
    height: int | None = None,
    width: int | None = None,
    eval_batch_size: int = 8,
    guidance_scale: float | None = None,
    reward: str = "pickscore",
    reward_batch_size: int | None = None,
    dtype: str = "auto",
    lora: str | None = None,
    quantize_base: str = "none",
    num_processes: int = 1,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    suggest: bool = True,
) -> MemoryPlan:
    """The memory plan of `tscale ses`: the whole pipeline stays on the GPU (no offloading), the
    reward model too, and each batch of `eval_batch_size` candidates is sampled, decoded and scored.
    `num_processes` does not change the per-process peak (each process holds a full pipeline)."""
    from ..loading import parse_dtype

    started = time.perf_counter()
    if gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory must be > 0 GiB, got {gpu_memory_gib}.")
    if eval_batch_size < 1:
        raise ValueError(f"--eval-batch-size must be >= 1, got {eval_batch_size}.")
    spec = resolve_pipeline_spec(model)
    height, width = _resolution(spec, height, width)
    torch_dtype = torch.bfloat16 if dtype == "auto" else parse_dtype(dtype)
    guidance = guidance_scale if guidance_scale is not None else spec.default_guidance_scale
    cfg = spec.uses_cfg(guidance)
    sizes = component_bytes(spec, torch_dtype, None, quantize_base)
    clip_json, reward_gpu = _reward_models(reward, spec)
    lora_bytes = 0
    if lora is not None and Path(lora).expanduser().exists():
        path = Path(lora).expanduser()
        files = [path] if path.is_file() else list(path.glob("*.safetensors"))
        lora_bytes = sum(item.stat().st_size for item in files)
    resident = {
        "transformer": sizes["transformer"],
        "text encoder": sizes["text_encoder"],
        "VAE": sizes["vae"],
        "reward model": reward_gpu,
        "LoRA file": lora_bytes,
        **_upcast(sizes, True),
    }
    phases: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    phases["encode"], breakdown["encode"] = _phase(
        {
            **resident,
            f"text encoder forward ({spec.max_sequence_length} tokens)": measure_encode(spec, torch_dtype),
        }
    )
    search = _search_transient(
        spec,
        torch_dtype,
        None,
        clip_json,
        eval_batch_size,
        reward_batch_size or eval_batch_size,
        height,
        width,
        cfg,
        False,
    )
    phases["search"], breakdown["search"] = _phase({**resident, **_largest(search)})
    cpu_parts = {"Python + CUDA libraries": PROCESS_CPU_OVERHEAD_GIB * GIB}
    plan = MemoryPlan(
        kind="ses",
        model=model,
        model_source=spec.source,
        height=height,
        width=width,
        dtype=str(torch_dtype).removeprefix("torch."),
        num_processes=num_processes,
        gpu_memory_gib=gpu_memory_gib,
        phases=phases,
        breakdown=breakdown,
        cpu_gib=_gib(sum(cpu_parts.values())),
        cpu_breakdown={name: _gib(value) for name, value in cpu_parts.items()},
        settings={
            "eval_batch_size": eval_batch_size,
            "reward": reward,
            "guidance_scale": guidance,
            "quantize_base": quantize_base,
        },
        notes=_notes(spec, False),
    )
    if suggest and not plan.fits:
        arguments = dict(
            model=model,
            height=height,
            width=width,
            eval_batch_size=eval_batch_size,
            guidance_scale=guidance_scale,
            reward=reward,
            reward_batch_size=reward_batch_size,
            dtype=dtype,
            lora=lora,
            quantize_base=quantize_base,
            num_processes=num_processes,
            gpu_memory_gib=gpu_memory_gib,
            suggest=False,
        )
        _suggest_ses(plan, lambda overrides: plan_ses(**{**arguments, **overrides}))
    plan.seconds = round(time.perf_counter() - started, 2)
    return plan
