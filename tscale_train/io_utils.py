"""Atomic writes: build a file or directory next to its target, then rename it in, so nothing
half-written is ever left."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then `os.replace` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, payload) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def atomic_save_image(image, path: str | Path) -> Path:
    path = Path(path)
    image_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=image_format))


def remove_tree(path: str | Path) -> None:
    """`shutil.rmtree` that tolerates the tree being absent or removed by another process meanwhile."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_directory(target: str | Path, *, remove_stale: bool = False) -> Iterator[Path]:
    """Build a directory beside `target`, then swap it in: readers see the old or the new one, whole.

    Yields a staging path `<parent>/.<name>.tmp-<random>` that does not exist yet (the body creates
    it, e.g. with `save_pretrained` or `save_to_disk`). On success it replaces `target`: an existing
    `target` is moved aside first (`os.replace` cannot replace a non-empty directory) and put back if
    the swap fails. On any failure, or an interrupt, the staging directory is removed and `target`
    is left as it was.

    `remove_stale`: first delete leftovers of earlier builds of this same `target` that were killed
    (SIGKILL leaves no chance to clean up). Only safe when no one else builds `target` at the same
    time (one writer per target, or under a lock).
    """
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    target.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        for stale in target.parent.glob(glob.escape(prefix) + "*"):
            remove_tree(stale)
    staging = target.parent / f"{prefix}{uuid.uuid4().hex}"
    try:
        yield staging
        if target.exists():
            retired = target.parent / f"{prefix}old-{uuid.uuid4().hex}"
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)  # put the old directory back rather than lose it
                raise
            remove_tree(retired)
        else:
            os.replace(staging, target)
    finally:
        remove_tree(staging)  # already gone after a successful swap
