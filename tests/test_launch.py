"""Every accelerate config users launch runs here, through its CPU twin, with the same mixed precision.

A twin has the GPU config's distributed type and mixed precision; only the device and the process
count differ. Each launch runs the recipe's loop on the tiny model for a round (bf16 weights where
the config is bf16) and checks what a GPU run would need: the processes form one data-parallel group,
the metrics count every rank's pairs, every rank ends with the same LoRA, and the LoRA loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
GPU_CONFIGS = sorted(path.name for path in CONFIGS.glob("*.yaml"))
CPU_CONFIGS = sorted(path.name for path in (CONFIGS / "cpu").glob("*.yaml"))
# Launched one machine at a time below; a multi-machine twin would wait for its other machines
# (tests/test_multi_node.py launches those as several machines on this host).
SINGLE_MACHINE_CPU_CONFIGS = [
    name
    for name in CPU_CONFIGS
    if int(yaml.safe_load((CONFIGS / "cpu" / name).read_text()).get("num_machines", 1)) == 1
]
PROMPTS_PER_ROUND = 8
# What `accelerator.distributed_type` must be for each distributed_type of a config, on CPU.
EXPECTED_TYPE = {"NO": "NO", "MULTI_GPU": "MULTI_CPU", "DEEPSPEED": "DEEPSPEED"}
EXPECTED_WRAPPER = {
    "NO": "Flux2Transformer2DModel",
    "MULTI_GPU": "DistributedDataParallel",
    "DEEPSPEED": "DeepSpeedEngine",
}


def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_gpu_config_has_a_cpu_twin_with_the_same_precision():
    assert GPU_CONFIGS, "no accelerate configs found"
    for name in GPU_CONFIGS:
        twin = CONFIGS / "cpu" / name
        assert twin.is_file(), f"accelerate_configs/{name} has no CPU twin accelerate_configs/cpu/{name}"
        gpu, cpu = _read(CONFIGS / name), _read(twin)
        assert cpu.get("use_cpu") is True, twin
        for key in ("distributed_type", "mixed_precision"):
            assert cpu[key] == gpu[key], (
                f"{twin.name}: {key} {cpu[key]!r} differs from the GPU config's {gpu[key]!r}"
            )
        assert cpu.get("deepspeed_config", {}).get("zero_stage") == gpu.get("deepspeed_config", {}).get(
            "zero_stage"
        )


def launch(config_file: Path, args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        str(REPO / "tests/scripts/train_and_dump.py"),
        "--config",
        str(REPO / "recipes/configs/tiny.yaml"),
        "--no_progress",
        "--budget",
        "8",
        "--popsize",
        "4",
        "--eval_budget",
        "4",
        "--eval_ses_every",
        "1",
        "--prompts_per_round",
        str(PROMPTS_PER_ROUND),
        "--epochs_per_round",
        "2",
        "--max_eval_prompts",
        "4",
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def check_ranks(out: Path, accelerate_config: dict, **expected) -> list[dict[str, torch.Tensor]]:
    """Every rank's view of the launch; returns each rank's LoRA (all equal)."""
    num_processes = accelerate_config["num_processes"]
    infos = [json.loads((out / "ranks" / f"rank_{rank}.json").read_text()) for rank in range(num_processes)]
    kind = accelerate_config["distributed_type"]
    for rank, info in enumerate(infos):
        assert info["process_index"] == rank and info["num_processes"] == num_processes, infos
        assert info["distributed_type"] == EXPECTED_TYPE[kind], infos
        assert info["model_class"] == EXPECTED_WRAPPER[kind], infos
        assert info["mixed_precision"] == accelerate_config["mixed_precision"], infos
        for key, value in expected.items():
            assert info[key] == value, (key, infos)
    loras = [load_file(str(out / "ranks" / f"rank_{rank}.safetensors")) for rank in range(num_processes)]
    assert any(value.abs().max() > 0 for key, value in loras[0].items() if "lora_B" in key), (
        "training never moved the LoRA"
    )
    for other in loras[1:]:
        assert other.keys() == loras[0].keys()
        for key in loras[0]:
            torch.testing.assert_close(
                other[key], loras[0][key], atol=0, rtol=0, msg=f"ranks disagree on {key}"
            )
    return loras


def metrics_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [name for name in SINGLE_MACHINE_CPU_CONFIGS if name != "deepspeed_zero2.yaml"]
)
def test_cpu_config_runs_the_loop_data_parallel(name, tmp_path, kit_dir):
    config_file = CONFIGS / "cpu" / name
    accelerate_config = _read(config_file)
    bf16 = accelerate_config["mixed_precision"] == "bf16"
    out = tmp_path / "run"
    args = ["--rounds", "1", "--output_dir", str(out)] + (["--dtype", "bfloat16"] if bf16 else [])
    result = launch(config_file, args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    check_ranks(out, accelerate_config, weight_dtype="torch.bfloat16" if bf16 else "torch.float32")
    rows = metrics_rows(out)
    assert [row["round"] for row in rows] == [-1, 0]
    # Gathered from every rank: one pair per prompt of the round, not one rank's share.
    assert rows[-1]["train/num_pairs"] == PROMPTS_PER_ROUND
    assert rows[-1]["eval/reward_ses"] >= rows[-1]["eval/reward_budget0"] - 1e-3
    from tscale_train.loading import load_lora, load_pipeline

    load_lora(load_pipeline("tiny", dtype="float32"), str(out))


@pytest.mark.slow
def test_deepspeed_twin_accumulates_as_configured_and_checkpoints_only_the_lora(tmp_path, kit_dir):
    pytest.importorskip("deepspeed")
    config_file = CONFIGS / "cpu" / "deepspeed_zero2.yaml"
    accelerate_config = _read(config_file)
    out = tmp_path / "run"
    # Attention-only LoRA: then "only LoRA tensors in the checkpoint" is a sharp test.
    common = [
        "--dtype",
        "bfloat16",
        "--gradient_accumulation_steps",
        "2",
        "--lora_target_modules",
        "attention",
        "--checkpoint_every",
        "1",
        "--output_dir",
        str(out),
    ]
    result = launch(config_file, ["--rounds", "1", *common], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    check_ranks(out, accelerate_config, gradient_accumulation_steps=2)
    # 4 pairs per rank, train_batch_size 4 (tiny.yaml): 1 micro-step an epoch, 2 epochs -> 1 optimizer step.
    assert metrics_rows(out)[-1]["global_step"] == 1

    checkpoint = out / "checkpoints" / "checkpoint-00000"
    module_files = list(checkpoint.rglob("*model_states.pt"))
    assert module_files, sorted(str(path.relative_to(checkpoint)) for path in checkpoint.rglob("*"))
    for path in module_files:
        module = torch.load(path, map_location="cpu", weights_only=False)[
            "module"
        ]  # our own file, just written
        assert module and all("lora_" in key for key in module), sorted(module)[:5]

    resumed = launch(config_file, ["--rounds", "2", "--resume_from_checkpoint", "latest", *common], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [row["round"] for row in metrics_rows(out)] == [-1, 0, 1]
    check_ranks(out, accelerate_config)


@pytest.mark.slow
def test_a_float8_base_trains_data_parallel_and_every_rank_keeps_the_same_lora(tmp_path, kit_dir):
    """DDP starts by broadcasting every parameter, which gloo cannot do in float8: the frozen base is left out of
    the sync (every rank loaded the same weights), the LoRA is synced and trained alike on both ranks."""
    config_file = CONFIGS / "cpu" / "multi_gpu.yaml"
    accelerate_config = _read(config_file)
    out = tmp_path / "run"
    args = [
        "--rounds",
        "1",
        "--output_dir",
        str(out),
        "--quantize_base",
        "fp8",
        "--gradient_checkpointing",
        "true",
    ]
    result = launch(config_file, args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    check_ranks(out, accelerate_config, weight_dtype="torch.float32")
    assert metrics_rows(out)[-1]["train/num_pairs"] == PROMPTS_PER_ROUND
