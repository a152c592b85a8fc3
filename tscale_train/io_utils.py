"""Atomic writes: build a file or directory next to its target, then rename it in, so nothing
half-written is ever left. Also strict JSON (non-finite numbers as null) and a readable error for a
full disk, which torch and PIL otherwise report as `enforce fail at inline_container.cc` or
`'_idat' object has no attribute 'fileno'`."""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Below this much free space a failed write is put down to a full disk (torch's zip writer loses the errno).
_NEARLY_FULL_BYTES = 16 * 2**20


def free_bytes(path: str | Path) -> int:
    """Free space for unprivileged writes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _is_disk_full(error: BaseException, path: Path) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno in (
                errno.ENOSPC,
                errno.EDQUOT,
            )  # another errno (EACCES, EIO...) is not a full disk
        cause = cause.__cause__ or cause.__context__
    # No errno to go by (torch's "enforce fail at inline_container.cc"): look at the disk.
    try:
        return free_bytes(path) < _NEARLY_FULL_BYTES
    except OSError:
        return False


@contextmanager
def disk_full_error(path: str | Path) -> Iterator[None]:
    """Turn a write failure caused by a full disk into `OSError(ENOSPC, "no space left on device while writing PATH")`.

    Other failures pass through unchanged. AttributeError is caught because PIL reports a failed
    PNG write as `'_idat' object has no attribute 'fileno'`, with the ENOSPC further down the chain.
    """
    try:
        yield
    except (OSError, RuntimeError, AttributeError) as error:
        if isinstance(error, OSError) and "no space left on device while writing" in str(error):
            raise  # already named (a nested write)
        if _is_disk_full(error, Path(path)):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}") from error
        raise


def _umask() -> int:
    """The process umask. /proc is read first: setting and restoring it would race other threads' writes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(*, directory: bool = False) -> int:
    """The mode a plain new file (0o666) or directory (0o777) gets under the process umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def respect_umask(path: str | Path) -> Path:
    """Give `path`, and with a directory everything under it, the modes a plain `open` or `mkdir` would.

    For writers that create owner-only files whatever the umask: `tempfile.mkstemp`/`mkdtemp`, and
    safetensors from 0.8 on, whose `save_file` (under diffusers' `save_lora_weights` and
    `save_pretrained`) renames a 0600 temporary file into place (safetensors issue #782). An executable
    file keeps its execute bits, masked too; symbolic links are left alone.
    """
    path = Path(path)
    file_bits, directory_bits = file_mode(), file_mode(directory=True)

    def fix(item: Path, is_directory: bool) -> None:
        mode = item.lstat().st_mode & 0o7777
        if is_directory:
            wanted = directory_bits
        else:
            wanted = file_bits | (directory_bits & 0o111 if mode & 0o100 else 0)
        if mode != wanted:
            os.chmod(item, wanted)

    if path.is_symlink():
        return path
    if path.is_dir():
        for root, directories, files in os.walk(path):
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    fix(Path(root, name), False)
            for name in directories:
                if not os.path.islink(os.path.join(root, name)):
                    fix(Path(root, name), True)
        fix(path, True)
    else:
        fix(path, False)
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then `os.replace` it into place.

    The file gets the mode any other write would (0o666 less the umask), not mkstemp's 0600.
    A full disk is reported as such, naming `path`.
    """
    path = Path(path)
    with disk_full_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
        os.close(handle)
        tmp_path = Path(tmp_name)
        try:
            write(tmp_path)
            os.chmod(tmp_path, file_mode())
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf) replaced by None, and tuples by lists.

    `json.dumps` would write them as bare NaN/Infinity, which is not JSON: strict readers (jq,
    JavaScript, pandas with some engines) reject the whole file.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def dumps_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value` (non-finite numbers as null); kwargs go to `json.dumps`."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write_text(path, dumps_json(payload, indent=2) + "\n")


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


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
