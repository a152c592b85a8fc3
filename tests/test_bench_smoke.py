"""The speed benchmarks run end to end at tiny sizes (they are scripts, not tests: no timing is checked).

`bench/gpu_klein.py --tiny` is how a CPU-only session checks the GPU benchmark's code path; both scripts run
in this process (one import of torch and diffusers) as `python bench/<script>.py` would run them.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# Each runs a whole benchmark script (seconds to a minute): the full suite's, not the fast tier's.
pytestmark = pytest.mark.slow


def run_script(
    name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> str:
    monkeypatch.syspath_prepend(str(BENCH))  # as when the script runs: its own folder first on sys.path
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(BENCH / name), run_name="__main__")
    return capsys.readouterr().out


def test_search_speed_runs_at_tiny_sizes(kit_dir, tmp_path, monkeypatch, capsys) -> None:
    plot = tmp_path / "speed.png"
    out = run_script(
        "search_speed.py",
        [
            "--resolutions",
            "64",
            "--batch-sizes",
            "1,2",
            "--budget",
            "4",
            "--popsize",
            "2",
            "--repeats",
            "1",
            "--reward",
            "rewards.synthetic:brightness",
            "--overhead-budget",
            "2",
            "--overhead-repeats",
            "1",
            "--plot",
            str(plot),
        ],
        monkeypatch,
        capsys,
    )
    assert "| 64px | 128x4x4 | 2 |" in out
    assert "| cpu | 1 | float32 |" in out
    assert plot.stat().st_size > 0


def test_gpu_klein_tiny_runs_on_the_cpu(kit_dir, monkeypatch, capsys) -> None:
    out = run_script(
        "gpu_klein.py",
        [
            "--tiny",
            "--resolutions",
            "64",
            "--batch-size",
            "2",
            "--budget",
            "4",
            "--popsize",
            "2",
            "--pairs",
            "1",
            "--repeats",
            "1",
            "--matmul-size",
            "128",
        ],
        monkeypatch,
        capsys,
    )
    assert "| 64px | SES search, budget 4 |" in out
    assert "| 64px | DPO step | 1 pair, gradient checkpointing |" in out
    assert "OOM" not in out


def test_amortisation_runs_at_tiny_sizes(kit_dir, monkeypatch, capsys) -> None:
    out = run_script(
        "amortisation.py",
        [
            "--seeds",
            "1",
            "--budgets",
            "4,8",
            "--rewards",
            "brightness",
            "--rounds",
            "1",
            "--prompts-per-round",
            "4",
            "--epochs",
            "1",
            "--workers",
            "1",
        ],
        monkeypatch,
        capsys,
    )
    # Both budgets trained, the control divided by each budget's gain, and stacking against 2B (8 from the
    # B=8 run's own round -1 where it exists, 16 from an extra eval of the untrained model).
    for row in (
        "| brightness | brightness | 4 |",
        "| brightness | brightness | 8 |",
        "| brightness | coin flip (control) | 4 |",
        "| brightness | 4 |",
        "| brightness | 8 |",
    ):
        assert row in out, row
    assert "4 runs in" in out


def test_pair_sources_runs_at_tiny_sizes(kit_dir, monkeypatch, capsys) -> None:
    out = run_script(
        "pair_sources.py",
        [
            "--seeds",
            "1",
            "--budget",
            "4",
            "--rewards",
            "brightness",
            "--rounds",
            "1",
            "--prompts-per-round",
            "4",
            "--epochs",
            "1",
            "--workers",
            "1",
        ],
        monkeypatch,
        capsys,
    )
    for source in (
        "SES best vs worst",
        "SES best vs base",
        "best-of-N best vs worst",
        "random pairs (control)",
    ):
        assert f"| brightness | {source} |" in out, source
    assert "| brightness | random pairs (control) | " in out and out.split("random pairs (control) |")[
        1
    ].split("\n")[0].endswith("n/a |")


def test_guards_bench_runs_and_checks_both_behaviours(kit_dir, tmp_path, monkeypatch, capsys) -> None:
    plot = tmp_path / "guards.png"
    out = run_script("guards.py", ["--rounds", "2", "--plot", str(plot)], monkeypatch, capsys)
    assert "| stop (brightness): round |" in out and "| holding (redness): round |" in out
    assert "final LoRA identical to the unguarded run's: True" in out
    assert plot.stat().st_size > 0


# The shapes-world benchmarks (issue 23) on the shipped shapes model, in their --quick modes.


def test_shapes_previews_bench_ranks_and_recommends(monkeypatch, capsys) -> None:
    out = run_script("shapes_previews.py", ["--quick"], monkeypatch, capsys)
    # One row per preview length plus the full schedule, which ranks its own final images perfectly.
    assert "| 2 |" in out and "| 4 |" in out
    assert "| 16 | " in out and "| 1.00 ± 0.00 | 1.00 ± 0.00 |" in out.split("| 16 | ")[1].split("\n")[0]
    assert "fewest preview steps whose shapes-clip -> verifier rank correlation" in out


def test_shapes_search_bench_judges_every_method_by_the_other_reward(tmp_path, monkeypatch, capsys) -> None:
    plot = tmp_path / "search.png"
    out = run_script("shapes_search.py", ["--quick", "--plot", str(plot)], monkeypatch, capsys)
    assert (
        "Searched with shapes-clip, judged by the verifier" in out
        and "Searched with verifier, judged by the shapes-clip" in out
    )
    for method in ("default SES", "published SES", "best-of-N"):
        assert f"| {method} | 20 |" in out, method
    # At budget 10 (one generation) the default SES has scored exactly best-of-N's candidates.
    assert "| default@10 - best-of-N@10 | +0.000 ± 0.000 | +0.000 ± 0.000 | +0.000 ± 0.000 |" in out
    assert plot.stat().st_size > 0


def test_shapes_training_bench_runs_every_arm(monkeypatch, capsys) -> None:
    out = run_script("shapes_training.py", ["--quick", "--workers", "1"], monkeypatch, capsys)
    for arm in ("SES pairs", "best-of-N pairs", "random pairs", "reversed pairs"):
        assert f"| {arm} | " in out and f"| R, {arm} | " in out, arm
    from shapes_training import QUICK_SETTINGS  # on sys.path since run_script

    budget = QUICK_SETTINGS["budget"]
    assert f"| untrained, SES@{2 * budget} |" in out and f"| trained, SES@{budget} |" in out
    assert "5 runs in" in out


def test_shapes_hacking_bench_runs_the_guarded_loops(tmp_path, monkeypatch, capsys) -> None:
    plot = tmp_path / "hacking.png"
    out = run_script(
        "shapes_hacking.py", ["--quick", "--workers", "1", "--plot", str(plot)], monkeypatch, capsys
    )
    assert "| round | shapes-clip | verifier (guard) | guards held |" in out
    assert "| -1 | " in out and "| 1 | " in out  # round -1 and the last of two rounds
    for name in ("warn", "stop", "default", "base model"):
        assert f"| {name} | " in out, name
    assert plot.stat().st_size > 0


def test_gpu_quantized_tiny_runs_on_the_cpu(kit_dir, monkeypatch, capsys) -> None:
    out = run_script("gpu_quantized.py", ["--tiny", "--repeats", "1"], monkeypatch, capsys)
    for base in ("none", "fp8"):
        for what in ("weights (transformer + LoRA)", "sampling forward, batch 1", "DPO step, 1 pair"):
            assert f"| {base} | {what} |" in out, (base, what)
    error = float(out.split("velocity error vs bf16 (relative L2): ")[1].split()[0])
    assert 0 < error < 0.2  # float8 moves the velocity, a little
