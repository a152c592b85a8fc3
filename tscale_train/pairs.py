"""Preference pairs: choosing chosen/rejected candidates from a search, and storing them on disk.

A search scores ``budget`` candidate noises for one prompt (index 0 is the unsearched base noise).
:func:`select_pairs` turns those scores into (chosen, rejected) index pairs and
:func:`records_from_search` into :class:`PairRecord` s; the online loop then stores each pair's
clean latents, preview images and scores in a :class:`PairStore`: a Hugging Face
``datasets`` dataset on disk, one shard per (round, process), each written atomically so a crash
or a full disk never leaves half a shard behind. :func:`to_pickapic` exports a store in the
Pick-a-Pic layout that existing Diffusion-DPO training code reads.
"""

from __future__ import annotations

import errno
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable
from PIL import Image
from torch import Tensor

from search import rank_best_first

from .io_utils import atomic_directory, remove_tree

if TYPE_CHECKING:
    from .ses import PromptSearch

__all__ = [
    "PAIRING_STRATEGIES",
    "PAIR_FEATURES",
    "PICKAPIC_FEATURES",
    "PairIndices",
    "PairRecord",
    "PairStore",
    "record_latents",
    "records_from_search",
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
    ranked = rank_best_first(score_tensor)

    candidates: list[tuple[int, int]]
    if len(ranked) < 1:
        candidates = []
    elif strategy == "best_vs_worst":
        candidates = [(ranked[0], ranked[-1])]
    elif strategy == "best_vs_base":
        candidates = [(ranked[0], 0)] if 0 in ranked else []
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
# one pair


@dataclass
class PairRecord:
    """One stored preference pair: where it came from, its scores, latents and previews.

    The single spelling of a pair's layout: the store's columns (:data:`PAIR_FEATURES`) and the keys
    of the dict records :meth:`PairStore.write_shard` still accepts derive from these fields.
    """

    prompt: str
    prompt_index: int  # the prompt's position in the run's prompt list
    round: int
    seed: int  # the base noise's seed
    strategy: str  # the pairing strategy (:data:`PAIRING_STRATEGIES`)
    chosen_index: int  # evaluation indices in the search, 0 = base noise
    rejected_index: int
    chosen_score: float
    rejected_score: float
    # Clean latents in the transformer's input space, CPU tensors of one shape (any float dtype;
    # stored as float32, which bf16 converts to exactly).
    chosen_latents: Tensor
    rejected_latents: Tensor
    # uint8 [3, s, s] thumbnails, PNG-encoded only when written; None when not kept or not loaded.
    chosen_preview: Tensor | None = None
    rejected_preview: Tensor | None = None

    @property
    def margin(self) -> float:
        """``chosen_score - rejected_score``."""
        return self.chosen_score - self.rejected_score

    @classmethod
    def from_search(
        cls, search_result: PromptSearch, pair: PairIndices, prompt_index: int, round_index: int, strategy: str
    ) -> PairRecord:
        """The record of ``pair`` in a finished search (run with ``keep_latents=True``).

        ``prompt_index`` is the caller's index of the prompt (duplicated prompts keep their own).
        Latents and previews are copied out of the search's per-candidate tensors, so keeping the
        record does not keep the whole search's candidates alive.
        """
        if search_result.clean_latents is None:
            raise ValueError(
                "PairRecord.from_search: the search kept no clean latents; run search_prompts with keep_latents=True"
            )
        scores, previews = search_result.search.scores, search_result.previews
        chosen, rejected = pair.chosen_index, pair.rejected_index
        return cls(
            prompt=search_result.prompt,
            prompt_index=int(prompt_index),
            round=int(round_index),
            seed=int(search_result.seed),
            strategy=strategy,
            chosen_index=chosen,
            rejected_index=rejected,
            chosen_score=float(scores[chosen]),
            rejected_score=float(scores[rejected]),
            chosen_latents=search_result.clean_latents[chosen].clone(),
            rejected_latents=search_result.clean_latents[rejected].clone(),
            chosen_preview=None if previews is None else previews[chosen].clone(),
            rejected_preview=None if previews is None else previews[rejected].clone(),
        )


def records_from_search(
    result: PromptSearch, prompt_index: int, round_index: int, strategy: str, k: int = 1, min_margin: float = 0.0
) -> list[PairRecord]:
    """The :class:`PairRecord` s of one finished search, chosen by :func:`select_pairs`, best pair first."""
    return [
        PairRecord.from_search(result, pair, prompt_index, round_index, strategy)
        for pair in select_pairs(result.search.scores, strategy, k=k, min_margin=min_margin)
    ]


# --------------------------------------------------------------------------------------------------
# the on-disk store

# datasets >= 4 names the variable-length list feature `List`; 3.x used `Sequence`.
_ListFeature = getattr(datasets, "List", None) or datasets.Sequence

# The record's scalar fields, each one column of this type.
_SCALAR_TYPES: dict[str, tuple[type, str]] = {"str": (str, "string"), "int": (int, "int64"), "float": (float, "float64")}
_SCALAR_FIELDS = {field.name: _SCALAR_TYPES[field.type][0] for field in fields(PairRecord) if field.type in _SCALAR_TYPES}
_LATENT_COLUMNS = ("chosen_latents", "rejected_latents")
# Previews are stored as PNG images under these names (also the keys of dict records).
_PREVIEW_COLUMNS = {"chosen_preview": "chosen_image", "rejected_preview": "rejected_image"}

# Latents are stored as flat float32 lists plus one shared `latent_shape` column. Array2D/Array3D
# features would need the shape fixed in the schema, which differs between models and resolutions
# and is unknown for an empty store; a flat list round-trips any shape bit-exactly (bf16 -> float32
# is exact). LargeList (64-bit offsets) because one shard of 1024 px FLUX.2 latents (4096 x 128
# floats per sample) passes 2**31 values at about 2000 pairs.
PAIR_FEATURES = datasets.Features(
    {
        **{
            field.name: datasets.Value(_SCALAR_TYPES[field.type][1])
            for field in fields(PairRecord)
            if field.type in _SCALAR_TYPES
        },
        "margin": datasets.Value("float64"),  # PairRecord.margin
        "latent_shape": _ListFeature(datasets.Value("int64")),
        **{name: datasets.LargeList(datasets.Value("float32")) for name in _LATENT_COLUMNS},
        **{column: datasets.Image() for column in _PREVIEW_COLUMNS.values()},
    }
)

# Keys of a dict record: the record's fields, previews under their column names.
_REQUIRED_RECORD_KEYS = tuple(_PREVIEW_COLUMNS.get(field.name, field.name) for field in fields(PairRecord))
_OPTIONAL_RECORD_KEYS = ("margin",)  # derived from the scores; checked when given

_ROUND_DIR = re.compile(r"^round_(\d{5,})$")
_PROCESS_DIR = re.compile(r"^process_(\d{5,})$")


def _round_dir_name(round_index: int) -> str:
    return f"round_{round_index:05d}"


def _process_dir_name(process_index: int) -> str:
    return f"process_{process_index:05d}"


def _record_from_dict(record: dict, position: int) -> PairRecord:
    """A dict record (the trainer's layout, PIL previews under ``chosen_image``/``rejected_image``)."""
    missing = [key for key in _REQUIRED_RECORD_KEYS if key not in record]
    unknown = sorted(set(record) - set(_REQUIRED_RECORD_KEYS) - set(_OPTIONAL_RECORD_KEYS))
    if missing or unknown:
        raise ValueError(
            f"PairStore.write_shard: record {position} has missing keys {missing} and unknown keys "
            f"{unknown}; a record holds exactly {', '.join(_REQUIRED_RECORD_KEYS)} (and optionally margin)"
        )
    columns = {value: key for key, value in _PREVIEW_COLUMNS.items()}
    converted = PairRecord(**{columns.get(key, key): value for key, value in record.items() if key != "margin"})
    if "margin" in record and not math.isclose(float(record["margin"]), converted.margin, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(
            f"PairStore.write_shard: record {position} has margin {record['margin']} but its scores differ by "
            f"{converted.margin}; leave margin out (it is chosen_score - rejected_score)"
        )
    return converted


def _encode_preview(preview: Any, where: str) -> dict[str, Any] | None:
    """uint8 ``[3, s, s]`` tensor (or a PIL image, from dict records) -> ``{"bytes": PNG, "path": None}``.

    Encoding here rather than letting ``datasets`` do it: for an image opened from a file it would
    store only the file's path, and the shard would break when that file moves.
    """
    if preview is None:
        return None
    if isinstance(preview, Tensor):
        if preview.dtype != torch.uint8 or preview.ndim != 3 or preview.shape[0] != 3:
            raise ValueError(
                f"PairStore: {where} must be a uint8 tensor [3, H, W], got {preview.dtype} {tuple(preview.shape)}"
            )
        image = Image.fromarray(preview.detach().cpu().permute(1, 2, 0).contiguous().numpy())
    elif isinstance(preview, Image.Image):
        image = preview
    else:
        raise ValueError(
            f"PairStore: {where} must be a uint8 tensor [3, H, W], a PIL.Image.Image or None, got {type(preview).__name__}"
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


def _records_to_columns(records: Sequence[PairRecord | dict], round_index: int) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in PAIR_FEATURES}
    for position, given in enumerate(records):
        record = given if isinstance(given, PairRecord) else _record_from_dict(given, position)
        if int(record.round) != round_index:
            raise ValueError(
                f"PairStore.write_shard: record {position} says round {record.round} but the shard is "
                f"round {round_index}; write each round's pairs into that round's shard"
            )
        chosen, chosen_shape = _flat_float32(record.chosen_latents, f"record {position} chosen_latents")
        rejected, rejected_shape = _flat_float32(record.rejected_latents, f"record {position} rejected_latents")
        if chosen_shape != rejected_shape:
            raise ValueError(
                f"PairStore.write_shard: record {position} has chosen_latents {chosen_shape} and "
                f"rejected_latents {rejected_shape}; both must be the same prompt's latents of one shape"
            )
        for name, kind in _SCALAR_FIELDS.items():
            columns[name].append(kind(getattr(record, name)))
        columns["margin"].append(columns["chosen_score"][-1] - columns["rejected_score"][-1])
        columns["latent_shape"].append(list(chosen_shape))
        columns["chosen_latents"].append(chosen)
        columns["rejected_latents"].append(rejected)
        for name, column in _PREVIEW_COLUMNS.items():
            columns[column].append(_encode_preview(getattr(record, name), f"record {position} {column}"))
    return columns


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

    def load_records(self, rounds: Iterable[int] | None = None, process: int | None = None) -> list[PairRecord]:
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
