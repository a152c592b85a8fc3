"""A run SIGKILLed anywhere resumes (`resume_from_checkpoint=latest`) to what an uninterrupted run makes.

tests/scripts/train_with_fault.py kills its own process with SIGKILL (no cleanup of any kind) at one
point of one round: during the pair search, during DPO, while a pair shard is staged but not yet
renamed in, and while a checkpoint has its LoRA but not yet its `trainer_state.json`. The run is
then resumed to the end, and must leave:

- the same final LoRA as an uninterrupted run of the same config,
- each round once in `metrics.jsonl` (-1, 0, 1, ... in order) and once in the pair store
  (one shard per round for this one-process run),
- no temporary file or staging directory anywhere under `output_dir`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests/scripts/train_with_fault.py"
ROUNDS = 3
CONFIG_ARGS = [
    "--model",
    "tiny",
    "--dtype",
    "float32",
    "--reward",
    "rewards.synthetic:brightness",
    "--budget",
    "4",
    "--popsize",
    "2",
    "--k_elites",
    "2",
    "--prompts_per_round",
    "4",
    "--rounds",
    str(ROUNDS),
    "--checkpoint_every",
    "1",
    "--epochs_per_round",
    "2",
    "--train_batch_size",
    "2",
    "--lora_rank",
    "4",
    "--eval_every",
    "1",
    "--eval_budget",
    "2",
    "--max_eval_prompts",
    "2",
    "--gradient_checkpointing",
    "False",
    "--lora_target_modules",
    "attention",
    "--no_progress",
    "--seed",
    "0",
    "--report_to",
    "none",
]
try:  # The run directory's lock file may stay on purpose; nothing else hidden or temporary may be left.
    from tscale_train.run_dir import LOCK_NAME
except ImportError:
    LOCK_NAME = ".tscale.lock"
ALLOWED_HIDDEN = {LOCK_NAME}
# (point, round): round 1 has a complete checkpoint before it; the checkpoint of round 0 has none.
KILLS = [("search", 1), ("dpo", 1), ("shard", 1), ("checkpoint", 1), ("checkpoint", 0), ("dpo", ROUNDS - 1)]

pytestmark = pytest.mark.slow


def run_script(output_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, str(SCRIPT), *CONFIG_ARGS, "--output_dir", str(output_dir), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def check_ok(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode == 0, f"{what} failed (rc {result.returncode}):\n{result.stderr[-6000:]}"


def metrics_rows(output_dir: Path) -> list[dict]:
    return [
        json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]


def leftovers(output_dir: Path) -> list[str]:
    """Temporary files and staging directories anywhere under `output_dir` (its own lock file aside)."""
    return sorted(
        str(path.relative_to(output_dir))
        for path in output_dir.rglob("*")
        if (path.name.startswith(".") or ".tmp" in path.name) and path.name not in ALLOWED_HIDDEN
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kit_dir) -> Path:
    """The uninterrupted run, once for every kill point."""
    output_dir = tmp_path_factory.mktemp("fault") / "reference"
    check_ok(run_script(output_dir), "the uninterrupted run")
    rows = metrics_rows(output_dir)
    assert [row["round"] for row in rows] == list(range(-1, ROUNDS))
    lora = load_file(str(output_dir / "pytorch_lora_weights.safetensors"))
    assert any(value.abs().max() > 0 for key, value in lora.items() if "lora_B" in key), (
        "training never moved the LoRA"
    )
    assert leftovers(output_dir) == []
    return output_dir


@pytest.mark.parametrize(("point", "kill_round"), KILLS, ids=[f"{point}-round{r}" for point, r in KILLS])
def test_killed_run_resumes_to_the_uninterrupted_result(point, kill_round, reference, tmp_path):
    from tscale_train.pairs import PairStore

    output_dir = tmp_path / "run"
    killed = run_script(output_dir, "--kill-at", point, "--kill-round", str(kill_round))
    assert killed.returncode == -signal.SIGKILL, (
        f"the run was not killed at {point} of round {kill_round} (rc {killed.returncode}):\n{killed.stderr[-6000:]}"
    )
    assert f"FAULT: {point} round {kill_round}:" in killed.stderr
    assert not (output_dir / "pytorch_lora_weights.safetensors").exists()
    # Readers never see a shard that was not renamed in whole.
    stored = PairStore(output_dir / "pairs").rounds()
    assert stored == list(range(kill_round if point in ("search", "shard") else kill_round + 1)), stored

    check_ok(
        run_script(output_dir, "--resume_from_checkpoint", "latest"), f"the resume after a kill at {point}"
    )

    # The final LoRA is the uninterrupted run's.
    expected = load_file(str(reference / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(output_dir / "pytorch_lora_weights.safetensors"))
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(
            resumed[key], expected[key], atol=1e-6, rtol=0, msg=f"{point}: LoRA {key} differs"
        )

    # Every round once in the metrics, in order, with the uninterrupted run's step counts.
    rows = metrics_rows(output_dir)
    assert [row["round"] for row in rows] == list(range(-1, ROUNDS)), (
        f"{point}: metrics.jsonl rounds {[row['round'] for row in rows]}"
    )
    expected_rows = metrics_rows(reference)
    assert [row["global_step"] for row in rows] == [row["global_step"] for row in expected_rows]
    for row, expected_row in zip(rows[1:], expected_rows[1:], strict=True):
        torch.testing.assert_close(
            row["search/best_reward"], expected_row["search/best_reward"], atol=1e-6, rtol=0
        )

    # Every round once in the pair store: one shard per round for one process.
    store = PairStore(output_dir / "pairs")
    assert store.rounds() == list(range(ROUNDS))
    shards = store.shard_paths()
    assert [PairStore._round_of(path) for path in shards] == list(range(ROUNDS)), shards
    assert store.num_pairs() == PairStore(reference / "pairs").num_pairs()

    # Nothing temporary or staged is left behind.
    assert leftovers(output_dir) == [], f"{point}: left behind {leftovers(output_dir)}"
