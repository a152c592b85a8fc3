"""`tscale plan`: estimate the peak GPU memory of every phase of a run before loading any weights.

Why: a FLUX.2-klein run that does not fit finds out minutes in, after loading 16 GB of weights, in
the middle of its first DPO step. The plan builds each component from its real config on the meta
device, materialises it as fake tensors (`FakeTensorMode`: shapes, dtypes and devices, no storage),
runs the same forward/backward the run would run, and counts the bytes of every live storage with a
small dispatch-mode tracker (`LiveMemoryTracker`). Nothing is allocated, so the full 25-block
transformer forward+backward at 1024px takes a few seconds on a CPU.

What it counts, per process (the GPU is the accelerator device):

- resident: the parameters and buffers of what is on the GPU in that phase (transformer, LoRA,
  VAE, reward model, text encoder), AdamW states, DDP gradient buckets;
- transient: the peak of live op outputs (activations, saved tensors, gradients) during the phase;
- `CUDA_OVERHEAD_GIB`: CUDA context, cuBLAS workspaces and caching-allocator rounding, which fake
  tensors cannot see.

It does not count allocator fragmentation beyond that, so leave a few GiB of headroom; the plan
is an estimate, not a guarantee.

Three things make fake tensors on a CPU-only machine behave like the GPU run (measured here):
- the fake tensors live on the CPU device: a backward over fake *CUDA* tensors fails without a
  real CUDA device (the autograd engine initialises a CUDA device thread);
- `scaled_dot_product_attention` on fake tensors picks the math kernel (it cannot query a GPU),
  which materialises the L x L attention matrix (4 GiB per forward at 1024px); `_FusedAttention`
  routes it to the flash / memory-efficient kernels' meta functions, as an H100 would;
- CPU autocast keeps e.g. layer_norm in bf16 where CUDA autocast runs it in float32, so the
  accelerate bf16 mixed precision of the GPU runs is emulated by `_CudaAutocast`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3
# CUDA context (~0.5 GiB on an H100), cuBLAS/cuDNN workspaces and caching-allocator rounding: real
# memory that no tensor owns, so fake tensors cannot see it.
CUDA_OVERHEAD_GIB = 1.0
# A Python process with torch, CUDA libraries, diffusers and transformers imported (resident set).
PROCESS_CPU_OVERHEAD_GIB = 2.5
DEFAULT_GPU_MEMORY_GIB = 80.0
SHAPES_MODEL_NAME = "shapes-klein-4b"
PHASE_LABELS = {
    "encode": "encode prompts",
    "search": "search",
    "dpo": "DPO step",
    "eval": "eval",
}


# ---- the tracker --------------------------------------------------------------------------------
class LiveMemoryTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of storages created while it is active, and their peak.

    Every op output whose storage is not one of the op's inputs' storages (views, in-place and
    `out=` ops share their input's storage) is a new allocation; a weakref finalizer on the storage
    subtracts it when the last tensor using it dies. Storages that existed before the tracker
    (weights, inputs made outside) are never counted, so `current` and `peak` are what the tracked
    code allocated on top of them. Works on real and fake tensors; gradients and tensors saved for
    backward are counted like any op output (the autograd engine's threads inherit the mode).
    """

    def __init__(self, device_type: str | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def reset_peak(self) -> None:
        self.peak = self.current

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def _track(self, tensor: torch.Tensor, input_storages: set[int]) -> None:
        if self.device_type is not None and tensor.device.type != self.device_type:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in input_storages or key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        kwargs = kwargs or {}
        inputs = {leaf.untyped_storage()._cdata for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, inputs)
        return out


def _fused_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """SDPA through the kernel a recent NVIDIA GPU would pick: flash (bf16/fp16, head dim <= 256,
    no mask), else memory-efficient (head dim a multiple of 8), else the math fall-back."""
    if key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeats, dim=-3)
        value = value.repeat_interleave(repeats, dim=-3)
    head_dim = query.shape[-1]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and head_dim <= 256 and head_dim % 8 == 0:
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale
        )[0]
    if head_dim % 8 == 0 and query.dim() == 4:
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:
            bias = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~bias, float("-inf"))
        if bias is not None:
            bias = bias.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, needs_grad, dropout_p, is_causal, scale=scale
        )[0]
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


class _FusedAttention(torch.overrides.TorchFunctionMode):
    """Routes `F.scaled_dot_product_attention` to `_fused_sdpa` (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _fused_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


# Fake tensors stand for GPU tensors on the CPU device: the autograd engine needs a real CUDA device
# to run a backward over (even fake) CUDA tensors, and the memory of an op does not depend on the
# device once attention and autocast behave as on the GPU (`_FusedAttention`, `_CudaAutocast`).
_FAKE_DEVICE = "cpu"

# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp), at the Python API level: these run in
# the low-precision dtype, these in float32. CPU autocast has other lists (its layer_norm stays
# bf16), so it is emulated here rather than borrowed.
_LOWER_PRECISION_FUNCS = {
    torch.nn.functional.linear, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
    torch.nn.functional.conv3d, torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
    torch.nn.functional.conv_transpose3d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.addmm, torch.einsum,
    torch.nn.functional.scaled_dot_product_attention,
}
_FLOAT32_FUNCS = {
    torch.nn.functional.layer_norm, torch.nn.functional.group_norm, torch.softmax, torch.Tensor.softmax,
    torch.nn.functional.softmax, torch.log_softmax, torch.nn.functional.log_softmax, torch.exp, torch.Tensor.exp,
    torch.pow, torch.Tensor.pow, torch.rsqrt, torch.Tensor.rsqrt, torch.nn.functional.mse_loss,
    torch.nn.functional.interpolate, torch.nn.functional.cosine_similarity, torch.nn.functional.logsigmoid,
}


class _CudaAutocast(torch.overrides.TorchFunctionMode):
    """`torch.autocast("cuda", bf16)` emulated on fake CPU tensors: the casts it inserts (and so the
    dtype of what autograd saves) are the ones a GPU run under accelerate's bf16 mixed precision makes."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map

        kwargs = kwargs or {}
        target = self.dtype if func in _LOWER_PRECISION_FUNCS else torch.float32 if func in _FLOAT32_FUNCS else None
        if target is not None:

            def cast(value):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != target:
                    return value.to(target)
                return value

            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        return func(*args, **kwargs)


def _backward(loss: torch.Tensor) -> None:
    """`loss.backward()` without passing through the torch-function modes: a mode is switched off
    while it handles a call, so `loss.backward()` would recompute checkpointed blocks without them."""
    from torch.autograd.graph import _engine_run_backward

    _engine_run_backward((loss,), (torch.ones_like(loss),), False, False, (), allow_unreachable=True, accumulate_grad=True)


@contextmanager
def fake_gpu() -> Iterator[Any]:
    """A fresh `FakeTensorMode` with GPU attention kernels; modules `.to_empty(device=_FAKE_DEVICE)` in it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode, _FusedAttention():
        yield mode


def module_bytes(module: torch.nn.Module, predicate: Callable[[str], bool] | None = None) -> int:
    """Bytes of a module's parameters and buffers (meta or fake tensors are fine), each storage once."""
    seen: set[int] = set()
    total = 0
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if predicate is not None and not predicate(name):
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


# ---- what the model is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineSpec:
    """The component configs of a pipeline (as JSON, so the spec is hashable for caching)."""

    model: str
    source: str
    transformer_json: str
    text_encoder_json: str
    vae_json: str
    is_distilled: bool
    default_resolution: int
    resolution_multiple: int
    max_sequence_length: int
    text_encoder_out_layers: tuple[int, ...]
    reward_clip_json: str | None = None  # a CLIPConfig for CLIP-style rewards of this model (tiny: the kit's)

    @property
    def transformer(self) -> dict:
        return json.loads(self.transformer_json)

    @property
    def text_encoder(self) -> dict:
        return json.loads(self.text_encoder_json)

    @property
    def vae(self) -> dict:
        return json.loads(self.vae_json)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.get("block_out_channels", (128, 256, 512, 512))) - 1)


def _to_json(config: Any) -> str:
    return json.dumps(dict(config), sort_keys=True, default=list)


def _read_pipeline_dir(model: str, directory: Path, source: str) -> PipelineSpec:
    """Read the component configs of a saved `Flux2KleinPipeline` directory (no weights)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import AutoConfig

    index = json.loads((directory / "model_index.json").read_text())
    transformer = Flux2Transformer2DModel.load_config(str(directory), subfolder="transformer")
    vae = AutoencoderKLFlux2.load_config(str(directory), subfolder="vae")
    text_encoder = AutoConfig.from_pretrained(str(directory / "text_encoder")).to_dict()
    extra_path = directory / "tscale_tiny.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    vae_scale_factor = 2 ** (len(vae.get("block_out_channels", (128, 256, 512, 512))) - 1)
    reward_clip = None
    pickscore_dir = directory.parent / "pickscore"
    if extra and (pickscore_dir / "config.json").is_file():
        reward_clip = _to_json(json.loads((pickscore_dir / "config.json").read_text()))
    return PipelineSpec(
        model=model,
        source=source,
        transformer_json=_to_json(transformer),
        text_encoder_json=_to_json(text_encoder),
        vae_json=_to_json(vae),
        is_distilled=bool(index.get("is_distilled", False)),
        default_resolution=int(extra.get("resolution", 128 * vae_scale_factor)),
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=int(extra.get("max_sequence_length", 512)),
        text_encoder_out_layers=tuple(extra.get("text_encoder_out_layers", (9, 18, 27))),
        reward_clip_json=reward_clip,
    )


def _known_spec(model: str, known: dict, source: str) -> PipelineSpec:
    from .real_configs import FLUX2_KLEIN_MAX_SEQUENCE_LENGTH, FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS

    vae_scale_factor = 2 ** (len(known["vae"]["block_out_channels"]) - 1)
    return PipelineSpec(
        model=model,
        source=source,
        transformer_json=_to_json(known["transformer"]),
        text_encoder_json=_to_json(known["text_encoder"]),
        vae_json=_to_json(known["vae"]),
        is_distilled=bool(known["is_distilled"]),
        default_resolution=128 * vae_scale_factor,
        resolution_multiple=vae_scale_factor * 2,
        max_sequence_length=FLUX2_KLEIN_MAX_SEQUENCE_LENGTH,
        text_encoder_out_layers=tuple(FLUX2_KLEIN_TEXT_ENCODER_OUT_LAYERS),
    )


def _hub_cache_dir(model: str) -> Path | None:
    """The model's configs from the local HF cache, if they are there (never the network)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(model, allow_patterns=["model_index.json", "*/config.json"], local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - any failure means "not cached"; the bundled configs follow
        return None
    return path if (path / "model_index.json").is_file() and (path / "transformer" / "config.json").is_file() else None


@functools.lru_cache(maxsize=16)
def resolve_pipeline_spec(model: str) -> PipelineSpec:
    """Component configs for `model`: the tiny kit's dir, a local dir, the HF cache, or the bundled copy.

    Raises ValueError/FileNotFoundError with the fix for a model it cannot describe.
    """
    from .real_configs import FLUX2_KLEIN_4B, known_pipeline_config

    if model == SHAPES_MODEL_NAME:
        # The real-shape kit: FLUX.2-klein-4B dimensions with one double and one single block.
        known = known_pipeline_config(FLUX2_KLEIN_4B)
        known["transformer"].update(num_layers=1, num_single_layers=1)
        return _known_spec(model, known, "bundled klein-4B config, 1 + 1 blocks")
    from .loading import TINY_MODELS, check_model_source

    if model in TINY_MODELS:
        from .tiny import tiny_pipeline_dir

        return _read_pipeline_dir(model, tiny_pipeline_dir(distilled=TINY_MODELS[model]), "tiny kit")
    source = check_model_source(model)
    if Path(source).is_dir():
        return _read_pipeline_dir(model, Path(source), "local dir")
    cached = _hub_cache_dir(source)
    if cached is not None:
        return _read_pipeline_dir(model, cached, "HF cache")
    known = known_pipeline_config(source)
    if known is None:
        raise ValueError(
            f"no component configs for {model!r}: it is not in the local HF cache and not a bundled model "
            "(black-forest-labs/FLUX.2-klein-4B, black-forest-labs/FLUX.2-klein-base-4B); pass a local pipeline dir."
        )
    return _known_spec(model, known, "bundled config")


def reward_clip_config_json(reward: str, spec: PipelineSpec) -> str | None:
    """The CLIPConfig (JSON) that stands for `reward` on the GPU, or None for rewards with no model.

    pickscore is CLIP-H/14; hpsv2 and clip are open_clip ViT-H-14 of the same dimensions, so the
    transformers CLIP-H config stands in for them. Tiny models use the kit's tiny CLIP.
    `module:callable` rewards (synthetic, user-defined) are counted as 0.
    """
    from .real_configs import PICKSCORE_CLIP

    if ":" in reward or reward.strip().lower() not in ("pickscore", "hpsv2", "clip"):
        return None
    if spec.reward_clip_json is not None:
        return spec.reward_clip_json
    return _to_json(PICKSCORE_CLIP)


# ---- building components on the meta device -------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    rank: int
    target_modules: str


def _meta_transformer(spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, checkpointing: bool = False):
    from diffusers import Flux2Transformer2DModel

    from .lora import add_lora

    with _quiet_diffusers(), torch.device("meta"):
        transformer = Flux2Transformer2DModel.from_config(spec.transformer).to(dtype)
    transformer.requires_grad_(False)
    if lora is not None:
        add_lora(transformer, rank=lora.rank, target_modules=lora.target_modules)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' "modules that should be kept in float32: []" warning of `.to(dtype)`."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _meta_vae(spec: PipelineSpec, dtype: torch.dtype):
    from diffusers import AutoencoderKLFlux2

    with _quiet_diffusers(), torch.device("meta"):
        return AutoencoderKLFlux2.from_config(spec.vae).to(dtype).requires_grad_(False)


def _meta_text_encoder(spec: PipelineSpec, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config.from_dict(spec.text_encoder)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return Qwen3ForCausalLM(config).to(dtype).requires_grad_(False).eval()


def _meta_clip(clip_json: str, dtype: torch.dtype = torch.float32):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_dict(json.loads(clip_json))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return CLIPModel(config).to(dtype).requires_grad_(False).eval()


@functools.lru_cache(maxsize=64)
def component_bytes(spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None = None) -> dict[str, int]:
    """Weights of each component: transformer, lora (fp32), vae, text_encoder (in `dtype`)."""
    transformer = _meta_transformer(spec, dtype, lora)
    sizes = {
        "transformer": module_bytes(transformer, lambda name: "lora_" not in name),
        "lora": module_bytes(transformer, lambda name: "lora_" in name),
        "vae": module_bytes(_meta_vae(spec, dtype)),
        "text_encoder": module_bytes(_meta_text_encoder(spec, dtype)),
    }
    return sizes


@functools.lru_cache(maxsize=16)
def reward_bytes(clip_json: str | None) -> int:
    """Weights of the reward model (float32, as `load_reward_for` loads it)."""
    return 0 if clip_json is None else module_bytes(_meta_clip(clip_json))


# ---- measured transients ----------------------------------------------------------------------------
def _autocast(enabled: bool):
    return _CudaAutocast(torch.bfloat16) if enabled else contextlib.nullcontext()


def _transformer_inputs(spec: PipelineSpec, batch: int, tokens_h: int, tokens_w: int, dtype: torch.dtype):
    channels = spec.transformer["in_channels"]
    joint = spec.transformer["joint_attention_dim"]
    text = spec.max_sequence_length
    return dict(
        hidden_states=torch.randn(batch, tokens_h * tokens_w, channels, device=_FAKE_DEVICE, dtype=dtype),
        timestep=torch.rand(batch, device=_FAKE_DEVICE, dtype=dtype),
        guidance=None,
        encoder_hidden_states=torch.randn(batch, text, joint, device=_FAKE_DEVICE, dtype=dtype),
        txt_ids=torch.zeros(batch, text, 4, device=_FAKE_DEVICE, dtype=torch.long),
        img_ids=torch.zeros(batch, tokens_h * tokens_w, 4, device=_FAKE_DEVICE, dtype=torch.long),
        return_dict=False,
    )


def _with_blocks(spec: PipelineSpec, double: int, single: int) -> PipelineSpec:
    config = spec.transformer
    config.update(num_layers=double, num_single_layers=single)
    return dataclasses.replace(spec, transformer_json=_to_json(config))


def _blocks(spec: PipelineSpec) -> tuple[int, int]:
    config = spec.transformer
    return int(config["num_layers"]), int(config["num_single_layers"])


def measure_sampling(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, batch: int, height: int, width: int,
    cfg: bool, autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step; see `_measure_sampling`.

    Without grad every block frees its transient before the next one runs and the residual streams
    keep their size, so the peak of a 1 + 1 block model is the peak of the full one (checked
    against the full 25-block klein at 1024px); measuring 2 blocks instead of 25 is ~10x faster.
    """
    double, single = _blocks(spec)
    small = _with_blocks(spec, min(double, 1), min(single, 1))
    return _measure_sampling(small, dtype, lora, batch, height, width, cfg, autocast)


def measure_dpo(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec, pairs: int, height: int, width: int,
    checkpointing: bool, autocast: bool, extrapolate: bool = True,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients); see `_measure_dpo`.

    Each block adds the same saved activations (its inputs with checkpointing, everything without),
    so the peak is linear in the block counts: measured at (1, 1), (2, 1) and (1, 2) blocks and
    extrapolated, which equals the full 25-block measurement to the byte (checked at 1024px with and
    without checkpointing) at about half the time. `extrapolate=False` measures the full model.
    """
    double, single = _blocks(spec)
    if not extrapolate or double < 2 or single < 2:
        return _measure_dpo(spec, dtype, lora, pairs, height, width, checkpointing, autocast)
    args = (dtype, lora, pairs, height, width, checkpointing, autocast)
    base, _ = _measure_dpo(_with_blocks(spec, 1, 1), *args)
    per_double = _measure_dpo(_with_blocks(spec, 2, 1), *args)[0] - base
    per_single = _measure_dpo(_with_blocks(spec, 1, 2), *args)[0] - base
    lora_grads = component_bytes(spec, dtype, lora)["lora"]
    return base + (double - 1) * per_double + (single - 1) * per_single, lora_grads


@functools.lru_cache(maxsize=128)
def _measure_sampling(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, batch: int, height: int, width: int,
    cfg: bool, autocast: bool,
) -> int:
    """Peak bytes of one no-grad denoising step at `batch` (the pipeline's cond, then uncond, forward).

    With CFG the klein pipeline runs the conditional and unconditional forwards one after the other
    at the same batch, so CFG adds one prediction and the negative embeddings, not a doubled batch.
    """
    tokens_h, tokens_w = height // spec.resolution_multiple, width // spec.resolution_multiple
    transformer = _meta_transformer(spec, dtype, lora)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad(), _autocast(autocast):
            inputs = _transformer_inputs(spec, batch, tokens_h, tokens_w, dtype)
            negative = inputs["encoder_hidden_states"].clone() if cfg else None
            prediction = transformer(**inputs)[0]
            if cfg:
                uncond = transformer(**dict(inputs, encoder_hidden_states=negative))[0]
                prediction = uncond + 2.0 * (prediction - uncond)
            latents = inputs["hidden_states"] - 0.25 * prediction.to(dtype)
            del latents, prediction, negative, inputs
        return tracker.peak


@functools.lru_cache(maxsize=64)
def measure_decode(spec: PipelineSpec, dtype: torch.dtype, batch: int, height: int, width: int) -> tuple[int, int]:
    """(peak bytes of the VAE decode of `batch` latents, bytes of the float32 images it leaves)."""
    vae = _meta_vae(spec, dtype)
    channels = spec.vae.get("latent_channels", 32)
    factor = spec.vae_scale_factor
    with fake_gpu():
        vae = vae.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            latents = torch.randn(batch, channels, height // factor, width // factor, device=_FAKE_DEVICE, dtype=dtype)
            decoded = vae.decode(latents, return_dict=False)[0]
            del latents
            images = (decoded / 2 + 0.5).clamp(0, 1).float()
            del decoded
            kept = images.numel() * images.element_size()
        return tracker.peak, kept


@functools.lru_cache(maxsize=64)
def measure_reward(clip_json: str | None, batch: int, height: int, width: int) -> int:
    """Peak bytes of scoring `batch` images (already on the GPU) with a CLIP-style reward."""
    if clip_json is None:
        return 0
    model = _meta_clip(clip_json)
    size = model.config.vision_config.image_size
    text_length = model.config.text_config.max_position_embeddings
    with fake_gpu():
        model = model.to_empty(device=_FAKE_DEVICE)
        images = torch.rand(batch, 3, height, width, device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            short = min(height, width)
            resized = torch.nn.functional.interpolate(
                images, size=(round(height * size / short), round(width * size / short)), mode="bicubic", antialias=True
            ).clamp_(0, 1)
            top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
            pixels = (resized[..., top : top + size, left : left + size] - 0.5) / 0.25
            del resized
            image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
            del pixels
            tokens = torch.zeros(batch, text_length, dtype=torch.long, device=_FAKE_DEVICE)
            text_embeds = model.get_text_features(input_ids=tokens, attention_mask=torch.ones_like(tokens)).pooler_output
            scores = (image_embeds * text_embeds).sum(-1)
            del scores, image_embeds, text_embeds, tokens
        return tracker.peak


@functools.lru_cache(maxsize=16)
def measure_encode(spec: PipelineSpec, dtype: torch.dtype) -> int:
    """Peak bytes of encoding one prompt of `max_sequence_length` tokens, as `Flux2KleinPipeline` does
    (all hidden states, three of them stacked into the transformer's text input)."""
    text_encoder = _meta_text_encoder(spec, dtype)
    length = spec.max_sequence_length
    with fake_gpu():
        text_encoder = text_encoder.to_empty(device=_FAKE_DEVICE)
        tracker = LiveMemoryTracker()
        with tracker, torch.no_grad():
            input_ids = torch.zeros(1, length, dtype=torch.long, device=_FAKE_DEVICE)
            output = text_encoder(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True, use_cache=False
            )
            stacked = torch.stack([output.hidden_states[k] for k in spec.text_encoder_out_layers], dim=1)
            embeds = stacked.permute(0, 2, 1, 3).reshape(1, length, -1).clone()
            del output, stacked, embeds
        return tracker.peak


@functools.lru_cache(maxsize=256)
def _measure_dpo(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec, pairs: int, height: int, width: int,
    checkpointing: bool, autocast: bool,
) -> tuple[int, int]:
    """(peak bytes of one DPO micro-step, bytes of the LoRA gradients it leaves).

    As the trainer does it: the chosen and rejected latents of `pairs` pairs in one batch of
    2 x pairs, a no-grad reference forward with the adapters disabled, the trained forward (with
    gradient checkpointing if set), the flow-DPO loss and its backward into the fp32 LoRA grads.
    """
    from .dpo import flow_dpo_loss

    tokens_h, tokens_w = height // spec.resolution_multiple, width // spec.resolution_multiple
    transformer = _meta_transformer(spec, dtype, lora, checkpointing=checkpointing)
    with fake_gpu():
        transformer = transformer.to_empty(device=_FAKE_DEVICE)
        transformer.train()
        lora_parameters = [p for name, p in transformer.named_parameters() if "lora_" in name]
        tracker = LiveMemoryTracker()
        with tracker:
            inputs = _transformer_inputs(spec, 2 * pairs, tokens_h, tokens_w, dtype)
            channels = inputs["hidden_states"].shape[-1]
            target = torch.randn(2 * pairs, tokens_h * tokens_w, channels, device=_FAKE_DEVICE)
            with torch.no_grad(), _autocast(autocast):
                transformer.disable_adapters()
                reference = transformer(**inputs)[0].float()
                transformer.enable_adapters()
            for parameter in lora_parameters:
                parameter.requires_grad_(True)
            # The emulated autocast stays on through the backward: checkpointing recomputes each block
            # there, under the autocast state of the forward, as torch.utils.checkpoint restores it.
            with _autocast(autocast):
                prediction = transformer(**inputs)[0].float()  # accelerate's convert_to_fp32
                loss, _ = flow_dpo_loss(
                    prediction[:pairs], prediction[pairs:], reference[:pairs], reference[pairs:],
                    target[:pairs], target[pairs:], beta=100.0,
                )
                _backward(loss)
            del loss, prediction, reference, inputs, target
            grads = sum(p.grad.numel() * p.grad.element_size() for p in lora_parameters if p.grad is not None)
            if lora_parameters and any(p.grad is None for p in lora_parameters):
                raise RuntimeError("the planned DPO backward left LoRA parameters without gradients")
        return tracker.peak, grads


# ---- the plan ------------------------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    """Per-process memory estimate of a run: phases -> GPU GiB, CPU GiB, whether it fits, and how to fit.

    `breakdown[phase]` names what the GiB of each phase are made of (largest first in
    `dominant[phase]`); `suggestions` are config overrides (flags) that make a non-fitting run fit,
    `suggested_peak_gib` the peak they give.
    """

    kind: str  # "train" or "ses"
    model: str
    model_source: str
    height: int
    width: int
    dtype: str
    num_processes: int
    gpu_memory_gib: float
    phases: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    cpu_gib: float
    cpu_breakdown: dict[str, float]
    fits: bool
    settings: dict[str, Any] = field(default_factory=dict)
    suggestions: list[str] = field(default_factory=list)
    suggested_peak_gib: float | None = None
    suggestion_fits: bool | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def peak_gib(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def dominant(self, phase: str, top: int = 2) -> str:
        parts = sorted(self.breakdown[phase].items(), key=lambda item: -item[1])[:top]
        return ", ".join(f"{name} {_show(value)}" for name, value in parts)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["peak_gib"] = self.peak_gib
        data["peak_phase"] = self.peak_phase
        return data


def _gib(value: int | float) -> float:
    return round(value / GIB, 4)


def _show(value: float) -> str:
    """GiB for the table: one decimal from 10 GiB, two below, "<0.01" for the tiny models' parts."""
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.01 else "<0.01"


def _phase(parts: dict[str, int | float]) -> tuple[float, dict[str, float]]:
    parts = {name: value for name, value in parts.items() if value}
    parts["CUDA context + allocator"] = CUDA_OVERHEAD_GIB * GIB
    return _gib(sum(parts.values())), {name: _gib(value) for name, value in parts.items()}


def _resolution(spec: PipelineSpec, height: int | None, width: int | None) -> tuple[int, int]:
    height = height or spec.default_resolution
    width = width or spec.default_resolution
    multiple = spec.resolution_multiple
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{name} {value} is not a positive multiple of {multiple}; use e.g. {max(multiple, value // multiple * multiple)}.")
    return height, width


def _search_transient(
    spec: PipelineSpec, dtype: torch.dtype, lora: LoraSpec | None, clip_json: str | None,
    eval_batch: int, reward_batch: int, height: int, width: int, cfg: bool, autocast: bool,
) -> dict[str, int]:
    """The transient of one eval batch: sampling steps, then the VAE decode, then scoring its images
    `reward_batch` at a time (the batch's float32 images stay on the GPU until scored)."""
    sampling = measure_sampling(spec, dtype, lora, eval_batch, height, width, cfg, autocast)
    decode, images = measure_decode(spec, dtype, eval_batch, height, width)
    scoring = images + measure_reward(clip_json, min(reward_batch, eval_batch), height, width)
    return {
        f"denoising forward (batch {eval_batch}{', CFG' if cfg else ''})": sampling,
        f"VAE decode (batch {eval_batch})": decode,
        f"images + reward forward (batch {min(reward_batch, eval_batch)})": scoring,
    }


def _largest(parts: dict[str, int]) -> dict[str, int]:
    name = max(parts, key=parts.get)
    return {name: parts[name]}


def plan_training(config, num_processes: int = 1, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB, suggest: bool = True) -> MemoryPlan:
    """The memory plan of an online SES -> DPO run (`OnlineDPOConfig`), per process.

    Phases: encode prompts (the whole pipeline on the GPU, as the trainer loads it, before the LoRA
    and the reward exist), search and eval (sampling -> decode -> reward per eval batch), DPO step.
    """
    from .loading import parse_dtype

    started = time.perf_counter()
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}.")
    if gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory must be > 0 GiB, got {gpu_memory_gib}.")
    spec = resolve_pipeline_spec(config.model)
    height, width = _resolution(spec, config.height, config.width)
    dtype = parse_dtype(config.dtype)
    # The GPU accelerate configs run bf16 mixed precision: the trainer's forwards run under autocast.
    autocast = dtype != torch.float32
    guidance = config.guidance_scale if config.guidance_scale is not None else (1.0 if spec.is_distilled else 4.0)
    cfg = guidance > 1.0 and not spec.is_distilled
    lora = LoraSpec(config.lora_rank, config.lora_target_modules)
    sizes = component_bytes(spec, dtype, lora)
    reward_clip = reward_clip_config_json(config.reward, spec)
    eval_name = config.eval_reward or config.reward
    eval_clip = reward_clip_config_json(eval_name, spec)
    reward_gpu = reward_bytes(reward_clip)
    eval_gpu = reward_bytes(eval_clip) if eval_name != config.reward else 0
    reward_batch = config.reward_batch_size or config.eval_batch_size
    text_encoder_resident = 0 if config.offload_text_encoder else sizes["text_encoder"]
    base = {
        "transformer": sizes["transformer"],
        "LoRA": sizes["lora"],
        "VAE": sizes["vae"],
        "text encoder (not offloaded)": text_encoder_resident,
        # From the second round on, the optimizer's states stay on the GPU through search and eval.
        "AdamW states": 2 * sizes["lora"],
    }
    phases: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}

    phases["encode"], breakdown["encode"] = _phase(
        {
            "text encoder": sizes["text_encoder"],
            "transformer": sizes["transformer"],
            "VAE": sizes["vae"],
            f"text encoder forward ({spec.max_sequence_length} tokens)": measure_encode(spec, dtype),
        }
    )
    search = _search_transient(
        spec, dtype, lora, reward_clip, config.eval_batch_size, reward_batch, height, width, cfg, autocast
    )
    # Both reward models are loaded onto the GPU at set-up, so a distinct eval reward is there too.
    rewards_on_gpu = {"reward model": reward_gpu, "eval reward model": eval_gpu}
    phases["search"], breakdown["search"] = _phase({**base, **rewards_on_gpu, **_largest(search)})
    pairs = config.train_batch_size
    dpo_peak, grads = measure_dpo(spec, dtype, lora, pairs, height, width, config.gradient_checkpointing, autocast)
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
        eval_resident = {"eval reward model": eval_gpu, "reward model": 0 if config.offload_reward else reward_gpu}
    phases["eval"], breakdown["eval"] = _phase({**base, **eval_resident, **_largest(evaluation)})

    cpu_gib, cpu_breakdown = _training_cpu(config, spec, dtype, sizes, reward_gpu + eval_gpu, height, width, cfg, num_processes)
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
        fits=max(phases.values()) <= gpu_memory_gib,
        settings={
            name: getattr(config, name)
            for name in (
                "gradient_checkpointing", "train_batch_size", "eval_batch_size", "reward_batch_size",
                "offload_text_encoder", "offload_reward", "lora_rank", "reward", "guidance_scale",
            )
        },
        notes=_notes(spec, autocast),
    )
    if suggest and not plan.fits:
        _suggest_training(plan, config, num_processes, gpu_memory_gib)
    plan.seconds = round(time.perf_counter() - started, 2)
    return plan


def _notes(spec: PipelineSpec, autocast: bool) -> list[str]:
    notes = [
        f"component configs: {spec.source}; estimated from fake tensors, no weights loaded",
        f"includes {CUDA_OVERHEAD_GIB:.1f} GiB for the CUDA context and allocator; leave headroom for fragmentation",
    ]
    if autocast:
        notes.append("forwards measured under bf16 autocast (the GPU accelerate configs use mixed_precision bf16)")
    return notes


def _training_cpu(
    config, spec: PipelineSpec, dtype: torch.dtype, sizes: dict[str, int], rewards: int,
    height: int, width: int, cfg: bool, num_processes: int,
) -> tuple[float, dict[str, float]]:
    """CPU memory per process: offloaded models, the prompt-embedding cache, a round's latents and pairs."""
    item = torch.empty((), dtype=dtype).element_size()
    multiple = spec.resolution_multiple
    latent = spec.transformer["in_channels"] * (height // multiple) * (width // multiple)
    prompts_here = math.ceil(config.prompts_per_round / num_processes)
    embedding = spec.max_sequence_length * spec.transformer["joint_attention_dim"] * item
    parts = {
        "Python + CUDA libraries": PROCESS_CPU_OVERHEAD_GIB * GIB,
        "text encoder (offloaded)": sizes["text_encoder"] if config.offload_text_encoder else 0,
        "reward model(s) (offloaded)": rewards if config.offload_reward else 0,
        f"prompt-embedding cache ({config.max_cached_prompts} prompts{' + negative' if cfg else ''})": (
            (config.max_cached_prompts + (1 if cfg else 0)) * embedding
        ),
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


# ---- suggestions -------------------------------------------------------------------------------------
def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"--{name} {value}"


# Which phases each lever lowers; prompt encoding (text encoder + transformer together) has none.
_LEVER_PHASES = {
    "gradient_checkpointing": {"dpo"},
    "train_batch_size": {"dpo"},
    "eval_batch_size": {"search", "eval"},
    "offload_text_encoder": {"search", "dpo", "eval"},
    "offload_reward": {"dpo"},
    "reward_batch_size": {"search", "eval"},
    "height": {"search", "dpo", "eval"},
}


def _training_levers(config, plan: MemoryPlan) -> Iterator[dict[str, Any]]:
    """The usual levers, cheapest in quality first; each yields one change to try."""
    if not config.gradient_checkpointing:
        yield {"gradient_checkpointing": True}
    if config.train_batch_size > 1:
        yield {"train_batch_size": 1}
    batch = config.eval_batch_size
    while batch > 1:
        batch //= 2
        yield {"eval_batch_size": batch}
    if not config.offload_text_encoder:
        yield {"offload_text_encoder": True}
    if not config.offload_reward:
        yield {"offload_reward": True}
    reward_batch = config.reward_batch_size or config.eval_batch_size
    while reward_batch > 1:
        reward_batch //= 2
        yield {"reward_batch_size": reward_batch}
    for side in (768, 512):
        if side < min(plan.height, plan.width):
            yield {"height": side, "width": side}


def _over(plan: MemoryPlan) -> set[str]:
    return {phase for phase, value in plan.phases.items() if value > plan.gpu_memory_gib}


def _suggest_training(plan: MemoryPlan, config, num_processes: int, gpu_memory_gib: float) -> None:
    """Apply the levers in order while a phase does not fit (a lever is kept when it lowers a phase
    that does not fit), then drop any kept lever the fitting set does not need."""

    def replan(overrides: dict[str, Any]) -> MemoryPlan:
        return plan_training(dataclasses.replace(config, **overrides), num_processes, gpu_memory_gib, suggest=False)

    overrides: dict[str, Any] = {}
    current = plan
    for change in _training_levers(config, plan):
        over = _over(current)
        if not over or "encode" in over:
            break  # fits, or prompt encoding does not fit, which no setting changes
        targets = _LEVER_PHASES[next(iter(change))] & over
        if not targets:
            continue
        candidate = replan({**overrides, **change})
        if any(candidate.phases[phase] < current.phases[phase] - 1e-6 for phase in targets):
            overrides.update(change)
            current = candidate
    if current.fits:
        for name in [key for key in overrides if key != "width"]:
            trial = {key: value for key, value in overrides.items() if key != name and not (name == "height" and key == "width")}
            candidate = replan(trial)
            if candidate.fits:
                overrides, current = trial, candidate
    elif "encode" in _over(current):
        plan.notes.append(
            "prompt encoding needs the text encoder and the transformer on the GPU together; no setting lowers it"
        )
    plan.suggestions = [_flag(name, value) for name, value in overrides.items()]
    plan.suggested_peak_gib = current.peak_gib
    plan.suggestion_fits = current.fits


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
    num_processes: int = 1,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    suggest: bool = True,
) -> MemoryPlan:
    """The memory plan of `tscale ses`: the whole pipeline stays on the GPU (no offloading), the
    reward model too, and each batch of `eval_batch_size` candidates is sampled, decoded and scored.
    `num_processes` does not change the per-process peak (each process holds a full pipeline)."""
    from .loading import parse_dtype

    started = time.perf_counter()
    if gpu_memory_gib <= 0:
        raise ValueError(f"--gpu-memory must be > 0 GiB, got {gpu_memory_gib}.")
    if eval_batch_size < 1:
        raise ValueError(f"--eval-batch-size must be >= 1, got {eval_batch_size}.")
    spec = resolve_pipeline_spec(model)
    height, width = _resolution(spec, height, width)
    torch_dtype = torch.bfloat16 if dtype == "auto" else parse_dtype(dtype)
    guidance = guidance_scale if guidance_scale is not None else (1.0 if spec.is_distilled else 4.0)
    cfg = guidance > 1.0 and not spec.is_distilled
    sizes = component_bytes(spec, torch_dtype, None)
    clip_json = reward_clip_config_json(reward, spec)
    lora_bytes = 0
    if lora is not None and Path(lora).expanduser().exists():
        path = Path(lora).expanduser()
        files = [path] if path.is_file() else list(path.glob("*.safetensors"))
        lora_bytes = sum(item.stat().st_size for item in files)
    resident = {
        "transformer": sizes["transformer"],
        "text encoder": sizes["text_encoder"],
        "VAE": sizes["vae"],
        "reward model": reward_bytes(clip_json),
        "LoRA file": lora_bytes,
    }
    phases: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    phases["encode"], breakdown["encode"] = _phase(
        {**resident, f"text encoder forward ({spec.max_sequence_length} tokens)": measure_encode(spec, torch_dtype)}
    )
    search = _search_transient(
        spec, torch_dtype, None, clip_json, eval_batch_size, reward_batch_size or eval_batch_size, height, width, cfg, False
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
        fits=max(phases.values()) <= gpu_memory_gib,
        settings={"eval_batch_size": eval_batch_size, "reward": reward, "guidance_scale": guidance},
        notes=_notes(spec, False),
    )
    if suggest and not plan.fits:
        arguments = dict(
            model=model, height=height, width=width, eval_batch_size=eval_batch_size, guidance_scale=guidance_scale,
            reward=reward, reward_batch_size=reward_batch_size, dtype=dtype, lora=lora, num_processes=num_processes,
            gpu_memory_gib=gpu_memory_gib, suggest=False,
        )
        changes: list[dict[str, Any]] = []
        batch = eval_batch_size
        while batch > 1:
            batch //= 2
            changes.append({"eval_batch_size": batch})
        changes += [{"height": side, "width": side} for side in (768, 512) if side < min(height, width)]
        current, overrides = plan, {}
        for change in changes:
            if current.fits:
                break
            overrides.update(change)
            current = plan_ses(**{**arguments, **overrides})
        plan.suggestions = [f"--{name.replace('_', '-')} {value}" for name, value in overrides.items()]
        plan.suggested_peak_gib = current.peak_gib
        plan.suggestion_fits = current.fits
    plan.seconds = round(time.perf_counter() - started, 2)
    return plan


# ---- output -------------------------------------------------------------------------------------------------
def format_plan_table(plan: MemoryPlan) -> str:
    """The plan as a table: phase | GPU GiB | what dominates, CPU per process, fits, suggestions."""
    what = "training run" if plan.kind == "train" else "tscale ses"
    lines = [
        f"memory plan of a {what}: {plan.model} ({plan.model_source}), {plan.height}x{plan.width}, {plan.dtype}, "
        f"{plan.num_processes} process{'es' if plan.num_processes > 1 else ''}, per process",
        "",
        f"{'phase':<16} {'GPU GiB':>8}  what dominates (GiB)",
        f"{'-' * 16} {'-' * 8}  {'-' * 50}",
    ]
    for phase, value in plan.phases.items():
        lines.append(f"{PHASE_LABELS.get(phase, phase):<16} {value:>8.1f}  {plan.dominant(phase)}")
    lines.append(f"{'peak':<16} {plan.peak_gib:>8.1f}  ({PHASE_LABELS.get(plan.peak_phase, plan.peak_phase)})")
    lines.append("")
    cpu = sorted(plan.cpu_breakdown.items(), key=lambda item: -item[1])[:3]
    lines.append(f"{'CPU per process':<16} {plan.cpu_gib:>8.1f}  {', '.join(f'{name} {_show(value)}' for name, value in cpu)}")
    lines.append("")
    card = f"{plan.gpu_memory_gib:g}"
    article = "an" if card.startswith("8") or card.split(".")[0] in ("11", "18") else "a"
    lines.append(f"fits {article} {card} GiB card: {'yes' if plan.fits else 'no'}")
    if not plan.fits:
        if plan.suggestions and plan.suggestion_fits:
            lines.append(f"to fit, override: {' '.join(plan.suggestions)}   (peak {plan.suggested_peak_gib:.1f} GiB)")
        elif plan.suggestions:
            lines.append(
                f"no combination of the usual levers fits; the lowest: {' '.join(plan.suggestions)} "
                f"(peak {plan.suggested_peak_gib:.1f} GiB); use a larger card or DeepSpeed"
            )
        else:
            lines.append("no lever left to try; use a larger card")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append(f"(planned in {plan.seconds:.1f} s)")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------------------
def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Add `tscale plan` to an argparse subparsers object; `run_plan(args)` runs it."""
    from .loading import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "plan",
        help="estimate the peak GPU/CPU memory of a training run or a ses command, without loading weights",
        description=(
            "tscale plan --config recipes/configs/flux2_klein_4b.yaml [--gpu-memory 80] [--num-processes N] [--json] "
            "[-- --train_batch_size 2 ...]   or   tscale plan --ses --model ... --eval-batch-size 8"
        ),
    )
    parser.add_argument("--config", default=None, help="OnlineDPOConfig YAML (default: the OnlineDPOConfig defaults)")
    parser.add_argument("--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GIB, help="GiB of the card (default 80)")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (GPUs) of the run")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--no-suggest", action="store_true", help="do not search for settings that fit")
    ses = parser.add_argument_group("a tscale ses command (with --ses)")
    ses.add_argument("--ses", action="store_true", help="plan `tscale ses` instead of a training run")
    ses.add_argument("--model", default=None, help=f"hub id, local pipeline dir or 'tiny' (default {DEFAULT_MODEL})")
    ses.add_argument("--height", type=int, default=None)
    ses.add_argument("--width", type=int, default=None)
    ses.add_argument("--eval-batch-size", type=int, default=8)
    ses.add_argument("--reward-batch-size", type=int, default=None)
    ses.add_argument("--guidance-scale", type=float, default=None)
    ses.add_argument("--reward", default="pickscore")
    ses.add_argument("--dtype", default="auto")
    ses.add_argument("--lora", default=None)
    parser.add_argument(
        "overrides", nargs="*", metavar="-- --field VALUE",
        help="OnlineDPOConfig overrides after `--`, e.g. -- --train_batch_size 2",
    )
    return parser


def _training_config(args: argparse.Namespace):
    from .config import OnlineDPOConfig, parse_config

    overrides = [item for item in args.overrides if item != "--"]
    fields = {f.name for f in dataclasses.fields(OnlineDPOConfig)}
    for item in overrides:
        if item.startswith("--"):
            name = item[2:].split("=", 1)[0]
            if name not in fields:
                raise ValueError(f"unknown OnlineDPOConfig field {item!r}; see `tscale_train.config.OnlineDPOConfig`.")
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"config file {args.config!r} does not exist.")
    if args.model is not None:
        overrides = ["--model", args.model, *overrides]
    try:
        return parse_config((["--config", args.config] if args.config else []) + overrides)
    except SystemExit as exit_:
        raise ValueError(f"bad config overrides {' '.join(overrides)!r}") from exit_


def run_plan(args: argparse.Namespace) -> int:
    """`tscale plan`: print the table (or `--json`); 0 if it fits, 1 if not, 2 on bad input."""
    try:
        if args.gpu_memory <= 0:
            raise ValueError(f"--gpu-memory must be > 0 GiB, got {args.gpu_memory:g}.")
        if args.num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
        if args.ses:
            from rewards import check_reward_name

            from .loading import DEFAULT_MODEL

            if args.config is not None or [item for item in args.overrides if item != "--"]:
                raise ValueError("--ses plans a ses command from its flags; drop --config and the config overrides.")
            check_reward_name(args.reward)
            for name in ("height", "width"):
                value = getattr(args, name)
                if value is not None and (value <= 0 or value % 16):
                    raise ValueError(f"--{name} {value} is not a positive multiple of 16.")
            plan = plan_ses(
                args.model or DEFAULT_MODEL, height=args.height, width=args.width, eval_batch_size=args.eval_batch_size,
                guidance_scale=args.guidance_scale, reward=args.reward, reward_batch_size=args.reward_batch_size,
                dtype=args.dtype, lora=args.lora, num_processes=args.num_processes, gpu_memory_gib=args.gpu_memory,
                suggest=not args.no_suggest,
            )
        else:
            config = _training_config(args)
            plan = plan_training(config, args.num_processes, args.gpu_memory, suggest=not args.no_suggest)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"tscale plan: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan_table(plan))
    return 0 if plan.fits else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m tscale_train.plan ...` until the lead wires `plan` into `tscale`."""
    parser = argparse.ArgumentParser(prog="tscale")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    return run_plan(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
