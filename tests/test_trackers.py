"""What a training run shows outside `metrics.jsonl`: the TensorBoard event file (every logged scalar, the eval
grid at every eval) and the console off a terminal (one whole line per round, no bars glued to it)."""

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_runs import tiny_run_config

from tscale_train.config import OnlineDPOConfig
from tscale_train.trainer import OnlineDPOTrainer


def tracked_run_config(output_dir: Path, **overrides) -> OnlineDPOConfig:
    return tiny_run_config(
        output_dir,
        eval_every=1,
        eval_ses_every=0,  # round 0 evaluates at budget 0 only; round -1 and the last round search too
        eval_budget=2,
        max_eval_prompts=3,
        checkpoint_every=0,
        **overrides,
    )


@pytest.mark.slow
def test_tensorboard_gets_every_scalar_and_the_eval_grid_and_the_console_one_line_a_round(
    tmp_path, kit_dir, capfd
):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    output_dir = tmp_path / "run"
    config = tracked_run_config(output_dir, report_to="tensorboard", progress=True)
    OnlineDPOTrainer(config).train()

    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    # The run's own file (accelerate writes the settings as hparams into a run beside it).
    (events,) = (output_dir / "logs" / config.tracker_project).glob("events.out.tfevents.*")
    accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()

    # Every scalar of every row, under its own name (accelerate keeps them), at the row's round as the step.
    logged = {name for row in rows for name in row if name != "round"}
    assert set(tags["scalars"]) == logged
    for name in logged:
        expected = {row["round"]: row[name] for row in rows if name in row}
        got = {event.step: event.value for event in accumulator.Scalars(name)}
        assert got.keys() == expected.keys(), name
        for step, value in expected.items():  # a non-finite value is null in metrics.jsonl
            assert math.isnan(got[step]) if value is None else got[step] == pytest.approx(value, rel=1e-5), (
                name
            )

    # The eval grid at every eval, searched or not: the image eval/round_NNNNN.png holds.
    eval_rounds = [row["round"] for row in rows if "eval/reward_budget0" in row]
    searched_rounds = [row["round"] for row in rows if "eval/reward_ses" in row]
    assert eval_rounds == [-1, 0, 1] and searched_rounds == [-1, 1]
    assert tags["images"] == ["eval/grid"]
    grids = {event.step: event for event in accumulator.Images("eval/grid")}
    assert sorted(grids) == eval_rounds
    for round_index, event in grids.items():
        written = Image.open(output_dir / "eval" / f"round_{round_index:05d}.png").convert("RGB")
        sent = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
        assert np.array_equal(np.asarray(sent), np.asarray(written)), round_index
    # A grid with a search has a second row of images.
    assert grids[0].height < grids[1].height == grids[-1].height

    # Off a terminal (pytest captures the streams): whole lines, one summary line per round.
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "\r" not in output and "\x1b[" not in output
    summaries = [line for line in output.splitlines() if re.match(r"round -?\d+:", line)]
    assert [line.split(":")[0] for line in summaries] == ["round 0", "round 1"]
    assert all(line.count("round ") == 1 for line in summaries)  # nothing glued to them
    assert any(line.startswith("rounds: 100% 2/2 round [") for line in output.splitlines())
