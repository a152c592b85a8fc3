"""What the README promises and the loop's options do, each through the real code on the tiny model."""

import json
import math
from pathlib import Path

import numpy
import pytest
import torch
from tiny_runs import tiny_run_config

from tscale_train.config import OnlineDPOConfig
from tscale_train.trainer import OnlineDPOTrainer


def tiny_config(tmp_path: Path, **overrides) -> OnlineDPOConfig:
    settings = dict(
        budget=6,
        popsize=3,
        rounds=1,
        eval_every=0,
        eval_budget=3,
        max_eval_prompts=2,
        checkpoint_every=0,
        gradient_checkpointing=False,
        progress=False,
    )
    return tiny_run_config(tmp_path / "run", **{**settings, **overrides})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ses_generate_the_readme_python_api(tiny_pipe):
    """`ses_generate(pipe, prompt=..., reward=..., budget=..., seed=...)` as the README shows it."""
    from rewards import load_reward
    from tscale_train.ses import ses_generate

    reward = load_reward("rewards.synthetic:brightness")
    result = ses_generate(
        tiny_pipe, prompt="sketch, a cat", reward=reward, budget=8, seed=1, config=None, progress=False
    )
    assert result.search.scores.shape == (8,)
    assert result.best_score == float(result.search.scores.max()) >= result.base_score
    assert result.image.size == result.base_image.size == (64, 64)
    # The base image is the seed's own noise: scoring it again gives the base score.
    pixels = torch.tensor(numpy.asarray(result.base_image)).permute(2, 0, 1)[None].float() / 255
    assert float(reward(pixels, ["sketch, a cat"])[0]) == pytest.approx(result.base_score, abs=5e-3)


@pytest.mark.slow
def test_a_prompts_search_does_not_depend_on_the_prompts_sharing_its_batch(tiny_pipe):
    from search import SESConfig
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.ses import search_prompts

    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=5)

    def reward(images, prompts):
        return images.mean(dim=(1, 2, 3))

    config = SESConfig(popsize=3, k_elites=2)
    alone = search_prompts(generator, reward, ["a red cube"], [7], budget=6, config=config, progress=False)[0]
    crowd = search_prompts(
        generator,
        reward,
        ["a dog", "a red cube", "a tree"],
        [1, 7, 3],
        budget=6,
        config=config,
        progress=False,
    )[1]
    torch.testing.assert_close(alone.search.scores, crowd.search.scores, atol=1e-5, rtol=0)
    assert alone.search.best_index == crowd.search.best_index


@pytest.mark.parametrize(
    "pairing, pairs_per_prompt", [("best_vs_worst", 1), ("best_vs_base", 1), ("top_k_vs_bottom_k", 2)]
)
@pytest.mark.slow
def test_each_pairing_strategy_through_the_trainer(pairing, pairs_per_prompt, tmp_path, kit_dir, monkeypatch):
    import tscale_train.trainer as trainer_module
    from tscale_train.pairs import PairStore

    searched = []
    original = trainer_module.search_prompts

    def spy(*args, **kwargs):
        searched.extend(original(*args, **kwargs))
        return searched[-len(args[2]) :]

    monkeypatch.setattr(trainer_module, "search_prompts", spy)
    config = tiny_config(tmp_path, pairing=pairing, pairs_per_prompt=pairs_per_prompt)
    trainer = OnlineDPOTrainer(config)
    _, stats = trainer.make_pairs(0)
    scores_by_seed = {result.seed: result.search.scores for result in searched}
    stored = PairStore(Path(config.output_dir) / "pairs").load()
    expected = pairs_per_prompt * len(searched)
    if pairing == "best_vs_base":  # a search that found nothing better than its base noise makes no pair
        expected = sum(1 for result in searched if result.search.scores.max() > result.search.scores[0])
    assert expected >= 1
    assert len(stored) == stats["train/num_pairs"] == expected
    for rank, row in enumerate(stored):
        scores = scores_by_seed[row["seed"]]
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        assert row["strategy"] == pairing
        assert row["chosen_score"] == pytest.approx(float(scores[row["chosen_index"]]))
        assert row["rejected_score"] == pytest.approx(float(scores[row["rejected_index"]]))
        if pairing == "best_vs_worst":
            assert (row["chosen_index"], row["rejected_index"]) == (order[0], order[-1])
        elif pairing == "best_vs_base":
            assert (row["chosen_index"], row["rejected_index"]) == (order[0], 0)
        else:
            k = rank % pairs_per_prompt  # the i-th best against the i-th worst
            assert (row["chosen_index"], row["rejected_index"]) == (order[k], order[-1 - k])


@pytest.mark.slow
def test_gradient_accumulation_steps_counts_optimizer_steps(tmp_path, kit_dir):
    """4 pairs, 1 pair per micro-step, 2 epochs: 8 micro-steps, so 4 optimizer steps with accumulation 2."""
    single = OnlineDPOTrainer(tiny_config(tmp_path / "one", train_batch_size=1, epochs_per_round=2)).train()
    double = OnlineDPOTrainer(
        tiny_config(tmp_path / "two", train_batch_size=1, epochs_per_round=2, gradient_accumulation_steps=2)
    ).train()
    assert metrics(single)[-1]["global_step"] == 8
    assert metrics(double)[-1]["global_step"] == 4


@pytest.mark.slow
def test_replay_rounds_trains_on_the_previous_rounds_pairs_too(tmp_path, kit_dir, monkeypatch):
    trained_on = []
    original = OnlineDPOTrainer.train_on_pairs

    def spy(self, records, round_index):
        trained_on.append(len(records))
        return original(self, records, round_index)

    monkeypatch.setattr(OnlineDPOTrainer, "train_on_pairs", spy)
    config = tiny_config(tmp_path, rounds=3, replay_rounds=1)
    out = OnlineDPOTrainer(config).train()
    new_pairs = [row["train/num_pairs"] for row in metrics(out)]
    # Round 0 has nothing to replay; later rounds add the previous round's pairs.
    assert trained_on[0] == new_pairs[0]
    assert trained_on[1] == new_pairs[1] + new_pairs[0]
    assert trained_on[2] == new_pairs[2] + new_pairs[1]
    assert all(math.isfinite(row["train/loss"]) for row in metrics(out))


@pytest.mark.slow
def test_pairs_carry_their_prompts_index_even_for_duplicate_prompts(tmp_path, kit_dir):
    from tscale_train.pairs import PairStore

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball\na red cube\na green tree\n")
    config = tiny_config(tmp_path, prompts=str(prompts), eval_fraction=0.0, prompts_per_round=4)
    trainer = OnlineDPOTrainer(config)
    trainer.make_pairs(0)
    stored = PairStore(Path(config.output_dir) / "pairs").load()
    assert sorted(stored["prompt_index"]) == [0, 1, 2, 3]  # `list.index` would give 0 twice
    for row in stored:
        assert trainer.train_prompts[row["prompt_index"]] == row["prompt"]
