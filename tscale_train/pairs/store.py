"""The on-disk pair store: :class:`PairStore`, one ``datasets`` shard per (round, process)."""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import datasets

from ..io_utils import atomic_directory, remove_tree
from .record import PairRecord
from .schema import (
    _LATENT_COLUMNS,
    _SCALAR_FIELDS,
    PAIR_FEATURES,
    _columns_to_dataset,
    _records_to_columns,
    record_latents,
)

__all__ = ["PairStore", "PairStoreError", "ShardManifest"]

# What a committed round says its shards hold: {"round_00003/process_00001": {"rows": 4, "sha256": "..."}}.
ShardManifest = dict[str, dict[str, int | str]]
_HASH_CHUNK = 1 << 20


class PairStoreError(ValueError):
    """A shard a committed round recorded is missing, truncated or altered, or one it never recorded is there."""


_ROUND_DIR = re.compile(r"^round_(\d{5,})$")
_PROCESS_DIR = re.compile(r"^process_(\d{5,})$")


def _round_dir_name(round_index: int) -> str:
    return f"round_{round_index:05d}"


def _process_dir_name(process_index: int) -> str:
    return f"process_{process_index:05d}"


class PairStore:
    """Preference pairs on disk: ``root/round_{r:05d}/process_{p:05d}``, each a ``Dataset.save_to_disk``.

    One shard per (round, process), so the processes of a distributed run write without
    coordination. Each shard is written into a hidden temporary directory beside its final place
    and renamed in (:func:`~tscale_train.io_utils.atomic_directory`), so readers see whole shards or
    none. The schema is :data:`PAIR_FEATURES`, one row per :class:`PairRecord`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PairStore({str(self.root)!r})"

    # ---- writing ------------------------------------------------------------------------------

    def write_shard(
        self, records: Sequence[PairRecord | dict], round_index: int, process_index: int
    ) -> Path | None:
        """Write one process's pairs of one round; returns the shard directory (None if no records).

        A record is a :class:`PairRecord` (its ``round`` must equal ``round_index``) or, for now, a
        dict with the same keys except that the previews are PIL images (or None) under
        ``chosen_image`` / ``rejected_image``, plus optionally ``margin`` (which must equal the
        score difference). Latents are stored as float32 (bf16 converts exactly), previews as PNG.

        Rewriting an existing shard replaces it whole.

        Raises:
            ValueError: a malformed record or a negative index.
            OSError: writing failed (``errno.ENOSPC`` with a message naming the shard when the disk
                is full); nothing of the new shard is left on disk and earlier shards are untouched.
        """
        for name, value in (("round_index", round_index), ("process_index", process_index)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PairStore.write_shard: {name} must be an integer >= 0, got {value!r}")
        if not records:
            return None
        dataset = _columns_to_dataset(_records_to_columns(records, round_index))
        final_dir = self.root / _round_dir_name(round_index) / _process_dir_name(process_index)
        try:
            # Stale leftovers are this process's own killed writes: no other process writes this shard.
            with atomic_directory(final_dir, remove_stale=True) as staging:
                dataset.save_to_disk(str(staging))
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise OSError(
                    errno.ENOSPC,
                    f"disk full (no space left on device) while writing pair shard {final_dir}; the partial "
                    f"shard was removed and earlier shards are intact. Free space on the disk holding "
                    f"{self.root} or move the run's output_dir to a larger disk, then resume",
                ) from error
            raise
        return final_dir

    def remove_rounds_after(self, round_index: int) -> None:
        """Delete every round newer than ``round_index`` (resuming from a checkpoint taken there).

        Safe to call from several processes at once; in a distributed run call it on the main
        process and wait at a barrier before anyone reads or writes.
        """
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            match = _ROUND_DIR.match(entry.name)
            if match and entry.is_dir() and int(match.group(1)) > round_index:
                remove_tree(entry)

    # ---- what a committed round holds ------------------------------------------------------------

    def shard_key(self, shard_path: Path) -> str:
        """``round_RRRRR/process_PPPPP``: how a manifest names a shard."""
        return f"{shard_path.parent.name}/{shard_path.name}"

    def describe_shard(self, round_index: int, process_index: int, rows: int) -> ShardManifest:
        """The manifest entry of one written shard (``{}`` when it holds no pairs and was not written)."""
        path = self.root / _round_dir_name(round_index) / _process_dir_name(process_index)
        if rows == 0 and not path.exists():
            return {}
        return {self.shard_key(path): {"rows": rows, "sha256": _digest(path)}}

    def manifest(self, rounds: Iterable[int] | None = None) -> ShardManifest:
        """Entries for the shards on disk now (of ``rounds``): for stores whose rounds were committed
        before manifests were recorded, taken as they are."""
        return {
            self.shard_key(path): {
                "rows": datasets.load_from_disk(str(path)).num_rows,
                "sha256": _digest(path),
            }
            for path in self.shard_paths(rounds)
        }

    def verify(
        self,
        manifest: Mapping[str, Mapping],
        rounds: Iterable[int],
        process: int | None = None,
        *,
        advice: str,
    ) -> None:
        """Check the shards of ``rounds`` (of ``process``) against ``manifest``; `PairStoreError` names the
        first shard that is missing, altered or unrecorded, followed by ``advice`` (what to do)."""
        wanted = {int(r) for r in rounds}

        def in_scope(key: str) -> bool:
            round_name, _, process_name = key.partition("/")
            round_match, process_match = _ROUND_DIR.match(round_name), _PROCESS_DIR.match(process_name)
            return (
                bool(round_match and process_match)
                and int(round_match.group(1)) in wanted
                and (process is None or int(process_match.group(1)) == process)
            )

        expected = {key: entry for key, entry in manifest.items() if in_scope(key)}
        present = {self.shard_key(path): path for path in self.shard_paths(wanted, process)}
        for key, entry in sorted(expected.items()):
            shard = self.root / key
            if key not in present:
                raise PairStoreError(
                    f"pair shard {shard} is missing (the run recorded {entry['rows']} pairs there); {advice}"
                )
            if _digest(shard) != entry["sha256"]:
                raise PairStoreError(
                    f"pair shard {shard} is truncated or altered (its checksum is not the one recorded with its "
                    f"{entry['rows']} pairs); {advice}"
                )
        for key in sorted(set(present) - set(expected)):
            raise PairStoreError(
                f"pair shard {self.root / key} was not written by the run's committed rounds; {advice}"
            )

    # ---- reading ------------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        """Sorted indices of the rounds that hold at least one complete shard."""
        return sorted({self._round_of(path) for path in self._all_shards()})

    def shard_paths(self, rounds: Iterable[int] | None = None, process: int | None = None) -> list[Path]:
        """Complete shard directories in (round, process) order, optionally only of ``rounds`` / ``process``."""
        wanted = None if rounds is None else {int(r) for r in rounds}
        return [
            path
            for path in self._all_shards()
            if (wanted is None or self._round_of(path) in wanted)
            and (process is None or path.name == _process_dir_name(process))
        ]

    def load(self, rounds: Iterable[int] | None = None, process: int | None = None) -> datasets.Dataset:
        """All pairs (or those of ``rounds``, of ``process``; absent ones are skipped) as one dataset.

        Rows come in (round, process, write) order. The dataset is memory-mapped from the shards.
        For training, use :meth:`load_records` (latents as tensors, previews never decoded). An empty
        selection gives an empty dataset with the full schema.
        """
        paths = self.shard_paths(rounds, process)
        if not paths:
            return datasets.Dataset.from_dict({name: [] for name in PAIR_FEATURES}, features=PAIR_FEATURES)
        shards = [datasets.load_from_disk(str(path)) for path in paths]
        return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)

    def load_records(
        self, rounds: Iterable[int] | None = None, process: int | None = None
    ) -> list[PairRecord]:
        """The stored pairs (of ``rounds``, of ``process``) as :class:`PairRecord` s, without previews.

        For replaying past rounds in training: only the scalar and latent columns are read, in numpy
        format (no Python lists of floats), and the preview PNGs are never decoded (``*_preview`` is
        None). Latents come back as float32 CPU tensors of their original shape.
        """
        columns = [*_SCALAR_FIELDS, "latent_shape", *_LATENT_COLUMNS]
        records = []
        for path in self.shard_paths(rounds, process):
            shard = datasets.load_from_disk(str(path)).select_columns(columns).with_format("numpy")
            for row in shard:
                chosen, rejected = record_latents(row)
                scalars = {name: kind(row[name]) for name, kind in _SCALAR_FIELDS.items()}
                records.append(PairRecord(**scalars, chosen_latents=chosen, rejected_latents=rejected))
        return records

    def num_pairs(self) -> int:
        """Number of stored pairs over all rounds."""
        return sum(datasets.load_from_disk(str(path)).num_rows for path in self._all_shards())

    # ---- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _round_of(shard_path: Path) -> int:
        return int(_ROUND_DIR.match(shard_path.parent.name).group(1))  # type: ignore[union-attr]

    def _all_shards(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        shards: list[tuple[int, int, Path]] = []
        for round_entry in self.root.iterdir():
            round_match = _ROUND_DIR.match(round_entry.name)
            if not (round_match and round_entry.is_dir()):
                continue
            for shard_entry in round_entry.iterdir():
                # Hidden temporary directories (writes in progress or killed) never match.
                process_match = _PROCESS_DIR.match(shard_entry.name)
                if process_match and shard_entry.is_dir():
                    shards.append((int(round_match.group(1)), int(process_match.group(1)), shard_entry))
        return [path for _, _, path in sorted(shards)]


def _digest(shard_path: Path) -> str:
    """sha256 over a shard's files (names and bytes, in name order): any truncation or edit changes it."""
    digest = hashlib.sha256()
    for path in sorted(item for item in shard_path.rglob("*") if item.is_file()):
        digest.update(str(path.relative_to(shard_path)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
