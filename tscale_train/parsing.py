"""Parsing settings dataclasses from flags and a YAML file: TRL's TrlParser pattern, with YAML checked.

`make_parser(*types)` is one `HfArgumentParser` plus `--config file.yaml`; `parse_args(types, argv)`
reads the YAML (a mapping of known settings, each value of its field's type), makes its values the
defaults, lets flags override them, and returns one validated instance of each type.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Settings whose YAML value may be a mapping or a list, for readability; the flag form is one string:
# `reward: {pickscore: 1.0, hpsv2: 0.5}` is `--reward pickscore:1.0,hpsv2:0.5`, and
# `guard_rewards: [hpsv2, clip]` is `--guard_rewards hpsv2,clip`.
YAML_MAPPING_FIELDS = ("reward", "eval_reward")
YAML_LIST_FIELDS = ("guard_rewards",)


def make_parser(*dataclass_types: type):
    """One `HfArgumentParser` for the given settings dataclasses, plus `--config file.yaml`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML file of settings; flags override its values")
    return parser


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None, prog: str | None = None) -> tuple:
    """Parse `args` into one instance of each type: YAML values from `--config` first, flags over them."""
    args = list(sys.argv[1:] if args is None else args)
    parser = make_parser(*dataclass_types)
    if prog:
        parser.prog = prog
    # `--config=file.yaml` is the same flag.
    args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in args:
        position = args.index("--config")
        if position + 1 >= len(args):
            raise ValueError("--config needs a YAML file path.")
        path = Path(args[position + 1])
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"{str(path)!r} is not a readable YAML file: {str(error).splitlines()[0]}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{str(path)!r} must be a YAML mapping of `setting: value` lines, got a {type(values).__name__}.")
        values = flatten_yaml_values(values)
        check_yaml_values(dataclass_types, values, path)
        parser.set_defaults(**values)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False, return_remaining_strings=True)
    if remaining:
        names = ", ".join(kind.__name__ for kind in dataclass_types)
        raise ValueError(f"unknown setting(s) {' '.join(remaining)!r}; see {names} for the valid ones.")
    # The extra namespace HfArgumentParser returns holds only `--config`, already read.
    return tuple(parsed[: len(dataclass_types)])


def flatten_yaml_values(values: dict) -> dict:
    """`YAML_MAPPING_FIELDS` / `YAML_LIST_FIELDS` given as a mapping / list, written in their flag form."""
    flat = dict(values)
    for name in YAML_MAPPING_FIELDS:
        if isinstance(flat.get(name), dict):
            flat[name] = ",".join(f"{key}:{weight}" for key, weight in flat[name].items())
    for name in YAML_LIST_FIELDS:
        if isinstance(flat.get(name), list) and all(isinstance(item, str) for item in flat[name]):
            flat[name] = ",".join(flat[name])
    return flat


def check_yaml_values(dataclass_types: Sequence[type], values: dict, path: Path) -> None:
    """Unknown names and values of the wrong type in a YAML file, which `set_defaults` would let through.

    Flags are converted by argparse; YAML values are not, so `rounds: 2.5` or `checkpoint_every: [1]`
    would otherwise reach the run (and fail after a round of work).
    """
    import typing

    hints = {}
    for kind in dataclass_types:
        hints.update(typing.get_type_hints(kind))
    names = ", ".join(kind.__name__ for kind in dataclass_types)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{str(path)!r} has unknown fields {unknown}; see {names} for the valid ones.")
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ValueError(
                f"{str(path)!r}: {name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__})."
            )


def _matches(value: Any, hint: Any) -> bool:
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(entry, item) for entry in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string; argparse converts it
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
