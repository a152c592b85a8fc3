"""What a plan is: :class:`MemoryPlan`, the memory constants and the GiB arithmetic of its phases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
# CUDA context (~0.5 GiB on an H100), cuBLAS/cuDNN workspaces and caching-allocator rounding: real
# memory that no tensor owns, so fake tensors cannot see it.
CUDA_OVERHEAD_GIB = 1.0
# A Python process with torch, CUDA libraries, diffusers and transformers imported (resident set).
PROCESS_CPU_OVERHEAD_GIB = 2.5
DEFAULT_GPU_MEMORY_GIB = 80.0


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
    def fits(self) -> bool:
        """Whether the peak phase fits the card (derived, so a plan can never disagree with its phases)."""
        return self.peak_gib <= self.gpu_memory_gib

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
        data["fits"] = self.fits
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
