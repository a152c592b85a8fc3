"""`tscale ses` end to end on the tiny kit, LoRAs and a 2-process search (its bad input: `test_bad_input.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tscale_train import cli
from tscale_train.loading import load_lora, load_pipeline
from tscale_train.lora import add_lora, save_lora

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> int:
    return cli.main(["ses", "--model", "tiny", "--no-progress", *args])


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, kit_dir):
    """A non-trivial LoRA for the tiny klein, written in diffusers format."""
    pipe = load_pipeline("tiny", dtype="float32")
    parameters = add_lora(pipe.transformer, rank=4, init="gaussian")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in parameters:
            parameter.normal_(std=0.5)
    out = tmp_path_factory.mktemp("lora")
    save_lora(type(pipe), pipe.transformer, out)
    return out


def test_ses_end_to_end_with_trace(tmp_path, kit_dir):
    out = tmp_path / "cat.png"
    assert (
        run_cli(
            "--prompt",
            "sketch, a cat",
            "--budget",
            "12",
            "--popsize",
            "4",
            "--seed",
            "1",
            "--save-trace",
            "--out",
            str(out),
        )
        == 0
    )
    assert Image.open(out).size == (64, 64)
    trace = json.loads((tmp_path / "cat_trace.json").read_text())
    assert len(trace["scores"]) == 12
    assert trace["best_score"] == max(trace["scores"]) >= trace["scores"][0] == trace["base_score"]
    # At the generated resolution: the searched image itself, pixel for pixel, beside the base image.
    pair, searched = (
        Image.open(tmp_path / "cat_base_vs_ses.png").convert("RGB"),
        Image.open(out).convert("RGB"),
    )
    assert pair.width == 2 * 64
    assert any(
        pair.crop((64, top, 128, top + 64)).tobytes() == searched.tobytes() for top in range(pair.height - 63)
    )
    assert (tmp_path / "cat_reward.png").stat().st_size > 0


def test_prompts_file_writes_one_image_per_prompt(tmp_path, kit_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    out = tmp_path / "out"
    assert run_cli("--prompts-file", str(prompts), "--budget", "4", "--popsize", "2", "--out", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert [item["prompt"] for item in results] == ["a cat", "a dog"]
    assert [item["seed"] for item in results] == [0, 1]
    assert all((out / f"{index:04d}.png").is_file() for index in range(2))


def test_search_random_is_the_best_of_n_of_compare(tmp_path, kit_dir):
    """`--search random` runs the same best-of-N as `--compare`, from the same seed and budget."""
    common = ("--prompt", "a red cube", "--budget", "8", "--popsize", "4", "--seed", "3")
    assert run_cli(*common, "--search", "random", "--save-trace", "--out", str(tmp_path / "random.png")) == 0
    trace = json.loads((tmp_path / "random_trace.json").read_text())
    assert trace["method"] == "best-of-N" and len(trace["scores"]) == 8
    assert run_cli(*common, "--compare", "random,ses", "--out", str(tmp_path / "compare.png")) == 0
    compared = json.loads((tmp_path / "compare_compare.json").read_text())
    assert trace["best_score"] == pytest.approx(compared["prompts"][0]["random"]["best_score"], abs=1e-6)


def test_search_ses_published_runs_the_published_variant(tmp_path, monkeypatch, kit_dir):
    import tscale_train.ses.driver as ses_module

    configs = []
    original = ses_module.SpectralEvolutionSearch

    class Recorded(original):
        def __init__(self, base_noise, budget, config=None, generator=None):
            configs.append(config)
            super().__init__(base_noise, budget, config=config, generator=generator)

    monkeypatch.setattr(ses_module, "SpectralEvolutionSearch", Recorded)
    assert (
        run_cli(
            "--prompt",
            "a red cube",
            "--budget",
            "12",
            "--search",
            "ses-published",
            "--save-trace",
            "--out",
            str(tmp_path / "published.png"),
        )
        == 0
    )
    assert json.loads((tmp_path / "published_trace.json").read_text())["method"] == "published SES"
    assert [(config.variant, config.popsize) for config in configs] == [("published", 10)]


def test_lora_changes_the_output(lora_dir, kit_dir):
    from tscale_train.generation import generator_for_pipeline

    plain = load_pipeline("tiny", dtype="float32")
    adapted = load_pipeline("tiny", dtype="float32")
    load_lora(adapted, str(lora_dir))
    images = []
    for pipe in (plain, adapted):
        generator = generator_for_pipeline(pipe)
        images.append(generator.generate(generator.initial_noise(0), generator.encode_prompt("a cat")).images)
    assert (images[0] - images[1]).abs().max() > 1e-3


def test_ses_with_lora_from_cli(tmp_path, lora_dir, kit_dir):
    out = tmp_path / "lora.png"
    assert (
        run_cli(
            "--prompt", "a cat", "--budget", "4", "--popsize", "2", "--lora", str(lora_dir), "--out", str(out)
        )
        == 0
    )
    assert out.is_file()


def test_lora_for_another_model_is_refused(tmp_path, lora_dir, kit_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    wrong_shapes = {key: torch.zeros(value.shape[0] * 2, value.shape[1] * 2) for key, value in state.items()}
    save_file(wrong_shapes, str(tmp_path / "pytorch_lora_weights.safetensors"))
    pipe = load_pipeline("tiny", dtype="float32")
    with pytest.raises(ValueError, match="does not match this model|made for another model"):
        load_lora(pipe, str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    save_file({"unet.down.lora_A.weight": torch.zeros(2, 2)}, str(other / "pytorch_lora_weights.safetensors"))
    with pytest.raises(ValueError, match="another model|does not match"):
        load_lora(load_pipeline("tiny", dtype="float32"), str(other))


def one_and_two_processes(args: list[str], one_out: Path, two_out: Path) -> subprocess.CompletedProcess:
    """`tscale` with `args` in one process, then under a 2-process gloo launch; returns the launch."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run(
        [sys.executable, "-m", "tscale_train.cli", *args, "--out", str(one_out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs/cpu/demo.yaml"),
        "-m",
        "tscale_train.cli",
        *args,
        "--out",
        str(two_out),
    ]
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    return double


@pytest.mark.slow
def test_two_process_search_equals_one_process(tmp_path, kit_dir):
    """One search's candidates split over 2 gloo processes: same scores, same best noise."""
    common = [
        "ses",
        "--model",
        "tiny",
        "--prompt",
        "a cat",
        "--budget",
        "10",
        "--popsize",
        "4",
        "--seed",
        "3",
        "--save-trace",
        "--no-progress",
        "--device",
        "cpu",
    ]
    one_and_two_processes(common, tmp_path / "one.png", tmp_path / "two.png")
    one = json.loads((tmp_path / "one_trace.json").read_text())
    two = json.loads((tmp_path / "two_trace.json").read_text())
    assert one["best_index"] == two["best_index"]
    torch.testing.assert_close(torch.tensor(one["scores"]), torch.tensor(two["scores"]), atol=1e-4, rtol=0)


def test_only_the_main_process_renders_final_images(tmp_path, monkeypatch, kit_dir):
    """Under `accelerate launch` every process holds the same results; rendering them N times wastes N-1 GPUs' time."""
    import accelerate

    class NotMainProcess:
        num_processes, process_index, is_main_process = 1, 1, False
        device = torch.device("cpu")

        def __init__(self, *args, **kwargs):
            pass

    renders = []
    monkeypatch.setattr(accelerate, "PartialState", NotMainProcess)
    monkeypatch.setattr(
        "tscale_train.ses.driver.render_result", lambda *a, **k: renders.append(a) or pytest.fail("rendered")
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    assert (
        run_cli(
            "--prompts-file", str(prompts), "--budget", "4", "--popsize", "2", "--out", str(tmp_path / "out")
        )
        == 0
    )
    assert renders == [] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_prompts_file_is_sharded_over_the_processes_and_written_once(tmp_path, kit_dir):
    """Each process searches its own prompts (prompt i keeps seed + i): the same results as one process."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na red cube\n")
    common = [
        "ses",
        "--model",
        "tiny",
        "--prompts-file",
        str(prompts),
        "--budget",
        "6",
        "--popsize",
        "3",
        "--seed",
        "5",
        "--no-progress",
        "--reward",
        "rewards.synthetic:brightness",
    ]
    double = one_and_two_processes(common, tmp_path / "one", tmp_path / "two")
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [row["index"] for row in two] == [0, 1, 2]
    assert sorted({row["process_index"] for row in two}) == [0, 1]  # both processes searched
    for first, second in zip(one, two, strict=True):
        assert (first["prompt"], first["seed"], first["best_index"]) == (
            second["prompt"],
            second["seed"],
            second["best_index"],
        )
        assert abs(first["best_score"] - second["best_score"]) < 1e-5
    assert sorted(path.name for path in (tmp_path / "two").glob("*.png")) == [
        "0000.png",
        "0001.png",
        "0002.png",
    ]
    # Every image line is printed by exactly one process.
    assert sum(line.startswith("[") for line in double.stdout.splitlines()) == 3
