"""The fake GPU of `tscale plan`: a live-memory tracker, GPU attention kernels and CUDA autocast on fake tensors."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..families.plan import FAKE_DEVICE


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
        inputs = {
            leaf.untyped_storage()._cdata
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
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
    if (
        attn_mask is None
        and query.dtype in (torch.float16, torch.bfloat16)
        and head_dim <= 256
        and head_dim % 8 == 0
    ):
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


# The device of the fake tensors (the CPU; why in `families.plan`), where the families' plan inputs are made too.
_FAKE_DEVICE = FAKE_DEVICE

# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp), at the Python API level: these run in
# the low-precision dtype, these in float32. CPU autocast has other lists (its layer_norm stays
# bf16), so it is emulated here rather than borrowed.
_LOWER_PRECISION_FUNCS = {
    torch.nn.functional.linear,
    torch.nn.functional.conv1d,
    torch.nn.functional.conv2d,
    torch.nn.functional.conv3d,
    torch.nn.functional.conv_transpose1d,
    torch.nn.functional.conv_transpose2d,
    torch.nn.functional.conv_transpose3d,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.baddbmm,
    torch.addmm,
    torch.einsum,
    torch.nn.functional.scaled_dot_product_attention,
}
_FLOAT32_FUNCS = {
    torch.nn.functional.layer_norm,
    torch.nn.functional.group_norm,
    torch.softmax,
    torch.Tensor.softmax,
    torch.nn.functional.softmax,
    torch.log_softmax,
    torch.nn.functional.log_softmax,
    torch.exp,
    torch.Tensor.exp,
    torch.pow,
    torch.Tensor.pow,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.nn.functional.mse_loss,
    torch.nn.functional.interpolate,
    torch.nn.functional.cosine_similarity,
    torch.nn.functional.logsigmoid,
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
        target = (
            self.dtype
            if func in _LOWER_PRECISION_FUNCS
            else torch.float32
            if func in _FLOAT32_FUNCS
            else None
        )
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

    _engine_run_backward(
        (loss,), (torch.ones_like(loss),), False, False, (), allow_unreachable=True, accumulate_grad=True
    )


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
    named = list(module.named_parameters(remove_duplicate=False)) + list(
        module.named_buffers(remove_duplicate=False)
    )
    for name, tensor in named:
        if predicate is not None and not predicate(name):
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total
