"""Export a run's preference pairs as a Hub dataset: Pick-a-Pic-layout parquet shards and a card.

:func:`export_pair_dataset` turns ``run_dir/pairs`` (a :class:`~tscale_train.pairs.PairStore`) into
a folder that ``huggingface_hub.upload_folder(..., repo_type="dataset")`` pushes as is::

    out_dir/
        README.md                           the dataset card (YAML metadata + description)
        data/train-00000-of-0000N.parquet   the pairs in the Pick-a-Pic layout (``to_pickapic``)
        .tscale_export                      marks the folder as this exporter's (safe to replace)

``datasets.load_dataset(str(out_dir), split="train")`` (or ``load_dataset(repo_id)`` once pushed)
reads it back, and the Hub's dataset viewer reads the same files.

The pairs are one ``train`` split, and the card gives diffusers' ``train_diffusion_dpo.py`` command with
``--dataset_split_name=train``: the script reads the ``validation`` split by default (Pick-a-Pic's small one),
and a ``validation`` split holding the training rows would have anyone who evaluates on it evaluate on the
training data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from ..io_utils import atomic_directory, disk_full_error
from ..loading import is_offline_kit  # the offline kit's models: random weights, so their pairs are test data
from ..pairs import PairStore, to_pickapic
from ..prompts import PROMPT_FILE_SUFFIXES
from .card import is_hub_id, model_markdown

__all__ = [
    "DPO_SCRIPT_URL",
    "EXPORT_MARKER",
    "MAX_SHARD_BYTES",
    "dpo_training_command",
    "export_pair_dataset",
]

# The file that marks a folder as written by this exporter, so re-exporting may replace it.
EXPORT_MARKER = ".tscale_export"
_MARKER_KIND = "pair_dataset"
# Parquet shards stay under this much arrow data each (the Hub recommends files of a few hundred MB).
MAX_SHARD_BYTES = 500 * 2**20
_SPLIT = "train"
_TAGS = ["dpo", "preference", "pick-a-pic", "inference-time-scaling", "diffusion-dpo", "synthetic"]
# diffusers' Diffusion-DPO training script, which reads this layout as it is (jpg_0, jpg_1, label_0, caption).
DPO_SCRIPT_URL = "https://github.com/huggingface/diffusers/tree/main/examples/research_projects/diffusion_dpo"

# The columns of the Pick-a-Pic layout, as the card explains them.
_COLUMN_DOCS = {
    "caption": "the prompt (string)",
    "jpg_0": "the first image, JPEG bytes (decode with `PIL.Image.open(io.BytesIO(row['jpg_0']))`)",
    "jpg_1": "the second image, JPEG bytes",
    "label_0": "1.0 if `jpg_0` is the preferred (higher-reward) image, else 0.0; the preferred image's "
    "position is a seeded coin flip, so it is not always the first",
    "label_1": "`1 - label_0`",
    "best_score": "the reward of the preferred image",
    "worst_score": "the reward of the rejected image",
    "round": "the training round whose search produced the pair (0-based)",
    "prompt_index": "the prompt's position in the run's prompt list",
    "seed": "the seed of the prompt's base (unsearched) noise",
}


def export_pair_dataset(
    run_dir: Path,
    out_dir: Path,
    *,
    repo_id: str | None = None,
    rounds: range | None = None,
    manifest: dict | None = None,
) -> Path:
    """Write ``run_dir``'s pairs as a dataset folder ready for ``upload_folder``; returns ``out_dir``.

    The pairs of ``PairStore(run_dir / "pairs")`` go through :func:`~tscale_train.pairs.to_pickapic`
    into parquet shards under ``out_dir/data/``, described by a dataset card ``README.md`` built from
    the run's ``config.yaml`` (prompt source, reward, search budget, pairing, base model) and the
    pairs themselves (counts). ``repo_id`` only fills the card's loading example. ``rounds`` limits the
    export to those rounds (one committed round's pairs: those it was trained on), and ``manifest`` (what
    that commit recorded) is checked first, so a missing, truncated or altered shard is an error rather
    than fewer rows.

    The folder is built beside ``out_dir`` and renamed into place, so a failure leaves nothing
    half-written. An existing ``out_dir`` is replaced only if it is empty or an earlier export of
    this kind (it holds :data:`EXPORT_MARKER`).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.yaml`` (not a training output_dir).
        ValueError: the run has no pairs, a pair has no preview image, or ``run_dir`` lies inside
            ``out_dir``.
        FileExistsError: ``out_dir`` exists and is not an earlier export of this exporter.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = _read_config(run_dir)
    _check_out_dir(run_dir, out_dir)
    store = PairStore(run_dir / "pairs")
    if manifest is not None:
        store.verify(
            manifest,
            rounds if rounds is not None else store.rounds(),
            advice=(
                "restore it, or export a checkpoint from before its round (tscale export RUN/checkpoints/checkpoint-NNNNN)"
            ),
        )
    stored = store.load(rounds)
    if stored.num_rows == 0:
        raise ValueError(
            f"run {run_dir} has no pairs to export: {store.root} holds no complete pair shard "
            "(train for at least one round first)"
        )
    pairs = to_pickapic(stored, seed=int(config.get("seed") or 0))
    num_shards = _num_shards(pairs)
    with disk_full_error(out_dir), atomic_directory(out_dir) as staging:
        data_dir = staging / "data"
        data_dir.mkdir(parents=True)
        files = []
        for index in range(num_shards):
            path = data_dir / f"{_SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
            pairs.shard(num_shards, index, contiguous=True).to_parquet(str(path))
            files.append(path)
        written = sum(pq.read_metadata(path).num_rows for path in files)
        if written != pairs.num_rows:  # a truncated write that raised nothing
            raise OSError(f"wrote {written} of {pairs.num_rows} pairs to {out_dir / 'data'}; export again")
        card = build_dataset_card(pairs, config, repo_id=repo_id, family=_run_family(run_dir))
        card.save(staging / "README.md")
        marker = {
            "kind": _MARKER_KIND,
            "exporter": __name__,
            "num_pairs": pairs.num_rows,
            "files": len(files),
        }
        (staging / EXPORT_MARKER).write_text(json.dumps(marker) + "\n")
    return out_dir


def _run_family(run_dir: Path) -> str:
    """The run's model family from its ``pipeline.json``; runs from before it trained FLUX.2-klein."""
    from .card import pipeline_info

    info = pipeline_info(run_dir)
    return info["family"] if info else "FLUX.2-klein"


def build_dataset_card(
    pairs: datasets.Dataset,
    config: dict[str, Any],
    *,
    repo_id: str | None = None,
    family: str = "FLUX.2-klein",
) -> DatasetCard:
    """The dataset card of ``pairs`` (Pick-a-Pic layout) from the run's settings ``config`` and model ``family``."""
    from .card import family_tag

    model = str(config.get("model") or "unknown")
    card_data = DatasetCardData(
        pretty_name=f"{_model_name(model)} SES preference pairs",
        task_categories=["text-to-image"],
        tags=[*_TAGS[:4], family_tag(family), *_TAGS[4:]],
        size_categories=[_size_category(pairs.num_rows)],
        configs=[
            {"config_name": "default", "data_files": [{"split": _SPLIT, "path": f"data/{_SPLIT}-*.parquet"}]}
        ],
    )
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{_card_body(pairs, config, repo_id)}")


# ---- helpers ------------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"run {run_dir} has no config.yaml; pass a training run's output_dir (it holds config.yaml and pairs/)"
        )
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a YAML mapping of the run's settings")
    return config


def _check_out_dir(run_dir: Path, out_dir: Path) -> None:
    resolved_out, resolved_run = out_dir.resolve(), run_dir.resolve()
    if resolved_run == resolved_out or resolved_out in resolved_run.parents:
        raise ValueError(f"out_dir {out_dir} contains the run {run_dir}; export to a folder outside the run")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"out_dir {out_dir} exists and is not a directory; pass a new or empty folder")
    if not any(out_dir.iterdir()) or _marker_kind(out_dir) == _MARKER_KIND:
        return
    raise FileExistsError(
        f"out_dir {out_dir} is not empty and was not written by the pair-dataset exporter (no {EXPORT_MARKER} "
        "file of that kind); pass a new or empty folder, or delete it first"
    )


def _marker_kind(out_dir: Path) -> str | None:
    try:
        marker = json.loads((out_dir / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("kind") if isinstance(marker, dict) else None


def _num_shards(pairs: datasets.Dataset) -> int:
    return max(1, min(pairs.num_rows, math.ceil(pairs.data.nbytes / MAX_SHARD_BYTES)))


def _size_category(num_rows: int) -> str:
    """The Hub's ``size_categories`` bucket of ``num_rows`` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]  # fmt: skip
    for bound, name in bounds:
        if num_rows < bound:
            return name
    return "n>1T" if num_rows > 10**12 else "1B<n<10B"


def _model_name(model: str) -> str:
    if is_hub_id(model):
        return model.split("/")[-1]
    if is_offline_kit(model):
        return f"{Path(model).name or model} (offline test model)"
    return Path(model).name or model


def dpo_training_command(dataset: str) -> str:
    """diffusers' `train_diffusion_dpo.py` on `dataset` (a Hub id or this export's folder), as the card gives it.

    `--dataset_split_name=train`: the script's default split is `validation`, which this export does not have.
    The base model is the script's own example (it trains a Stable Diffusion 1.5 UNet LoRA).
    """
    return (
        "accelerate launch train_diffusion_dpo.py \\\n"
        "  --pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5 \\\n"
        f"  --dataset_name={dataset} \\\n"
        f"  --dataset_split_name={_SPLIT} \\\n"
        "  --output_dir=diffusion-dpo-lora"
    )


def _prompt_source(config: dict[str, Any]) -> str:
    source = config.get("prompts")
    if not source:
        return "the bundled prompt set of tscale-train"
    source = str(source)
    if Path(source).suffix.lower() in PROMPT_FILE_SUFFIXES:
        return f"the prompt file `{Path(source).name}`"
    column = config.get("prompt_column") or "prompt"
    link = f"[`{source}`](https://huggingface.co/datasets/{source})" if is_hub_id(source) else f"`{source}`"
    return f"the dataset {link} (column `{column}`)"


def _pairing_text(config: dict[str, Any]) -> str:
    strategy = str(config.get("pairing") or "best_vs_worst")
    text = {
        "best_vs_worst": "the highest-reward candidate of a prompt's search against the lowest-reward one",
        "best_vs_base": "the highest-reward candidate against the unsearched base noise's image",
        "top_k_vs_bottom_k": "the k highest-reward candidates against the k lowest-reward ones",
    }.get(strategy, "")
    text = f"`{strategy}`" + (f": {text}" if text else "")
    if strategy == "top_k_vs_bottom_k":
        text += f" (k = {config.get('pairs_per_prompt')})"
    min_margin = config.get("min_margin")
    if min_margin:
        text += f"; pairs whose reward margin is below {min_margin} were dropped"
    return text


def _setting(config: dict[str, Any], name: str, default: str = "default") -> str:
    value = config.get(name)
    return default if value is None else f"{value}"


def _card_body(pairs: datasets.Dataset, config: dict[str, Any], repo_id: str | None) -> str:
    model = str(config.get("model") or "unknown")
    reward = _setting(config, "reward", "unknown")
    columns = pairs.select_columns(["caption", "round", "prompt_index"])
    num_prompts = len(set(columns["caption"]))
    rounds = sorted(set(columns["round"]))
    load_id = repo_id or "<user>/<dataset>"
    column_rows = "\n".join(f"| `{name}` | {text} |" for name, text in _COLUMN_DOCS.items())
    height, width = config.get("height"), config.get("width")
    resolution = (
        "the model's default"
        if height is None and width is None
        else (f"{_setting(config, 'height', 'default')} x {_setting(config, 'width', 'default')} px")
    )
    test_note = (
        "\n> These pairs come from a random-weight test model: they are for testing pipelines only.\n"
        if is_offline_kit(model)
        else ""
    )
    return f"""# {_model_name(model)} SES preference pairs

Preference pairs for Diffusion-DPO, found by inference-time search. For each prompt, Spectral
Evolution Search (SES) scored {_setting(config, "budget", "?")} candidate initial noises of the
base model with the reward `{reward}`; each pair contrasts a high- and a low-reward image of the
same prompt. tscale-train produced them during online Diffusion-DPO LoRA training, and stores them
here in the [Pick-a-Pic](https://huggingface.co/datasets/yuvalkirstain/pickapic_v2) layout that
existing Diffusion-DPO training code reads.
{test_note}
## How it was made

| setting | value |
| --- | --- |
| base model | {model_markdown(model)} |
| prompts | {_prompt_source(config)} |
| reward model | `{reward}` |
| search budget | {_setting(config, "budget", "?")} candidates per prompt (the unsearched base noise included), population {_setting(config, "popsize")}, {_setting(config, "k_elites", "?")} elites |
| pairing | {_pairing_text(config)} |
| rounds | {_setting(config, "rounds", "?")} (pairs from rounds {", ".join(map(str, rounds))}), {_setting(config, "prompts_per_round", "?")} prompts per round |
| preview size | {_setting(config, "preview_size", "?")} px (the stored images are downscaled previews) |
| resolution generated | {resolution} |
| seed | {_setting(config, "seed", "0")} |

## Size

- pairs: {pairs.num_rows}
- distinct prompts: {num_prompts}
- rounds with pairs: {len(rounds)}

## Usage

```python
import io

from datasets import load_dataset
from PIL import Image

pairs = load_dataset("{load_id}", split="{_SPLIT}")
row = pairs[0]
preferred = row["jpg_0"] if row["label_0"] == 1.0 else row["jpg_1"]
Image.open(io.BytesIO(preferred)).show()
```

## Train on it with diffusers' Diffusion-DPO script

[`train_diffusion_dpo.py`]({DPO_SCRIPT_URL}) reads this layout as it is, but its default split is
`validation` (Pick-a-Pic's small one) and these pairs are one `{_SPLIT}` split, so name it:

```bash
{dpo_training_command(load_id)}
```

The script trains a LoRA of a Stable Diffusion UNet (SD 1.5 here, as in its own example), not of the model
that made the pairs, and resizes the images ({_setting(config, "preview_size", "?")} px previews) to
`--resolution` (default 512).

## Columns

| column | meaning |
| --- | --- |
{column_rows}

## Caveats

The preference labels come from the reward model `{reward}`, not from people: they inherit
its biases, and a policy trained on them optimises that reward. The images were generated by the
base model above; check its license, and the prompts' license, before reusing them.
"""
