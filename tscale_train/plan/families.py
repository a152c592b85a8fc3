"""What the plan must know of each pipeline family, keyed by the diffusers pipeline class name.

Each family declares its `PlanFamily` in its own module of `tscale_train.families` (next to its LoRA
presets, generator and kits); this module only reads the registry. The LoRA presets a plan resolves are
the family's (`ModelFamily.lora_targets`), so a preset name plans the same modules that training adapts.
"""

from __future__ import annotations

from ..families import PlanFamily, get_family, iter_families

__all__ = ["PlanFamily", "plan_family"]  # and PLAN_FAMILIES, made on access


def __getattr__(name: str):
    # A view of the registry, so a family registered after this module was imported is in it.
    if name == "PLAN_FAMILIES":
        return {family.pipeline_class: family.plan for family in iter_families() if family.plan is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan_family(pipeline_class: str | None) -> PlanFamily:
    """The description of a pipeline class; ValueError naming the planned ones for any other."""
    plan = None
    try:
        plan = get_family(pipeline_class).plan
    except ValueError:
        pass
    if plan is None:
        planned = [family.pipeline_class for family in iter_families() if family.plan is not None]
        raise ValueError(
            f"tscale plan has no description of {pipeline_class} pipelines yet; it plans {', '.join(planned)}."
        )
    return plan
