"""`tscale ses --compare random,ses`: best-of-N and SES from the same seed at the same budget, on the tiny klein."""

import json

import pytest
import torch
from PIL import Image

from search import random_search
from tscale_train import cli
from tscale_train.generation import generator_for_pipeline
from tscale_train.ses import search_prompts

REWARD = "rewards.synthetic:brightness"


def test_compare_writes_strip_curves_and_table(tmp_path, kit_dir, capsys):
    out = tmp_path / "cube.png"
    code = cli.main(
        [
            "ses",
            "--model",
            "tiny",
            "--no-progress",
            "--prompt",
            "a red cube",
            "--budget",
            "12",
            "--popsize",
            "4",
            "--seed",
            "3",
            "--reward",
            REWARD,
            "--compare",
            "random,ses",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| best-of-N | 12 |" in printed and "| SES | 12 |" in printed and "| base noise | 1 |" in printed

    strip = Image.open(out)
    assert strip.width == 3 * 64 and strip.height > 64  # base, best-of-N, SES, with a caption strip
    assert Image.open(tmp_path / "cube_curves.png").width > 0
    report = json.loads((tmp_path / "cube_compare.json").read_text())
    (summary,) = report["prompts"]
    for method in ("random", "ses"):
        scores = summary[method]["scores"]
        assert len(scores) == 12
        assert scores[0] == pytest.approx(summary["base_score"])  # both start from the seed's own noise
        assert summary[method]["best_score"] == pytest.approx(max(scores))
    # The final images are rendered from the searched noises and scored again.
    assert set(summary["final_scores"]) == {"base", "random", "ses"}
    assert summary["final_scores"]["base"] == pytest.approx(
        summary["base_score"], abs=1e-4
    )  # preview == final steps
    rows = {row["method"]: row for row in report["table"]}
    assert rows["SES"]["gain"] == pytest.approx(summary["ses"]["best_score"] - summary["base_score"])


def test_random_method_is_best_of_n_from_the_same_base(tiny_pipe):
    """`method="random"` is `random_search` on the same base noise and seed: i.i.d. candidates, batched like SES."""
    from rewards.synthetic import brightness

    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=8)
    embeds = generator.encode_prompt("a cat")
    (result,) = search_prompts(
        generator, brightness, ["a cat"], [5], budget=9, method="random", progress=False
    )

    def objective(noises: torch.Tensor) -> torch.Tensor:
        return brightness(generator.generate(noises, embeds).images, ["a cat"] * len(noises))

    from tscale_train.distributed import derive_seed

    stream = torch.Generator().manual_seed(derive_seed(5, "search"))
    direct = random_search(objective, generator.initial_noise(5)[0], budget=9, generator=stream)
    torch.testing.assert_close(result.search.scores, direct.scores, atol=1e-5, rtol=0)
    # The search's stream is not the base noise's: no candidate is the base noise again.
    assert (result.search.scores[1:] != result.search.scores[0]).all()
    torch.testing.assert_close(result.search.best_noise, direct.best_noise)


@pytest.mark.parametrize("value", ["random,bogus", "ses,ses", ","])
def test_bad_compare_is_refused_before_loading(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setattr(
        "tscale_train.loading.load_pipeline", lambda *a, **k: pytest.fail("a model was loaded")
    )
    code = cli.main(
        ["ses", "--model", "tiny", "--prompt", "a", "--compare", value, "--out", str(tmp_path / "a.png")]
    )
    assert code == 2
    assert "--compare" in capsys.readouterr().err
