"""`load_reward(name, ...)`: built-in rewards by name, anything else as "package.module:callable"."""

from __future__ import annotations

import importlib
import inspect
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .base import RewardModel
from .names import BUILTIN_CLASSES, BUILTIN_REWARDS, SHIPPED_REWARDS
from .weighted import WeightedReward, is_weighted_spec, parse_reward_spec

_CALLABLE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def available_rewards() -> list[str]:
    """The built-in reward names (any "package.module:callable" string works too)."""
    return list(BUILTIN_REWARDS)


class CallableReward(RewardModel):
    """Wraps a plain function `fn(images, prompts) -> scores` as a RewardModel.

    The function receives the normalised inputs every reward sees: a float tensor
    `[N, 3, H, W]` in [0, 1] on the reward's device (in the reward's dtype) and a list of N prompts.
    Extra keyword arguments given to `load_reward` are passed on each call. Its result (tensor,
    array or list) must hold N numbers.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str,
        call_kwargs: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.function = function
        self.name = name
        self.call_kwargs = dict(call_kwargs or {})
        if hasattr(function, "to"):
            function.to(self.device)

    def _modules(self) -> list[Any]:
        return [self.function] if hasattr(self.function, "to") else []

    def _score(self, pixels: torch.Tensor | list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
        if isinstance(pixels, list):
            raise ValueError(
                f"reward {self.name!r} takes images of one size; resize the PIL images or pass a tensor"
            )
        pixels = pixels.to(self.dtype)
        scores = []
        for chunk in self._chunks(len(prompts)):
            with user_code_errors(
                f"reward {self.name!r}",
                "when called as fn(images [N, 3, H, W] in [0, 1], prompts [N strings])",
            ):
                result = self.function(pixels[chunk], prompts[chunk], **self.call_kwargs)
            try:
                scores.append(torch.as_tensor(result, dtype=torch.float32).detach().cpu().reshape(-1))
            except (TypeError, ValueError, RuntimeError) as error:
                raise ValueError(
                    f"reward {self.name!r} returned a {type(result).__name__}, not numbers ({error}); make it return one "
                    "score per image (a tensor, array or list of N floats)."
                ) from error
        return torch.cat(scores)


@contextmanager
def user_code_errors(what: str, context: str) -> Iterator[None]:
    """Turn an exception raised by user code (a reward callable) into a one-line ValueError naming the reward,
    the exception and where it was raised, so `tscale` reports it as a bad reward, not as its own bug.

    Memory errors pass through unchanged: they are about the machine, not the callable.
    """
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - user code may raise anything
        frames = traceback.extract_tb(error.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        reason = (str(error).splitlines() or [""])[0]
        raise ValueError(
            f"{what} raised {type(error).__name__}: {reason}{where} ({context}); fix the reward, or pass another --reward."
        ) from error


def _import_callable(name: str) -> Any:
    module_name, _, attribute_path = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"cannot import module {module_name!r} for reward {name!r} ({error}); check the name, and that the module is "
            "importable from here (on PYTHONPATH)."
        ) from error
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise ValueError(
                f"module {module_name!r} has no attribute {attribute_path!r} (reward {name!r}); check the name after the colon."
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise ValueError(
            f"reward {name!r} is not callable (it is a {type(target).__name__}); name a function or class."
        )
    if not isinstance(target, type) and not _accepts_two_arguments(target):
        raise ValueError(
            f"{name!r} is not a reward: a reward function must accept (images, prompts) and return one score per image; "
            "pass such a callable."
        )
    return target


def _accepts_two_arguments(function: Any) -> bool:
    """Whether `function(images, prompts)` binds; True when the signature cannot be read."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    return True


def reward_arguments(name: str) -> set[str] | None:
    """The keyword arguments `load_reward(name, ...)` accepts besides device/dtype/batch_size.

    None when any keyword is accepted (a function or class taking **kwargs).
    """
    check_reward_name(name)
    name = name.strip()
    if ":" not in name:
        module, class_name = BUILTIN_CLASSES[name.lower()]
        target = getattr(importlib.import_module(f"{__package__}.{module}"), class_name)
    else:
        target = _import_callable(name)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    positional_only = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
    names = {parameter.name for parameter in parameters if parameter.kind not in positional_only}
    if not isinstance(target, type):
        names -= {"images", "prompts"}  # the call's own arguments, not loading arguments
    return names - {"self", "device", "dtype", "batch_size"}


def check_reward_arguments(name: str, arguments: dict[str, Any]) -> None:
    """Fail on a keyword `load_reward(name, ...)` would not accept (a typo), before anything loads."""
    accepted = reward_arguments(name)
    unknown = sorted(set(arguments) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(
            f"reward {name!r} takes no argument {', '.join(map(repr, unknown))}; use one it accepts: {', '.join(sorted(accepted)) or 'none'}."
        )


def _unknown_name_error(name: str) -> ValueError:
    return ValueError(
        f"unknown reward {name!r}; use one of {', '.join(BUILTIN_REWARDS)} "
        "or a 'package.module:callable' string such as 'rewards.synthetic:brightness'"
    )


def check_reward_name(name: str, *, import_callable: bool = True) -> None:
    """Raise the same ValueError as `load_reward` for a bad name, without loading any model.

    A "module:callable" name is imported (cheap) so a typo fails here, not after a pipeline loaded;
    `import_callable=False` checks only its spelling (settings checks that must not run user code or read
    files do that, and import it in a later step).
    """
    if not isinstance(name, str) or not name.strip():
        raise _unknown_name_error(str(name))
    name = name.strip()
    if ":" not in name:
        if name.lower() not in BUILTIN_REWARDS:
            raise _unknown_name_error(name)
        return
    if not _CALLABLE_PATTERN.match(name):
        raise _unknown_name_error(name)
    if import_callable:
        _import_callable(name)


def check_reward_spec(spec: str | Mapping[str, float], *, import_callables: bool = True) -> dict[str, float]:
    """Check a reward setting, single (`"pickscore"`) or weighted (`"pickscore:1.0,hpsv2:0.5"`, or a
    mapping), without loading any model; returns its name -> weight mapping. `import_callables`: as
    `check_reward_name`'s `import_callable`."""
    weights = parse_reward_spec(spec)
    for name in weights:
        check_reward_name(name, import_callable=import_callables)
    return weights


def load_reward_spec(
    spec: str | Mapping[str, float],
    *,
    component_kwargs: Mapping[str, dict[str, Any]] | None = None,
    **common: Any,
) -> RewardModel:
    """`load_reward` for a reward setting: one reward, or a `WeightedReward` of several.

    `common` (device, dtype, batch_size) goes to every reward; `component_kwargs[name]` to that one.
    A single unweighted name loads the plain reward, so its scores keep their own scale.
    """
    weights = check_reward_spec(spec)
    component_kwargs = component_kwargs or {}
    if not is_weighted_spec(spec):
        (name,) = weights
        return load_reward(name, **common, **component_kwargs.get(name, {}))
    components = {name: load_reward(name, **common, **component_kwargs.get(name, {})) for name in weights}
    return WeightedReward(components, weights)


def load_reward(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    **kwargs: Any,
) -> RewardModel:
    """Load a reward by name: `reward(images, prompts) -> Tensor[N]` (float32, CPU).

    Built-ins and their keyword arguments (paths may be Hub ids or local directories / files):
      - "pickscore": `model_name_or_path` (default "yuvalkirstain/PickScore_v1"),
        `processor_name_or_path` (default "laion/CLIP-ViT-H-14-laion2B-s32B-b79K").
      - "hpsv2": `checkpoint_path` (.pt or .safetensors; default: HPS v2.1 from the Hub),
        `model_name` (default "ViT-H-14").
      - "clip": `model_name` (default "ViT-H-14"), `pretrained` (tag or weights file;
        default "laion2b_s32b_b79k").
      - "verifier": none; the shapes world's programmatic judge (`rewards.shapes.verifier`): the
        fraction of a shapes-world caption's clauses the image satisfies.
      - "shapes-clip": see `rewards.shapes.clip` (a CLIP-style reward for the shapes world).
    "package.module:callable": a function `(images, prompts) -> scores` (kwargs are passed on
    each call), a RewardModel subclass (constructed with device, dtype, batch_size and kwargs),
    or another class (constructed with kwargs, then called like a function).

    `device`: where the model runs (default CUDA if available, else CPU); `dtype`: model weights;
    `batch_size`: images per forward (default: a whole call at once). Unknown names raise
    ValueError before anything is loaded.
    """
    if not isinstance(name, str) or not name.strip():
        raise _unknown_name_error(str(name))
    name = name.strip()
    common = {"device": device, "dtype": dtype, "batch_size": batch_size}
    if ":" not in name:
        builtin = name.lower()
        if builtin not in BUILTIN_REWARDS:
            raise _unknown_name_error(name)
        check_reward_arguments(name, kwargs)
        # Imported lazily: the heavy model libraries load only for the reward actually used.
        module, class_name = BUILTIN_CLASSES[builtin]
        reward_class = getattr(importlib.import_module(f"{__package__}.{module}"), class_name)
        return reward_class(**kwargs, **common)
    if not _CALLABLE_PATTERN.match(name):
        raise _unknown_name_error(name)
    check_reward_arguments(name, kwargs)
    target = _import_callable(name)
    if isinstance(target, type):
        with user_code_errors(f"reward {name!r}", "when constructed"):
            instance = target(**kwargs, **common) if issubclass(target, RewardModel) else target(**kwargs)
        return (
            instance if isinstance(instance, RewardModel) else CallableReward(instance, name=name, **common)
        )
    return CallableReward(target, name=name, call_kwargs=kwargs, **common)


__all__ = [
    "BUILTIN_REWARDS",
    "SHIPPED_REWARDS",  # re-exported from `names`, where it lives
    "CallableReward",
    "available_rewards",
    "check_reward_spec",
    "load_reward",
    "load_reward_spec",
]
