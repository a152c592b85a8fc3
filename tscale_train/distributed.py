"""Process-group set-up that `accelerate launch` alone gets wrong on CPU-only machines and with DeepSpeed.

- Two CPU processes launched with a MULTI_GPU config and no CUDA come up as two independent
  `DistributedType.NO` processes that each call themselves rank 0 of 1, unless the state is created
  with `cpu=True`: nothing is data-parallel and every gather returns local values only.
- `cpu=True` under DeepSpeed silently turns DeepSpeed off (MULTI_CPU), so it is not passed there;
  DeepSpeed on CPU needs a gloo process group instead of its NCCL default.
- `accelerate launch` exports the DeepSpeed config's `gradient_accumulation_steps` as
  `ACCELERATE_GRADIENT_ACCUMULATION_STEPS`, which overrides the `Accelerator` argument.

Also the seeds, shards and gathers the online loop shares between search, training and eval.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from .io_utils import process_alive

_ACCUMULATION_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


def uses_deepspeed() -> bool:
    """True when launched by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def run_on_cpu() -> bool:
    """Whether the accelerate state must be created with `cpu=True` (no CUDA, and not DeepSpeed)."""
    return not torch.cuda.is_available() and not uses_deepspeed()


def process_group_kwargs() -> list:
    """Kwargs handlers for `Accelerator`: gloo where there is no CUDA (DeepSpeed defaults to NCCL)."""
    from accelerate.utils import InitProcessGroupKwargs

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    return [InitProcessGroupKwargs(backend="gloo")]


def pin_gradient_accumulation(steps: int) -> None:
    """Make the training config's `gradient_accumulation_steps` the one DeepSpeed uses.

    Call before creating the `Accelerator`. A different value in the DeepSpeed config file is
    overridden, with a warning, so one setting (the training config's) decides the effective batch.
    """
    if not uses_deepspeed():
        return
    from_launcher = os.environ.get(_ACCUMULATION_ENV)
    if from_launcher is not None and from_launcher != "auto" and int(from_launcher) != steps:
        warnings.warn(
            f"the DeepSpeed config says gradient_accumulation_steps={from_launcher}, the training config "
            f"{steps}; using {steps} (set it in the training config).",
            stacklevel=2,
        )
    os.environ[_ACCUMULATION_ENV] = str(steps)


def check_gradient_accumulation(accelerator, steps: int) -> None:
    """Fail loudly if the accelerator (or DeepSpeed) would accumulate over another number of steps."""
    effective = {"accelerator": accelerator.gradient_accumulation_steps}
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        effective["deepspeed"] = plugin.deepspeed_config.get("gradient_accumulation_steps")
    wrong = {name: value for name, value in effective.items() if value != steps}
    if wrong:
        raise RuntimeError(
            f"gradient_accumulation_steps is {steps} in the training config but {wrong} in the launched "
            "accelerate state; remove gradient_accumulation_steps from the accelerate/DeepSpeed config."
        )


def make_accelerator(project_dir: Path, gradient_accumulation_steps: int, report_to: str | None):
    """An `Accelerator` set up as above, logging under `project_dir/logs` (`report_to` "none": no trackers)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    pin_gradient_accumulation(gradient_accumulation_steps)
    accelerator = Accelerator(
        cpu=run_on_cpu(),
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(
            project_dir=str(project_dir), logging_dir=str(Path(project_dir) / "logs")
        ),
        kwargs_handlers=process_group_kwargs(),
    )
    check_gradient_accumulation(accelerator, gradient_accumulation_steps)
    return accelerator


# ---- a worker dies with its launcher ------------------------------------------------------------
# torchrun starts each worker in a session of its own, so `kill -9` of the launch's process group
# spares the workers: without a watch they would go on writing into the run dir and holding its lock.
_LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")
WATCH_INTERVAL_SECONDS = 1.0
_watch_started = False


def stop_with_launcher(accelerator=None, interval: float = WATCH_INTERVAL_SECONDS) -> bool:
    """Under a launcher (`accelerate launch`, torchrun), watch from a daemon thread that the launcher and,
    on this host, the main process are alive; when either is gone, end this process at once.

    Ending at once is what a crash does, and a crash is safe: every write is atomic, a round counts
    only once its checkpoint is committed, and a resume redoes the rest (tests/test_fault_injection.py).
    A plain `python train.py` has no launcher and is not watched (its parent may be a shell that exits).
    Returns whether the watch runs. Every process must call it (it broadcasts the main process's pid).
    """
    global _watch_started
    main = (os.getpid(), socket.gethostname())
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        main = tuple(broadcast_object_list([main], from_process=0)[0])
    if _watch_started or not any(name in os.environ for name in _LAUNCHER_ENV):
        return _watch_started
    launcher = os.getppid()
    main_pid = main[0] if main[1] == socket.gethostname() and main[0] != os.getpid() else None

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != launcher:
                gone = f"its launcher (pid {launcher})"
            elif main_pid is not None and not process_alive(main_pid):
                gone = f"the main process (pid {main_pid})"
            else:
                continue
            print(
                f"tscale: {gone} is gone; stopping this process (pid {os.getpid()}). The last committed round is "
                "intact: resume with --resume_from_checkpoint latest",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

    threading.Thread(target=watch, name="tscale-launcher-watch", daemon=True).start()
    _watch_started = True
    return True


# ---- seeds, shards and gathers -------------------------------------------------------------------
# Everything random in the loop is derived from (seed, round, index) and every collective is called
# by every process the same number of times: that is what makes a resumed run end where an
# uninterrupted one does, and keeps DDP/DeepSpeed from hanging.


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts; the same parts give the same seed on every machine."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard_evenly(items: list, num_processes: int, process_index: int) -> list:
    """This process's contiguous shard; every process gets the same count (the list is padded by repetition)."""
    per_process = math.ceil(len(items) / num_processes)
    padded = [items[i % len(items)] for i in range(per_process * num_processes)]
    return padded[process_index * per_process : (process_index + 1) * per_process]


def global_mean(accelerator, values: list[float]) -> float:
    """Mean over every process's values (NaN when there are none); every process must call it."""
    from accelerate.utils import gather_object

    everything = gather_object(list(values)) if accelerator.num_processes > 1 else list(values)
    return float(sum(everything) / len(everything)) if everything else float("nan")


def global_sum(accelerator, value: float) -> float:
    """Sum of one value per process; every process must call it."""
    from accelerate.utils import gather_object

    return float(sum(gather_object([value]))) if accelerator.num_processes > 1 else float(value)


def gather_by_slot(accelerator, slots: list[int], values: list[float]) -> list[float]:
    """Values of all processes in slot order, each slot once (padded shards repeat slots)."""
    from accelerate.utils import gather_object

    pairs = list(zip(slots, values, strict=False))
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)
    return [value for _, value in sorted(dict(pairs).items())]


def round_slots(
    num_prompts: int, prompts_per_round: int, round_index: int, seed: int
) -> list[tuple[int, int]]:
    """The round's `(slot, prompt index)` pairs: consecutive windows of seeded permutations of the prompts.

    Every prompt is used once per pass before any repeats, the passes are independent shuffles, and
    round r depends only on (seed, r): a resumed run picks the same prompts.
    """
    order: list[int] = []
    epoch = (round_index * prompts_per_round) // num_prompts
    start = (round_index * prompts_per_round) % num_prompts
    while len(order) < start + prompts_per_round:
        generator = torch.Generator().manual_seed(derive_seed(seed, "prompt-order", epoch))
        order += torch.randperm(num_prompts, generator=generator).tolist()
        epoch += 1
    return [(slot, order[start + slot]) for slot in range(prompts_per_round)]


def check_shardable(num_prompts: int, prompts_per_round: int, num_processes: int) -> None:
    """Refuse prompt counts that would make processes search and train on the same pairs."""
    if num_prompts < num_processes:
        raise ValueError(
            f"{num_prompts} training prompts for {num_processes} processes; give at least one prompt per process."
        )
    if prompts_per_round < num_processes:
        # Shards are padded by repetition: with fewer prompts than processes, ranks would search
        # and train on identical pairs, wasting the extra processes and double-counting the pairs.
        raise ValueError(
            f"prompts_per_round={prompts_per_round} is smaller than the {num_processes} processes; "
            f"set --prompts_per_round to at least {num_processes} (a multiple of it is best)."
        )
