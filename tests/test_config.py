"""One settings vocabulary: `tscale ses`, `tscale train` and the recipe share the same validated dataclasses."""

import dataclasses
import json
from pathlib import Path

import pytest

from tscale_train import cli
from tscale_train.config import (
    ModelConfig,
    OnlineDPOConfig,
    SearchConfig,
    SESArguments,
    parse_args,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]


def test_ses_and_training_share_one_vocabulary_with_one_set_of_defaults():
    training = {item.name: item for item in dataclasses.fields(OnlineDPOConfig)}
    for kind in (ModelConfig, SearchConfig):
        for item in dataclasses.fields(kind):
            assert item.name in training, item.name
            assert training[item.name].default == item.default, item.name
    assert issubclass(OnlineDPOConfig, ModelConfig) and issubclass(OnlineDPOConfig, SearchConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pairing": "nonsense"}, "pairing 'nonsense' is not one of"),
        ({"height": 72}, "height 72 is not a positive multiple of 16"),
        ({"lr_scheduler": "nope"}, "lr_scheduler 'nope' is not one of"),
        ({"pairs_per_prompt": 0}, "pairs_per_prompt must be >= 1"),
        ({"lora_init": "bogus"}, "lora_init 'bogus' is not one of"),
        ({"sigma_sampling": "sometimes"}, "sigma_sampling 'sometimes' is not one of"),
        ({"dtype": "int8"}, "dtype 'int8' is not one of"),
        ({"wavelet": "nope"}, "wavelet"),
        ({"eval_reward": "nonsense"}, "unknown reward"),
        ({"budget": 4, "popsize": 8}, r"popsize \(8\) is larger than budget \(4\)"),
        ({"budget": 8, "popsize": 4, "eval_budget": 2}, "eval_budget: popsize"),
    ],
)
def test_bad_training_settings_fail_when_parsed(overrides, message):
    with pytest.raises(ValueError, match=message):
        OnlineDPOConfig(model="tiny", **overrides)


def test_checkpoints_total_limit_zero_keeps_every_checkpoint():
    assert OnlineDPOConfig(model="tiny", checkpoints_total_limit=0).checkpoints_total_limit == 0
    with pytest.raises(ValueError, match="checkpoints_total_limit must be >= 0"):
        OnlineDPOConfig(model="tiny", checkpoints_total_limit=-1)


def test_a_small_budget_without_a_popsize_is_one_generation():
    assert OnlineDPOConfig(model="tiny", budget=4).popsize == 4
    assert OnlineDPOConfig(model="tiny", budget=40).popsize == 10
    (_, search, _) = parse_args(
        [ModelConfig, SearchConfig, SESArguments], ["--prompt", "a", "--out", "a.png", "--budget", "3"]
    )
    assert search.popsize == 3 and search.ses_config().popsize == 3


def test_the_same_flag_means_the_same_in_ses_and_train():
    args = [
        "--model",
        "tiny",
        "--budget",
        "6",
        "--eval-batch-size",
        "3",
        "--k_elites",
        "2",
        "--reward",
        "rewards.synthetic:brightness",
    ]
    model, search, _ = cli.parse_ses_args([*args, "--prompt", "a cat", "--out", "cat.png"])
    training = parse_config(args)
    for kind, parsed in ((ModelConfig, model), (SearchConfig, search)):
        for item in dataclasses.fields(kind):
            assert getattr(parsed, item.name) == getattr(training, item.name), item.name


def test_ses_reads_a_yaml_config_too(tmp_path):
    config = tmp_path / "ses.yaml"
    config.write_text("model: tiny\nbudget: 6\nreward: rewards.synthetic:brightness\n")
    model, search, ses = cli.parse_ses_args(
        ["--config", str(config), "--prompt", "a", "--out", "a.png", "--budget", "8"]
    )
    assert model.model == "tiny" and search.budget == 8 and search.reward == "rewards.synthetic:brightness"
    config.write_text("model: tiny\nbudgett: 6\n")
    with pytest.raises(ValueError, match="unknown fields"):
        cli.parse_ses_args(["--config", str(config), "--prompt", "a", "--out", "a.png"])


def test_tscale_train_runs_the_recipe_loop(tmp_path, kit_dir):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--config",
            str(REPO / "recipes/configs/tiny.yaml"),
            "--rounds",
            "1",
            "--budget",
            "4",
            "--popsize",
            "2",
            "--prompts_per_round",
            "2",
            "--epochs_per_round",
            "1",
            "--max_eval_prompts",
            "2",
            "--eval_budget",
            "2",
            "--output_dir",
            str(out),
            "--no_progress",
        ]
    )
    assert code == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == 0 and rows[-1]["train/num_pairs"] == 2


def test_tscale_train_bad_setting_is_a_one_line_error(capsys):
    assert cli.main(["train", "--model", "tiny", "--pairing", "nonsense"]) == 2
    error = capsys.readouterr().err.strip()
    assert "pairing 'nonsense'" in error and len(error.splitlines()) == 1


def test_yaml_values_of_the_right_type_are_read(tmp_path):
    """`1e-4` (no dot) is a string to PyYAML and still a float setting; null is None; `--config=` is the same flag."""
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny\nbeta: 1\nlora_alpha: null\neval_budget: 12\nlearning_rate: 1e-4\n")
    parsed = parse_config(["--config", str(config)])
    assert parsed.beta == 1 and parsed.lora_alpha is None and parsed.eval_budget == 12
    assert parsed.learning_rate == 1e-4
    assert parse_config([f"--config={config}"]).eval_budget == 12


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"beta": float("nan")}, "--beta must be > 0 and finite, got nan"),
        ({"learning_rate": -1e-4}, "--learning_rate must be > 0"),
        ({"lora_dropout": 1.0}, r"--lora_dropout must be in \[0, 1\)"),
        ({"logit_std": 0.0}, "--logit_std must be > 0"),
        ({"max_grad_norm": -1.0}, "--max_grad_norm must be >= 0"),
        ({"min_margin": float("nan")}, "--min_margin"),
        ({"guard_max_drift": float("inf")}, "--guard_max_drift"),
        ({"lr_scheduler": "piecewise_constant"}, "--lr_scheduler 'piecewise_constant' is not one of"),
        ({"prompts_per_round": 10**12}, "--prompts_per_round 1000000000000 is above"),
        ({"budget": 10**12}, "--budget 1000000000000 is above"),
        ({"height": 65536}, "--height 65536 is above"),
    ],
)
def test_non_finite_and_absurd_values_fail_when_parsed(overrides, message):
    with pytest.raises(ValueError, match=message):
        OnlineDPOConfig(model="tiny", **overrides)


def test_the_largest_accepted_values_pass():
    from tscale_train.config import MAX_BUDGET, MAX_RESOLUTION

    config = OnlineDPOConfig(
        model="tiny",
        budget=MAX_BUDGET,
        height=MAX_RESOLUTION,
        width=MAX_RESOLUTION,
        lora_dropout=0.0,
        max_grad_norm=0.0,
        min_margin=0.0,
        seed=2**63 - 1,
    )
    assert config.budget == MAX_BUDGET and config.popsize == 10


def test_a_single_prompt_file_with_eval_on_is_refused_before_any_model(tmp_path):
    """Before: the split held none out and the run trained without a single eval, silently."""
    from tscale_train.evaluation import split_eval_prompts

    one = tmp_path / "one.txt"
    one.write_text("a single prompt\n")
    with pytest.raises(
        ValueError, match="--eval_prompts FILE, raise --eval_fraction .* or set --eval_every 0"
    ):
        split_eval_prompts(["a single prompt"], OnlineDPOConfig(model="tiny", prompts=str(one)))
    for explicit in ({"eval_every": 0}, {"eval_fraction": 0.0}, {"max_eval_prompts": 0}):
        assert split_eval_prompts(["a single prompt"], OnlineDPOConfig(model="tiny", **explicit)) == (
            ["a single prompt"],
            [],
        )
