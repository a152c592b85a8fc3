"""Bad input that only a loaded model can show: a reward that raises, or that gives no finite score.

Everything the input alone shows is refused before any model loads; that table is `test_bad_input.py`.
The errors here still end the command with exit code 2 and one line (the last of stderr, after the
loading progress bars), tell exactly what was wrong, and leave what was already written as it was.
"""

import pytest
import torch

from tscale_train import cli


def all_nan(images, prompts):
    """A broken reward: NaN for every image."""
    return torch.full((images.shape[0],), float("nan"))


def all_inf(images, prompts):
    """A broken reward: +inf for every image."""
    return torch.full((images.shape[0],), float("inf"))


def first_inf(images, prompts):
    """Brightness, but +inf for the first image of every call: one bad score among finite ones."""
    scores = images.float().mean(dim=(1, 2, 3))
    scores[0] = float("inf")
    return scores


def tied_and_first_inf(images, prompts):
    """The same score for every image, and +inf for the first of every call: no pair can be made."""
    scores = torch.full((images.shape[0],), 0.5)
    scores[0] = float("inf")
    return scores


def raises(images, prompts):
    raise RuntimeError("the reward server is down")


def last_error_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error, error
    return error.splitlines()[-1]


def ses(*args: str) -> list[str]:
    return [
        "ses",
        "--model",
        "tiny",
        "--prompt",
        "a cat",
        "--budget",
        "4",
        "--popsize",
        "2",
        "--no-progress",
        *args,
    ]


def test_ses_with_a_reward_that_is_all_nan_is_an_error(tmp_path, capsys, kit_dir):
    out = tmp_path / "cat.png"
    assert cli.main(ses("--reward", "test_errors:all_nan", "--out", str(out))) == 2
    error = last_error_line(capsys)
    assert "test_errors:all_nan" in error and "no finite score" in error and "4 NaN of 4 candidates" in error
    assert not out.exists()


def test_a_reward_that_is_all_infinite_says_infinite_not_nan(tmp_path, capsys, kit_dir):
    """Before: "all 4 candidates NaN or infinite". Now the counts, by kind."""
    out = tmp_path / "cat.png"
    assert cli.main(ses("--reward", "test_errors:all_inf", "--out", str(out))) == 2
    error = last_error_line(capsys)
    assert "no finite score for 'a cat': 4 +inf of 4 candidates" in error and "NaN" not in error
    assert not out.exists()


def test_one_infinite_score_among_finite_ones_is_skipped_and_counted(tmp_path, kit_dir):
    """Before: the +inf candidate won the search, and the run ended with "all 4 candidates NaN or infinite"."""
    import json

    out = tmp_path / "cat.png"
    with pytest.warns(UserWarning, match=r"no finite score for 2 of 4 candidates \(2 \+inf\)"):
        code = cli.main(ses("--reward", "test_errors:first_inf", "--out", str(out), "--save-trace"))
    assert code == 0 and out.is_file()
    trace = json.loads((tmp_path / "cat_trace.json").read_text())
    assert trace["best_score"] is not None and trace["best_score"] < 1.0  # a brightness, not the +inf


def test_a_reward_that_raises_is_one_line_naming_it_and_where(tmp_path, capsys, kit_dir):
    """Before: a traceback out of the search, exit code 1."""
    out = tmp_path / "cat.png"
    out.write_bytes(b"an earlier image")
    assert cli.main(ses("--reward", "test_errors:raises", "--out", str(out))) == 2
    error = last_error_line(capsys)
    assert error.startswith(
        "tscale ses: error: reward 'test_errors:raises' raised RuntimeError: the reward server is down"
    )
    assert "test_errors.py:" in error and "fix the reward" in error
    assert out.read_bytes() == b"an earlier image"


def test_training_without_a_usable_pair_says_how_many_scores_were_what(tmp_path, capsys, kit_dir):
    """Before: "(all scores NaN or tied)", for scores that were finite and tied but for some +inf."""
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--model",
            "tiny",
            "--dtype",
            "float32",
            "--reward",
            "test_errors:tied_and_first_inf",
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
            "--eval_every",
            "0",
            "--lora_rank",
            "2",
            "--gradient_checkpointing",
            "false",
            "--output_dir",
            str(out),
            "--no_progress",
        ]
    )
    assert code == 2
    error = last_error_line(capsys)
    assert "round 0: the reward 'test_errors:tied_and_first_inf' gave no usable pair on any process" in error
    assert "of 8 candidate scores, 6 finite, 2 +inf" in error and "tied" in error and "NaN" not in error
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_offline_hub_ids_are_one_line(tmp_path, capsys, kit_dir):
    assert (
        cli.main(
            ["ses", "--model", "no-such-org/no-such-model", "--prompt", "a", "--out", str(tmp_path / "a.png")]
        )
        == 2
    )
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "could not load 'no-such-org/no-such-model'" in error and "Traceback" not in error
    code = cli.main(
        [
            "ses",
            "--model",
            "tiny",
            "--lora",
            "no-such-org/no-such-lora",
            "--prompt",
            "a",
            "--budget",
            "2",
            "--out",
            str(tmp_path / "a.png"),
            "--no-progress",
        ]
    )
    assert code == 2
    error = last_error_line(capsys)
    assert "could not fetch LoRA 'no-such-org/no-such-lora'" in error and "does not match" not in error
