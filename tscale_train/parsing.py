"""Parsing settings dataclasses from flags and a YAML file: TRL's TrlParser pattern, with YAML checked.

`make_parser(*types)` is one `HfArgumentParser` plus `--config file.yaml`; `parse_args(types, argv)`
reads the YAML (a mapping of known settings, each value of its field's type), makes its values the
defaults, lets flags override them, and returns one validated instance of each type: checked by its
`__post_init__`, then by its `check_environment()` where it has one (the checks that read files or
probe the machine, which `__post_init__` leaves out; see `tscale_train.config`).

Every mistake is a one-line `ValueError` that names the flag and the fix (the CLI prints it and exits
with code 2): argparse's own errors (a bad number, a missing value) included, which it would otherwise
print as a usage block and end the process with.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

# Settings whose YAML value may be a mapping or a list, for readability; the flag form is one string:
# `reward: {pickscore: 1.0, hpsv2: 0.5}` is `--reward pickscore:1.0,hpsv2:0.5`, and
# `guard_rewards: [hpsv2, clip]` is `--guard_rewards hpsv2,clip`.
YAML_MAPPING_FIELDS = ("reward", "eval_reward")
YAML_LIST_FIELDS = ("guard_rewards",)
# The namespace key of a command's positional argument (`tscale export RUN`); never a settings field.
_POSITIONAL_DEST = "positional_argument"


class OneLineErrors:
    """An argparse mixin: errors raise a one-line ValueError naming the flag and the fix, instead of
    printing the usage block and exiting (`--help` still prints and exits)."""

    def error(self, message: str) -> NoReturn:  # argparse's hook
        raise ValueError(argparse_error_message(self, message))


class OneLineArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` with one-line errors (see `OneLineErrors`)."""


def argparse_error_message(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's terse error, rewritten to name the flag and the fix."""
    match = re.match(r"argument (?P<flags>[^:]+): (?P<rest>.*)$", message, re.DOTALL)
    if not match:
        if message.startswith("unrecognized arguments"):
            return f"{message}; see `{parser.prog} --help` for the valid flags."
        return f"{message}; see `{parser.prog} --help`."
    flags, rest = match["flags"].split("/"), match["rest"].strip()
    # A field has two spellings (`--eval_batch_size/--eval-batch-size`): name the one typed.
    typed = {arg.split("=", 1)[0] for arg in getattr(parser, "typed_args", ())}
    flag = next((item for item in flags if item in typed), flags[0])
    action = parser._option_string_actions.get(flags[0])  # noqa: SLF001 - argparse has no public lookup
    default = getattr(action, "default", None)
    invalid = re.match(r"invalid (?P<kind>\w+) value: (?P<value>.*)$", rest)
    if invalid:
        value = invalid["value"]
        if invalid["kind"] == "int":
            example = default if isinstance(default, int) and not isinstance(default, bool) else _whole(value)
            return f"{flag} takes a whole number, got {value}; write it in digits, e.g. {flag} {example}."
        if invalid["kind"] == "float":
            example = default if isinstance(default, float) else 1.0
            return f"{flag} takes a number, got {value}; e.g. {flag} {example}."
        return f"{flag} got {value}, which is not a valid {invalid['kind']}; see `{parser.prog} --help`."
    if rest.startswith("expected one argument"):
        return (
            f"{flag} needs a value; give one after it (e.g. {flag} VALUE; a negative one attached, as in {flag}=-1) "
            "or drop the flag."
        )
    if rest.startswith("Truthy value expected"):
        got = re.search(r"got (\S+)", rest)
        return (
            f"{flag} takes true or false, got {got[1] if got else 'something else'!r}; write {flag} true, "
            f"{flag} false, or {flag} alone for true."
        )
    if rest.startswith("invalid choice"):
        return f"{flag}: {rest}; pick one of those."
    return f"{flag}: {rest}; see `{parser.prog} --help`."


def _whole(value: str) -> int:
    """`'1e3'` -> 1000: the digits a user probably meant, for the example in an error."""
    try:
        number = float(value.strip("'\""))
    except ValueError:
        return 1
    return int(number) if number == number and abs(number) < 1e18 and number == int(number) else 1


def make_parser(*dataclass_types: type, prog: str | None = None):
    """One `HfArgumentParser` for the given settings dataclasses, plus `--config file.yaml`; its errors are
    one-line `ValueError`s (see `OneLineErrors`)."""
    from transformers import HfArgumentParser

    class SettingsParser(OneLineErrors, HfArgumentParser):
        pass

    parser = SettingsParser(dataclass_types, **({"prog": prog} if prog else {}))
    parser.add_argument(
        "--config", default=None, help="YAML file of settings (one); flags override its values"
    )
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list
        # argparse %-formats help texts: a plain "5%" in a field's help would break `--help`.
        if action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    return parser


def parse_args(
    dataclass_types: Sequence[type],
    args: Sequence[str] | None = None,
    prog: str | None = None,
    *,
    positional: tuple[str, str] | None = None,
    also_known: Sequence[type] = (),
) -> tuple:
    """Parse `args` into one instance of each type: YAML values from `--config` first, flags over them.

    `positional`: `(field, help)`, a field that may also be given as the command's one positional argument
    (`tscale export RUN`), shown as such in `--help`. `also_known`: settings classes whose fields a YAML file
    may hold although these types do not take them (a training YAML given to `tscale ses`); they are
    ignored, and one line on stderr says which.
    """
    args = list(sys.argv[1:] if args is None else args)
    parser = make_parser(*dataclass_types, prog=prog)
    parser.typed_args = args  # so an argparse error names a flag as it was typed
    if positional:
        field_name, text = positional
        parser.add_argument(_POSITIONAL_DEST, nargs="?", default=None, metavar=field_name.upper(), help=text)
        args = _bare_switches_before_positional(parser, args)
    configs, args = _config_paths(args)
    if len(configs) > 1:
        raise ValueError(
            f"--config is given {len(configs)} times ({', '.join(map(repr, configs))}), but only one file is read; "
            "pass one --config and override its values with flags."
        )
    ignored: list[str] = []
    path = None
    if configs:
        path = Path(configs[0])
        values = read_yaml_config(path)
        ignored = check_yaml_values(dataclass_types, values, path, also_known=also_known)
        parser.set_defaults(**{name: value for name, value in values.items() if name not in ignored})
    namespace, remaining = parser.parse_known_args(args=args)
    if remaining:
        raise ValueError(_unknown_flags_message(parser, remaining, dataclass_types))
    if getattr(namespace, "config", None) is not None:
        # Only an abbreviation (`--conf`) reaches argparse's own --config; it would be silently ignored.
        raise ValueError(f"write --config in full (got an abbreviation for it, value {namespace.config!r}).")
    if positional:
        _apply_positional(namespace, positional[0])
    parsed = []
    for kind in dataclass_types:
        names = {item.name for item in dataclasses.fields(kind) if item.init}
        inputs = {name: value for name, value in vars(namespace).items() if name in names}
        try:
            settings = kind(**inputs)
            # `__post_init__` checks the settings alone; what looks outside them (files, devices, importable
            # reward code) is a separate step, run here, before the command loads any model.
            check_environment = getattr(settings, "check_environment", None)
            if check_environment is not None:
                check_environment()
        except ValueError as error:
            raise type(error)(_as_typed(str(error), args)) from error
        parsed.append(settings)
    if ignored:
        print(
            f"{parser.prog}: note: ignoring {len(ignored)} setting(s) of {str(path)!r} that this command does not use: "
            f"{', '.join(ignored)}",
            file=sys.stderr,
        )
    return tuple(parsed)


def _config_paths(args: list[str]) -> tuple[list[str], list[str]]:
    """Every `--config PATH` / `--config=PATH` in `args`, and the arguments without them."""
    paths, rest = [], []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--config":
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                raise ValueError("--config needs a YAML file path, e.g. --config recipes/configs/tiny.yaml.")
            paths.append(args[index + 1])
            index += 2
            continue
        if arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        index += 1
    return paths, rest


def read_yaml_config(path: Path) -> dict:
    """A `--config` file's settings, flattened to their flag form (see `flatten_yaml_values`)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"--config file {str(path)!r} does not exist; pass the path of a YAML settings file."
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(
            f"--config {str(path)!r} is not a readable YAML file: {str(error).splitlines()[0]}; fix the file or pass another."
        ) from error
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {str(path)!r} must be a YAML mapping of `setting: value` lines, got a {type(values).__name__}; write one "
            "setting a line, as in recipes/configs/tiny.yaml."
        )
    return flatten_yaml_values(values)


_BOOLEAN_WORDS = {"yes", "no", "true", "false", "t", "f", "y", "n", "1", "0"}


def _bare_switches_before_positional(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """`--dry-run RUN`: a true/false flag takes an optional value, so argparse would read RUN as that value.
    An existing path that is no boolean word after such a flag is the positional argument: the flag gets an
    explicit `true` (anything else stays the flag's value, and a bad one its error)."""
    fixed: list[str] = []
    for index, arg in enumerate(args):
        fixed.append(arg)
        action = parser._option_string_actions.get(arg)  # noqa: SLF001 - argparse has no public lookup
        following = args[index + 1] if index + 1 < len(args) else None
        if (
            action is not None
            and action.nargs == "?"
            and action.const is True
            and following is not None
            and following.lower() not in _BOOLEAN_WORDS
            and Path(following).exists()
        ):
            fixed.append("true")
    return fixed


def _apply_positional(namespace: argparse.Namespace, field_name: str) -> None:
    value = getattr(namespace, _POSITIONAL_DEST, None)
    delattr(namespace, _POSITIONAL_DEST)
    if value is None:
        return
    flag = f"--{field_name}"
    given = getattr(namespace, field_name, None)
    if given is not None and given != value:
        raise ValueError(
            f"{field_name.upper()} is given twice ({value!r}, and {flag} {given!r}); give it once."
        )
    setattr(namespace, field_name, value)


def _unknown_flags_message(
    parser: argparse.ArgumentParser, remaining: list[str], dataclass_types: Sequence[type]
) -> str:
    names = ", ".join(kind.__name__ for kind in dataclass_types)
    flags = [option for option in parser._option_string_actions if option.startswith("--")]  # noqa: SLF001
    hints = []
    for item in remaining:
        if item.startswith("--"):
            close = difflib.get_close_matches(item.split("=", 1)[0], flags, n=1)
            if close:
                hints.append((close[0], item))
    if len(hints) == 1:
        hint = f" (did you mean {hints[0][0]}?)"
    else:
        hint = (
            f" (did you mean {', '.join(f'{close} for {item}' for close, item in hints)}?)" if hints else ""
        )
    return f"unknown setting(s) {' '.join(remaining)!r}{hint}; see `{parser.prog} --help` ({names}) for the valid ones."


def _as_typed(message: str, args: Sequence[str]) -> str:
    """A settings error names the flag `--some_setting`; say it as the user typed it (`--some-setting`)."""
    for arg in args:
        typed = arg.split("=", 1)[0]
        if typed.startswith("--") and "-" in typed[2:]:
            message = re.sub(re.escape("--" + typed[2:].replace("-", "_")) + r"(?![\w-])", typed, message)
    return message


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


def check_yaml_values(
    dataclass_types: Sequence[type], values: dict, path: Path, *, also_known: Sequence[type] = ()
) -> list[str]:
    """Unknown names and values of the wrong type in a YAML file, which `set_defaults` would let through.

    Flags are converted by argparse; YAML values are not, so `rounds: 2.5` or `checkpoint_every: [1]`
    would otherwise reach the run (and fail after a round of work). Returns the names that only
    `also_known` types take, which the caller ignores.
    """
    import typing

    hints = {}
    for kind in dataclass_types:
        hints.update(typing.get_type_hints(kind))
    others = {item.name for kind in also_known for item in dataclasses.fields(kind)}
    names = ", ".join(kind.__name__ for kind in dataclass_types)
    ignored = sorted(name for name in set(values) - set(hints) if name in others)
    unknown = sorted(set(values) - set(hints) - set(ignored))
    if unknown:
        close = {name: difflib.get_close_matches(name, list(hints), n=1) for name in unknown}
        suggestions = [f"{match[0]} for {name}" for name, match in close.items() if match]
        did_you_mean = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
        raise ValueError(
            f"--config {str(path)!r} has unknown fields {unknown}{did_you_mean}; remove them or fix their spelling "
            f"(see {names} for the valid ones)."
        )
    defaults = {item.name: item.default for kind in dataclass_types for item in dataclasses.fields(kind)}
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            example = defaults.get(name)
            example = example if example not in (None, dataclasses.MISSING) else _example(hints[name])
            raise ValueError(
                f"--config {str(path)!r}: {name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__}); "
                f"write e.g. `{name}: {example}` in the file."
            )
    return ignored


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


def _example(hint: Any) -> str:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next((option for option in typing.get_args(hint) if option is not type(None)), hint)
    return {int: "1", float: "1.0", bool: "true", str: "text"}.get(hint, "null")
