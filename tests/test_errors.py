"""Every expected error, in `tscale` and in the recipe, is one line on stderr and exit code 2, early."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tscale_train import cli

REPO = Path(__file__).resolve().parents[1]


def all_nan(images, prompts):
    """A broken reward: NaN for every image."""
    return torch.full((images.shape[0],), float("nan"))


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


@pytest.fixture
def no_model_loads(monkeypatch):
    monkeypatch.setattr("tscale_train.loading.load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
        (["--reward", "clip", "--reward-arg", "model_nam=ViT-B-32"], "takes no argument 'model_nam'"),
        (["--reward", "os:getcwd"], "'os:getcwd' is not a reward"),
    ],
)
def test_ses_bad_device_reward_arg_and_non_reward_fail_before_loading(args, message, tmp_path, capsys, no_model_loads):
    assert cli.main(["ses", "--model", "tiny", "--prompt", "a", "--out", str(tmp_path / "a.png"), *args]) == 2
    assert message in one_line_error(capsys)


def test_ses_unwritable_out_fails_before_loading(tmp_path, capsys, no_model_loads):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert cli.main(["ses", "--model", "tiny", "--prompt", "a", "--out", str(blocker / "cat.png")]) == 2
    assert "cannot be written" in one_line_error(capsys)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    assert cli.main(["ses", "--model", "tiny", "--prompts-file", str(prompts), "--out", str(blocker)]) == 2
    assert "is an existing file" in one_line_error(capsys)


def test_ses_with_a_reward_that_is_all_nan_is_an_error(tmp_path, capsys, kit_dir):
    out = tmp_path / "cat.png"
    code = cli.main(["ses", "--model", "tiny", "--prompt", "a cat", "--budget", "4", "--reward", "test_errors:all_nan",
                     "--out", str(out), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "test_errors:all_nan" in error and "no finite score" in error
    assert not out.exists()


def test_offline_hub_ids_are_one_line(tmp_path, capsys, kit_dir):
    assert cli.main(["ses", "--model", "no-such-org/no-such-model", "--prompt", "a", "--out", str(tmp_path / "a.png")]) == 2
    assert "could not load 'no-such-org/no-such-model'" in one_line_error(capsys)
    code = cli.main(["ses", "--model", "tiny", "--lora", "no-such-org/no-such-lora", "--prompt", "a", "--budget", "2",
                     "--out", str(tmp_path / "a.png"), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not fetch LoRA 'no-such-org/no-such-lora'" in error and "does not match" not in error


def test_prompt_files_name_themselves_and_the_real_flag(tmp_path, capsys, no_model_loads):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert cli.main(["ses", "--model", "tiny", "--prompts-file", str(latin), "--out", str(tmp_path / "o")]) == 2
    error = one_line_error(capsys)
    assert str(latin) in error and "UTF-8" in error
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "a cat"}) + "\n")
    assert cli.main(["ses", "--model", "tiny", "--prompts-file", str(rows), "--out", str(tmp_path / "o")]) == 2
    assert "--prompt_column" in one_line_error(capsys)
    from tscale_train.config import SESArguments

    assert SESArguments(prompts_file=str(rows), prompt_column="text", out=str(tmp_path / "o")).load_prompts() == ["a cat"]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("just a string\n", "must be a YAML mapping"),
        ("- model\n- tiny\n", "must be a YAML mapping"),
        ("model: tiny\nrounds: 2.5\n", "rounds must be int, got 2.5"),
        ("model: tiny\ncheckpoint_every: [1]\n", "checkpoint_every must be int, got [1]"),
        ("model: tiny\ngradient_checkpointing: 'yes'\n", "gradient_checkpointing must be bool"),
        ("model: tiny\nbeta: 1\nlora_alpha: null\neval_budget: 12\nlearning_rate: 1e-4\n", None),
    ],
)
def test_yaml_values_are_checked_by_type(yaml_text, message, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    if message is None:
        from tscale_train.config import parse_config

        parsed = parse_config(["--config", str(config)])
        assert parsed.beta == 1 and parsed.lora_alpha is None and parsed.eval_budget == 12
        assert parsed.learning_rate == 1e-4  # PyYAML reads `1e-4` as a string; it is still a float setting
        assert parse_config([f"--config={config}"]).eval_budget == 12  # the `=` form is the same flag
        return
    assert cli.main(["train", "--config", str(config)]) == 2
    assert message in one_line_error(capsys)


def test_the_recipe_reports_bad_input_in_one_line_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes/flux2_klein_dpo.py"), "--model", "tiny", "--pairing", "nonsense"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tscale train: error: pairing 'nonsense'")
