"""The multi-node configs, run as two "machines" on this host: one `accelerate launch` per machine.

Each machine is its own `accelerate launch --num_machines 2 --machine_rank <r>` with the main
machine's address and port, as on a cluster (recipes/slurm/flux2_klein_dpo.sbatch). One process per
machine (2 in all): two per machine, four processes, is too heavy for the 2-core test machines.
Machine 1 gets its own tiny kit dir (built there by the launch), as a node-local TSCALE_TINY_DIR
would be; the output dir is shared, as it must be on a cluster.

The run is 1 round, then resumed from its checkpoint to 2 rounds, both times as two machines, and
must end with the LoRA of a straight 2-round run on one machine with the same number of processes:
every process has its global rank (pair-store shards, RNG files), the collectives span both
machines, and the checkpoints of both machines resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs" / "cpu"
NUM_MACHINES = 2
NUM_PROCESSES = 2  # in all: one per machine
PROMPTS_PER_ROUND = 8
TIMEOUT = 300
COMMON = [
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
    str(PROMPTS_PER_ROUND),
    "--epochs_per_round",
    "2",
    "--max_eval_prompts",
    "4",
    "--checkpoint_every",
    "1",
    "--dtype",
    "bfloat16",  # both configs are bf16
]
# (two-machine config, the one-machine config with the same distributed type, precision and process count)
CASES = {
    "ddp": ("multi_node.yaml", "multi_gpu.yaml"),
    "deepspeed_zero2": ("multi_node_deepspeed_zero2.yaml", "deepspeed_zero2.yaml"),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return dict(
        os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"), **extra
    )


def _command(config_file: Path, launch_args: list[str], args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        *launch_args,
        str(REPO / "tests/scripts/train_and_dump.py"),
        *COMMON,
        *args,
    ]


def _run_all(commands: list[tuple[list[str], dict[str, str]]], logs: list[Path], cwd: Path) -> None:
    """Start every command at once; all must exit 0 within TIMEOUT, else every one is killed and the logs shown."""
    processes = []
    try:
        for (command, env), log in zip(commands, logs, strict=True):
            with log.open("w") as handle:
                # Own process group: a kill reaches the launcher's workers too.
                processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=cwd,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + TIMEOUT
        while any(process.poll() is None for process in processes):
            if time.monotonic() > deadline or any(process.poll() not in (None, 0) for process in processes):
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    failed = [
        (log, process.returncode)
        for process, log in zip(processes, logs, strict=True)
        if process.returncode != 0
    ]
    if failed:
        tails = "\n".join(f"--- {log.name} (exit {code}):\n{log.read_text()[-3000:]}" for log, code in failed)
        pytest.fail(f"a launch failed or ran past {TIMEOUT}s:\n{tails}")


def launch_machines(config_file: Path, args: list[str], cwd: Path, node_local: list[Path]) -> None:
    """One `accelerate launch` per machine, all on this host; `node_local[r]`: machine r's tiny kit dir."""
    port = free_port()
    commands = []
    for machine_rank in range(NUM_MACHINES):
        launch_args = [
            "--num_machines",
            str(NUM_MACHINES),
            "--num_processes",
            str(NUM_PROCESSES),
            "--machine_rank",
            str(machine_rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
        ]
        env = _env(TSCALE_TINY_DIR=str(node_local[machine_rank]))
        commands.append((_command(config_file, launch_args, args), env))
    logs = [cwd / f"machine_{rank}.log" for rank in range(NUM_MACHINES)]
    _run_all(commands, logs, cwd)


def launch_one_machine(config_file: Path, args: list[str], cwd: Path) -> None:
    _run_all([(_command(config_file, [], args), _env())], [cwd / "one_machine.log"], cwd)


def rank_loras(out: Path, distributed_type: str) -> list[dict[str, torch.Tensor]]:
    """Every rank's LoRA (train_and_dump.py's dump), checked to be the same on all ranks, which formed one group."""
    expected = {
        "MULTI_GPU": ("MULTI_CPU", "DistributedDataParallel"),
        "DEEPSPEED": ("DEEPSPEED", "DeepSpeedEngine"),
    }
    for rank in range(NUM_PROCESSES):
        info = json.loads((out / "ranks" / f"rank_{rank}.json").read_text())
        assert info["process_index"] == rank and info["num_processes"] == NUM_PROCESSES, info
        assert (info["distributed_type"], info["model_class"]) == expected[distributed_type], info
    loras = [load_file(str(out / "ranks" / f"rank_{rank}.safetensors")) for rank in range(NUM_PROCESSES)]
    assert any(value.abs().max() > 0 for key, value in loras[0].items() if "lora_B" in key), (
        "training never moved the LoRA"
    )
    for other in loras[1:]:
        for key in loras[0]:
            torch.testing.assert_close(
                other[key], loras[0][key], atol=0, rtol=0, msg=f"ranks disagree on {key}"
            )
    return loras


def _digests(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in directory.rglob("*")
        if path.is_file() and not path.name.endswith(".lock") and not set(skip) & set(path.parts)
    }


def metrics_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def shard_names(out: Path, round_index: int) -> list[str]:
    return sorted(
        path.name for path in (out / "pairs" / f"round_{round_index:05d}").iterdir() if path.is_dir()
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_machines_train_resume_and_match_one_machine(case, tmp_path, kit_dir):
    multi_node, one_machine = (CONFIGS / name for name in CASES[case])
    if case == "deepspeed_zero2":
        pytest.importorskip("deepspeed")
    config = yaml.safe_load(multi_node.read_text())
    reference = yaml.safe_load(one_machine.read_text())
    assert (
        config["num_machines"] == NUM_MACHINES
        and config["num_processes"] == reference["num_processes"] == NUM_PROCESSES
    )
    for key in ("distributed_type", "mixed_precision"):
        assert config[key] == reference[key], key
    if case == "deepspeed_zero2":
        assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"

    out = tmp_path / "shared" / "run"  # the shared output dir
    node_local = [kit_dir, tmp_path / "machine_1" / "tiny_models"]  # machine 1 builds its own kit
    launch_machines(multi_node, ["--rounds", "1", "--output_dir", str(out)], tmp_path, node_local)
    # Node-local kits must be the same bytes on every node: DDP syncs only the trained transformer.
    # The shared kit may also hold kits that other tests built on first use (real-dimension, other families).
    from tscale_train.tiny import DIMS_SUBDIR, FAMILY_KITS

    assert _digests(node_local[1]) == _digests(kit_dir, skip=(DIMS_SUBDIR, *FAMILY_KITS))
    rank_loras(out, config["distributed_type"])
    assert [row["round"] for row in metrics_rows(out)] == [-1, 0]
    assert shard_names(out, 0) == ["process_00000", "process_00001"]
    checkpoint = out / "checkpoints" / "checkpoint-00000"
    # Per-process files by global rank: accelerate's RNG states (and DeepSpeed's ZeRO partitions).
    assert sorted(path.name for path in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    if case == "deepspeed_zero2":
        partitions = sorted(path.name.split("_mp_rank")[0] for path in checkpoint.rglob("*optim_states.pt"))
        assert partitions == ["bf16_zero_pp_rank_0", "bf16_zero_pp_rank_1"], partitions

    resume = ["--rounds", "2", "--resume_from_checkpoint", "latest", "--output_dir", str(out)]
    launch_machines(multi_node, resume, tmp_path, node_local)
    two_machines = rank_loras(out, config["distributed_type"])[0]
    # Each round once (the resumed run redoes nothing and loses nothing), every process's shard each round.
    assert [row["round"] for row in metrics_rows(out)] == [-1, 0, 1]
    assert all(row["train/num_pairs"] == PROMPTS_PER_ROUND for row in metrics_rows(out)[1:])
    for round_index in (0, 1):
        assert shard_names(out, round_index) == ["process_00000", "process_00001"]

    straight = tmp_path / "one_machine" / "run"
    launch_one_machine(one_machine, ["--rounds", "2", "--output_dir", str(straight)], tmp_path)
    one = rank_loras(straight, config["distributed_type"])[0]
    assert two_machines.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(
            two_machines[key], one[key], atol=1e-6, rtol=0, msg=f"two machines and one differ on {key}"
        )
    final_two = load_file(str(out / "pytorch_lora_weights.safetensors"))
    final_one = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    for key in final_one:
        torch.testing.assert_close(final_two[key].float(), final_one[key].float(), atol=1e-6, rtol=0, msg=key)
