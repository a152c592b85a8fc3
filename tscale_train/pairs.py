"""Preference pairs: choosing chosen/rejected candidates from a search, and storing them on disk.

A search scores ``budget`` candidate noises for one prompt (index 0 is the unsearched base noise).
:func:`select_pairs` turns those scores into (chosen, rejected) index pairs; the online loop then
stores each pair's clean latents, preview images and scores in a :class:`PairStore`: a Hugging Face
``datasets`` dataset on disk, one shard per (round, process), each written atomically so a crash
or a full disk never leaves half a shard behind. :func:`to_pickapic` exports a store in the
Pick-a-Pic layout that existing Diffusion-DPO training code reads.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable
from PIL import Image
from torch import Tensor

__all__ = [
    "PAIRING_STRATEGIES",
    "PAIR_FEATURES",
    "PICKAPIC_FEATURES",
    "PairIndices",
    "PairStore",
    "record_latents",
    "select_pairs",
    "to_pickapic",
]

PAIRING_STRATEGIES = ("best_vs_worst", "best_vs_base", "top_k_vs_bottom_k")


# --------------------------------------------------------------------------------------------------
# choosing pairs


@dataclass(frozen=True)
class PairIndices:
    """One preference pair inside a search: evaluation indices (0 = base noise) and score margin."""

    chosen_index: int
    rejected_index: int
    margin: float  # chosen score - rejected score, always > 0


def select_pairs(
    scores: Tensor | Sequence[float],
    strategy: str = "best_vs_worst",
    *,
    k: int = 1,
    min_margin: float = 0.0,
) -> list[PairIndices]:
    """Choose (chosen, rejected) candidates from one search's scores.

    Args:
        scores: ``Tensor[budget]`` in evaluation order; index 0 is the base (unsearched) noise.
            Non-finite scores (NaN, +-inf: a failed decode or reward) are never used.
        strategy:
            ``"best_vs_worst"``: the best vs the worst candidate.
            ``"best_vs_base"``: the best candidate vs the base noise (what the search bought).
            ``"top_k_vs_bottom_k"``: the i-th best vs the i-th worst for ``i < k``; no candidate
            is used twice, so with fewer than ``2 * k`` valid candidates fewer pairs come out.
        k: the number of pairs for ``"top_k_vs_bottom_k"`` (ignored by the other strategies).
        min_margin: pairs whose score margin is below this are dropped. Pairs with a margin
            ``<= 0`` are always dropped: a tie is no preference, and chosen == rejected never occurs.

    Ranking: candidates are ordered by score, highest first; equal scores keep evaluation order
    (the earlier-evaluated candidate ranks higher). So among tied best candidates the earliest is
    chosen, and among tied worst candidates the latest is rejected.

    Returns:
        The pairs, best pair first (possibly empty).

    Raises:
        ValueError: unknown strategy, ``scores`` not 1-D, ``k < 1`` or ``min_margin`` not a
            finite number >= 0.
    """
    if strategy not in PAIRING_STRATEGIES:
        raise ValueError(
            f"select_pairs: unknown strategy {strategy!r}; choose one of {', '.join(PAIRING_STRATEGIES)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"select_pairs: k must be an integer >= 1, got {k!r}")
    try:
        min_margin_value = float(min_margin)
    except (TypeError, ValueError):
        min_margin_value = math.nan
    if not (math.isfinite(min_margin_value) and min_margin_value >= 0):
        raise ValueError(f"select_pairs: min_margin must be a finite number >= 0, got {min_margin!r}")
    score_tensor = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if score_tensor.ndim != 1:
        raise ValueError(
            f"select_pairs: scores must be a 1-D tensor (one search, in evaluation order), got shape "
            f"{tuple(score_tensor.shape)}; call it once per search"
        )
    values = score_tensor.tolist()
    valid = [index for index, value in enumerate(values) if math.isfinite(value)]
    ranked = sorted(valid, key=lambda index: (-values[index], index))

    candidates: list[tuple[int, int]]
    if len(ranked) < 1:
        candidates = []
    elif strategy == "best_vs_worst":
        candidates = [(ranked[0], ranked[-1])]
    elif strategy == "best_vs_base":
        candidates = [(ranked[0], 0)] if 0 in valid else []
    else:  # top_k_vs_bottom_k
        num_pairs = min(k, len(ranked) // 2)
        candidates = [(ranked[i], ranked[len(ranked) - 1 - i]) for i in range(num_pairs)]

    pairs = []
    for chosen, rejected in candidates:
        margin = values[chosen] - values[rejected]
        if chosen == rejected or margin <= 0 or margin < min_margin_value:
            continue
        pairs.append(PairIndices(chosen_index=chosen, rejected_index=rejected, margin=margin))
    return pairs


# --------------------------------------------------------------------------------------------------
# the on-disk store

# datasets >= 4 names the variable-length list feature `List`; 3.x used `Sequence`.
_ListFeature = getattr(datasets, "List", None) or datasets.Sequence

# Latents are stored as flat float32 lists plus one shared `latent_shape` column. Array2D/Array3D
# features would need the shape fixed in the schema, which differs between models and resolutions
# and is unknown for an empty store; a flat list round-trips any shape bit-exactly (bf16 -> float32
# is exact). LargeList (64-bit offsets) because one shard of 1024 px FLUX.2 latents (4096 x 128
# floats per sample) passes 2**31 values at about 2000 pairs.
PAIR_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "prompt_index": datasets.Value("int64"),
        "round": datasets.Value("int64"),
        "seed": datasets.Value("int64"),
        "strategy": datasets.Value("string"),
        "chosen_index": datasets.Value("int64"),
        "rejected_index": datasets.Value("int64"),
        "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"),
        "margin": datasets.Value("float64"),
        "latent_shape": _ListFeature(datasets.Value("int64")),
        "chosen_latents": datasets.LargeList(datasets.Value("float32")),
        "rejected_latents": datasets.LargeList(datasets.Value("float32")),
        "chosen_image": datasets.Image(),
        "rejected_image": datasets.Image(),
    }
)

_REQUIRED_RECORD_KEYS = (
    "prompt",
    "prompt_index",
    "round",
    "seed",
    "strategy",
    "chosen_index",
    "rejected_index",
    "chosen_score",
    "rejected_score",
    "chosen_latents",
    "rejected_latents",
    "chosen_image",
    "rejected_image",
)
_OPTIONAL_RECORD_KEYS = ("margin",)  # derived from the scores when absent

_ROUND_DIR = re.compile(r"^round_(\d{5,})$")
_PROCESS_DIR = re.compile(r"^process_(\d{5,})$")


def _round_dir_name(round_index: int) -> str:
    return f"round_{round_index:05d}"


def _process_dir_name(process_index: int) -> str:
    return f"process_{process_index:05d}"


def _encode_image(image: Any, where: str) -> dict[str, Any] | None:
    """PIL image -> ``{"bytes": PNG, "path": None}``.

    Encoding here rather than letting ``datasets`` do it: for an image opened from a file it would
    store only the file's path, and the shard would break when that file moves.
    """
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"PairStore: {where} must be a PIL.Image.Image (or None), got {type(image).__name__}"
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _flat_float32(latents: Any, where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    if isinstance(latents, Tensor):
        array = latents.detach().to("cpu", torch.float32).contiguous().numpy()
    elif isinstance(latents, np.ndarray):
        array = latents.astype(np.float32, copy=False)
    else:
        raise ValueError(f"PairStore: {where} must be a torch.Tensor, got {type(latents).__name__}")
    return array.reshape(-1), tuple(int(size) for size in array.shape)


def _records_to_columns(records: list[dict], round_index: int) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in PAIR_FEATURES}
    allowed = set(_REQUIRED_RECORD_KEYS) | set(_OPTIONAL_RECORD_KEYS)
    for position, record in enumerate(records):
        missing = [key for key in _REQUIRED_RECORD_KEYS if key not in record]
        unknown = sorted(set(record) - allowed)
        if missing or unknown:
            raise ValueError(
                f"PairStore.write_shard: record {position} has missing keys {missing} and unknown keys "
                f"{unknown}; a record holds exactly {', '.join(_REQUIRED_RECORD_KEYS)} (and optionally margin)"
            )
        if int(record["round"]) != round_index:
            raise ValueError(
                f"PairStore.write_shard: record {position} says round {record['round']} but the shard is "
                f"round {round_index}; write each round's pairs into that round's shard"
            )
        chosen, chosen_shape = _flat_float32(record["chosen_latents"], f"record {position} chosen_latents")
        rejected, rejected_shape = _flat_float32(
            record["rejected_latents"], f"record {position} rejected_latents"
        )
        if chosen_shape != rejected_shape:
            raise ValueError(
                f"PairStore.write_shard: record {position} has chosen_latents {chosen_shape} and "
                f"rejected_latents {rejected_shape}; both must be the same prompt's latents of one shape"
            )
        chosen_score = float(record["chosen_score"])
        rejected_score = float(record["rejected_score"])
        columns["prompt"].append(str(record["prompt"]))
        columns["prompt_index"].append(int(record["prompt_index"]))
        columns["round"].append(int(record["round"]))
        columns["seed"].append(int(record["seed"]))
        columns["strategy"].append(str(record["strategy"]))
        columns["chosen_index"].append(int(record["chosen_index"]))
        columns["rejected_index"].append(int(record["rejected_index"]))
        columns["chosen_score"].append(chosen_score)
        columns["rejected_score"].append(rejected_score)
        columns["margin"].append(float(record.get("margin", chosen_score - rejected_score)))
        columns["latent_shape"].append(list(chosen_shape))
        columns["chosen_latents"].append(chosen)
        columns["rejected_latents"].append(rejected)
        columns["chosen_image"].append(
            _encode_image(record["chosen_image"], f"record {position} chosen_image")
        )
        columns["rejected_image"].append(
            _encode_image(record["rejected_image"], f"record {position} rejected_image")
        )
    return columns


_LATENT_COLUMNS = ("chosen_latents", "rejected_latents")


def _columns_to_dataset(columns: dict[str, list]) -> datasets.Dataset:
    """Build the shard's in-memory dataset, the latent columns straight from NumPy.

    ``Dataset.from_dict`` converts list-of-array columns element by element: about 3.5 s per column
    for 32 pairs of 4096 x 128 latents, against 0.1 s for a zero-copy Arrow array built here.
    """
    schema = PAIR_FEATURES.arrow_schema
    small = {name: values for name, values in columns.items() if name not in _LATENT_COLUMNS}
    small_table = pa.Table.from_pydict(small, schema=pa.schema([schema.field(name) for name in small]))
    arrays = []
    for name in PAIR_FEATURES:
        if name in _LATENT_COLUMNS:
            flats = columns[name]
            offsets = np.zeros(len(flats) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([flat.size for flat in flats])
            values = pa.array(np.concatenate(flats) if flats else np.zeros(0, np.float32))
            arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), values))
        else:
            arrays.append(small_table.column(name))
    table = pa.Table.from_arrays(arrays, schema=schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=PAIR_FEATURES))


def _remove_tree(path: Path) -> None:
    """rmtree that tolerates another process removing the same tree at the same time."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


class PairStore:
    """Preference pairs on disk: ``root/round_{r:05d}/process_{p:05d}``, each a ``Dataset.save_to_disk``.

    One shard per (round, process), so the processes of a distributed run write without
    coordination. Each shard is written into a hidden temporary directory beside its final place
    and renamed in (``os.replace``), so readers see whole shards or none. The schema is
    :data:`PAIR_FEATURES`; see :meth:`write_shard` for what a record holds.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PairStore({str(self.root)!r})"

    # ---- writing ------------------------------------------------------------------------------

    def write_shard(self, records: list[dict], round_index: int, process_index: int) -> Path | None:
        """Write one process's pairs of one round; returns the shard directory (None if no records).

        A record is a dict with: ``prompt`` (str), ``prompt_index`` (int), ``round`` (int, must equal
        ``round_index``), ``seed`` (int, the base noise's seed), ``strategy`` (str), ``chosen_index`` /
        ``rejected_index`` (int, evaluation indices in the search, 0 = base noise), ``chosen_score`` /
        ``rejected_score`` (float), ``chosen_latents`` / ``rejected_latents`` (tensors of one shape,
        any float dtype: the clean latents in the transformer's input space), ``chosen_image`` /
        ``rejected_image`` (PIL previews, or None), and optionally ``margin`` (default: the score
        difference). Latents are stored as float32 (bf16 converts exactly).

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

        round_dir = self.root / _round_dir_name(round_index)
        final_dir = round_dir / _process_dir_name(process_index)
        temp_prefix = f".{_process_dir_name(process_index)}.tmp-"
        temp_dir = round_dir / f"{temp_prefix}{uuid.uuid4().hex}"
        try:
            round_dir.mkdir(parents=True, exist_ok=True)
            # Leftovers of this process's own earlier writes that were killed mid-way (SIGKILL
            # leaves no chance to clean up); no other process writes under this prefix.
            for stale in round_dir.glob(f"{temp_prefix}*"):
                _remove_tree(stale)
            dataset.save_to_disk(str(temp_dir))
            if final_dir.exists():
                # os.replace cannot replace a non-empty directory: move the old shard aside first.
                retired = round_dir / f"{temp_prefix}old-{uuid.uuid4().hex}"
                os.replace(final_dir, retired)
                try:
                    os.replace(temp_dir, final_dir)
                except BaseException:
                    os.replace(retired, final_dir)  # put the old shard back rather than lose it
                    raise
                _remove_tree(retired)
            else:
                os.replace(temp_dir, final_dir)
        except OSError as error:
            _remove_tree(temp_dir)
            if error.errno == errno.ENOSPC:
                raise OSError(
                    errno.ENOSPC,
                    f"disk full (no space left on device) while writing pair shard {final_dir}; the partial "
                    f"shard was removed and earlier shards are intact. Free space on the disk holding "
                    f"{self.root} or move the run's output_dir to a larger disk, then resume",
                ) from error
            raise
        except BaseException:
            _remove_tree(temp_dir)
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
                _remove_tree(entry)

    # ---- reading ------------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        """Sorted indices of the rounds that hold at least one complete shard."""
        return sorted({self._round_of(path) for path in self._all_shards()})

    def shard_paths(self, rounds: Iterable[int] | None = None) -> list[Path]:
        """Complete shard directories in (round, process) order, optionally only of ``rounds``."""
        wanted = None if rounds is None else {int(r) for r in rounds}
        return [path for path in self._all_shards() if wanted is None or self._round_of(path) in wanted]

    def load(self, rounds: Iterable[int] | None = None) -> datasets.Dataset:
        """All pairs (or those of ``rounds``; absent rounds are skipped) as one dataset.

        Rows come in (round, process, write) order. The dataset is memory-mapped from the shards.
        For training, select the columns you need and use ``with_format("numpy")`` (or "torch") so
        that latents come back as arrays rather than Python lists and previews are not decoded; see
        :func:`record_latents`. An empty selection gives an empty dataset with the full schema.
        """
        paths = self.shard_paths(rounds)
        if not paths:
            return datasets.Dataset.from_dict({name: [] for name in PAIR_FEATURES}, features=PAIR_FEATURES)
        shards = [datasets.load_from_disk(str(path)) for path in paths]
        return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)

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


# --------------------------------------------------------------------------------------------------
# reading records


def _as_float32_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to(torch.float32)
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def record_latents(example: dict) -> tuple[Tensor, Tensor]:
    """``(chosen, rejected)`` float32 latents of one stored pair, in their original shape.

    ``example`` is a row of :meth:`PairStore.load`'s dataset in any format (python lists, numpy or
    torch); numpy/torch formats avoid building Python lists of floats.
    """
    for key in ("latent_shape", "chosen_latents", "rejected_latents"):
        if key not in example:
            raise ValueError(
                f"record_latents: the example has no {key!r} column; keep latent_shape, chosen_latents "
                "and rejected_latents when selecting columns"
            )
    shape = tuple(int(size) for size in np.asarray(example["latent_shape"]).reshape(-1).tolist())
    chosen = _as_float32_tensor(example["chosen_latents"]).reshape(-1)
    rejected = _as_float32_tensor(example["rejected_latents"]).reshape(-1)
    expected = math.prod(shape)
    if chosen.numel() != expected or rejected.numel() != expected:
        raise ValueError(
            f"record_latents: latent_shape {shape} needs {expected} values, got {chosen.numel()} chosen and "
            f"{rejected.numel()} rejected; the pair store is corrupt or columns were mixed up"
        )
    return chosen.reshape(shape), rejected.reshape(shape)


# --------------------------------------------------------------------------------------------------
# export


def _jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


PICKAPIC_FEATURES = datasets.Features(
    {
        "caption": datasets.Value("string"),
        "jpg_0": datasets.Value("binary"),
        "jpg_1": datasets.Value("binary"),
        "label_0": datasets.Value("float64"),
        "label_1": datasets.Value("float64"),
        "best_score": datasets.Value("float64"),
        "worst_score": datasets.Value("float64"),
        "round": datasets.Value("int64"),
        "prompt_index": datasets.Value("int64"),
        "seed": datasets.Value("int64"),
    }
)


def to_pickapic(dataset: datasets.Dataset, *, seed: int = 0) -> datasets.Dataset:
    """Convert stored pairs to the Pick-a-Pic layout read by Diffusion-DPO training scripts.

    Columns: ``caption``; ``jpg_0`` / ``jpg_1`` (JPEG bytes); ``label_0`` (1.0 if ``jpg_0`` is the
    preferred image, else 0.0) and ``label_1 = 1 - label_0``; plus ``best_score`` / ``worst_score``
    (the chosen and rejected reward scores) and ``round``, ``prompt_index``, ``seed`` for provenance.
    The chosen image goes to position 0 or 1 by a coin flip seeded with ``seed``, so ``label_0`` is
    not constant and a model cannot learn "always the first".

    Raises:
        ValueError: a required column is missing or a pair has no preview image.
    """
    needed = ["prompt", "chosen_image", "rejected_image", "chosen_score", "rejected_score", "round",
              "prompt_index", "seed"]  # fmt: skip
    missing = [name for name in needed if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"to_pickapic: the dataset lacks columns {missing}; pass PairStore.load()'s dataset unchanged"
        )
    # Only these columns: decoding the latent columns for every row would cost far more than the images.
    rows = dataset.select_columns(needed)
    chosen_first = np.random.default_rng(seed).random(rows.num_rows) < 0.5
    columns: dict[str, list] = {name: [] for name in PICKAPIC_FEATURES}
    for position, row in enumerate(rows):
        if row["chosen_image"] is None or row["rejected_image"] is None:
            raise ValueError(
                f"to_pickapic: pair {position} has no preview image; write pairs with chosen_image and "
                "rejected_image to export them"
            )
        chosen_jpeg = _jpeg_bytes(row["chosen_image"])
        rejected_jpeg = _jpeg_bytes(row["rejected_image"])
        first, second = (
            (chosen_jpeg, rejected_jpeg) if chosen_first[position] else (rejected_jpeg, chosen_jpeg)
        )
        label_0 = 1.0 if chosen_first[position] else 0.0
        columns["caption"].append(row["prompt"])
        columns["jpg_0"].append(first)
        columns["jpg_1"].append(second)
        columns["label_0"].append(label_0)
        columns["label_1"].append(1.0 - label_0)
        columns["best_score"].append(row["chosen_score"])
        columns["worst_score"].append(row["rejected_score"])
        columns["round"].append(row["round"])
        columns["prompt_index"].append(row["prompt_index"])
        columns["seed"].append(row["seed"])
    return datasets.Dataset.from_dict(columns, features=PICKAPIC_FEATURES)
