"""Prompt lists: local .txt / .jsonl / .csv files, or a `datasets` dataset and column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

PROMPT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
# The prompts a run trains on when `--prompts` is unset (the trainer's, and the export's example prompts).
BUNDLED_PROMPTS = Path(__file__).parent / "data" / "prompts.txt"


def load_prompts(
    source: str | Path, column: str = "prompt", split: str = "train", flag: str = "--prompts"
) -> list[str]:
    """Read prompts, stripped, empty lines dropped.

    `source` is a local .txt (one prompt a line), .jsonl (objects with `column`), .csv (a `column`
    header), or the name of a `datasets` dataset (`split`, `column`). `flag` is the setting that named it
    (`--prompts`, `--eval_prompts`, `--prompts-file`), for the errors.
    """
    path = Path(source).expanduser()
    if path.suffix.lower() in PROMPT_FILE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(
                f"{flag} file {str(path)!r} does not exist; pass an existing .txt, .jsonl or .csv file."
            )
        prompts = _read_prompt_file(path, column, flag)
    elif path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; pass a .txt, .jsonl or .csv prompts file.")
    elif path.exists():
        raise ValueError(
            f"{flag} file {str(path)!r} must end in one of {', '.join(PROMPT_FILE_SUFFIXES)}; rename it."
        )
    else:
        prompts = _read_dataset(str(source), column, split, flag)
    prompts = [prompt.strip() for prompt in prompts if prompt and prompt.strip()]
    if not prompts:
        raise ValueError(
            f"{flag} {str(source)!r} holds no prompts; write at least one non-empty prompt in it."
        )
    return prompts


def _read_prompt_file(path: Path, column: str, flag: str) -> list[str]:
    try:
        return _parse_prompt_file(path, column)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{flag} file {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8."
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{flag} file {str(path)!r}: line {error.lineno} is not JSON ({error.msg}); write one JSON object a line."
        ) from error


def _parse_prompt_file(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError(
                    f"{str(path)!r} has a line that is a JSON {type(row).__name__}, not an object; write "
                    f'one object a line, e.g. {{"{column}": "a cat"}}.'
                )
        return [_field(row, column, path) for row in rows]
    with path.open(newline="", encoding="utf-8") as handle:
        return [_field(row, column, path) for row in csv.DictReader(handle)]


def _field(row: dict, column: str, path: Path) -> str:
    if column not in row:
        raise ValueError(
            f"{str(path)!r} has a row without a {column!r} field; name the prompt column with --prompt_column."
        )
    return str(row[column])


def _read_dataset(name: str, column: str, split: str, flag: str) -> list[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types for a missing dataset
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise FileNotFoundError(
            f"{flag} {name!r} is neither a local prompts file (.txt/.jsonl/.csv) nor a loadable dataset ({reason}); "
            "pass an existing file or a dataset name."
        ) from error
    if column not in dataset.column_names:
        raise ValueError(
            f"dataset {name!r} has no column {column!r}; columns: {dataset.column_names}; name it with --prompt_column."
        )
    return list(dataset[column])
