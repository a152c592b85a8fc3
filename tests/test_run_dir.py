"""The run directory (one live run per dir, metrics rows) and the writes under it (modes, NaN, full disks)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tscale_train import io_utils

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from tscale_train.run_dir import RunDirectory
run = RunDirectory(sys.argv[1])  # kept: a collected lock is released
run.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_run_holds_the_dir_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    from tscale_train.run_dir import RunDirectory

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ValueError, match=rf"output_dir {out} is in use by another run \(pid {holder.pid}"
        ) as refused:
            RunDirectory(out).acquire()
        assert len(str(refused.value).splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    # Killed: its pid file is left behind, its pid is dead; the next run takes over with a message.
    run = RunDirectory(out)
    with caplog.at_level(logging.WARNING):
        run.acquire()
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    run.release()


def test_a_pid_file_of_a_dead_run_alone_does_not_block(tmp_path, caplog):
    from tscale_train.run_dir import RunDirectory

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tscale.pid").write_text(f"{dead.pid} {socket.gethostname()}\n")
    run = RunDirectory(out)
    with caplog.at_level(logging.WARNING):
        run.acquire()
    assert f"pid {dead.pid}" in caplog.text
    assert (out / ".tscale.pid").read_text().split()[0] == str(os.getpid())
    run.release()
    assert not (out / ".tscale.pid").exists()


def test_metrics_rows_are_strict_json_and_are_cut_back_to_a_round(tmp_path):
    from tscale_train.run_dir import RunDirectory

    run = RunDirectory(tmp_path)
    for round_index in (-1, 0, 1, 2):
        run.append_metrics(
            {"round": round_index, "loss": float("nan") if round_index == 1 else 0.5, "inf": math.inf}
        )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "NaN" not in lines[2] and "Infinity" not in lines[0]
    assert json.loads(lines[2]) == {"round": 1, "loss": None, "inf": None}
    run.truncate_metrics(0)
    assert [json.loads(line)["round"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        -1,
        0,
    ]
    run.truncate_metrics(None)  # resuming with no checkpoint: nothing is kept
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_json_written_atomically_holds_null_for_non_finite_numbers(tmp_path):
    payload = {"scores": [1.0, float("nan"), -math.inf], "nested": {"best": float("inf")}, "ok": 2}
    io_utils.atomic_write_json(tmp_path / "trace.json", payload)
    text = (tmp_path / "trace.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"scores": [1.0, None, None], "nested": {"best": None}, "ok": 2}
    assert io_utils.json_safe({"a": (float("nan"), 1)}) == {"a": [None, 1]}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        path = io_utils.atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("a: 1\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask


def _enospc_then_pil(*args, **kwargs):
    """What PIL raises when the disk fills mid-PNG: the ENOSPC is in the chain, not on top."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise AttributeError("'_idat' object has no attribute 'fileno'")  # noqa: B904 (PIL's own chaining)


def test_a_full_disk_while_writing_an_image_names_the_file(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", _enospc_then_pil)
    target = tmp_path / "eval" / "round_00000.png"
    with pytest.raises(OSError, match=rf"no space left on device while writing {target}") as failed:
        io_utils.atomic_save_image(Image.new("RGB", (4, 4)), target)
    assert failed.value.errno == errno.ENOSPC
    assert not list(target.parent.iterdir())  # the temporary file is gone too


def test_a_write_failure_on_a_disk_with_room_is_left_as_it_is(tmp_path, monkeypatch):
    def broken(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(RuntimeError, match="enforce fail"):
        io_utils.atomic_write(tmp_path / "a.bin", broken)
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 0)
    with pytest.raises(OSError, match="no space left on device while writing") as failed:
        io_utils.atomic_write(tmp_path / "a.bin", broken)
    assert failed.value.errno == errno.ENOSPC
