"""Export to the Pick-a-Pic layout that existing Diffusion-DPO training code reads."""

from __future__ import annotations

import io

import datasets
import numpy as np
from PIL import Image

__all__ = ["PICKAPIC_FEATURES", "to_pickapic"]


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
