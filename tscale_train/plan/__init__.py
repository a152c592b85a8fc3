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

The package, one job per module: `tracker` (the fake GPU: live-memory tracker, GPU attention
kernels, CUDA autocast), `families` (what differs between pipeline families, read from the family registry
`tscale_train.families`), `components` (what the model is: component configs, meta-device components, their bytes),
`measure` (the measured transients of each forward/backward),
`memory` (the `MemoryPlan` type and GiB helpers), `estimate` (the plan of a training run or of
`tscale ses`, CPU memory), `suggest` (the overrides that would make a plan fit) and `cli`
(`tscale plan`).
"""

from .cli import add_plan_parser, format_plan_table, main, run_plan
from .components import LoraSpec, PipelineSpec, resolve_pipeline_spec
from .estimate import DEFAULT_GPU_MEMORY_GIB, MemoryPlan, plan_ses, plan_training
from .families import PLAN_FAMILIES, PlanFamily, plan_family
from .measure import measure_decode, measure_dpo, measure_encode, measure_reward, measure_sampling
from .tracker import LiveMemoryTracker, fake_gpu, module_bytes

__all__ = [
    "DEFAULT_GPU_MEMORY_GIB",
    "LiveMemoryTracker",
    "LoraSpec",
    "MemoryPlan",
    "PLAN_FAMILIES",
    "PipelineSpec",
    "PlanFamily",
    "add_plan_parser",
    "fake_gpu",
    "format_plan_table",
    "main",
    "measure_decode",
    "measure_dpo",
    "measure_encode",
    "measure_reward",
    "measure_sampling",
    "module_bytes",
    "plan_family",
    "plan_ses",
    "plan_training",
    "resolve_pipeline_spec",
    "run_plan",
]
