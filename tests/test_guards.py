"""Guards against reward hacking: weighted rewards, held-out judges, diversity, drift, the stop policy, EMA."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewards import CallableReward, WeightedReward, check_reward_spec, load_reward_spec, parse_reward_spec
from rewards.synthetic import brightness, redness
from rewards.weighted import format_reward_spec, short_reward_names, standardisation
from search import SESConfig
from tscale_train.config import OnlineDPOConfig, parse_config
from tscale_train.ema import LoraEMA
from tscale_train.guards import GuardMonitor, drift_metrics, image_statistics, mean_pairwise_distance
from tscale_train.lora import FLUX2_ALL_LINEAR_TARGETS, LORA_WEIGHT_NAME
from tscale_train.trainer import OnlineDPOTrainer

BRIGHTNESS, DARKNESS = "rewards.synthetic:brightness", "rewards.synthetic:darkness"


def scaled_redness(images, prompts=None):
    """Redness on another scale and offset: a weighted reward must not care."""
    return 1000.0 * redness(images) + 7.0


def diversity(images, prompts=None):
    """A judge named like the diversity guard's own metric: refused."""
    return brightness(images)


def images(count: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- weighted rewards ---------------------------------------------------------------------------
def test_reward_specs_parse_weights_and_keep_callable_names():
    assert parse_reward_spec("pickscore") == {"pickscore": 1.0}
    assert parse_reward_spec(BRIGHTNESS) == {BRIGHTNESS: 1.0}
    assert parse_reward_spec(f" pickscore:1.0, {DARKNESS}:0.5,hpsv2:2e-1") == {
        "pickscore": 1.0,
        DARKNESS: 0.5,
        "hpsv2": 0.2,
    }
    assert parse_reward_spec({"pickscore": 1, "hpsv2": 0.5}) == {"pickscore": 1.0, "hpsv2": 0.5}
    assert parse_reward_spec(format_reward_spec({BRIGHTNESS: 2, "clip": 0.25})) == {
        BRIGHTNESS: 2.0,
        "clip": 0.25,
    }
    assert short_reward_names([BRIGHTNESS, "clip"]) == ["brightness", "clip"]
    assert short_reward_names(["a.x:score", "b.y:score"]) == ["a.x:score", "b.y:score"]  # would collide


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pickscore:0", "positive"),
        ("pickscore:-1", "positive"),
        ("pickscore:1,,clip:1", "empty entry"),
        ("clip:1,clip:2", "twice"),
        ("pickscore:1,nosuchreward:1", "unknown reward"),
        ("pickscore:1.O", "'1.O', which is not a number"),
        (f"{BRIGHTNESS}:2x", "'2x', which is not a number"),
        ("", "empty"),
    ],
)
def test_bad_reward_specs_are_refused_with_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        check_reward_spec(spec)


def test_weighted_reward_ignores_each_rewards_scale_and_offset():
    pixels = images(8)
    prompts = ["a"] * 4 + ["b"] * 4
    plain = WeightedReward(
        {"b": CallableReward(brightness, name="b"), "r": CallableReward(redness, name="r")},
        {"b": 1.0, "r": 0.5},
    )
    scaled = WeightedReward(
        {"b": CallableReward(brightness, name="b"), "r": CallableReward(scaled_redness, name="r")},
        {"b": 1.0, "r": 0.5},
    )
    torch.testing.assert_close(plain(pixels, prompts), scaled(pixels, prompts), rtol=1e-4, atol=1e-4)
    # Per prompt: each reward standardised over that prompt's images, then weighted.
    raw = plain.component_scores(pixels, prompts)
    first = raw[:4]
    expected = (first[:, 0] - first[:, 0].mean()) / first[:, 0].std() + 0.5 * (
        first[:, 1] - first[:, 1].mean()
    ) / first[:, 1].std()
    torch.testing.assert_close(plain(pixels, prompts)[:4], expected.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least two images per prompt"):
        plain(pixels[:3], ["a", "b", "c"])


def test_standardisation_leaves_flat_or_unmeasurable_columns_raw():
    mean, spread = standardisation(torch.tensor([[1.0, 5.0], [3.0, 5.0], [float("nan"), 1.0]]))
    assert mean.tolist() == [2.0, 0.0] and spread[1] == 1.0  # the NaN row is left out; column 2 is then flat
    mean, spread = standardisation(torch.tensor([[1.0, 2.0]]))
    assert mean.tolist() == [0.0, 0.0] and spread.tolist() == [1.0, 1.0]


def test_search_standardises_each_search_on_its_first_generation(kit_dir, tiny_pipe):
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_reward_for
    from tscale_train.ses import search_prompts

    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=3)
    reward = load_reward_for(f"{BRIGHTNESS}:1,rewards.synthetic:redness:0.5", "tiny")
    assert isinstance(reward, WeightedReward)
    budget, popsize = 20, 8
    config = SESConfig(popsize=popsize)
    together = search_prompts(
        generator, reward, ["a cat", "a dog"], [3, 4], budget=budget, config=config, progress=False
    )
    alone = search_prompts(generator, reward, ["a dog"], [4], budget=budget, config=config, progress=False)
    for result in together:
        assert result.component_scores.shape == (budget, 2)
        # The first generation's statistics, kept for the later generations too.
        mean, spread = standardisation(result.component_scores[:popsize])
        torch.testing.assert_close(result.reward_statistics[0], mean)
        torch.testing.assert_close(
            result.search.scores, reward.combine(result.component_scores, mean, spread)
        )
        refitted = standardisation(result.component_scores)
        assert not torch.allclose(
            result.search.scores[popsize:], reward.combine(result.component_scores, *refitted)[popsize:]
        )
        assert result.best_components.tolist() == result.component_scores[result.search.best_index].tolist()
    # Batch composition moves a score by ~1e-7, which standardising by a spread of ~1e-3 amplifies.
    torch.testing.assert_close(together[1].search.scores, alone[0].search.scores, rtol=0, atol=1e-3)
    assert together[1].search.best_index == alone[0].search.best_index
    # The search's first fresh noise is not the base noise again.
    assert len(set(together[0].component_scores[:popsize, 0].tolist())) == popsize


def test_compare_puts_every_method_on_the_first_methods_scale(kit_dir, tiny_pipe):
    """The published SES's first generation varies only the low band: on its own scale its scores read larger."""
    from tscale_train.compare import compare_searches
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.loading import load_reward_for
    from tscale_train.ses import search_prompts

    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=6)
    reward = load_reward_for(f"{BRIGHTNESS}:1,rewards.synthetic:redness:0.5", "tiny")
    settings = dict(budget=12, config=SESConfig(popsize=6), progress=False)
    (comparison,) = compare_searches(
        generator, reward, ["a cat"], [1], ["random", "ses-published"], **settings
    )
    shared = comparison.searches["random"].reward_statistics
    published = comparison.searches["ses-published"]
    for own, given in zip(published.reward_statistics, shared, strict=True):
        torch.testing.assert_close(own, given)
    torch.testing.assert_close(published.search.scores, reward.combine(published.component_scores, *shared))
    (alone,) = search_prompts(generator, reward, ["a cat"], [1], method="ses-published", **settings)
    assert not torch.allclose(alone.reward_statistics[1], shared[1])  # on its own, its own scale
    with pytest.raises(ValueError, match="reward statistics"):
        search_prompts(generator, reward, ["a cat"], [1], reward_statistics=[shared, shared], **settings)


def test_yaml_takes_weighted_rewards_as_a_mapping_and_guards_as_a_list(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        f"model: tiny\nreward:\n  {BRIGHTNESS}: 1.0\n  rewards.synthetic:redness: 0.5\n"
        f"guard_rewards: [{DARKNESS}, rewards.synthetic:contrast]\n"
    )
    config = parse_config(["--config", str(config_file), "--output_dir", str(tmp_path / "run")])
    assert parse_reward_spec(config.reward) == {BRIGHTNESS: 1.0, "rewards.synthetic:redness": 0.5}
    assert config.guard_reward_names() == [DARKNESS, "rewards.synthetic:contrast"]
    flags = parse_config(["--model", "tiny", "--reward", f"{BRIGHTNESS}:1.0,rewards.synthetic:redness:0.5"])
    assert flags.reward == f"{BRIGHTNESS}:1.0,rewards.synthetic:redness:0.5"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--guard_policy", "halt"], "guard_policy"),
        (["--guard_tolerance", "1.5"], "guard_tolerance"),
        (["--guard_patience", "0"], "guard_patience"),
        (["--ema_decay", "1.0"], "ema_decay"),
        (["--guard_max_drift", "0"], "guard_max_drift"),
        (["--guard_rewards", "pickscore,nosuchreward"], "unknown reward"),
        (["--guard_rewards", "clip,clip"], "twice"),
        (["--guard_rewards", "clip", "--eval_every", "0"], "eval_every"),
        (["--reward", "pickscore:1,hpsv2:x"], "not a number"),
        (["--guard_rewards", "clip:0.5"], "has a weight"),
        (["--guard_rewards", "rewards.synthetic:brightness,test_guards:diversity"], "guard's own metric"),
    ],
)
def test_bad_guard_settings_are_refused_before_loading(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_config(["--model", "tiny", *flags])


def test_tscale_ses_takes_a_weighted_reward(tmp_path, kit_dir):
    from tscale_train.cli import main

    out = tmp_path / "cat.png"
    code = main(
        [
            "ses",
            "--model",
            "tiny",
            "--prompt",
            "a cat",
            "--budget",
            "6",
            "--popsize",
            "3",
            "--no-progress",
            "--reward",
            f"{BRIGHTNESS}:1,rewards.synthetic:redness:0.5",
            "--out",
            str(out),
            "--save-trace",
        ]
    )
    assert code == 0 and out.is_file()
    trace = json.loads((tmp_path / "cat_trace.json").read_text())
    assert set(trace["rewards"]) == {BRIGHTNESS, "rewards.synthetic:redness"}
    assert trace["best_score"] >= trace["base_score"] == trace["scores"][0]
    ambiguous = main(
        [
            "ses",
            "--model",
            "tiny",
            "--prompt",
            "a cat",
            "--reward",
            f"{BRIGHTNESS}:1,clip:1",
            "--reward-arg",
            "model_name=x",
            "--out",
            str(out),
        ]
    )
    assert ambiguous == 2


def test_loading_a_weighted_reward_loads_each(kit_dir):
    reward = load_reward_spec({BRIGHTNESS: 1.0, "rewards.synthetic:contrast": 3.0}, device="cpu")
    assert reward.names == [BRIGHTNESS, "rewards.synthetic:contrast"] and reward.weights.tolist() == [
        1.0,
        3.0,
    ]
    assert not isinstance(
        load_reward_spec(BRIGHTNESS, device="cpu"), WeightedReward
    )  # one reward keeps its scale


# ---- guard metrics and policy -------------------------------------------------------------------
def test_image_statistics_measure_what_they_name():
    grey = torch.full((1, 3, 8, 8), 0.25)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)
    statistics = image_statistics(torch.cat([grey, red, checker]))
    assert statistics[0].tolist() == pytest.approx([0.25, 0.0, 0.0])
    assert statistics[1, :2].tolist() == pytest.approx([1 / 3, 1.0])
    assert statistics[2, 2] == pytest.approx(0.25)  # every pixel 0.5 away from its 2x2 mean
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == pytest.approx(10 / 3)


def test_guard_policy_waits_patience_then_stops_and_replays_alike():
    from tscale_train.io_utils import dumps_json

    monitor = GuardMonitor(reward_keys=["guard/judge"], diversity=True, tolerance=0.1, patience=2)
    before = {"guard/judge": -2.0, "guard/diversity": 1.0}
    rows = [
        {"round": -1, **before},
        {"round": 0, "guard/judge": -2.15, "guard/diversity": 0.95},  # within 10%
        {"round": 1, "guard/judge": -2.3, "guard/diversity": 0.95},  # judge fails
        {"round": 2, "guard/judge": -2.0, "guard/diversity": 1.0},  # holds again: the streak resets
        {"round": 3, "guard/judge": -2.0, "guard/diversity": 0.85},  # diversity fails
        {"round": 4, "guard/judge": float("nan"), "guard/diversity": 1.0},  # NaN fails
    ]
    verdicts = [monitor.observe(row["round"], before, row) for row in rows]
    assert [verdict.action for verdict in verdicts] == [None, None, "warn", None, "warn", "stop"]
    assert monitor.last_good_round == 2
    assert "failing since round 3" in monitor.stop_message(monitor.history[-1])
    # A resumed run replays metrics.jsonl, where NaN is written as null: it must judge alike.
    logged = [
        json.loads(dumps_json({**row, "guard/held": float(verdict.held)}))
        for row, verdict in zip(rows, verdicts, strict=True)
    ]
    assert logged[-1]["guard/judge"] is None
    replayed = GuardMonitor(reward_keys=["guard/judge"], diversity=True, tolerance=0.1, patience=2)
    replayed.replay(logged)
    assert [verdict.action for verdict in replayed.history] == [verdict.action for verdict in verdicts]
    assert (replayed.streak, replayed.last_good_round) == (monitor.streak, monitor.last_good_round) == (2, 2)
    warn = GuardMonitor(
        reward_keys=["guard/judge"], diversity=False, tolerance=0.1, patience=1, policy="warn"
    )
    assert warn.observe(0, before, rows[2]).action == "warn"


def test_drift_is_logged_and_fails_only_with_a_limit():
    before = {
        "guard/image_brightness": 0.5,
        "guard/image_saturation": 0.2,
        "guard/image_high_frequency": 0.01,
    }
    now = {"guard/image_brightness": 0.6, "guard/image_saturation": 0.2, "guard/image_high_frequency": 0.005}
    drifts = drift_metrics(before, now)
    assert drifts == pytest.approx(
        {"guard/brightness_drift": 0.2, "guard/saturation_drift": 0.0, "guard/high_frequency_drift": -0.5}
    )
    logged_only = GuardMonitor(reward_keys=[], diversity=False, tolerance=0.05, patience=1)
    assert not logged_only.active and logged_only.failures(before, drifts) == []
    limited = GuardMonitor(reward_keys=[], diversity=False, tolerance=0.05, patience=1, max_drift=0.3)
    assert [line.split(" ")[0] for line in limited.failures(before, drifts)] == ["guard/high_frequency_drift"]


# ---- EMA ----------------------------------------------------------------------------------------
def test_ema_averages_swaps_in_and_round_trips(tmp_path):
    weight = torch.nn.Parameter(torch.zeros(3))
    ema = LoraEMA([weight], decay=0.5)
    for value in (1.0, 2.0):
        with torch.no_grad():
            weight.fill_(value)
        ema.update()
    assert ema.shadow[0].tolist() == [1.25] * 3  # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 2
    with ema.applied():
        assert weight.tolist() == [1.25] * 3
    assert weight.tolist() == [2.0] * 3
    ema.save(tmp_path)
    other = LoraEMA([torch.nn.Parameter(torch.zeros(3))], decay=0.5)
    other.load(tmp_path)
    assert other.shadow[0].tolist() == [1.25] * 3 and other.num_updates == 2
    with pytest.raises(ValueError, match="without ema_decay"):
        other.load(tmp_path / "elsewhere")


# ---- the loop on the tiny kit -------------------------------------------------------------------
def guarded_config(tmp_path: Path, name: str, **overrides) -> OnlineDPOConfig:
    """Brightness training that the tiny model learns within a few rounds (as the README's guarded run)."""
    values = dict(
        model="tiny",
        dtype="float32",
        reward=BRIGHTNESS,
        budget=16,
        eval_budget=8,
        popsize=8,
        k_elites=2,
        rounds=4,
        prompts_per_round=16,
        epochs_per_round=30,
        train_batch_size=4,
        beta=1.0,
        learning_rate=1e-3,
        lora_rank=8,
        lora_target_modules=FLUX2_ALL_LINEAR_TARGETS,
        eval_every=1,
        max_eval_prompts=8,
        eval_fraction=0.2,
        checkpoint_every=1,
        checkpoints_total_limit=0,
        guard_diversity_seeds=0,
        output_dir=str(tmp_path / name),
        progress=False,
        seed=0,
    )
    values.update(overrides)
    return OnlineDPOConfig(**values)


def lora_of(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / LORA_WEIGHT_NAME))


def same_lora(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_brightness_training_guarded_by_darkness_stops_with_the_last_good_lora(tmp_path, kit_dir):
    """The judge contradicts the reward: as brightness is learned, darkness falls past the tolerance."""
    config = guarded_config(
        tmp_path, "guarded", guard_rewards=DARKNESS, guard_tolerance=0.002, guard_patience=2
    )
    run = OnlineDPOTrainer(config).train()
    rows = rows_of(run)
    report = json.loads((run / "guard" / "report.json").read_text())
    held = {row["round"]: row["guard/held"] for row in rows}
    stopped, kept = report["stopped_at_round"], report["final_lora_round"]
    assert stopped < config.rounds - 1, rows  # it stopped by itself, before the last round
    assert rows[-1]["round"] == stopped and held[stopped] == held[stopped - 1] == 0.0
    assert held[kept] == 1.0 and all(held[r] == 0.0 for r in range(kept + 1, stopped + 1))
    assert any("guard/darkness" in line for line in report["failures"])
    assert rows[-1]["guard/darkness"] < rows[0]["guard/darkness"] * (1 + 0.002)
    final = lora_of(run)
    assert same_lora(final, lora_of(run / "checkpoints" / f"checkpoint-{kept:05d}"))
    assert not same_lora(final, lora_of(run / "checkpoints" / f"checkpoint-{stopped:05d}"))
    # `tscale export` publishes that LoRA as the round it is, and says why.
    from tscale_train.export.adapter import find_adapter

    source = find_adapter(run)
    assert source.round == kept and "a guard stopped the run" in source.label


@pytest.mark.slow
def test_a_run_whose_guards_hold_ends_with_the_unguarded_lora(tmp_path, kit_dir):
    unguarded = OnlineDPOTrainer(guarded_config(tmp_path, "plain", rounds=2)).train()
    guarded = OnlineDPOTrainer(
        guarded_config(
            tmp_path,
            "guarded",
            rounds=2,
            guard_rewards=BRIGHTNESS,
            guard_diversity_seeds=2,
            guard_tolerance=0.9,
            guard_max_drift=10.0,
        )
    ).train()
    rows = rows_of(guarded)
    assert [row["guard/held"] for row in rows] == [1.0, 1.0, 1.0]
    assert {"guard/brightness", "guard/diversity", "guard/brightness_drift"} <= rows[-1].keys()
    assert rows[-1]["guard/brightness"] > rows[0]["guard/brightness"]
    assert not (guarded / "guard" / "report.json").exists()
    assert same_lora(lora_of(guarded), lora_of(unguarded))


@pytest.mark.slow
def test_a_resumed_guarded_run_stops_where_the_uninterrupted_one_does(tmp_path, kit_dir):
    settings = dict(guard_rewards=DARKNESS, guard_tolerance=0.002, guard_patience=2, rounds=4)
    whole = OnlineDPOTrainer(guarded_config(tmp_path, "whole", **settings)).train()
    OnlineDPOTrainer(guarded_config(tmp_path, "sliced", **settings)).train(stop_after_rounds=2)
    sliced = OnlineDPOTrainer(
        guarded_config(tmp_path, "sliced", resume_from_checkpoint="latest", **settings)
    ).train()
    report = json.loads((whole / "guard" / "report.json").read_text())
    assert report == json.loads((sliced / "guard" / "report.json").read_text())
    assert report["stopped_at_round"] >= 2  # the sliced run stopped after its resume, from a replayed streak
    assert [row["guard/held"] for row in rows_of(whole)] == [row["guard/held"] for row in rows_of(sliced)]
    assert same_lora(lora_of(whole), lora_of(sliced))
    # Resumed again (a scheduler relaunching the job), a stopped run stays stopped.
    rows, final = rows_of(whole), lora_of(whole)
    OnlineDPOTrainer(guarded_config(tmp_path, "whole", resume_from_checkpoint="latest", **settings)).train()
    assert rows_of(whole) == rows and same_lora(lora_of(whole), final)


@pytest.mark.slow
def test_ema_is_what_eval_and_export_use_and_resumes(tmp_path, kit_dir):
    settings = dict(rounds=2, ema_decay=0.5, epochs_per_round=4)
    whole = OnlineDPOTrainer(guarded_config(tmp_path, "whole", **settings)).train()
    OnlineDPOTrainer(guarded_config(tmp_path, "sliced", **settings)).train(stop_after_rounds=1)
    sliced = OnlineDPOTrainer(
        guarded_config(tmp_path, "sliced", resume_from_checkpoint="latest", **settings)
    ).train()
    assert same_lora(lora_of(whole), lora_of(sliced))
    last = whole / "checkpoints" / "checkpoint-00001"
    trained, final = lora_of(last), lora_of(whole)
    assert not same_lora(final, trained)  # the final LoRA is the average, not the trained weights
    average = load_file(str(last / "ema.safetensors"))

    def norms(tensors) -> torch.Tensor:
        return torch.tensor(sorted(float(tensor.double().norm()) for tensor in tensors))

    torch.testing.assert_close(
        norms(average.values()), norms(final.values())
    )  # the checkpoint's average, exported


@pytest.mark.slow
def test_a_weighted_eval_reward_is_standardised_on_the_eval_before_training(tmp_path, kit_dir):
    config = guarded_config(
        tmp_path,
        "weighted",
        rounds=1,
        reward=f"{BRIGHTNESS}:1,rewards.synthetic:redness:0.5",
        epochs_per_round=2,
    )
    rows = rows_of(OnlineDPOTrainer(config).train())
    before, after = rows
    assert before["eval/reward_budget0"] == pytest.approx(0.0, abs=1e-9)  # standardised on these very images
    assert {
        "eval/reward_budget0/brightness",
        "eval/reward_budget0/redness",
        "eval/reward_ses",
    } <= before.keys()
    # Later evals: each reward's raw mean against round -1's mean and spread, weighted.
    expected = sum(
        weight
        * (after[f"eval/reward_budget0/{name}"] - before[f"eval/reward_budget0/{name}"])
        / before[f"eval/reward_budget0_std/{name}"]
        for name, weight in (("brightness", 1.0), ("redness", 0.5))
    )
    assert after["eval/reward_budget0"] == pytest.approx(expected, rel=1e-6)
    assert after["eval/reward_budget0"] != pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow
def test_resuming_from_an_older_checkpoint_never_keeps_a_later_rounds_lora(tmp_path, kit_dir):
    """guard/last_good written after the checkpoint (in rounds the resume drops) is replaced by the checkpoint's."""
    settings = dict(
        guard_rewards=BRIGHTNESS, rounds=2, epochs_per_round=4
    )  # an agreeing judge: every eval holds
    run = OnlineDPOTrainer(guarded_config(tmp_path, "run", **settings)).train()
    assert json.loads((run / "guard" / "last_good" / "round.json").read_text()) == {"round": 1}
    first = run / "checkpoints" / "checkpoint-00000"
    OnlineDPOTrainer(guarded_config(tmp_path, "run", resume_from_checkpoint=str(first), **settings)).train(
        stop_after_rounds=0
    )
    assert json.loads((run / "guard" / "last_good" / "round.json").read_text()) == {"round": 0}
    assert same_lora(lora_of(run / "guard" / "last_good"), lora_of(first))
