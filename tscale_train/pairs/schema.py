"""The pair store's columns: :data:`PAIR_FEATURES` and converting :class:`PairRecord` s to and from them."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable
from PIL import Image
from torch import Tensor

from .record import PairRecord

__all__ = ["PAIR_FEATURES", "record_latents"]

# datasets >= 4 names the variable-length list feature `List`; 3.x used `Sequence`.
_ListFeature = getattr(datasets, "List", None) or datasets.Sequence

# The record's scalar fields, each one column of this type.
_SCALAR_TYPES: dict[str, tuple[type, str]] = {
    "str": (str, "string"),
    "int": (int, "int64"),
    "float": (float, "float64"),
}
_SCALAR_FIELDS = {
    field.name: _SCALAR_TYPES[field.type][0] for field in fields(PairRecord) if field.type in _SCALAR_TYPES
}
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
    converted = PairRecord(
        **{columns.get(key, key): value for key, value in record.items() if key != "margin"}
    )
    if "margin" in record and not math.isclose(
        float(record["margin"]), converted.margin, rel_tol=1e-9, abs_tol=1e-12
    ):
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
        rejected, rejected_shape = _flat_float32(
            record.rejected_latents, f"record {position} rejected_latents"
        )
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
