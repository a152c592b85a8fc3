"""`export_pair_dataset`: a run's pairs as a Pick-a-Pic-layout parquet dataset with its card."""

from __future__ import annotations

import io
import shlex
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image

from tscale_train.export import dataset as dataset_export
from tscale_train.export.dataset import EXPORT_MARKER, build_dataset_card, export_pair_dataset
from tscale_train.pairs import PairStore, to_pickapic

REPO_ID = "someone/klein-ses-pairs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, kit_dir) -> Path:
    from tscale_train.config import OnlineDPOConfig
    from tscale_train.trainer import OnlineDPOTrainer

    path = tmp_path_factory.mktemp("export_dataset") / "run"
    config = OnlineDPOConfig(
        model="tiny", dtype="float32", reward="rewards.synthetic:brightness", budget=4, popsize=2, k_elites=2,
        rounds=2, prompts_per_round=4, epochs_per_round=1, train_batch_size=2, lora_rank=4, eval_every=1,
        eval_budget=2, max_eval_prompts=2, checkpoint_every=1, gradient_checkpointing=False,
        output_dir=str(path), progress=False,
    )  # fmt: skip
    OnlineDPOTrainer(config).train()
    return path


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    return export_pair_dataset(
        run_dir, tmp_path_factory.mktemp("export_out") / "pairs_dataset", repo_id=REPO_ID
    )


def _load(folder: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))


def test_folder_layout(exported):
    assert sorted(path.name for path in exported.iterdir()) == sorted([EXPORT_MARKER, "README.md", "data"])
    assert [path.name for path in (exported / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    # Nothing of the build is left beside it.
    assert [path.name for path in exported.parent.iterdir()] == [exported.name]


def test_loads_back_and_matches_the_store(exported, run_dir, tmp_path):
    loaded = _load(exported, tmp_path / "cache")
    stored = PairStore(run_dir / "pairs").load()
    assert loaded.num_rows == stored.num_rows == 8  # 2 rounds x 4 prompts, best_vs_worst
    assert loaded.column_names == list(to_pickapic(stored).column_names)
    assert loaded["caption"] == stored["prompt"]
    for name in ("round", "prompt_index", "seed"):
        assert loaded[name] == stored[name]
    assert loaded["best_score"] == stored["chosen_score"]
    assert loaded["worst_score"] == stored["rejected_score"]
    labels = np.array(loaded["label_0"])
    assert set(labels) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.array(loaded["label_1"]), 1.0 - labels)
    for row, pair in zip(loaded, stored.select_columns(["chosen_image", "rejected_image"]), strict=True):
        chosen, rejected = (
            (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1.0 else (row["jpg_1"], row["jpg_0"])
        )
        for jpeg, preview in ((chosen, pair["chosen_image"]), (rejected, pair["rejected_image"])):
            decoded = Image.open(io.BytesIO(jpeg))
            assert decoded.format == "JPEG" and decoded.size == preview.size
            # The stored PNG preview, JPEG-encoded as to_pickapic does (quality 95): the same pixels.
            reencoded = io.BytesIO()
            preview.convert("RGB").save(reencoded, format="JPEG", quality=95)
            np.testing.assert_array_equal(np.asarray(decoded), np.asarray(Image.open(reencoded)))


def test_card(exported, run_dir):
    card = DatasetCard.load(exported / "README.md")
    data = card.data.to_dict()
    assert data["task_categories"] == ["text-to-image"]
    assert {"dpo", "preference", "pick-a-pic", "inference-time-scaling", "flux2-klein"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"]
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
    ]
    assert "license" not in data  # unknown: the card says to check the model's and prompts' licenses
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    text = card.text
    for expected in (
        "the bundled prompt set",
        f"`{config['reward']}`",
        "| search budget | 4 candidates per prompt",
        "`best_vs_worst`",
        "- pairs: 8",
        "- distinct prompts: ",
        "- rounds with pairs: 2",
        "`tiny`",
        f'load_dataset("{REPO_ID}", split="train")',
        *(f"| `{column}` |" for column in to_pickapic(PairStore(run_dir / "pairs").load()).column_names),
    ):
        assert expected in text, expected
    assert str(run_dir) not in card.content  # no local paths on the Hub


# `train_diffusion_dpo.py`'s `--dataset_split_name` default (diffusers/examples/research_projects/diffusion_dpo).
DPO_SCRIPT_DEFAULT_SPLIT = "validation"


def test_diffusers_dpo_script_reads_the_split_its_card_command_names(exported, tmp_path):
    """The card's `train_diffusion_dpo.py` command, read as the script's argparse would, names a split that
    exists, and the rows carry what the script reads: `caption` strings, `jpg_0`/`jpg_1` bytes that
    `Image.open(io.BytesIO(...)).convert("RGB")` decodes, and a 0/1 `label_0` (0 puts `jpg_1` first)."""
    card = DatasetCard.load(exported / "README.md")
    block = card.text.split("```bash\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == ["accelerate", "launch", "train_diffusion_dpo.py"]
    options = dict(argument.removeprefix("--").split("=", 1) for argument in argv[3:])
    assert options["dataset_name"] == REPO_ID
    split = options.get("dataset_split_name", DPO_SCRIPT_DEFAULT_SPLIT)
    # The script's own call, with the export folder standing in for the Hub id.
    rows = datasets.load_dataset(str(exported), cache_dir=str(tmp_path / "cache"), split=split)
    assert rows.num_rows == 8
    assert rows.features["caption"] == datasets.Value("string")
    assert rows.features["jpg_0"] == rows.features["jpg_1"] == datasets.Value("binary")
    assert set(rows["label_0"]) <= {0.0, 1.0} and len(set(rows["label_0"])) == 2  # both orders occur
    for row in rows:
        assert isinstance(row["caption"], str) and row["caption"]
        for column in ("jpg_0", "jpg_1"):
            assert Image.open(io.BytesIO(row[column])).convert("RGB").size == (64, 64)  # preview_size
    # Without the card's split the script would fail: the export has no split of the script's default name.
    with pytest.raises(ValueError, match="Unknown split"):
        datasets.load_dataset(
            str(exported), cache_dir=str(tmp_path / "cache"), split=DPO_SCRIPT_DEFAULT_SPLIT
        )


def test_card_settings_from_config():
    pairs = datasets.Dataset.from_dict(
        {"caption": ["a", "b", "a"], "round": [0, 0, 3], "prompt_index": [0, 1, 0]}
    )
    config = {"model": "black-forest-labs/FLUX.2-klein-4B", "reward": "pickscore", "budget": 20,
              "prompts": "/home/me/secret/my_prompts.jsonl", "pairing": "top_k_vs_bottom_k",
              "pairs_per_prompt": 2, "min_margin": 0.5, "rounds": 4}  # fmt: skip
    text = build_dataset_card(pairs, config).text
    assert "the prompt file `my_prompts.jsonl`" in text and "/home/me" not in text
    assert "(k = 2)" in text and "below 0.5" in text
    assert (
        "[`black-forest-labs/FLUX.2-klein-4B`](https://huggingface.co/black-forest-labs/FLUX.2-klein-4B)"
        in text
    )
    assert "- distinct prompts: 2" in text and "- rounds with pairs: 2" in text and "rounds 0, 3" in text
    assert 'load_dataset("<user>/<dataset>"' in text
    text = build_dataset_card(pairs, {**config, "prompts": "org/prompt-set", "prompt_column": "text"}).text
    assert "[`org/prompt-set`](https://huggingface.co/datasets/org/prompt-set) (column `text`)" in text


def test_several_shards(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_export, "MAX_SHARD_BYTES", 1)  # one pair per shard
    out = export_pair_dataset(run_dir, tmp_path / "out")
    names = sorted(path.name for path in (out / "data").iterdir())
    assert names == [f"train-{index:05d}-of-00008.parquet" for index in range(8)]
    loaded = _load(out, tmp_path / "cache")
    assert loaded["caption"] == PairStore(run_dir / "pairs").load()["prompt"]


def test_run_without_pairs(run_dir, tmp_path):
    empty = tmp_path / "empty_run"
    (empty / "pairs").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    with pytest.raises(ValueError, match=f"run {empty} has no pairs to export"):
        export_pair_dataset(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        export_pair_dataset(tmp_path / "not_a_run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reexport_replaces_and_unrelated_dirs_are_refused(run_dir, tmp_path, monkeypatch):
    out = export_pair_dataset(run_dir, tmp_path / "out", repo_id="first/pairs")
    (out / "stale.txt").write_text("from an older export")
    export_pair_dataset(run_dir, out, repo_id="second/pairs")
    assert not (out / "stale.txt").exists()
    assert 'load_dataset("second/pairs"' in (out / "README.md").read_text()

    # A failure half-way leaves the previous export whole and no build directory behind.
    def broken(*args, **kwargs):
        raise RuntimeError("card failed")

    monkeypatch.setattr(dataset_export, "build_dataset_card", broken)
    with pytest.raises(RuntimeError, match="card failed"):
        export_pair_dataset(run_dir, out, repo_id="third/pairs")
    assert 'load_dataset("second/pairs"' in (out / "README.md").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_pair_dataset(run_dir, unrelated)
    assert [path.name for path in unrelated.iterdir()] == ["notes.txt"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        export_pair_dataset(run_dir, tmp_path / "a_file")
    with pytest.raises(ValueError, match="contains the run"):
        export_pair_dataset(run_dir, run_dir.parent)
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert (export_pair_dataset(run_dir, tmp_path / "empty") / "README.md").is_file()
