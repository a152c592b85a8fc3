"""The output dir of a training run: one live run at a time, no silent mixing of two runs' outputs.

- A lock (`.tscale.lock`, an OS file lock, freed by the kernel when its process dies) is held by the
  main process for the run's life; `.tscale.pid` beside it says who holds it, for the error a second
  run gets and for the message when a dead run's leftovers are taken over.
- A fresh run refuses a dir holding another run's outputs unless it resumes that run or is told to
  overwrite it (as transformers' Trainer does): appending to its metrics, mixing in its pairs and
  letting `checkpoints_total_limit` rotate the new checkpoints away are all silent otherwise.
- `metrics.jsonl` rows are strict JSON and are cut back to a checkpoint's round on resume, as the
  pair store's rounds are.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from .io_utils import atomic_write_text, dumps_json, process_alive, remove_tree
from .lora import LORA_WEIGHT_NAME

logger = logging.getLogger(__name__)

LOCK_NAME = ".tscale.lock"
PID_NAME = ".tscale.pid"
METRICS_NAME = "metrics.jsonl"
# What a run writes; `--overwrite_output_dir` removes these and leaves anything else.
# What the run's model samples with (class, family, steps, guidance): the model card's usage snippet
# reads it, so an exported LoRA of any family shows its own pipeline and settings.
PIPELINE_INFO_NAME = "pipeline.json"
# Written last by a finished run: the round its final LoRA commits, and what the pair store held then.
FINAL_STATE_NAME = "final_state.json"
CONFIG_NAME = "config.yaml"
# One row per launch into the dir: which settings changed from the stored config.yaml, from which round.
CONFIG_HISTORY_NAME = "config_history.jsonl"
RUN_OUTPUTS = (
    METRICS_NAME,
    "pairs",
    "checkpoints",
    "eval",
    "guard",
    "logs",
    LORA_WEIGHT_NAME,
    CONFIG_NAME,
    PIPELINE_INFO_NAME,
    FINAL_STATE_NAME,
    CONFIG_HISTORY_NAME,
)
# How long a run that has the lock may take to write its pid file before its lock is judged stale.
_PID_GRACE_SECONDS = 2.0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`, in order; [] when there is none. A last line cut short (a process
    killed while appending it, whose round a resume redoes) is left out; a bad line before it is an error."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: its last line is cut short (a killed run?) and is left out", path)
                break
            raise ValueError(
                f"{path} line {number} is not JSON ({error}); restore the file or remove that line"
            ) from None
    return rows


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{name: (recorded, current)} for every setting that differs (one missing on either side included)."""
    names = sorted(set(recorded) | set(current))
    return {
        name: (recorded.get(name), current.get(name))
        for name in names
        if recorded.get(name) != current.get(name)
    }


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    """`settings_differences` in one line: "beta 100.0 -> 2.0, seed 0 -> 3"."""
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in differences.items())


class RunDirectory:
    """`output_dir` of one run: its lock, its freshness check and its metrics file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / METRICS_NAME
        self._lock: FileLock | None = None
        # Set on every process by `claim` (the lock itself is the main process's), so all agree on it.
        self.held = False

    # ---- the lock ------------------------------------------------------------------------------
    def _holder(self) -> tuple[int, str] | None:
        """(pid, host) from the pid file, or None if there is none (or it is unreadable)."""
        try:
            pid, host = (self.path / PID_NAME).read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def _describe(self, holder: tuple[int, str] | None) -> str:
        if holder is None:
            return "pid unknown"
        pid, host = holder
        return f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"

    def _elsewhere_advice(self, holder: tuple[int, str] | None) -> str:
        """For a holder on another host (a multi-node run's main process lands on any node): how to free a dead one's lock."""
        if holder is None or holder[1] == socket.gethostname():
            return ""
        return (
            f" (a process on {holder[1]} cannot be checked from here: if that run is over, e.g. its job was "
            f"killed on a file system without OS file locks, remove {self.path / LOCK_NAME} and {self.path / PID_NAME})"
        )

    def _is_stale(self, holder: tuple[int, str] | None) -> bool:
        """Only a pid on this host can be checked; one elsewhere is trusted to be alive."""
        return holder is not None and holder[1] == socket.gethostname() and not process_alive(holder[0])

    def acquire(self) -> None:
        """Take the dir for this process; ValueError (one line) if another live run has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / LOCK_NAME, timeout=0)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder()
            try:
                if holder is not None and not self._is_stale(holder):
                    raise  # a live run: fail at once
                # No pid, or a dead one: a run that has just taken the lock may not have written its pid yet.
                lock.acquire(timeout=_PID_GRACE_SECONDS)
            except Timeout:
                holder = self._holder()
                if not self._is_stale(holder):
                    raise ValueError(
                        f"output_dir {self.path} is in use by another run ({self._describe(holder)}); "
                        f"wait for it to end or pass another --output_dir{self._elsewhere_advice(holder)}"
                    ) from None
                # Only a lock without OS support (filelock's fallback lock file) outlives its process.
                logger.warning(
                    "output_dir %s: taking over the lock of %s, which is no longer running",
                    self.path,
                    self._describe(holder),
                )
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                (self.path / PID_NAME).unlink(
                    missing_ok=True
                )  # taken over: the warning below is not repeated
                lock.acquire(timeout=0)
        holder = self._holder()
        if holder is not None and holder != (os.getpid(), socket.gethostname()):
            logger.warning(
                "output_dir %s: taking over the lock of %s, which is no longer running (a killed run?)",
                self.path,
                self._describe(holder),
            )
        self._lock = lock
        atomic_write_text(self.path / PID_NAME, f"{os.getpid()} {socket.gethostname()}\n")

    def release(self) -> None:
        self.held = False
        if self._lock is None:
            return
        (self.path / PID_NAME).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    # ---- fresh, resumed or overwritten -----------------------------------------------------------
    def contents(self) -> list[Path]:
        """What is in the dir besides the lock."""
        if not self.path.is_dir():
            return []
        return sorted(entry for entry in self.path.iterdir() if entry.name not in (LOCK_NAME, PID_NAME))

    def check_fresh_or_resume(self, config: Any) -> None:
        """Refuse a non-empty dir unless resuming it or `overwrite_output_dir` (then its run outputs are removed)."""
        contents = self.contents()
        if not contents or config.resume_from_checkpoint:
            return
        if not config.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self.path} is not empty (a previous run?); pass --resume_from_checkpoint latest "
                "to continue it or --overwrite_output_dir to start afresh"
            )
        removed = [entry for entry in contents if entry.name in RUN_OUTPUTS]
        for entry in removed:
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)
            else:
                entry.unlink(missing_ok=True)
        kept = [entry.name for entry in contents if entry.name not in RUN_OUTPUTS]
        logger.warning(
            "overwrite_output_dir: removed %s from %s%s",
            ", ".join(entry.name for entry in removed) or "nothing",
            self.path,
            f" (kept what no run writes: {', '.join(kept)})" if kept else "",
        )

    def claim(self, config: Any | None, accelerator: Any) -> None:
        """`acquire` + `check_fresh_or_resume` (unless `config` is None) on the main process, before
        anyone writes; its error on every process.

        Every process must call it: the others wait for the main process's verdict and raise it too,
        so a refused launch ends on all ranks instead of hanging in the first collective.
        """
        error: tuple[str, str] | None = None
        if accelerator.is_main_process:
            try:
                self.acquire()
                if config is not None:
                    self.check_fresh_or_resume(config)
            except (ValueError, OSError) as caught:
                self.release()
                error = (type(caught).__name__, str(caught))
                if accelerator.num_processes == 1:
                    raise
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error], from_process=0)[0]
        if error is not None:
            kind, message = error
            raise (ValueError if kind == "ValueError" else OSError)(message)
        self.held = True

    @contextmanager
    def held_for(self, accelerator: Any) -> Iterator[None]:
        """Hold the dir for one `train()` call (claimed again if an earlier call released it); released after, error or not."""
        if not self.held:
            self.claim(None, accelerator)
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Release the dir if the body fails (a trainer that failed to set up holds nothing)."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    # ---- files -----------------------------------------------------------------------------------
    def write_pipeline_info(self, generator) -> None:
        """`pipeline.json`: the pipeline class, family, and the steps, guidance and size the run sampled with, and
        the other arguments a `pipe(prompt=...)` call needs to sample alike (`FlowGenerator.prompt_call_kwargs`)."""
        info = {
            "pipeline_class": type(generator.pipe).__name__,
            "family": generator.family,
            "num_inference_steps": generator.num_inference_steps,
            "preview_steps": generator.preview_steps,
            "guidance_scale": generator.guidance_scale,
            "height": generator.height,
            "width": generator.width,
            "prompt_call_kwargs": generator.prompt_call_kwargs(),
        }
        atomic_write_text(self.path / PIPELINE_INFO_NAME, dumps_json(info, indent=2) + "\n")

    def write_config(
        self, config: dict[str, Any], start_round: int = 0, resumed_from: str | None = None
    ) -> None:
        """`config.yaml` (this launch's settings), atomically, after a row in `config_history.jsonl` that
        says which settings changed from the stored ones: a resume never rewrites the record silently."""
        import datetime

        path = self.path / CONFIG_NAME
        previous = yaml.safe_load(path.read_text()) if path.is_file() else None
        previous = previous if isinstance(previous, dict) or previous is None else {}
        differences = {} if previous is None else settings_differences(previous, config)
        for name in (
            "resume_from_checkpoint",
            "overwrite_output_dir",
        ):  # how this launch started, not a setting of the run
            differences.pop(name, None)
        if differences:
            logger.warning(
                "output_dir %s: this launch changes %s", self.path, describe_differences(differences)
            )
        changed = {name: list(values) for name, values in differences.items()}
        row = {
            "launched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "start_round": start_round,
            "resumed_from": resumed_from,
            "changed": changed,
        }
        with (self.path / CONFIG_HISTORY_NAME).open("a") as handle:
            handle.write(dumps_json(row) + "\n")
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row, strict JSON (NaN and infinities as null)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as handle:
            handle.write(dumps_json(row) + "\n")

    def truncate_metrics(self, after_round: int | None) -> None:
        """Keep only rows of rounds <= `after_round` (None: none), atomically: resuming redoes the later rounds."""
        if not self.metrics_path.is_file():
            return
        kept = [
            dumps_json(row) + "\n"
            for row in read_metrics(self.metrics_path)
            if after_round is not None and row.get("round", -1) <= after_round
        ]
        atomic_write_text(self.metrics_path, "".join(kept))

    def metrics_row(self, round_index: int) -> dict[str, Any] | None:
        """The last `metrics.jsonl` row of a round (round -1: the eval before training), or None."""
        return next(
            (row for row in reversed(read_metrics(self.metrics_path)) if row.get("round") == round_index),
            None,
        )
