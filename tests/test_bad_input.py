"""Bad input to every command-line entry point, as one table: `tscale ses`, `tscale train` (the recipe),
`tscale export` and `tscale plan`.

Every row must end in exit code 2 and exactly one line on stderr, no traceback, that names the setting as
the user typed it and says what to do; no model or reward is loaded (the input alone shows the problem),
and nothing already on disk (an earlier image, a run's output_dir, an earlier export) is changed or added
to. The few bad inputs that only a loaded model can show (a reward that raises or returns no finite score)
are in `test_errors.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tscale_train import cli

REPO = Path(__file__).resolve().parents[1]
# An error gives a fix: after "; " (or ": " for a setting's own message), advice a user can act on.
FIX = re.compile(
    r"\b(pass|set|use|drop|add|give|write|raise|lower|remove|pick|copy|save|fix|rename|make|export|train|"
    r"leave|check|delete|name|see|convert)\b|\be\.g\."
)


@dataclass
class Row:
    argv: list[str]
    expected: str  # a substring of the error: the setting, as the user typed it
    files: dict[str, str | bytes] = field(default_factory=dict)  # extra files to create first, under {tmp}
    setup: Callable | None = None  # called with monkeypatch, for what a file cannot say (e.g. no Hub token)

    @property
    def id(self) -> str:
        """The command and what the row adds to its usual arguments."""
        text = " ".join(self.argv)
        for common in (
            " --model tiny --no-progress",
            " --prompt a cat --out {tmp}/existing.png",
            " --model tiny --output_dir {tmp}/run --no_progress",
            " {tmp}/runs/cat --repo-id me/cat --dry-run --out {tmp}/export",
            " --model tiny --no-suggest",
            "{tmp}/",
        ):
            text = text.replace(common, "" if common != "{tmp}/" else "")
        return text


def ses(
    *args: str, base: tuple[str, ...] = ("--prompt", "a cat", "--out", "{tmp}/existing.png")
) -> list[str]:
    return ["ses", "--model", "tiny", "--no-progress", *base, *args]


def ses_file(*args: str, prompts: str = "{tmp}/prompts.txt") -> list[str]:
    return ses(*args, base=("--prompts-file", prompts, "--out", "{tmp}/outdir"))


def train(*args: str) -> list[str]:
    return ["train", "--model", "tiny", "--output_dir", "{tmp}/run", "--no_progress", *args]


def export(*args: str, run: str = "{tmp}/runs/cat") -> list[str]:
    return ["export", run, "--repo-id", "me/cat", "--dry-run", "--out", "{tmp}/export", *args]


def plan(*args: str) -> list[str]:
    return ["plan", "--model", "tiny", "--no-suggest", *args]


def no_token(monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


ROWS = [
    # ---- tscale ses: the search's numbers ----
    Row(ses("--budget", "0"), "--budget must be >= 1"),
    Row(ses("--budget", "-5"), "--budget"),
    Row(ses("--budget", "1e12"), "--budget takes a whole number"),
    Row(ses("--budget", "1000000000000"), "--budget 1000000000000 is above"),
    Row(ses("--budget", "2.5"), "--budget"),
    Row(ses("--budget"), "--budget needs a value"),
    Row(ses("--popsize", "0"), "--popsize"),
    Row(ses("--budget", "5", "--popsize", "8"), "popsize (8) is larger than budget (5); lower --popsize"),
    Row(ses("--k-elites", "0"), "--k-elites"),
    Row(ses("--popsize", "-2"), "--popsize"),
    Row(ses("--k-elites", "100000"), "--k-elites 100000 is above"),
    Row(ses("--level", "0"), "--level"),
    Row(ses("--preview-steps", "0"), "--preview-steps"),
    Row(ses("--preview-steps", "100000000"), "--preview-steps 100000000 is above"),
    Row(ses("--steps", "0"), "--steps"),
    Row(ses("--steps", "1000000"), "--steps 1000000 is above"),
    Row(ses("--eval-batch-size", "0"), "--eval-batch-size"),
    Row(ses("--eval-batch-size", "1000000000"), "--eval-batch-size 1000000000 is above"),
    Row(ses("--eval-batch-size", "x"), "--eval-batch-size takes a whole number"),
    Row(ses("--reward-batch-size", "0"), "--reward-batch-size"),
    Row(ses("--search-group-size", "0"), "--search-group-size"),
    Row(ses("--search", "cmaes"), "--search 'cmaes'"),
    Row(ses("--wavelet", "nope"), "wavelet 'nope'"),
    Row(ses("--seed", "-1"), "--seed"),
    Row(ses("--seed", str(2**64)), "--seed"),
    # ---- tscale ses: the image ----
    Row(ses("--height", "65536"), "--height 65536 is above"),
    Row(ses("--width", "65536", "--height", "64"), "--width 65536 is above"),
    Row(ses("--height", "72"), "--height 72 is not a positive multiple of 16"),
    Row(ses("--width", "0"), "--width 0"),
    Row(ses("--height", "abc"), "--height takes a whole number"),
    Row(ses("--guidance-scale", "nan"), "--guidance-scale"),
    Row(ses("--guidance-scale", "inf"), "--guidance-scale"),
    Row(ses("--guidance-scale", "-1"), "--guidance-scale"),
    Row(ses("--dtype", "int8"), "--dtype 'int8'"),
    Row(ses("--device", "nonsense"), "--device"),
    Row(
        ses("--device", "cuda:0") if not torch.cuda.is_available() else ses("--device", "cuda:4096"),
        "--device",
    ),
    # ---- tscale ses: model, LoRA ----
    Row(ses("--model", "no-such-model"), "--model 'no-such-model' is an unknown model"),
    Row(ses("--model", "./missing/dir"), "--model path 'missing/dir' does not exist"),
    Row(ses("--model", "{tmp}/notapipe"), "--model"),
    Row(ses("--model", ""), "--model is empty"),
    Row(ses("--lora", "{tmp}/trunc"), "--lora file"),
    Row(ses("--lora", "{tmp}/trunc/pytorch_lora_weights.safetensors"), "is truncated"),
    Row(ses("--lora", "{tmp}/garbage.safetensors"), "--lora file"),
    Row(ses("--lora", "{tmp}/lora.bin"), "--lora file"),
    Row(ses("--lora", "./no/lora"), "--lora './no/lora' not found"),
    Row(ses("--lora", "{tmp}/empty_lora"), "--lora directory"),
    Row(ses("--lora", "{tmp}/lora", "--lora-scale", "nan"), "--lora-scale"),
    Row(ses("--lora", "{tmp}/lora", "--lora-scale", "inf"), "--lora-scale"),
    Row(ses("--lora-scale", "0.5"), "--lora-scale 0.5 has no LoRA"),
    # ---- tscale ses: reward ----
    Row(ses("--reward", "nonsense"), "--reward: unknown reward"),
    Row(ses("--reward", "os:getcwd"), "'os:getcwd' is not a reward"),
    Row(ses("--reward", "no_such_module:score"), "--reward: cannot import module"),
    Row(ses("--reward", "pickscore:0"), "--reward"),
    Row(ses("--reward", "pickscore:1,,clip:1"), "--reward"),
    Row(
        ses("--reward", "clip", "--reward-arg", "model_nam=ViT-B-32"),
        "--reward-arg: reward 'clip' takes no argument 'model_nam'",
    ),
    Row(ses("--reward-arg", "noequals"), "--reward-arg 'noequals'"),
    Row(ses("--reward", "pickscore:1,clip:1", "--reward-arg", "model_name=x"), "--reward-arg"),
    # ---- tscale ses: prompts and outputs ----
    Row(
        ses(base=("--prompt", "   ", "--out", "{tmp}/existing.png")),
        "the prompt is empty; pass non-empty text with --prompt",
    ),
    Row(ses(base=("--out", "{tmp}/existing.png")), "--prompt"),
    Row(ses("--prompts-file", "{tmp}/prompts.txt"), "--prompt"),
    Row(ses(base=("--prompt", "a cat")), "--out"),
    Row(ses(base=("--prompt", "a cat", "--out", "{tmp}/image.txt")), "--out"),
    Row(ses(base=("--prompt", "a cat", "--out", "{tmp}/outdir")), "--out"),
    Row(ses(base=("--prompt", "a cat", "--out", "{tmp}/blocker/cat.png")), "cannot be written"),
    Row(
        ses(base=("--prompts-file", "{tmp}/prompts.txt", "--out", "{tmp}/existing.png")),
        "is an existing file",
    ),
    Row(ses(base=("--prompts-file", "{tmp}/prompts.txt", "--out", "{tmp}/blocker")), "--out"),
    Row(ses_file(prompts="{tmp}/missing.txt"), "--prompts-file file '{tmp}/missing.txt' does not exist"),
    Row(ses_file(prompts="{tmp}/latin1.txt"), "{tmp}/latin1.txt' is not UTF-8"),
    Row(ses_file(prompts="{tmp}/rows.jsonl"), "--prompt_column"),
    Row(ses_file(prompts="{tmp}/list.jsonl"), "not an object"),
    Row(ses_file(prompts="{tmp}/bad.jsonl"), "--prompts-file file"),
    Row(ses_file(prompts="{tmp}/empty.txt"), "--prompts-file"),
    Row(ses_file(prompts="{tmp}/notes.md"), "--prompts-file file"),
    Row(ses_file(prompts="{tmp}/outdir"), "--prompts-file"),
    Row(ses("--compare", "random,bogus"), "--compare 'random,bogus'"),
    Row(ses("--compare", "random,random"), "--compare"),
    Row(ses("--compare", "random,ses", "--save-trace"), "--save-trace has no effect with --compare"),
    Row(ses("--save-trace", "maybe"), "--save-trace takes true or false"),
    # ---- tscale ses: flags and --config ----
    Row(ses("--budgett", "3"), "did you mean --budget"),
    Row(ses("--config", "{tmp}/a.yaml", "--config", "{tmp}/b.yaml"), "--config is given 2 times"),
    Row(ses("--config={tmp}/a.yaml", "--config", "{tmp}/b.yaml"), "--config is given 2 times"),
    Row(ses("--conf", "{tmp}/a.yaml"), "--config"),
    Row(ses("--config", "{tmp}/missing.yaml"), "--config file"),
    Row(ses("--config"), "--config needs a YAML file"),
    Row(ses("--config", "{tmp}/typo.yaml"), "did you mean budget for budgett"),
    Row(ses("--config", "{tmp}/float_budget.yaml"), "budget must be int"),
    Row(ses("--config", "{tmp}/string.yaml"), "--config"),
    Row(ses("--config", "{tmp}/broken.yaml"), "--config"),
    # ---- tscale train (the recipe's loop): floats that must be finite and in range ----
    Row(train("--beta", "nan"), "--beta must be > 0 and finite"),
    Row(train("--beta", "inf"), "--beta"),
    Row(train("--beta", "0"), "--beta must be > 0"),
    Row(train("--learning_rate=-1e-4"), "--learning_rate must be > 0"),
    Row(train("--learning_rate", "-1e-4"), "--learning_rate needs a value"),
    Row(train("--learning_rate", "nan"), "--learning_rate"),
    Row(train("--adam_weight_decay", "-0.1"), "--adam_weight_decay"),
    Row(train("--max_grad_norm", "-1"), "--max_grad_norm"),
    Row(train("--max_grad_norm", "nan"), "--max_grad_norm"),
    Row(train("--lora_dropout", "1.5"), "--lora_dropout"),
    Row(train("--lora_dropout", "nan"), "--lora_dropout"),
    Row(train("--lora_alpha", "0"), "--lora_alpha"),
    Row(train("--logit_std", "0"), "--logit_std"),
    Row(train("--logit_mean", "inf"), "--logit_mean"),
    Row(train("--min_margin", "nan"), "--min_margin"),
    Row(train("--min_margin", "-0.1"), "--min_margin"),
    Row(train("--eval_fraction", "1.0"), "--eval_fraction"),
    Row(train("--eval_fraction", "nan"), "--eval_fraction"),
    Row(train("--guard_tolerance", "1.5"), "--guard_tolerance"),
    Row(train("--guard_max_drift", "inf"), "--guard_max_drift"),
    Row(train("--ema_decay", "1.0"), "--ema_decay"),
    Row(train("--guidance_scale", "nan"), "--guidance_scale"),
    # ---- tscale train: integers and their bounds ----
    Row(train("--rounds", "0"), "--rounds"),
    Row(train("--rounds", "2.5"), "--rounds takes a whole number"),
    Row(train("--lora_rank", "0"), "--lora_rank"),
    Row(train("--lora_rank", "100000"), "--lora_rank 100000 is above"),
    Row(train("--prompts_per_round", "1000000000000"), "--prompts_per_round 1000000000000 is above"),
    Row(train("--train_batch_size", "1000000"), "--train_batch_size 1000000 is above"),
    Row(train("--preview_size", "100000"), "--preview_size 100000 is above"),
    Row(train("--guard_diversity_seeds", "100000"), "--guard_diversity_seeds 100000 is above"),
    Row(train("--budget", "1000000000000"), "--budget"),
    Row(train("--eval_budget", "2"), "--eval_budget"),
    Row(train("--eval_budget", "1000000"), "--eval_budget"),
    Row(train("--pairs_per_prompt", "0"), "--pairs_per_prompt"),
    Row(train("--checkpoints_total_limit", "-1"), "--checkpoints_total_limit"),
    Row(train("--seed", "-3"), "--seed"),
    Row(train("--height", "65536"), "--height 65536 is above"),
    # ---- tscale train: choices and combinations that would do nothing or contradict ----
    Row(train("--pairing", "nonsense"), "--pairing 'nonsense'"),
    Row(train("--lr_scheduler", "nope"), "--lr_scheduler 'nope'"),
    Row(train("--lr_scheduler", "piecewise_constant"), "--lr_scheduler 'piecewise_constant'"),
    Row(train("--report_to", "mlflow"), "--report_to 'mlflow'"),
    Row(train("--pairs_per_prompt", "2"), "--pairs_per_prompt 2 is only used by --pairing top_k_vs_bottom_k"),
    Row(
        train("--pairing", "top_k_vs_bottom_k", "--pairs_per_prompt", "15"),
        "--pairs_per_prompt 15 needs 30 candidates",
    ),
    Row(train("--lr_scheduler", "constant", "--lr_warmup_steps", "10"), "--lr_warmup_steps 10 has no effect"),
    Row(train("--eval_every", "2", "--eval_ses_every", "3"), "--eval_ses_every 3"),
    Row(train("--eval_every", "0", "--eval_ses_every", "2"), "--eval_ses_every 2"),
    Row(train("--hub_model_id", "me/cat"), "--hub_model_id is only used with --push_to_hub"),
    Row(train("--push_to_hub"), "--push_to_hub needs --hub_model_id"),
    Row(train("--resume_from_checkpoint", "latest", "--overwrite_output_dir"), "--overwrite_output_dir"),
    Row(train("--guard_rewards", "clip,clip"), "--guard_rewards"),
    Row(train("--guard_rewards", "clip", "--eval_every", "0"), "--eval_every"),
    Row(train("--eval_reward", "nonsense"), "--eval_reward: unknown reward"),
    Row(train("--gradient_checkpointing", "maybe"), "--gradient_checkpointing takes true or false"),
    # ---- tscale train: prompts (read before any model loads) ----
    Row(train("--prompts", "{tmp}/one.txt"), "--eval_prompts"),
    Row(train("--prompts", "{tmp}/missing.txt"), "--prompts file"),
    Row(train("--prompts", "{tmp}/empty.txt"), "--prompts"),
    Row(
        train("--prompts", "{tmp}/prompts.txt", "--eval_prompts", "{tmp}/missing.txt", "--eval_every", "0"),
        "--eval_prompts file",
    ),
    # ---- tscale train: --config ----
    Row(train("--config", "{tmp}/a.yaml", "--config", "{tmp}/b.yaml"), "--config is given 2 times"),
    Row(train("--config", "{tmp}/float_rounds.yaml"), "rounds must be int, got 2.5"),
    Row(train("--config", "{tmp}/list_checkpoint.yaml"), "checkpoint_every must be int, got [1]"),
    Row(train("--config", "{tmp}/string_bool.yaml"), "gradient_checkpointing must be bool"),
    Row(train("--config", "{tmp}/string.yaml"), "must be a YAML mapping"),
    Row(train("--config", "{tmp}/list.yaml"), "must be a YAML mapping"),
    Row(train("--config", "{tmp}/typo.yaml"), "unknown fields"),
    Row(train("--config", "{tmp}/nan_beta.yaml"), "--beta"),
    # ---- tscale export ----
    Row(["export", "--repo-id", "me/cat", "--dry-run"], "RUN_DIR"),
    Row(export(run="{tmp}/runs/missing"), "RUN"),
    Row(["export", "{tmp}/runs/cat", "--dry-run"], "--repo-id"),
    Row(export("--repo-id", "klein-cat-dpo"), "--repo-id 'klein-cat-dpo'"),
    Row(export("--repo-id", "me/bad name"), "--repo-id 'me/bad name'"),
    Row(export("--include-pairs", "pairs"), "--include-pairs 'pairs'"),
    Row(export("--include-pairs", "me/pairs"), "--include-pairs 'me/pairs'"),
    Row(export("--format", "ckpt"), "--format 'ckpt'"),
    Row(export("--out", "{tmp}/blocker"), "--out"),
    Row(export(run="{tmp}/runs/truncated"), "is truncated"),
    Row(export(run="{tmp}/runs/empty"), "RUN"),
    Row(export("--run", "{tmp}/runs/truncated"), "RUN is given twice"),
    Row(export("{tmp}/runs/truncated"), "unknown setting"),
    Row(export("--repo", "me/x"), "--repo"),
    Row(export("--private", "maybe"), "--private takes true or false"),
    Row(export("--config", "{tmp}/a.yaml", "--config", "{tmp}/b.yaml"), "--config is given 2 times"),
    Row(
        ["export", "{tmp}/runs/cat", "--repo-id", "me/cat", "--out", "{tmp}/export"],
        "--token",
        setup=no_token,
    ),
    # ---- tscale plan ----
    Row(plan("--gpu-memory", "nan"), "--gpu-memory"),
    Row(plan("--gpu-memory", "inf"), "--gpu-memory"),
    Row(plan("--gpu-memory", "0"), "--gpu-memory"),
    Row(plan("--gpu-memory", "abc"), "--gpu-memory takes a number"),
    Row(plan("--num-processes", "0"), "--num-processes"),
    Row(plan("--num-processes", "x"), "--num-processes takes a whole number"),
    Row(plan("--budget", "0"), "--budget"),
    Row(plan("--height", "65536"), "--height 65536 is above"),
    Row(plan("--beta", "nan"), "--beta"),
    Row(plan("--lora_rank", "1000000"), "--lora_rank"),
    Row(plan("--learning_rate", "-1"), "--learning_rate"),
    Row(plan("--model", "./missing/dir"), "--model path"),
    Row(plan("--config", "{tmp}/a.yaml", "--config", "{tmp}/b.yaml"), "--config is given 2 times"),
    Row(plan("--ses", "--budget", "1e12"), "--budget takes a whole number"),
    Row(plan("--ses", "--eval-batch-size", "0"), "--eval-batch-size"),
    Row(plan("--ses", "--prompt", "a cat"), "unknown setting"),
]


def _safetensors(path: Path) -> bytes:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "transformer.x.lora_A.weight": torch.zeros(4, 256),
            "transformer.x.lora_B.weight": torch.zeros(256, 4),
        },
        str(path),
    )
    return path.read_bytes()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """The files the rows name, and the outputs of earlier runs that no failing command may touch."""
    monkeypatch.chdir(tmp_path)
    lora = _safetensors(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    files: dict[str, str | bytes] = {
        "existing.png": b"an earlier search's image",
        "outdir/0000.png": b"an earlier prompts file's image",
        "prompts.txt": "a cat\na dog\na red cube\n",
        "one.txt": "a single prompt\n",
        "empty.txt": "\n  \n",
        "latin1.txt": "caf\xe9 au lait\n".encode("latin-1"),
        "rows.jsonl": '{"text": "a cat"}\n',
        "list.jsonl": '["a cat"]\n',
        "bad.jsonl": "{not json\n",
        "notes.md": "a cat\n",
        "blocker": "a file, not a directory",
        "lora.bin": b"pickles are never loaded",
        "garbage.safetensors": b"\xff" * 64,
        "trunc/pytorch_lora_weights.safetensors": lora[: len(lora) // 2],
        "empty_lora/README.md": "no weights here",
        "notapipe/README.md": "no model_index.json here",
        "run/metrics.jsonl": '{"round": 0, "eval/reward_budget0": 0.5}\n',
        "run/config.yaml": "model: tiny\n",
        "runs/cat/config.yaml": "model: tiny\nrounds: 1\n",
        "runs/cat/pytorch_lora_weights.safetensors": lora,
        "runs/cat/metrics.jsonl": '{"round": 0}\n',
        "runs/truncated/config.yaml": "model: tiny\n",
        "runs/truncated/pytorch_lora_weights.safetensors": lora[: len(lora) // 2],
        "runs/empty/notes.txt": "no adapter here",
        "export/model/pytorch_lora_weights.safetensors": lora,
        "export/model/README.md": "an earlier export's card",
        "a.yaml": "model: tiny\nbudget: 6\n",
        "b.yaml": "model: tiny\nbudget: 8\n",
        "typo.yaml": "model: tiny\nbudgett: 6\n",
        "float_budget.yaml": "model: tiny\nbudget: 2.5\n",
        "float_rounds.yaml": "model: tiny\nrounds: 2.5\n",
        "list_checkpoint.yaml": "model: tiny\ncheckpoint_every: [1]\n",
        "string_bool.yaml": "model: tiny\ngradient_checkpointing: 'yes'\n",
        "string.yaml": "just a string\n",
        "list.yaml": "- model\n- tiny\n",
        "broken.yaml": "model: [tiny\n",
        "nan_beta.yaml": "model: tiny\nbeta: .nan\n",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return tmp_path


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model or reward load fails the test: these inputs must be refused before that."""
    import rewards.registry
    import tscale_train.loading
    import tscale_train.trainer

    def refuse(*_, **__):
        pytest.fail("a model or reward was loaded before the input was checked")

    for module, names in (
        (tscale_train.loading, ("load_pipeline", "load_lora", "load_reward_for")),
        (tscale_train.trainer, ("load_pipeline", "load_reward_for")),
        (rewards.registry, ("load_reward", "load_reward_spec")),
    ):
        for name in names:
            monkeypatch.setattr(module, name, refuse)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under `root`."""
    return {
        str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
    }


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def gives_a_fix(message: str) -> bool:
    """The error says what to do: advice after its '; ', or in the one sentence ("pass exactly one of ...")."""
    advice = message.split("; ", 1)[1] if "; " in message else message
    return bool(FIX.search(advice))


def test_the_table_covers_every_entry_point_with_at_least_80_rows():
    commands = {row.argv[0] for row in ROWS}
    assert commands == {"ses", "train", "export", "plan"}
    assert len(ROWS) >= 80
    assert len({row.id for row in ROWS}) == len(ROWS), "two rows test the same input"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_line_naming_the_setting_and_the_fix(
    row: Row, workspace: Path, capsys, monkeypatch, no_model_loads
):
    for name, content in row.files.items():
        (workspace / name).write_text(content) if isinstance(content, str) else (
            workspace / name
        ).write_bytes(content)
    if row.setup:
        row.setup(monkeypatch)
    before = snapshot(workspace)
    argv = [arg.replace("{tmp}", str(workspace)) for arg in row.argv]
    assert cli.main(argv) == 2
    error = one_line_error(capsys)
    prefix = f"tscale {argv[0]}: error: "
    assert error.startswith(prefix), error
    message = error.removeprefix(prefix)
    assert row.expected.replace("{tmp}", str(workspace)) in message, message
    assert gives_a_fix(message), f"no fix in: {message}"
    assert snapshot(workspace) == before, "a failing command changed what was already written"


@pytest.mark.slow
def test_the_recipe_reports_bad_input_in_one_line_with_exit_code_2(tmp_path):
    """The recipe itself, as `accelerate launch` runs it: a real process, exit code 2, one line, before any model."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes/flux2_klein_dpo.py"),
            "--model",
            "tiny",
            "--pairing",
            "nonsense",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tscale train: error: --pairing 'nonsense' is not one of")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", ["ses", "train", "export", "plan"])
def test_every_command_prints_its_help(command, capsys):
    """Before: `tscale train --help` ended in "unsupported format character" (a "5%" in a help text)."""
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: tscale {command}" in capsys.readouterr().out


def test_export_help_shows_the_run_argument(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert "RUN" in usage.split("options:")[0] and "positional arguments" in usage


def test_ses_takes_a_training_yaml_and_says_what_it_ignores(capsys):
    """One settings vocabulary: the model and search settings of a training YAML apply to `tscale ses`."""
    model, search, ses_args = cli.parse_ses_args(
        [
            "--config",
            str(REPO / "recipes/configs/tiny.yaml"),
            "--prompt",
            "a cat",
            "--out",
            "cat.png",
            "--budget",
            "8",
        ]
    )
    assert (model.model, search.reward, search.popsize, search.k_elites, search.budget) == (
        "tiny",
        "rewards.synthetic:brightness",
        8,
        2,
        8,
    )
    (note,) = capsys.readouterr().err.strip().splitlines()
    assert note.startswith("tscale ses: note: ignoring")
    ignored = note.split(": ")[-1].split(", ")
    assert {"beta", "rounds", "eval_budget"} <= set(ignored) and not {"budget", "popsize", "model"} & set(
        ignored
    )


def test_the_export_run_is_given_as_run_or_positionally(workspace):
    from tscale_train.config import parse_args
    from tscale_train.export.run import RUN_HELP, ExportArguments

    run = str(workspace / "runs/cat")
    for argv in (
        [run, "--repo-id", "me/cat", "--dry-run"],
        ["--repo-id", "me/cat", "--dry-run", run],
        ["--run", run, "--repo-id", "me/cat", "--dry-run"],
    ):
        (args,) = parse_args([ExportArguments], argv, positional=("run", RUN_HELP))
        assert args.run == run and args.repo_id == "me/cat"


def test_the_prompt_column_the_error_names_reads_the_file(workspace):
    from tscale_train.config import SESArguments

    rows = str(workspace / "rows.jsonl")
    assert SESArguments(prompts_file=rows, prompt_column="text", out=str(workspace / "o")).load_prompts() == [
        "a cat"
    ]


def test_flag_spelling_is_kept_in_errors():
    from tscale_train.config import ModelConfig, SearchConfig, SESArguments, parse_args

    for spelling in ("--eval-batch-size", "--eval_batch_size"):
        with pytest.raises(ValueError, match=f"{spelling} must be >= 1"):
            parse_args(
                [ModelConfig, SearchConfig, SESArguments], ["--prompt", "a", "--out", "a.png", spelling, "0"]
            )
