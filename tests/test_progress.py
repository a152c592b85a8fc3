"""Progress for people (`tscale_train.progress`): bars only on the main process, whole lines in a log file,
and a search bar whose best score never falls."""

import io
import math

import pytest
from tqdm import tqdm

from tscale_train import progress
from tscale_train.progress import LineProgress, SilentProgress, progress_bar, write


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_bars_and_lines_are_whole_lines():
    log = io.StringIO()  # a log file: no terminal
    bar = progress_bar(total=6, desc="SES", unit="cand", main=True, file=log, interval=0)
    assert isinstance(bar, LineProgress)
    for step in range(6):
        bar.update()
        bar.set_postfix(best=f"{step / 10:.4f}")
        if step == 2:
            write("round 0: loss=0.6931", main=True, file=log)
    bar.close()
    output = log.getvalue()
    assert "\r" not in output and "\x1b" not in output  # no carriage returns, no cursor movement
    assert output.endswith("\n")
    lines = output.splitlines()
    # Every line is one whole bar line or the whole round line, never two glued together.
    assert lines.count("round 0: loss=0.6931") == 1
    bar_lines = [line for line in lines if line != "round 0: loss=0.6931"]
    assert all(line.startswith("SES: ") and line.count("SES:") == 1 for line in bar_lines), lines
    assert bar_lines[-1].startswith("SES: 100% 6/6 cand [") and bar_lines[-1].endswith("best=0.5000]")


def test_a_log_gets_a_line_at_most_every_interval_and_one_at_the_end():
    log, clock = io.StringIO(), Clock()
    bar = LineProgress(total=10, desc="DPO round 0", unit="step", file=log, interval=30.0, clock=clock)
    for _ in range(10):
        clock.now += 10.0
        bar.update()
    bar.close()
    bar.close()  # closing twice prints once
    lines = log.getvalue().splitlines()
    # 100 s of updates: a line at 30, 60 and 90 s, then the last one.
    assert [line.split(" step")[0] for line in lines] == [
        "DPO round 0: 30% 3/10",
        "DPO round 0: 60% 6/10",
        "DPO round 0: 90% 9/10",
        "DPO round 0: 100% 10/10",
    ]
    assert "10 s/step" in lines[-1]  # slower than one a second: seconds per step, as tqdm


def test_a_short_transient_bar_leaves_nothing_in_a_log_and_a_long_one_says_it_ended():
    log, clock = io.StringIO(), Clock()
    with LineProgress(total=3, leave=False, file=log, clock=clock) as short:
        short.update(3)
    assert log.getvalue() == ""
    with LineProgress(total=3, leave=False, file=log, interval=30.0, clock=clock) as long:
        for _ in range(3):
            clock.now += 20.0
            long.update()
    assert [line.split(" it")[0] for line in log.getvalue().splitlines()] == ["67% 2/3", "100% 3/3"]


def test_iterating_a_bar_yields_everything_and_ends_with_one_line():
    log = io.StringIO()
    assert list(progress_bar(range(4), desc="rounds", unit="round", main=True, file=log)) == [0, 1, 2, 3]
    (line,) = log.getvalue().splitlines()
    assert line.startswith("rounds: 100% 4/4 round [")


def test_other_processes_and_progress_off_print_nothing(monkeypatch):
    log = io.StringIO()
    for bar in (
        progress_bar(total=2, main=False, file=log, interval=0),
        progress_bar(total=2, main=True, enabled=False, file=log, interval=0),
    ):
        assert isinstance(bar, SilentProgress)
        bar.update(2)
        bar.set_postfix(best="1.0")
        bar.close()
    write("round 0: loss=0.6931", main=False, file=log)
    assert log.getvalue() == ""
    # Without `main`: the launcher's rank decides (torch.distributed is not set up here).
    monkeypatch.setenv("RANK", "1")
    assert not progress.is_main_process()
    write("from rank 1", file=log)
    progress_bar(total=1, file=log, interval=0).close()
    assert log.getvalue() == ""
    monkeypatch.setenv("RANK", "0")
    write("from rank 0", file=log)
    assert log.getvalue() == "from rank 0\n"


def test_on_a_terminal_the_bar_is_tqdm():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = progress_bar(total=2, desc="SES", main=True, file=terminal)
    assert isinstance(bar, tqdm)
    bar.close()
    assert "\r" in terminal.getvalue()  # drawn in place


def test_library_bars_are_off_off_a_terminal_and_restored_after():
    import diffusers.utils.logging as diffusers_logging

    # The bench scripts that earlier tests run in this process turn the bars off for good: start from on.
    was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.enable_progress_bar()
    try:
        # Pytest's captured stderr is no terminal: the libraries' loading bars would pile up in a log.
        with progress.library_bars(enabled=True, main=True):
            assert not diffusers_logging.is_progress_bar_enabled()
        assert diffusers_logging.is_progress_bar_enabled()
        with progress.library_bars(enabled=True, main=False):
            assert not diffusers_logging.is_progress_bar_enabled()
        assert diffusers_logging.is_progress_bar_enabled()
    finally:
        if not was_on:
            diffusers_logging.disable_progress_bar()


# ---- the search bar's best score ---------------------------------------------------------------------------
def test_best_so_far_keeps_the_best_number_seen():
    from tscale_train.ses.driver import best_so_far

    assert best_so_far(math.nan, [0.2, math.nan, 0.5]) == 0.5
    assert best_so_far(0.7, [0.1, 0.3]) == 0.7  # a later group's lower bests do not pull it down
    assert best_so_far(-math.inf, [-2.0]) == -2.0
    assert math.isnan(best_so_far(math.nan, [math.nan]))


class RecordingBar(SilentProgress):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.postfixes: list[float] = []

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        self.postfixes.append(float(kwargs["best"]))


def test_the_search_bar_shows_the_best_so_far_over_generations_and_groups(tiny_pipe, monkeypatch):
    """Each prompt's searches are one group (group_size 1); the second prompt's and each later generation's
    scores are lower than the first's, so a bar that showed the current best would fall."""
    from tscale_train.generation import generator_for_pipeline
    from tscale_train.ses import driver

    calls = []

    def falling_reward(images, prompts):
        calls.append(len(prompts))
        offset = 10.0 if prompts[0] == "first" else 0.0
        # Every call (one a generation here) lower than the one before, and a little spread inside it.
        return offset - len(calls) + images.float().mean(dim=(1, 2, 3)) * 1e-3

    bars = []
    monkeypatch.setattr(driver, "progress_bar", lambda **kwargs: bars.append(RecordingBar()) or bars[-1])
    generator = generator_for_pipeline(tiny_pipe, eval_batch_size=8)
    results = driver.search_prompts(
        generator,
        falling_reward,
        ["first", "second"],
        [0, 1],
        budget=6,
        config=driver.SESConfig(popsize=2, k_elites=1, level=None),
        group_size=1,
    )
    (bar,) = bars
    shown = bar.postfixes
    assert len(shown) == 6  # three generations of each prompt's search
    assert shown == sorted(shown), shown  # never falls
    assert shown[-1] == pytest.approx(max(result.search.best_score for result in results), abs=1e-4)
    # What a per-group best would have shown: the second prompt's searches are all lower.
    assert results[1].search.best_score < results[0].search.best_score
    # The value is the best so far, not a stale one: it is the first generation's best of the first prompt.
    assert shown[0] == pytest.approx(float(results[0].search.scores[:2].max()), abs=1e-4)
