"""The online SES -> Diffusion-DPO loop on the tiny model: reference pass, resume, launches, bad input."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_run_config

from tscale_train.config import OnlineDPOConfig, parse_config
from tscale_train.trainer import OnlineDPOTrainer

REPO = Path(__file__).resolve().parents[1]


def half_nan_brightness(images, prompts=None):
    """Brightness, but NaN for every other image: such candidates must never be trained on."""
    scores = images.float().mean(dim=(1, 2, 3))
    scores[::2] = float("nan")
    return scores


def tiny_config(tmp_path: Path, **overrides) -> OnlineDPOConfig:
    settings = dict(
        epochs_per_round=2,
        eval_every=1,
        eval_ses_every=0,
        eval_budget=2,
        max_eval_prompts=4,
        checkpoint_every=1,
        progress=False,
    )
    return tiny_run_config(tmp_path / "run", **{**settings, **overrides})


def test_reference_pass_runs_with_adapters_disabled(tmp_path, kit_dir):
    from tscale_train.loading import load_pipeline

    trainer = OnlineDPOTrainer(tiny_config(tmp_path))
    with torch.no_grad():
        for parameter in trainer.lora_parameters:
            parameter.normal_(std=0.3)
    generator = trainer.generator
    prompt = trainer.train_prompts[0]
    noisy = generator.initial_noise(1, batch_size=2)
    sigmas = torch.tensor([0.9, 0.7])
    embeds = trainer.prompt_cache.get([prompt] * 2)
    reference = trainer.reference_velocity(noisy, sigmas, embeds)
    plain = load_pipeline("tiny", dtype="float32")
    with torch.no_grad():
        base = generator.predict_velocity(plain.transformer, noisy, sigmas, embeds)
        adapted = generator.predict_velocity(trainer.model, noisy, sigmas, embeds)
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=0)
    assert (adapted - base).abs().max() > 1e-3
    assert all(parameter.requires_grad for parameter in trainer.lora_parameters)
    assert not any(
        p.requires_grad for n, p in trainer.pipe.transformer.named_parameters() if "lora_" not in n
    )


@pytest.mark.slow
def test_run_writes_outputs_and_resume_gives_the_same_lora(tmp_path, kit_dir):
    # eval_budget 4: the round -1 search must gain something for eval/amortisation_ratio to be defined.
    straight = OnlineDPOTrainer(tiny_config(tmp_path / "a", eval_budget=4)).train()
    interrupted_config = tiny_config(tmp_path / "b", eval_budget=4)
    OnlineDPOTrainer(interrupted_config).train(stop_after_rounds=1)
    assert not (Path(interrupted_config.output_dir) / "pytorch_lora_weights.safetensors").exists()
    resumed = OnlineDPOTrainer(
        tiny_config(tmp_path / "b", eval_budget=4, resume_from_checkpoint="latest")
    ).train()
    final_a = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    final_b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert final_a.keys() == final_b.keys() and all(key.startswith("transformer.") for key in final_a)
    assert any(value.abs().max() > 0 for key, value in final_a.items() if "lora_B" in key), (
        "training never moved the LoRA"
    )
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], atol=1e-6, rtol=0)

    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [-1, 0, 1]
    for name in (
        "train/loss",
        "train/implicit_acc",
        "train/implicit_acc_new",
        "train/reward_margin",
        "search/best_reward",
        "search/base_reward",
        "eval/reward_budget0",
        "train/inside_abs",
    ):
        assert all(math.isfinite(row[name]) for row in rows[1:]), name
    assert all(row["train/inside_abs"] >= abs(row["train/inside"]) for row in rows[1:])
    assert rows[-1]["train/inside_abs"] > 0
    assert "eval/reward_ses" in rows[0] and "eval/reward_ses" in rows[-1]  # round -1 always searches
    gain = rows[0]["eval/reward_ses"] - rows[0]["eval/reward_budget0"]
    assert gain > 0
    for row in rows[1:]:
        expected = (row["eval/reward_budget0"] - rows[0]["eval/reward_budget0"]) / gain
        assert row["eval/amortisation_ratio"] == pytest.approx(expected, rel=1e-6)
    resumed_rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    # The resumed run reads round -1's rewards back from metrics.jsonl: the same ratio after the restart.
    assert resumed_rows[-1]["eval/amortisation_ratio"] == pytest.approx(
        rows[-1]["eval/amortisation_ratio"], abs=1e-6
    )
    assert rows[1]["train/implicit_acc_new"] == 0.0  # LoRA B = 0: theta == ref, inside is exactly 0
    assert all(row["search/best_reward"] >= row["search/base_reward"] for row in rows[1:])
    from tscale_train.pairs import PairStore

    assert PairStore(straight / "pairs").rounds() == [0, 1]
    assert (straight / "config.yaml").is_file() and (straight / "eval").is_dir()

    from tscale_train.loading import load_lora, load_pipeline

    load_lora(load_pipeline("tiny", dtype="float32"), str(straight))


def test_checkpoints_total_limit_and_mismatched_resume(tmp_path, kit_dir):
    config = tiny_config(tmp_path, rounds=3, checkpoints_total_limit=2, eval_every=0)
    OnlineDPOTrainer(config).train()
    kept = sorted(path.name for path in (Path(config.output_dir) / "checkpoints").iterdir())
    assert kept == ["checkpoint-00001", "checkpoint-00002"]
    with pytest.raises(ValueError, match=r"other settings \(lora_rank 4 -> 8\)"):
        OnlineDPOTrainer(
            tiny_config(tmp_path, rounds=3, lora_rank=8, resume_from_checkpoint="latest")
        ).train()


def test_nan_rewards_are_never_trained_on(tmp_path, kit_dir):
    config = tiny_config(
        tmp_path, reward="test_trainer:half_nan_brightness", rounds=1, eval_every=0, budget=6
    )
    with pytest.warns(UserWarning, match="NaN"):
        OnlineDPOTrainer(config).train()
    from tscale_train.pairs import PairStore

    pairs = PairStore(Path(config.output_dir) / "pairs").load()
    assert len(pairs) > 0
    assert all(math.isfinite(score) for score in list(pairs["chosen_score"]) + list(pairs["rejected_score"]))
    assert all(index % 2 == 1 for index in list(pairs["chosen_index"]) + list(pairs["rejected_index"]))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"beta": 0.0}, ValueError, "beta must be > 0"),
        ({"prompts": "missing.txt"}, FileNotFoundError, "does not exist"),
        ({"prompts": "EMPTY"}, ValueError, "no prompts"),
        ({"model": "./no/such/dir"}, FileNotFoundError, "does not exist"),
        ({"reward": "nonsense"}, ValueError, "unknown reward"),
        ({"popsize": 8}, ValueError, "popsize"),
    ],
)
def test_bad_config_fails_before_loading(overrides, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n  \n")
    if overrides.get("prompts") == "EMPTY":
        overrides = dict(overrides, prompts=str(tmp_path / "empty.txt"))
    monkeypatch.setattr("tscale_train.trainer.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(error, match=message):
        OnlineDPOTrainer(tiny_config(tmp_path, **overrides))


def test_fewer_prompts_than_processes(tmp_path, monkeypatch):
    class TwoProcesses:
        num_processes = 2

    prompts = tmp_path / "one.txt"
    prompts.write_text("a single prompt\n")
    monkeypatch.setattr(OnlineDPOTrainer, "_make_accelerator", lambda self: TwoProcesses())
    with pytest.raises(ValueError, match="at least one prompt per process"):
        OnlineDPOTrainer(tiny_config(tmp_path, prompts=str(prompts), eval_fraction=0.0))


def test_yaml_config_with_command_line_overrides(tmp_path):
    config = parse_config(
        ["--config", str(REPO / "recipes/configs/tiny.yaml"), "--beta", "2.5", "--output_dir", str(tmp_path)]
    )
    assert config.model == "tiny" and config.beta == 2.5 and config.output_dir == str(tmp_path)
    (tmp_path / "bad.yaml").write_text("model: tiny\nbetta: 3\n")
    with pytest.raises(ValueError, match="unknown fields"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])
    for name in ("flux2_klein_4b.yaml", "flux2_klein_base_4b.yaml"):
        assert parse_config(["--config", str(REPO / "recipes/configs" / name)]).model.startswith(
            "black-forest-labs/"
        )


@pytest.mark.slow
def test_the_loop_learns_a_reward_the_tiny_model_can_move(tmp_path, kit_dir):
    """Brightness reward vs a coin-flip control, both evaluated on held-out brightness at budget 0.

    The random VAE makes brightness nearly flat, so shifts are in units of the eval set's spread.
    Measured here with these settings: after 3 rounds about +8.8 sd for brightness
    against +2.4 sd for the control.
    """
    from tscale_train.lora import FLUX2_ALL_LINEAR_TARGETS

    shifts = {}
    for reward in ("rewards.synthetic:brightness", "rewards.synthetic:coin_flip"):
        config = tiny_config(
            tmp_path / reward.split(":")[-1],
            reward=reward,
            eval_reward="rewards.synthetic:brightness",
            budget=16,
            eval_budget=8,
            popsize=8,
            k_elites=2,
            rounds=3,
            prompts_per_round=16,
            epochs_per_round=30,
            train_batch_size=4,
            beta=1.0,
            learning_rate=1e-3,
            lora_rank=8,
            lora_target_modules=FLUX2_ALL_LINEAR_TARGETS,
            eval_every=1,
            max_eval_prompts=16,
            eval_fraction=0.2,
            checkpoint_every=0,
            checkpoints_total_limit=1,
        )
        out = OnlineDPOTrainer(config).train()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        baseline, spread = rows[0]["eval/reward_budget0"], rows[0]["eval/reward_budget0_std"]
        shifts[reward] = [(row["eval/reward_budget0"] - baseline) / spread for row in rows[1:]]
    learned, control = shifts["rewards.synthetic:brightness"], shifts["rewards.synthetic:coin_flip"]
    assert learned[-1] > 4.0, shifts
    assert learned[-1] - control[-1] > 3.0, shifts


def test_prompts_are_encoded_per_round_into_a_bounded_cache(tmp_path, kit_dir):
    """Only the eval prompts are encoded up front; a round encodes its own shard; the cache stays bounded.

    One klein prompt embedding is 7.9 MB: encoding the bundled 300 prompts up front cost 2.4 GB per
    process, a 50k-prompt dataset ~390 GB.
    """
    config = tiny_config(
        tmp_path,
        model="tiny-base",
        rounds=2,
        prompts_per_round=4,
        max_cached_prompts=3,
        eval_every=0,
        checkpoint_every=0,
        preview_steps=2,
        eval_fraction=0.0,
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {index}" for index in range(40)) + "\n")
    config.prompts = str(prompts)
    trainer = OnlineDPOTrainer(config)
    cache = trainer.prompt_cache
    assert cache.encoded_count == len(trainer.eval_prompts) == 0
    assert trainer.pipe.text_encoder.device.type == "cpu"  # offloaded: it visits the device only to encode
    trainer.train(stop_after_rounds=1)
    assert cache.encoded_count == 4  # this round's prompts, not all 40
    assert len(cache) <= 3
    embeds = cache.get(["prompt number 0", "prompt number 1"])
    assert embeds[0].negative_prompt_embeds is not None
    assert embeds[0].negative_prompt_embeds is embeds[1].negative_prompt_embeds  # one shared negative
    assert trainer.pipe.text_encoder.device.type == "cpu"


def test_prompts_per_round_below_the_process_count_is_refused(tmp_path, monkeypatch):
    class FourProcesses:
        num_processes = 4

    monkeypatch.setattr(OnlineDPOTrainer, "_make_accelerator", lambda self: FourProcesses())
    monkeypatch.setattr("tscale_train.trainer.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="prompts_per_round=2 is smaller than the 4 processes"):
        OnlineDPOTrainer(tiny_config(tmp_path, prompts_per_round=2))


def test_amortisation_ratio_is_undefined_when_the_search_gained_nothing():
    from tscale_train.evaluation import amortisation_ratio

    before = {"eval/reward_budget0": 0.5, "eval/reward_ses": 0.7}
    assert amortisation_ratio(before, {"eval/reward_budget0": 0.6}) == pytest.approx(0.5)
    assert amortisation_ratio(before, {"eval/reward_budget0": 0.4}) == pytest.approx(-0.5)
    assert (
        amortisation_ratio({"eval/reward_budget0": 0.5, "eval/reward_ses": 0.5}, {"eval/reward_budget0": 0.6})
        is None
    )
    assert amortisation_ratio({"eval/reward_budget0": 0.5}, {"eval/reward_budget0": 0.6}) is None
    assert amortisation_ratio(None, {"eval/reward_budget0": 0.6}) is None


def test_search_random_makes_pairs_and_evals_with_best_of_n(tmp_path, monkeypatch, kit_dir):
    """`search: random` is the best-of-N baseline end to end: pairs and eval both search that way."""
    import tscale_train.trainer as trainer_module
    from search import RandomSearch, SpectralEvolutionSearch

    made = []
    original = trainer_module.search_prompts

    def spy(*args, **kwargs):
        made.append(kwargs["method"])
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "search_prompts", spy)
    classes = []

    def recording(cls):
        class Recorded(cls):
            def __init__(self, *args, **kwargs):
                classes.append(cls.__name__)
                super().__init__(*args, **kwargs)

        return Recorded

    for cls in (RandomSearch, SpectralEvolutionSearch):
        monkeypatch.setattr(f"tscale_train.ses.driver.{cls.__name__}", recording(cls))
    out = OnlineDPOTrainer(tiny_config(tmp_path, search="random", rounds=1)).train()
    assert made == ["random", "random", "random"]  # eval before training, the round's pairs, the final eval
    assert set(classes) == {"RandomSearch"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["search/best_reward"] >= rows[-1]["search/base_reward"]
    with pytest.raises(ValueError, match="search 'cmaes' is not one of"):
        tiny_config(tmp_path, search="cmaes")


def test_eval_scores_budget0_and_ses_at_the_same_steps(tmp_path, monkeypatch, kit_dir):
    """For a base model SES previews at `preview_steps`; budget 0 must be scored there too to be comparable."""
    import tscale_train.trainer as trainer_module

    searches = []
    original = trainer_module.search_prompts

    def spy(*args, **kwargs):
        results = original(*args, **kwargs)
        searches.append(results)
        return results

    monkeypatch.setattr(trainer_module, "search_prompts", spy)
    trainer = OnlineDPOTrainer(
        tiny_config(tmp_path, model="tiny-base", preview_steps=2, max_eval_prompts=3, eval_fraction=0.5)
    )
    metrics = trainer.evaluate(0, with_search=True)
    (results,) = searches
    # The base noise is the search's first candidate: at the same steps its score is the budget-0 score.
    base_scores = torch.tensor([float(result.search.scores[0]) for result in results])
    assert metrics["eval/reward_budget0"] == pytest.approx(float(base_scores.mean()), abs=1e-5)
    assert metrics["eval/reward_ses"] >= metrics["eval/reward_budget0"]


def test_replay_reads_latents_without_decoding_previews(tmp_path, monkeypatch, kit_dir):
    import datasets

    config = tiny_config(tmp_path, rounds=2, replay_rounds=1, eval_every=0, checkpoint_every=0)
    trainer = OnlineDPOTrainer(config)
    trainer.train(stop_after_rounds=1)
    stored = trainer.store.load([0])
    monkeypatch.setattr(
        datasets.Image, "decode_example", lambda *a, **k: pytest.fail("a preview PNG was decoded")
    )
    replayed = trainer._training_records([], round_index=1)
    assert len(replayed) == len(stored) > 0
    from tscale_train.pairs import record_latents

    for row, record in zip(
        stored.select_columns(["prompt", "latent_shape", "chosen_latents", "rejected_latents"]),
        replayed,
        strict=True,
    ):
        chosen, rejected = record_latents(row)
        assert record.prompt == row["prompt"]
        torch.testing.assert_close(record.chosen_latents, chosen, atol=0, rtol=0)
        torch.testing.assert_close(record.rejected_latents, rejected, atol=0, rtol=0)


def test_defaults_are_safe_for_the_real_model_and_beta_follows_the_flow_dpo_anchor():
    """The recipe with no YAML trains klein-4B at 1024px: checkpointing on, one pair per micro-step."""
    config = OnlineDPOConfig()
    assert config.model == "black-forest-labs/FLUX.2-klein-4B"
    assert config.gradient_checkpointing and config.train_batch_size == 1
    # flow_grpo / Flow-Factory flow-matching DPO on SD3.5 use beta 100 with the same per-sample-mean MSE.
    assert config.beta == 100.0
    for name in ("flux2_klein_4b.yaml", "flux2_klein_base_4b.yaml", "flux2_klein_4b_24gb.yaml"):
        real = parse_config(["--config", str(REPO / "recipes/configs" / name)])
        assert real.beta == 100.0 and real.gradient_checkpointing, name


# ---- the run directory: one run at a time, no silent mixing of runs, clean resumes, clear failures --------
def nan_everywhere(images, prompts=None):
    """A broken reward: NaN for every image."""
    return torch.full((images.shape[0],), float("nan"))


def constant(images, prompts=None):
    """A reward that cannot tell images apart: every pair is a tie."""
    return torch.zeros(images.shape[0])


class _ModelLoad(Exception):
    """Raised in place of loading the model: what happens in the output dir before that is under test."""


def _stop_at_model_load(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise _ModelLoad

    monkeypatch.setattr("tscale_train.trainer.load_pipeline", load)


def _strict_rows(out: Path) -> list[dict]:
    def reject(constant: str):
        raise AssertionError(f"metrics.jsonl holds bare {constant}: not JSON")

    return [
        json.loads(line, parse_constant=reject) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_second_live_run_into_the_same_output_dir_is_refused(tmp_path, monkeypatch):
    import os

    from tscale_train.run_dir import RunDirectory

    config = tiny_config(tmp_path)
    other = RunDirectory(config.output_dir)
    other.acquire()
    _stop_at_model_load(monkeypatch)
    try:
        with pytest.raises(ValueError, match=rf"{config.output_dir}.*pid {os.getpid()}") as refused:
            OnlineDPOTrainer(config)
        assert len(str(refused.value).splitlines()) == 1
    finally:
        other.release()
    with pytest.raises(_ModelLoad):  # free again
        OnlineDPOTrainer(config)


def test_a_non_empty_output_dir_needs_resume_or_overwrite(tmp_path, monkeypatch):
    """A finished run's dir: a fresh run into it would append to its metrics and mix in its pairs and checkpoints."""
    config = tiny_config(tmp_path)
    out = Path(config.output_dir)
    for name in ("pairs/round_00000", "checkpoints/checkpoint-00007", "eval"):
        (out / name).mkdir(parents=True)
    from tscale_train.checkpointing import run_settings

    state = {"round": 7, "global_step": 0, "settings": run_settings(config), "pairs": {}}
    (out / "checkpoints/checkpoint-00007/trainer_state.json").write_text(json.dumps(state))
    for name in ("metrics.jsonl", "config.yaml", "pytorch_lora_weights.safetensors"):
        (out / name).write_text("{}\n")
    _stop_at_model_load(monkeypatch)
    with pytest.raises(
        ValueError, match="is not empty .*--resume_from_checkpoint latest.*--overwrite_output_dir"
    ) as refused:
        OnlineDPOTrainer(config)
    assert str(out) in str(refused.value) and len(str(refused.value).splitlines()) == 1
    assert (out / "metrics.jsonl").is_file()
    with pytest.raises(_ModelLoad):  # resuming continues the run that is there
        OnlineDPOTrainer(tiny_config(tmp_path, resume_from_checkpoint="latest"))
    with pytest.raises(_ModelLoad):
        OnlineDPOTrainer(tiny_config(tmp_path, overwrite_output_dir=True))
    assert {path.name for path in out.iterdir() if not path.name.startswith(".tscale")} == set()


def test_resume_validates_first_then_cuts_the_run_back_to_its_checkpoint(tmp_path, kit_dir, caplog):
    config = tiny_config(tmp_path, rounds=3, eval_every=0)
    out = Path(config.output_dir)
    OnlineDPOTrainer(config).train(stop_after_rounds=2)
    assert [row["round"] for row in _strict_rows(out)] == [0, 1]
    written = (out / "config.yaml").read_text()

    # A refused resume leaves the run's config as it was.
    with pytest.raises(ValueError, match=r"other settings \(lora_rank 4 -> 8\)"):
        OnlineDPOTrainer(
            tiny_config(tmp_path, rounds=3, eval_every=0, lora_rank=8, resume_from_checkpoint="latest")
        ).train()
    assert (out / "config.yaml").read_text() == written

    # A truncated LoRA: a one-line error naming the file and the checkpoint to fall back to.
    lora = out / "checkpoints/checkpoint-00001/pytorch_lora_weights.safetensors"
    lora.write_bytes(lora.read_bytes()[:100])
    resume = tiny_config(tmp_path, rounds=3, eval_every=0, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="checkpoint-00001/pytorch_lora_weights.safetensors") as refused:
        OnlineDPOTrainer(resume).train()
    assert f"--resume_from_checkpoint {out / 'checkpoints/checkpoint-00000'}" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1

    # An incomplete latest checkpoint: skipped with a warning and removed; metrics of later rounds are cut.
    (out / "checkpoints/checkpoint-00001/trainer_state.json").unlink()
    (out / "checkpoints/checkpoint-00001/marker").write_text("left by the interrupted save")
    with caplog.at_level("WARNING"):
        OnlineDPOTrainer(resume).train(stop_after_rounds=1)
    assert "checkpoint-00001" in caplog.text
    assert not (out / "checkpoints/checkpoint-00001/marker").exists()
    assert [row["round"] for row in _strict_rows(out)] == [0, 1]


@pytest.mark.parametrize("reward", ["test_trainer:nan_everywhere", "test_trainer:constant"])
def test_a_reward_without_usable_pairs_stops_the_run(reward, tmp_path, kit_dir):
    import warnings

    config = tiny_config(tmp_path, reward=reward, rounds=1, eval_every=1, checkpoint_every=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN scores warn too
        with pytest.raises(
            ValueError, match=rf"round 0: the reward '{reward}' gave no usable pair"
        ) as refused:
            OnlineDPOTrainer(config).train()
    assert len(str(refused.value).splitlines()) == 1
    out = Path(config.output_dir)
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    (before,) = _strict_rows(out)  # the eval before training; NaN is written as null
    assert before["round"] == -1
    if reward.endswith("nan_everywhere"):
        assert before["eval/reward_budget0"] is None


def test_a_full_disk_while_checkpointing_names_the_path(tmp_path, kit_dir, monkeypatch):
    import errno

    trainer = OnlineDPOTrainer(tiny_config(tmp_path))

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(trainer.accelerator, "save_state", full)
    monkeypatch.setattr("tscale_train.io_utils.free_bytes", lambda path: 0)
    with pytest.raises(OSError, match="no space left on device while writing .*checkpoint-00000") as failed:
        trainer.save_checkpoint(0)
    assert failed.value.errno == errno.ENOSPC
