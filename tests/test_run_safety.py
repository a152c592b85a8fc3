"""Real 2-process launches: a checkpoint never runs code, and a run dies with its launcher (issue 21, items 1, 2).

- Every file of a DDP and of a DeepSpeed ZeRO-2 checkpoint, replaced by a pickle whose unpickling would
  write a marker file, is refused with an error naming it, and the marker never appears: checked file by
  file in-process, and by a real resume of a checkpoint planted in every file.
- `kill -9` of the process group of `accelerate launch` (its workers live in sessions of their own) ends
  every worker within seconds; the resume then ends with the uninterrupted run's LoRA.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs" / "cpu"
FAST = [
    "--config",
    str(REPO / "recipes/configs/tiny.yaml"),
    "--no_progress",
    "--budget",
    "8",
    "--popsize",
    "4",
    "--eval_budget",
    "4",
    "--prompts_per_round",
    "8",
    "--max_eval_prompts",
    "4",
    "--checkpoint_every",
    "1",
    "--checkpoints_total_limit",
    "0",
]
pytestmark = pytest.mark.slow


def launch_command(config_file: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        str(REPO / "recipes/flux2_klein_dpo.py"),
        *FAST,
        *args,
    ]


def env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"),
    )


def launch(config_file: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_command(config_file, *args), env=env(), capture_output=True, text=True, timeout=900, cwd=cwd
    )


class Payload:
    """Unpickling it runs `touch MARKER`: what a planted checkpoint file would do to the user."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)


# ---- 1. a checkpoint never runs code -------------------------------------------------------------------

LAUNCHERS = {"ddp": "multi_gpu.yaml", "deepspeed": "deepspeed_zero2.yaml"}


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def trained(request, tmp_path_factory, kit_dir) -> tuple[str, Path]:
    """One round of the recipe under the launcher's CPU twin (bf16 mixed precision, as on the GPU)."""
    if request.param == "deepspeed":
        pytest.importorskip("deepspeed")
    cwd = tmp_path_factory.mktemp(request.param)
    out = cwd / "run"
    # tiny.yaml's `dtype: auto` follows a bf16 DeepSpeed config (it used to be a bf16/float32 traceback).
    dtype = [] if request.param == "deepspeed" else ["--dtype", "bfloat16"]
    result = launch(
        CONFIGS / LAUNCHERS[request.param], *dtype, "--rounds", "1", "--output_dir", str(out), cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, out


def test_deepspeed_bf16_with_float32_weights_is_a_one_line_error(tmp_path, kit_dir):
    pytest.importorskip("deepspeed")
    result = launch(
        CONFIGS / "deepspeed_zero2.yaml",
        "--dtype",
        "float32",
        "--rounds",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("tscale train: error:")]
    assert result.returncode != 0 and errors, result.stderr[-3000:]
    assert "--dtype float32" in errors[0] and "pass --dtype bfloat16 (or auto)" in errors[0]
    assert "Input type (c10::BFloat16)" not in result.stderr


def test_every_file_of_a_checkpoint_planted_with_a_pickle_is_refused_by_name(trained, tmp_path):
    from tscale_train.safe_load import UnreadableCheckpointFile, UnsafeCheckpointError, check_checkpoint_files

    kind, out = trained
    checkpoint = out / "checkpoints" / "checkpoint-00000"
    check_checkpoint_files(checkpoint)  # the run's own checkpoint reads as data
    files = sorted(path.relative_to(checkpoint) for path in checkpoint.rglob("*") if path.is_file())
    expected = {
        "trainer_state.json",
        "pytorch_lora_weights.safetensors",
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    expected |= (
        {"pytorch_model/mp_rank_00_model_states.pt", "latest"} if kind == "deepspeed" else {"optimizer.bin"}
    )
    assert expected <= {str(name) for name in files}, files
    marker = tmp_path / "MARKER"
    for name in files:
        planted = tmp_path / "planted"
        shutil.rmtree(planted, ignore_errors=True)
        shutil.copytree(checkpoint, planted)
        plant(planted / name, marker)
        # A .safetensors name is parsed as safetensors (never unpickled): refused as unreadable; the rest as unsafe.
        with pytest.raises(
            UnreadableCheckpointFile if name.suffix == ".safetensors" else UnsafeCheckpointError
        ) as refused:
            check_checkpoint_files(planted)
        assert str(planted / name) in str(refused.value) and len(str(refused.value).splitlines()) == 1
        assert not marker.exists(), f"unpickling {name} ran its payload"


def test_loaders_are_weights_only_during_a_resume(tmp_path):
    """Inside `weights_only_loading`, DeepSpeed's checkpoint engine (which asks for weights_only=False) refuses too."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from tscale_train.safe_load import UnsafeCheckpointError, weights_only_loading

    marker, planted = tmp_path / "MARKER", tmp_path / "mp_rank_00_model_states.pt"
    plant(planted, marker)
    with weights_only_loading(), pytest.raises(UnsafeCheckpointError, match="mp_rank_00_model_states.pt"):
        TorchCheckpointEngine().load(str(planted), map_location="cpu")
    assert not marker.exists()
    assert torch.load is not None and torch.load.__name__ == "load"  # restored after the block


def test_resuming_a_planted_checkpoint_runs_nothing_and_names_the_file(trained, tmp_path):
    kind, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns(".tscale.*"))
    checkpoint = run / "checkpoints" / "checkpoint-00000"
    marker = tmp_path / "MARKER"
    # Every file but trainer_state.json, which must read for the resume to get as far as loading the state.
    for path in checkpoint.rglob("*"):
        if path.is_file() and path.name != "trainer_state.json":
            plant(path, marker)
    dtype = [] if kind == "deepspeed" else ["--dtype", "bfloat16"]
    result = launch(
        CONFIGS / LAUNCHERS[kind],
        *dtype,
        "--rounds",
        "2",
        "--output_dir",
        str(run),
        "--resume_from_checkpoint",
        "latest",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert not marker.exists(), f"a planted {kind} checkpoint ran code on resume"
    errors = [line for line in result.stderr.splitlines() if line.startswith("tscale train: error:")]
    assert errors and all(
        "holds pickled objects other than tensors and plain data" in line for line in errors
    ), result.stderr[-3000:]
    assert str(checkpoint) in errors[0] and "nothing in it was run" in errors[0]
    assert (run / "metrics.jsonl").read_text() == (
        out / "metrics.jsonl"
    ).read_text()  # nothing else was touched


# ---- 2. a run dies with its launcher ---------------------------------------------------------------------

DEMO = CONFIGS / "demo.yaml"
# About 3.5 s a round on 2 cores: workers left running after the kill would outlive the 10 s allowed.
LOOP = ["--rounds", "6", "--epochs_per_round", "60"]


def processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line holds `text` (the run's output dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(
                    line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")
                )
            except (OSError, StopIteration):
                continue
            if text in cmdline and "zombie" not in state:
                found.append(int(entry.name))
    return found


def test_killing_the_launcher_stops_every_worker_and_the_resume_matches(tmp_path, kit_dir):
    reference = tmp_path / "reference"
    result = launch(DEMO, *LOOP, "--output_dir", str(reference), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "killed"
    log = (tmp_path / "killed.log").open("w")
    launcher = subprocess.Popen(
        launch_command(DEMO, *LOOP, "--output_dir", str(out)),
        env=env(),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    committed = out / "checkpoints" / "checkpoint-00000" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not committed.is_file():
        assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[
            -3000:
        ]
        time.sleep(0.2)
    workers = [pid for pid in processes_naming(str(out)) if pid != launcher.pid]
    assert len(workers) >= 2, workers  # the two ranks
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    stopped_by = time.monotonic() + 10
    while processes_naming(str(out)) and time.monotonic() < stopped_by:
        time.sleep(0.2)
    left = processes_naming(str(out))
    for pid in left:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their launcher by 10 s"
    assert not (out / "pytorch_lora_weights.safetensors").exists(), "the run finished before the kill"
    assert "is gone; stopping this process" in (tmp_path / "killed.log").read_text()

    resumed = launch(
        DEMO, *LOOP, "--output_dir", str(out), "--resume_from_checkpoint", "latest", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected = load_file(str(reference / "pytorch_lora_weights.safetensors"))
    got = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)
