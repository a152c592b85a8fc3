"""Tests for pair selection, the on-disk pair store and the Pick-a-Pic export."""

from __future__ import annotations

import errno
import io
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from tscale_train.pairs import (
    PAIR_FEATURES,
    PAIRING_STRATEGIES,
    PairIndices,
    PairRecord,
    PairStore,
    record_latents,
    records_from_search,
    select_pairs,
    to_pickapic,
)

# ---- select_pairs ----------------------------------------------------------------------------


def _ranking(scores: list[float]) -> list[int]:
    """The documented order: finite scores, highest first, ties in evaluation order."""
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    return sorted(finite, key=lambda i: (-scores[i], i))


SCORES = [0.30, 0.10, 0.90, 0.55, 0.05, 0.70, 0.40, 0.20]


def test_best_vs_worst():
    ranked = _ranking(SCORES)
    pairs = select_pairs(torch.tensor(SCORES, dtype=torch.float64), "best_vs_worst")
    assert pairs == [
        PairIndices(ranked[0], ranked[-1], pytest.approx(SCORES[ranked[0]] - SCORES[ranked[-1]]))
    ]
    assert pairs[0].chosen_index == int(np.argmax(SCORES)) and pairs[0].rejected_index == int(
        np.argmin(SCORES)
    )


def test_best_vs_base():
    pairs = select_pairs(torch.tensor(SCORES), "best_vs_base")
    assert len(pairs) == 1
    assert pairs[0].chosen_index == int(np.argmax(SCORES)) and pairs[0].rejected_index == 0
    assert pairs[0].margin == pytest.approx(max(SCORES) - SCORES[0], abs=1e-6)
    # The base noise is the best: the search bought nothing, no pair.
    assert select_pairs(torch.tensor([1.0, 0.5, 0.2]), "best_vs_base") == []
    # A base that failed to score (NaN) cannot be the rejected sample.
    assert select_pairs(torch.tensor([float("nan"), 0.5, 0.2]), "best_vs_base") == []


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_top_k_vs_bottom_k(k):
    ranked = _ranking(SCORES)
    pairs = select_pairs(torch.tensor(SCORES, dtype=torch.float64), "top_k_vs_bottom_k", k=k)
    expected_count = min(k, len(SCORES) // 2)
    assert [(p.chosen_index, p.rejected_index) for p in pairs] == [
        (ranked[i], ranked[-1 - i]) for i in range(expected_count)
    ]
    used = [index for p in pairs for index in (p.chosen_index, p.rejected_index)]
    assert len(used) == len(set(used))  # no candidate twice
    assert all(p.margin > 0 for p in pairs)
    margins = [p.margin for p in pairs]
    assert margins == sorted(margins, reverse=True)


def test_top_k_with_odd_count_never_pairs_the_median_with_itself():
    scores = [0.1, 0.5, 0.9]
    pairs = select_pairs(torch.tensor(scores), "top_k_vs_bottom_k", k=5)
    assert [(p.chosen_index, p.rejected_index) for p in pairs] == [(2, 0)]


def test_non_finite_scores_are_never_used():
    scores = [0.2, float("nan"), 0.5, float("inf"), float("-inf"), 0.1, float("nan")]
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    for strategy in PAIRING_STRATEGIES:
        for pair in select_pairs(torch.tensor(scores), strategy, k=10):
            assert pair.chosen_index in finite and pair.rejected_index in finite
            assert math.isfinite(pair.margin)
    pairs = select_pairs(torch.tensor(scores), "best_vs_worst")
    assert [(p.chosen_index, p.rejected_index) for p in pairs] == [(2, 5)]
    # Only 3 finite candidates: top_k_vs_bottom_k makes one pair however large k is.
    assert len(select_pairs(torch.tensor(scores), "top_k_vs_bottom_k", k=10)) == 1
    assert select_pairs(torch.tensor([float("nan")] * 4), "best_vs_worst") == []
    assert select_pairs(torch.tensor([0.3, float("nan")]), "best_vs_worst") == []


def test_min_margin_and_ties():
    scores = [0.50, 0.52, 0.40, 0.60, 0.45, 0.58]
    ranked = _ranking(scores)
    margins = [scores[ranked[i]] - scores[ranked[-1 - i]] for i in range(3)]  # 0.2, 0.13, 0.05
    threshold = (margins[1] + margins[2]) / 2
    pairs = select_pairs(
        torch.tensor(scores, dtype=torch.float64), "top_k_vs_bottom_k", k=3, min_margin=threshold
    )
    assert [(p.chosen_index, p.rejected_index) for p in pairs] == [
        (ranked[i], ranked[-1 - i]) for i in range(2)
    ]
    assert select_pairs(torch.tensor(scores), "best_vs_worst", min_margin=10.0) == []

    # All equal: a tie is no preference, whatever min_margin says.
    for strategy in PAIRING_STRATEGIES:
        assert select_pairs(torch.full((6,), 0.3), strategy, k=3) == []
    # Tied best candidates: the earliest-evaluated is chosen; tied worst: the latest is rejected.
    tied = [0.2, 0.9, 0.1, 0.9, 0.1]
    pairs = select_pairs(torch.tensor(tied), "best_vs_worst")
    assert (pairs[0].chosen_index, pairs[0].rejected_index) == (1, 4)
    # Ties across the middle: the pair with equal scores is dropped, the other kept.
    pairs = select_pairs(torch.tensor([0.5, 0.5, 0.5, 0.9]), "top_k_vs_bottom_k", k=2)
    assert [(p.chosen_index, p.rejected_index) for p in pairs] == [(3, 2)]


def test_select_pairs_errors():
    with pytest.raises(ValueError, match="best_vs_worst, best_vs_base, top_k_vs_bottom_k"):
        select_pairs(torch.tensor(SCORES), "best_vs_median")
    with pytest.raises(ValueError, match="1-D"):
        select_pairs(torch.ones(2, 3))
    with pytest.raises(ValueError, match="k must"):
        select_pairs(torch.tensor(SCORES), "top_k_vs_bottom_k", k=0)
    with pytest.raises(ValueError, match="min_margin"):
        select_pairs(torch.tensor(SCORES), min_margin=float("nan"))


# ---- PairStore -------------------------------------------------------------------------------


def _image(seed: int, size: int = 32) -> Image.Image:
    """A random 2x2 grid of flat colour blocks: distinct per seed, and JPEG keeps it recognisable."""
    cells = np.random.default_rng(seed).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((size, size), Image.Resampling.NEAREST)


def _record(
    round_index: int, prompt_index: int, *, shape=(12, 8), dtype=torch.float32, seed: int = 0
) -> dict:
    generator = torch.Generator().manual_seed(1000 * round_index + prompt_index + seed)
    chosen_score = float(torch.rand((), generator=generator)) + 1.0
    return {
        "prompt": f"prompt {prompt_index} of round {round_index}",
        "prompt_index": prompt_index,
        "round": round_index,
        "seed": 10_000 + prompt_index,
        "strategy": "best_vs_worst",
        "chosen_index": 3 + prompt_index,
        "rejected_index": prompt_index % 2,
        "chosen_score": chosen_score,
        "rejected_score": chosen_score - 0.25 - prompt_index,
        "chosen_latents": torch.randn(shape, generator=generator).to(dtype),
        "rejected_latents": torch.randn(shape, generator=generator).to(dtype),
        "chosen_image": _image(2 * (1000 * round_index + prompt_index)),
        "rejected_image": _image(2 * (1000 * round_index + prompt_index) + 1),
    }


def test_round_trip_is_exact(tmp_path):
    store = PairStore(tmp_path / "pairs")
    records = [
        _record(0, 0, shape=(12, 8)),
        _record(0, 1, shape=(4, 3, 5), dtype=torch.bfloat16),
        _record(0, 2, shape=(7,)),
    ]
    path = store.write_shard(records, round_index=0, process_index=0)
    assert path == tmp_path / "pairs" / "round_00000" / "process_00000"
    dataset = store.load()
    assert dataset.num_rows == 3 and dataset.features == PAIR_FEATURES
    for fmt in (None, "numpy", "torch"):
        formatted = dataset if fmt is None else dataset.with_format(fmt)
        for position, record in enumerate(records):
            chosen, rejected = record_latents(formatted[position])
            assert chosen.dtype == torch.float32 and chosen.shape == record["chosen_latents"].shape
            assert torch.equal(chosen, record["chosen_latents"].float())  # bit-exact, bf16 included
            assert torch.equal(rejected, record["rejected_latents"].float())
    for position, record in enumerate(records):
        row = dataset[position]
        for key in ("prompt", "prompt_index", "round", "seed", "strategy", "chosen_index", "rejected_index"):
            assert row[key] == record[key]
        assert row["chosen_score"] == record["chosen_score"]
        assert row["rejected_score"] == record["rejected_score"]
        assert row["margin"] == pytest.approx(record["chosen_score"] - record["rejected_score"])
        assert np.array_equal(np.asarray(row["chosen_image"]), np.asarray(record["chosen_image"]))
        assert np.array_equal(np.asarray(row["rejected_image"]), np.asarray(record["rejected_image"]))
    assert store.num_pairs() == 3


def test_image_opened_from_a_file_is_embedded_not_referenced(tmp_path):
    image_path = tmp_path / "preview.png"
    _image(5).save(image_path)
    record = _record(0, 0)
    record["chosen_image"] = Image.open(image_path)
    store = PairStore(tmp_path / "pairs")
    store.write_shard([record], 0, 0)
    image_path.unlink()  # the shard must not depend on the file
    assert np.array_equal(np.asarray(store.load()[0]["chosen_image"]), np.asarray(_image(5)))


def test_rounds_processes_and_selection(tmp_path):
    store = PairStore(tmp_path)
    written = {}
    # Written out of order on purpose: load() orders by (round, process).
    for round_index, process_index, count in [(2, 1, 1), (0, 1, 2), (0, 0, 1), (2, 0, 3), (1, 0, 2)]:
        records = [_record(round_index, 10 * process_index + i) for i in range(count)]
        store.write_shard(records, round_index, process_index)
        written[(round_index, process_index)] = records
    assert store.rounds() == [0, 1, 2]
    assert store.num_pairs() == 9
    expected_order = [record["prompt"] for key in sorted(written) for record in written[key]]
    assert store.load()["prompt"] == expected_order
    assert [p.parent.name + "/" + p.name for p in store.shard_paths(rounds=[2, 0])] == [
        "round_00000/process_00000",
        "round_00000/process_00001",
        "round_00002/process_00000",
        "round_00002/process_00001",
    ]
    selected = store.load(rounds=[2, 5])  # absent rounds are skipped
    assert selected["round"] == [2] * 4
    assert selected["prompt"] == [r["prompt"] for key in [(2, 0), (2, 1)] for r in written[key]]
    assert store.load(rounds=range(1, 2))["prompt"] == [r["prompt"] for r in written[(1, 0)]]

    store.remove_rounds_after(0)
    assert store.rounds() == [0]
    assert store.num_pairs() == 3
    assert not (tmp_path / "round_00001").exists() and not (tmp_path / "round_00002").exists()
    store.remove_rounds_after(-1)
    assert store.rounds() == [] and store.num_pairs() == 0


def test_rewriting_a_shard_replaces_it(tmp_path):
    store = PairStore(tmp_path)
    store.write_shard([_record(0, 0), _record(0, 1)], 0, 0)
    store.write_shard([_record(0, 7)], 0, 0)
    assert store.load()["prompt_index"] == [7]
    assert sorted(p.name for p in (tmp_path / "round_00000").iterdir()) == ["process_00000"]


def test_empty_store_and_empty_records(tmp_path):
    store = PairStore(tmp_path / "never_written")
    assert store.write_shard([], 0, 0) is None
    assert not (tmp_path / "never_written").exists()
    empty = store.load()
    assert empty.num_rows == 0 and empty.features == PAIR_FEATURES
    assert store.rounds() == [] and store.shard_paths() == [] and store.num_pairs() == 0
    store.remove_rounds_after(3)  # nothing to remove, no error
    assert to_pickapic(empty).num_rows == 0


def test_bad_records_raise(tmp_path):
    store = PairStore(tmp_path)
    incomplete = _record(0, 0)
    del incomplete["seed"]
    with pytest.raises(ValueError, match="seed"):
        store.write_shard([incomplete], 0, 0)
    mismatched = _record(0, 0)
    mismatched["rejected_latents"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="same prompt's latents of one shape"):
        store.write_shard([mismatched], 0, 0)
    with pytest.raises(ValueError, match="round 1"):
        store.write_shard([_record(1, 0)], 0, 0)
    with pytest.raises(ValueError, match="process_index"):
        store.write_shard([_record(0, 0)], 0, -1)
    assert store.rounds() == []


def test_disk_full_leaves_no_partial_shard(tmp_path, monkeypatch):
    store = PairStore(tmp_path)
    store.write_shard([_record(0, 0)], 0, 0)
    before = store.load()["prompt"]

    def save_then_fail(self, dataset_path, *args, **kwargs):
        Path(dataset_path).mkdir(parents=True, exist_ok=True)
        (Path(dataset_path) / "data-00000-of-00001.arrow").write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_fail)
    with pytest.raises(OSError) as raised:
        store.write_shard([_record(1, 0)], 1, 0)
    assert raised.value.errno == errno.ENOSPC
    message = str(raised.value)
    assert "disk full" in message and str(tmp_path / "round_00001" / "process_00000") in message
    # Neither the shard nor its temporary directory is left; the earlier shard is intact.
    assert list((tmp_path / "round_00001").iterdir()) == []
    assert store.rounds() == [0]
    # Overwriting an existing shard fails the same way and keeps the old shard.
    with pytest.raises(OSError, match="disk full"):
        store.write_shard([_record(0, 5)], 0, 0)
    assert sorted(p.name for p in (tmp_path / "round_00000").iterdir()) == ["process_00000"]
    monkeypatch.undo()
    assert store.load()["prompt"] == before


def test_failed_rename_keeps_the_old_shard(tmp_path, monkeypatch):
    store = PairStore(tmp_path)
    store.write_shard([_record(0, 0)], 0, 0)
    real_replace = os.replace

    def fail_moving_the_new_shard_in(source, destination):
        if (
            Path(destination).name == "process_00000"
            and ".tmp-" in Path(source).name
            and "old-" not in Path(source).name
        ):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", fail_moving_the_new_shard_in)
    with pytest.raises(OSError, match="Input/output"):
        store.write_shard([_record(0, 9)], 0, 0)
    monkeypatch.undo()
    assert store.load()["prompt_index"] == [0]
    assert sorted(p.name for p in (tmp_path / "round_00000").iterdir()) == ["process_00000"]


def test_other_write_errors_clean_up_and_propagate(tmp_path, monkeypatch):
    store = PairStore(tmp_path)

    def save_then_interrupt(self, dataset_path, *args, **kwargs):
        Path(dataset_path).mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard([_record(0, 0)], 0, 0)
    assert list((tmp_path / "round_00000").iterdir()) == []


def test_stale_temporary_directories_are_ignored(tmp_path):
    store = PairStore(tmp_path)
    store.write_shard([_record(0, 0)], 0, 0)
    # A write killed by SIGKILL leaves a hidden temp dir behind; readers never see it.
    (tmp_path / "round_00000" / ".process_00001.tmp-deadbeef").mkdir()
    (tmp_path / "round_00003" / ".process_00000.tmp-deadbeef").mkdir(parents=True)
    assert store.rounds() == [0] and store.num_pairs() == 1
    # The process that left it cleans it up on its next write.
    store.write_shard([_record(0, 1)], 0, 1)
    assert sorted(p.name for p in (tmp_path / "round_00000").iterdir()) == ["process_00000", "process_00001"]


def test_record_latents_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="latent_shape"):
        record_latents({"latent_shape": [2, 3], "chosen_latents": [0.0] * 6, "rejected_latents": [0.0] * 5})
    with pytest.raises(ValueError, match="chosen_latents"):
        record_latents({"latent_shape": [2, 3], "rejected_latents": [0.0] * 6})


# ---- Pick-a-Pic export -----------------------------------------------------------------------


def test_to_pickapic(tmp_path):
    store = PairStore(tmp_path)
    records = [_record(0, i, shape=(2, 2)) for i in range(12)] + [
        _record(1, i, shape=(2, 2)) for i in range(10)
    ]
    store.write_shard(records[:12], 0, 0)
    store.write_shard(records[12:], 1, 0)
    exported = to_pickapic(store.load(), seed=3)
    assert exported.num_rows == len(records)
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "best_score", "worst_score"} <= set(
        exported.column_names
    )
    labels = exported["label_0"]
    assert set(labels) == {0.0, 1.0}  # the chosen image is not always first
    for row, record in zip(exported, records, strict=True):
        assert row["caption"] == record["prompt"]
        assert row["label_1"] == 1.0 - row["label_0"]
        assert row["best_score"] == record["chosen_score"] and row["worst_score"] == record["rejected_score"]
        decoded = [
            np.asarray(Image.open(io.BytesIO(row[key])).convert("RGB"), dtype=np.float64)
            for key in ("jpg_0", "jpg_1")
        ]
        preferred, other = (decoded[0], decoded[1]) if row["label_0"] == 1.0 else (decoded[1], decoded[0])
        chosen = np.asarray(record["chosen_image"], dtype=np.float64)
        rejected = np.asarray(record["rejected_image"], dtype=np.float64)
        # JPEG is lossy: the preferred image is close to the chosen preview and far from the rejected one.
        assert np.abs(preferred - chosen).mean() < 0.2 * np.abs(preferred - rejected).mean()
        assert np.abs(other - rejected).mean() < 0.2 * np.abs(other - chosen).mean()
    assert to_pickapic(store.load(), seed=3)["label_0"] == labels  # seeded
    assert to_pickapic(store.load(), seed=4)["label_0"] != labels


def test_to_pickapic_needs_the_pair_columns(tmp_path):
    store = PairStore(tmp_path)
    store.write_shard([_record(0, 0)], 0, 0)
    with pytest.raises(ValueError, match="chosen_image"):
        to_pickapic(store.load().remove_columns(["chosen_image"]))


# ---- PairRecord ------------------------------------------------------------------------------


def _search(prompt: str = "a cat", seed: int = 7, budget: int = 6, shape=(4, 3, 5)):
    from search import SearchResult
    from tscale_train.ses import PromptSearch

    generator = torch.Generator().manual_seed(seed)
    scores = torch.tensor([0.5, 0.2, 0.9, float("nan"), 0.1, 0.7][:budget])
    search = SearchResult(best_noise=torch.zeros(1, *shape), best_score=0.9, best_index=2, scores=scores)
    return PromptSearch(
        prompt=prompt,
        seed=seed,
        search=search,
        clean_latents=torch.randn((budget, *shape), generator=generator).to(torch.bfloat16),
        previews=torch.randint(0, 256, (budget, 3, 8, 8), generator=generator, dtype=torch.uint8),
    )


def test_a_prompt_search_has_every_field_pairs_are_cut_from():
    """`PairRecord.from_search` names the fields it reads (`SearchedPrompt`) instead of importing the search
    driver's class (a layer above); the driver's `PromptSearch` must keep providing all of them."""
    import dataclasses

    from tscale_train.pairs.record import SearchedPrompt
    from tscale_train.ses import PromptSearch

    assert set(SearchedPrompt.__annotations__) <= {item.name for item in dataclasses.fields(PromptSearch)}


def test_pair_record_from_search():
    result = _search()
    records = records_from_search(result, prompt_index=4, round_index=2, strategy="top_k_vs_bottom_k", k=2)
    pairs = select_pairs(result.search.scores, "top_k_vs_bottom_k", k=2)
    assert [(r.chosen_index, r.rejected_index) for r in records] == [
        (p.chosen_index, p.rejected_index) for p in pairs
    ]
    first = records[0]
    assert (first.prompt, first.prompt_index, first.round, first.seed, first.strategy) == (
        "a cat",
        4,
        2,
        7,
        "top_k_vs_bottom_k",
    )
    assert first.chosen_score == float(result.search.scores[2]) and first.margin == pytest.approx(
        pairs[0].margin
    )
    assert torch.equal(first.chosen_latents, result.clean_latents[2])
    assert torch.equal(first.rejected_preview, result.previews[first.rejected_index])
    # Copies: keeping a record does not keep the whole search's candidates alive.
    assert (
        first.chosen_latents.untyped_storage().data_ptr() != result.clean_latents.untyped_storage().data_ptr()
    )
    assert records_from_search(result, 0, 0, "best_vs_worst", min_margin=10.0) == []
    result.clean_latents = None
    with pytest.raises(ValueError, match="keep_latents"):
        records_from_search(result, 0, 0, "best_vs_worst")


def test_record_layout_is_spelled_once():
    from dataclasses import fields

    from tscale_train.pairs import _REQUIRED_RECORD_KEYS

    names = [field.name for field in fields(PairRecord)]
    assert list(_REQUIRED_RECORD_KEYS) == [
        {"chosen_preview": "chosen_image", "rejected_preview": "rejected_image"}.get(name, name)
        for name in names
    ]
    assert set(PAIR_FEATURES) == set(_REQUIRED_RECORD_KEYS) | {"margin", "latent_shape"}


def test_pair_record_round_trip_through_the_store(tmp_path):
    store = PairStore(tmp_path)
    records = records_from_search(_search(), prompt_index=3, round_index=1, strategy="top_k_vs_bottom_k", k=2)
    records.append(records_from_search(_search("a dog", seed=8), 5, 1, "best_vs_base")[0])
    records[-1].chosen_preview = records[-1].rejected_preview = None
    store.write_shard(records, round_index=1, process_index=0)
    dataset = store.load()
    assert dataset.features == PAIR_FEATURES
    loaded = store.load_records()
    for record, row, back in zip(records, dataset, loaded, strict=True):
        for name in ("prompt", "prompt_index", "round", "seed", "strategy", "chosen_index", "rejected_index",
                     "chosen_score", "rejected_score"):  # fmt: skip
            assert row[name] == getattr(record, name) == getattr(back, name)
        assert row["margin"] == record.margin == back.margin
        assert torch.equal(back.chosen_latents, record.chosen_latents.float())  # bit-exact from bf16
        assert torch.equal(back.rejected_latents, record.rejected_latents.float())
        assert back.chosen_preview is None and back.rejected_preview is None  # never decoded
        for preview, column in (
            (record.chosen_preview, "chosen_image"),
            (record.rejected_preview, "rejected_image"),
        ):
            if preview is None:
                assert row[column] is None
            else:  # uint8 [3, s, s] -> PNG -> the same pixels
                assert np.array_equal(np.asarray(row[column]), preview.permute(1, 2, 0).numpy())


def test_dict_and_pair_records_write_the_same_rows(tmp_path):
    record = records_from_search(_search(), 0, 0, "best_vs_worst")[0]
    as_dict = {
        name: getattr(record, name) for name in PAIR_FEATURES if hasattr(record, name) and name != "margin"
    }
    for preview, column in (("chosen_preview", "chosen_image"), ("rejected_preview", "rejected_image")):
        as_dict[column] = Image.fromarray(getattr(record, preview).permute(1, 2, 0).numpy())
    PairStore(tmp_path / "a").write_shard([record], 0, 0)
    PairStore(tmp_path / "b").write_shard([as_dict], 0, 0)
    first, second = PairStore(tmp_path / "a").load()[0], PairStore(tmp_path / "b").load()[0]
    for name in PAIR_FEATURES:
        if name.endswith("_image"):
            assert np.array_equal(np.asarray(first[name]), np.asarray(second[name]))
        else:
            assert first[name] == second[name]
    with pytest.raises(ValueError, match="margin"):
        PairStore(tmp_path / "c").write_shard([dict(as_dict, margin=record.margin + 1)], 0, 0)
    bad = records_from_search(_search(), 0, 0, "best_vs_worst")[0]
    bad.chosen_preview = bad.chosen_preview.float()
    with pytest.raises(ValueError, match="uint8"):
        PairStore(tmp_path / "d").write_shard([bad], 0, 0)


def test_process_filter_and_replay_read_without_decoding_previews(tmp_path, monkeypatch):
    store = PairStore(tmp_path)
    for round_index in range(3):
        for process_index in range(2):
            store.write_shard(
                [_record(round_index, 10 * process_index + i) for i in range(2)], round_index, process_index
            )
    assert [p.parent.name + "/" + p.name for p in store.shard_paths(rounds=[0, 2], process=1)] == [
        "round_00000/process_00001",
        "round_00002/process_00001",
    ]
    assert store.load(rounds=[1, 2], process=0)["prompt_index"] == [0, 1, 0, 1]
    assert store.load(process=7).num_rows == 0

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("a preview PNG was decoded")

    monkeypatch.setattr(datasets.Image, "decode_example", no_decoding)
    with pytest.raises(AssertionError, match="decoded"):
        store.load()[0]  # the patch does catch a decode
    replay = store.load_records(rounds=range(1, 3), process=1)
    expected = [_record(r, 10 + i) for r in (1, 2) for i in range(2)]
    assert [(r.round, r.prompt_index, r.prompt) for r in replay] == [
        (e["round"], e["prompt_index"], e["prompt"]) for e in expected
    ]
    for back, record in zip(replay, expected, strict=True):
        assert torch.equal(back.chosen_latents, record["chosen_latents"])
        assert torch.equal(back.rejected_latents, record["rejected_latents"])
    assert store.load_records(rounds=[5]) == []


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    from tscale_train.io_utils import atomic_directory

    target = tmp_path / "built"
    with atomic_directory(target) as staging:
        assert not staging.exists() and staging.parent == tmp_path and staging.name.startswith(".built.tmp-")
        staging.mkdir()
        (staging / "a").write_text("first")
    assert (target / "a").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        staging.mkdir()
        (staging / "a").write_text("second")
        raise RuntimeError
    assert (target / "a").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["built"]
    with atomic_directory(target) as staging:
        staging.mkdir()
        (staging / "b").write_text("third")
    assert [p.name for p in target.iterdir()] == ["b"] and [p.name for p in tmp_path.iterdir()] == ["built"]
    (tmp_path / ".built.tmp-killed").mkdir()
    with atomic_directory(target, remove_stale=True) as staging:
        staging.mkdir()
    assert [p.name for p in tmp_path.iterdir()] == ["built"]
