"""A run's record stays whole: the pair store knows what it holds, a resumed run is the same run, and
an export reads one committed round (issue 21, items 3 and 4). In-process runs on the tiny kit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_trainer import tiny_config

from tscale_train.export.adapter import find_adapter
from tscale_train.export.dataset import export_pair_dataset
from tscale_train.pairs import PairStore
from tscale_train.trainer import OnlineDPOTrainer

ROUNDS = 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory, kit_dir) -> Path:
    """A finished 3-round run with a checkpoint every round (all kept)."""
    base = tmp_path_factory.mktemp("integrity")
    config = tiny_config(base, rounds=ROUNDS, eval_every=0, checkpoints_total_limit=0)
    return OnlineDPOTrainer(config).train()


def copy_run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".tscale.*"))
    return out


def resume_config(out: Path, **overrides):
    return tiny_config(
        out.parent,
        rounds=ROUNDS,
        eval_every=0,
        checkpoints_total_limit=0,
        resume_from_checkpoint="latest",
        **overrides,
    )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def shard(out: Path, round_index: int) -> Path:
    return out / "pairs" / f"round_{round_index:05d}" / "process_00000"


def damage(shard_dir: Path, how: str) -> None:
    arrow = next(shard_dir.glob("*.arrow"))
    if how == "deleted":
        shutil.rmtree(shard_dir)
    elif how == "truncated":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    else:  # altered: same size, one byte flipped near the end (inside the latents)
        data = bytearray(arrow.read_bytes())
        data[-100] ^= 0xFF
        arrow.write_bytes(bytes(data))


# ---- 3. the pair store knows what it holds ---------------------------------------------------------------


def test_every_commit_records_rows_and_checksums_of_its_shards(finished):
    store = PairStore(finished / "pairs")
    for round_index in range(ROUNDS):
        state = json.loads(
            (finished / f"checkpoints/checkpoint-{round_index:05d}/trainer_state.json").read_text()
        )
        assert sorted(state["pairs"]) == [f"round_{r:05d}/process_00000" for r in range(round_index + 1)]
        for key, entry in state["pairs"].items():
            assert entry["rows"] == len(store.load_records([int(key[6:11])])) > 0
            assert len(entry["sha256"]) == 64
    final = json.loads((finished / "final_state.json").read_text())
    assert final["round"] == final["lora_round"] == ROUNDS - 1 and len(final["pairs"]) == ROUNDS
    store.verify(final["pairs"], range(ROUNDS), advice="unused")  # the untouched store passes


@pytest.mark.parametrize("how", ["deleted", "truncated", "altered"])
def test_a_damaged_shard_is_refused_by_resume_export_and_replay(how, finished, tmp_path, monkeypatch):
    out = copy_run(finished, tmp_path)
    # Resume from the checkpoint of round 1: shard 0 is one of its committed rounds.
    shutil.rmtree(out / "checkpoints/checkpoint-00002")
    damage(shard(out, 0), how)
    monkeypatch.setattr(
        "tscale_train.trainer.load_pipeline", lambda *a, **k: pytest.fail("a model was loaded")
    )
    with pytest.raises(ValueError, match="round_00000/process_00000") as refused:
        OnlineDPOTrainer(resume_config(out))
    message = one_line(refused)
    assert how.replace("deleted", "missing") in message and "restore it" in message
    assert "--overwrite_output_dir" in message or "--resume_from_checkpoint" in message

    with pytest.raises(ValueError, match="round_00000/process_00000") as refused:
        export_pair_dataset(out, tmp_path / "export", rounds=range(2), manifest=find_adapter(out).pairs)
    assert "restore it" in one_line(refused) and not (tmp_path / "export").exists()


def test_an_unrecorded_shard_is_refused(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    planted = out / "pairs/round_00001/process_00007"
    shutil.copytree(shard(out, 1), planted)
    with pytest.raises(ValueError, match="process_00007 was not written by the run's committed rounds"):
        export_pair_dataset(out, tmp_path / "export", rounds=range(ROUNDS), manifest=find_adapter(out).pairs)


def test_replay_refuses_a_shard_damaged_while_the_run_goes_on(tmp_path, kit_dir, monkeypatch):
    config = tiny_config(tmp_path, rounds=3, eval_every=0, replay_rounds=2)
    trainer = OnlineDPOTrainer(config)
    original = trainer.make_pairs

    def make_pairs(round_index):
        if round_index == 2:  # round 0's shard, written and recorded two rounds ago, is cut short now
            damage(shard(Path(config.output_dir), 0), "truncated")
        return original(round_index)

    monkeypatch.setattr(trainer, "make_pairs", make_pairs)
    with pytest.raises(ValueError, match="round_00000/process_00000 is truncated or altered") as refused:
        trainer.train()
    assert "replay would train on other pairs" in one_line(refused)


# ---- 4. a resumed run is the same run -----------------------------------------------------------------


@pytest.mark.parametrize(
    "override, shown",
    [
        (
            {"reward": "rewards.synthetic:redness"},
            "reward 'rewards.synthetic:brightness' -> 'rewards.synthetic:redness'",
        ),
        ({"beta": 7.0}, "beta 100.0 -> 7.0"),
        ({"lora_rank": 8}, "lora_rank 4 -> 8"),
        ({"lora_target_modules": "all_linear"}, "lora_target_modules 'attention' -> 'all_linear'"),
        ({"pairing": "best_vs_base"}, "pairing 'best_vs_worst' -> 'best_vs_base'"),
        ({"seed": 1}, "seed 0 -> 1"),
        ({"model": "tiny-base"}, "model 'tiny' -> 'tiny-base'"),
        ({"seed": 3, "beta": 2.0}, "beta 100.0 -> 2.0, seed 0 -> 3"),
    ],
)
def test_resuming_with_settings_that_define_the_run_is_refused_before_loading(
    override, shown, finished, tmp_path, monkeypatch
):
    out = copy_run(finished, tmp_path)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    monkeypatch.setattr(
        "tscale_train.trainer.load_pipeline", lambda *a, **k: pytest.fail("a model was loaded")
    )
    with pytest.raises(ValueError, match="belongs to a run with other settings") as refused:
        OnlineDPOTrainer(resume_config(out, **override))
    assert f"({shown})" in one_line(refused)
    after = {
        path: path.read_bytes()
        for path in out.rglob("*")
        if path.is_file() and not path.name.startswith(".tscale")
    }
    assert after == {path: data for path, data in before.items() if not path.name.startswith(".tscale")}


def test_resuming_with_more_rounds_keeps_the_config_history(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    stored = yaml.safe_load((out / "config.yaml").read_text())
    config = resume_config(out, checkpoint_every=2)
    config.rounds = ROUNDS + 1
    OnlineDPOTrainer(config).train()
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert [row["start_round"] for row in history] == [0, ROUNDS]
    assert history[0]["changed"] == {} and history[0]["resumed_from"] is None
    assert history[1]["resumed_from"] == f"checkpoint-{ROUNDS - 1:05d}"
    # The copy moved the run to another dir: that is recorded too.
    assert history[1]["changed"] == {
        "rounds": [ROUNDS, ROUNDS + 1],
        "checkpoint_every": [1, 2],
        "output_dir": [str(finished), str(out)],
    }
    current = yaml.safe_load((out / "config.yaml").read_text())
    unchanged = set(current) - set(history[1]["changed"]) - {"resume_from_checkpoint"}
    assert current["rounds"] == ROUNDS + 1 and {k: current[k] for k in unchanged} == {
        k: stored[k] for k in unchanged
    }
    assert json.loads((out / "final_state.json").read_text())["round"] == ROUNDS


def test_export_reads_one_committed_round_while_the_run_is_training(tmp_path, kit_dir):
    """A run stopped after round 2 of 4 with a checkpoint every 2 rounds: checkpoint 1 and pairs of rounds 0-2
    are on disk. The export takes checkpoint 1's LoRA and the pairs of rounds 0 and 1, nothing of round 2."""
    config = tiny_config(tmp_path, rounds=4, eval_every=0, checkpoint_every=2)
    OnlineDPOTrainer(config).train(stop_after_rounds=3)
    out = Path(config.output_dir)
    assert PairStore(out / "pairs").rounds() == [0, 1, 2]
    source = find_adapter(out)
    assert source.label == "checkpoint-00001" and source.round == 1 and source.pair_rounds == range(2)
    exported = export_pair_dataset(out, tmp_path / "export", rounds=source.pair_rounds, manifest=source.pairs)
    import datasets

    rows = datasets.load_dataset(str(exported), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(set(rows["round"])) == [0, 1]
    assert rows.num_rows == sum(entry["rows"] for entry in source.pairs.values())

    # Finished later: the final LoRA and every round's pairs.
    resumed = tiny_config(
        tmp_path, rounds=4, eval_every=0, checkpoint_every=2, resume_from_checkpoint="latest"
    )
    OnlineDPOTrainer(resumed).train()
    source = find_adapter(out)
    assert source.label == "final" and source.round == 3 and source.pair_rounds == range(4)
