"""The one rule for "is this model name a local path or a Hub id" (used by `tscale_train.loading` too)."""

from __future__ import annotations

from pathlib import Path


def looks_like_local_path(name_or_path: str | Path) -> bool:
    """True when `name_or_path` is clearly meant as a local path rather than a Hub id ("org/name").

    A `Path` object, anything starting with `.`, `/` or `~`, anything with a backslash or more than
    one `/`, and anything that exists on disk.
    """
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or Path(text).exists()


def check_local_path(name_or_path: str | Path, what: str) -> str:
    """Fail early, with a clear message, on a local path that does not exist.

    Hub ids ("org/name") are passed through; anything that :func:`looks_like_local_path` must exist,
    and comes back with `~` expanded.
    """
    text = str(name_or_path)
    if not looks_like_local_path(name_or_path):
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {text!r} does not exist; pass an existing path or a Hub id")
    return str(path)
