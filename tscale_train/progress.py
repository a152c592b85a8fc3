"""Progress for people: bars on a terminal, whole lines in a log file, nothing from the other processes.

Every progress bar of the package, and the console lines of the training loop and `tscale ses`, go
through here (the Hub push's log lines, in the export layer, still use tqdm.write). Under `accelerate
launch` each process runs the same code, and in a log file (a redirect, a SLURM job) a carriage-return
bar is not redrawn but appended to: every process's bars then pile up on one line, with the round's
summary glued to their end. So:

- `progress_bar` shows a bar on the main process only. On a terminal (or in a notebook) it is a tqdm bar;
  when its stream is not a terminal it prints whole lines instead (`LineProgress`): at most one every
  `LOG_INTERVAL_SECONDS`, and one when a bar that is kept ends, never a carriage return.
- `write` prints one whole line on the main process only, above any bar a terminal shows.
- `library_bars` silences the bars of the libraries underneath (model loading, dataset saving) wherever
  ours are not drawn as bars.

The main process is accelerate's (torch.distributed's rank, else the launcher's `RANK`): this module
creates no distributed state; a caller that holds an `Accelerator` passes `main=accelerator.is_main_process`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

from tqdm import tqdm as _plain_tqdm
from tqdm.auto import tqdm as _auto_tqdm

# A log file gets a progress line at most this often (and one at the end of every bar).
LOG_INTERVAL_SECONDS = 30.0


class Progress(Protocol):
    """What every bar here offers (a subset of tqdm's)."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


def is_main_process() -> bool:
    """Whether this is the main process (global rank 0) of a distributed launch; True when not launched.

    torch.distributed's rank when a process group is up, else the `RANK` that `accelerate launch` and
    torchrun set for every process (also where CPU processes run as independent ones, before any group).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def _on_main(main: bool | None) -> bool:
    """`main` when the caller knows (it holds an `Accelerator`), else `is_main_process()`."""
    return is_main_process() if main is None else main


def _in_notebook() -> bool:
    """A Jupyter kernel: its streams are no terminals, yet tqdm.auto draws a widget there (as tqdm.auto decides)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython without a running shell
        return False


def interactive(stream: IO | None = None) -> bool:
    """Whether bars on `stream` (default stderr, where bars go) are drawn in place: a terminal or a notebook."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return _in_notebook() and stream in (sys.stderr, sys.stdout)


class SilentProgress:
    """A bar that shows nothing (progress off, or not the main process); iterates like tqdm."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator:
        yield from self.iterable or ()

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """A bar for a log file: whole lines such as `SES: 50% 10/20 cand [00:04<00:04, 2.5 cand/s, best=0.71]`.

    A line is printed at an update at most every `interval` seconds, and one when the bar closes: always
    with `leave` (a result worth keeping, like tqdm's `leave=True`), else only if it printed before (so a
    long transient bar says it finished, and a short one leaves nothing). Each line is flushed whole.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        leave: bool = True,
        file: IO | None = None,
        interval: float = LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.leave = leave
        self.file = file
        self.interval = interval
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.started = self.printed_at = clock()
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.printed_at >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave or self.lines:
            self._print(self.clock())

    def line(self, now: float) -> str:
        """The line the bar prints at time `now`."""
        elapsed = max(0.0, now - self.started)
        rate = self.n / elapsed if elapsed > 0 else None
        timing = _plain_tqdm.format_interval(elapsed)
        if self.total and rate:
            timing += "<" + _plain_tqdm.format_interval(max(0.0, self.total - self.n) / rate)
        details = [timing]
        if rate is not None:  # as tqdm: seconds per item when an item takes longer than a second
            details.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        if self.postfix:
            details.append(self.postfix)
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percentage = f"{100 * self.n / self.total:.0f}% " if self.total else ""
        prefix = f"{self.desc}: " if self.desc else ""
        return f"{prefix}{percentage}{count} {self.unit} [{', '.join(details)}]"

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.file if self.file is not None else sys.stderr, flush=True)
        self.lines += 1
        self.printed_at = now


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = True,
    enabled: bool = True,
    main: bool | None = None,
    file: IO | None = None,
    interval: float = LOG_INTERVAL_SECONDS,
) -> Progress:
    """A progress bar (use like tqdm: iterate it, or `update` / `set_postfix` / `close` it).

    Shown only when `enabled` on the main process (`main`, default `is_main_process()`): as a tqdm bar
    where `file` (default stderr) is a terminal or a notebook, else as whole lines (`LineProgress`, at
    most one every `interval` seconds and one at the end).
    """
    if not enabled or not _on_main(main):
        return SilentProgress(iterable)
    if interactive(file):
        return _auto_tqdm(
            iterable, total=total, desc=desc, unit=unit, leave=leave, file=file, dynamic_ncols=True
        )
    return LineProgress(
        iterable, total=total, desc=desc, unit=unit, leave=leave, file=file, interval=interval
    )


def write(line: str, *, main: bool | None = None, file: IO | None = None) -> None:
    """Print `line` whole, on the main process only (`main`, default `is_main_process()`), to `file`
    (default stdout): above the bars on a terminal, flushed at once in a log file, so that it lands
    between other processes' and streams' lines rather than inside them."""
    if not _on_main(main):
        return
    stream = sys.stdout if file is None else file
    if interactive():  # bars may be drawn on stderr: tqdm clears them, prints, and redraws them
        _auto_tqdm.write(line, file=stream)
        stream.flush()
    else:
        print(line, file=stream, flush=True)


def _library_switches() -> list[tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """(whether its bars are on, turn them off, turn them on) for each library whose bars a run shows."""
    import datasets
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    return [
        (
            diffusers_logging.is_progress_bar_enabled,
            diffusers_logging.disable_progress_bar,
            diffusers_logging.enable_progress_bar,
        ),
        (
            transformers_logging.is_progress_bar_enabled,
            transformers_logging.disable_progress_bar,
            transformers_logging.enable_progress_bar,
        ),
        (datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars),
        (
            lambda: not hub_utils.are_progress_bars_disabled(),
            hub_utils.disable_progress_bars,
            hub_utils.enable_progress_bars,
        ),
    ]


@contextmanager
def library_bars(enabled: bool = True, main: bool | None = None) -> Iterator[None]:
    """Within the block, the bars of diffusers, transformers, datasets and huggingface_hub (loading a
    model, saving a dataset) show only where this module's would be drawn as bars: `enabled`, on the main
    process and on a terminal. Elsewhere they are off, and turned back on after the block."""
    if enabled and _on_main(main) and interactive():
        yield
        return
    turned_off = []
    # An environment variable that forces a library's bars on wins, with a warning this need not repeat.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for is_on, turn_off, turn_on in _library_switches():
            if is_on():
                turn_off()
                if not is_on():
                    turned_off.append(turn_on)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for turn_on in turned_off:
                turn_on()
