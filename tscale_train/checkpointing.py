"""Checkpoints of the online loop: what is saved, how a run resumes, which checkpoints are kept.

A checkpoint is `output_dir/checkpoints/checkpoint-NNNNN` (the round) holding accelerate's state:
the LoRA only (diffusers format, through save/load hooks) plus optimizer, scheduler and RNG states,
or under DeepSpeed the engine checkpoint of the trainable parameters (and the LoRA in diffusers format
beside it, for export). `trainer_state.json` is written last and commits the round: a directory
without it is incomplete, never resumed from, and removed when a run resumes. It records the round,
the settings that define the run (`run_settings`) and what the pair store held (`PairStore.verify`).

Resuming checks everything before any model loads (`choose`): the checkpoint's files are read as data
only (`safe_load.py`: no pickle in it can run code), its settings must be this run's (those in
`RESUMABLE_SETTINGS` may change), and the pair store must hold exactly the shards it recorded.
A checkpoint that cannot be read, or a full disk while saving, is a one-line error naming the file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io_utils import atomic_write_json, disk_full_error, json_safe, remove_tree
from .lora import LORA_WEIGHT_NAME, save_lora
from .run_dir import describe_differences, settings_differences
from .safe_load import (
    UnreadableCheckpointFile,
    UnsafeCheckpointError,
    check_checkpoint_files,
    weights_only_loading,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
# What checkpoints written before `run_settings` existed recorded about the run (checked for those).
LEGACY_CHECKPOINT_IDENTITY = ("model", "lora_rank", "lora_alpha", "lora_target_modules")
# Settings that may change when a run resumes: how long it runs; how often it evaluates, checkpoints
# and logs; how it batches, offloads and recomputes (the same numbers up to floating-point batching
# effects); where it is written and published; and the guards' policy. Every other setting defines the
# run (its model, LoRA, reward, search, pairs, DPO, prompts, eval yardstick, seed): changing one is
# another run, and resuming with it is refused with the list of differences.
RESUMABLE_SETTINGS = frozenset(
    {
        "rounds",
        "eval_every",
        "eval_ses_every",
        "checkpoint_every",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "output_dir",
        "progress",
        "report_to",
        "tracker_project",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "eval_batch_size",
        "reward_batch_size",
        "search_group_size",
        "max_cached_prompts",
        "offload_text_encoder",
        "offload_reward",
        "gradient_checkpointing",
        "guard_tolerance",
        "guard_patience",
        "guard_policy",
        "guard_max_drift",
    }
)


def run_settings(config: Any) -> dict[str, Any]:
    """The settings that define a run (all but `RESUMABLE_SETTINGS`), as JSON values."""
    return {
        name: value for name, value in json_safe(config.to_dict()).items() if name not in RESUMABLE_SETTINGS
    }


def checkpoint_dirs(root: Path, complete: bool = True) -> list[Path]:
    """The `checkpoint-NNNNN` dirs under `root` (a run's `checkpoints/`), oldest first; only those with
    `trainer_state.json` (committed) unless `complete` is False."""
    found = [path for path in Path(root).glob(f"{CHECKPOINT_PREFIX}*") if path.is_dir()]
    numbered = sorted(
        (path for path in found if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()),
        key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)),
    )
    return [path for path in numbered if (path / TRAINER_STATE).is_file()] if complete else numbered


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from and its trainer state, chosen and checked before models load."""

    path: Path
    state: dict[str, Any]

    @property
    def round(self) -> int:
        return int(self.state["round"])

    @property
    def pairs(self) -> dict[str, dict] | None:
        """The pair store's manifest at this round (None for a checkpoint older than manifests)."""
        return self.state.get("pairs")


class CheckpointManager:
    """Saves, finds, rotates and resumes checkpoints under `output_dir/checkpoints`.

    `settings` holds `run_settings(config)` for this run: saved with every checkpoint and compared on
    resume. `total_limit` keeps only the newest that many (0 or None: all). `register_hooks` gives it
    the model whose LoRA it saves, once the model exists.
    """

    def __init__(
        self, accelerator, output_dir: Path, settings: dict[str, Any], total_limit: int | None
    ) -> None:
        self.accelerator = accelerator
        self.root = Path(output_dir) / "checkpoints"
        self.settings = settings
        self.total_limit = total_limit
        self.pipeline_class: type | None = None
        self.model = None
        # More state saved beside accelerate's in every checkpoint and loaded back from it, each with
        # `save(directory)` and `load(directory)`: the LoRA's moving average (`ema.LoraEMA`) when a run keeps one.
        self.extra_state: list = []

    @property
    def uses_deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def register_hooks(self, pipeline_class: type, model) -> None:
        """accelerate's save/load_state keep only the LoRA (diffusers format), not the frozen base model."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        self.pipeline_class, self.model = pipeline_class, model
        if self.uses_deepspeed:
            return  # DeepSpeed writes its own engine checkpoint (trainable parameters + partitioned optimizer).
        accelerator = self.accelerator

        def save_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                for model in models:
                    save_lora(pipeline_class, accelerator.unwrap_model(model), output_dir)
            weights.clear()

        def load_hook(models, input_dir):
            from safetensors import SafetensorError

            path = Path(input_dir) / LORA_WEIGHT_NAME
            try:
                state = load_file(str(path))
            except (SafetensorError, OSError) as error:
                raise ValueError(self._unloadable(Path(input_dir), f"file {path}", error)) from error
            state = {key.removeprefix("transformer."): value for key, value in state.items()}
            while models:
                model = accelerator.unwrap_model(models.pop())
                result = set_peft_model_state_dict(model, state, adapter_name="default")
                if getattr(result, "unexpected_keys", None):
                    raise ValueError(
                        f"checkpoint {input_dir} holds LoRA keys this model lacks: {result.unexpected_keys[:3]}..."
                    )

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    @staticmethod
    def _round(path: Path) -> int:
        return int(path.name.removeprefix(CHECKPOINT_PREFIX))

    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return checkpoint_dirs(self.root)

    def latest(self) -> Path | None:
        """The newest complete checkpoint. Newer incomplete ones (a save cut short) are named in a
        warning and, on the main process, removed: the run redoes their rounds."""
        complete = self.checkpoint_dirs()
        for path in checkpoint_dirs(self.root, complete=False):
            if (path / TRAINER_STATE).is_file():
                continue
            if self.accelerator.is_main_process and (
                not complete or self._round(path) > self._round(complete[-1])
            ):
                logger.warning(
                    "skipping incomplete checkpoint %s (no %s; a save cut short?) and removing it",
                    path,
                    TRAINER_STATE,
                )
            if self.accelerator.is_main_process:
                remove_tree(path)
        return complete[-1] if complete else None

    def _earlier_advice(self, path: Path) -> str:
        """What to resume from instead of `path`: the complete checkpoint before it, or afresh."""
        named = path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        earlier = [
            other
            for other in self.checkpoint_dirs()
            if (self._round(other) < self._round(path) if named else other != path)
        ]
        if earlier:
            return f"resume from the previous complete checkpoint with --resume_from_checkpoint {earlier[-1]}"
        return "there is no earlier complete checkpoint; start afresh with --overwrite_output_dir"

    def _unloadable(self, path: Path, what: str, error: BaseException | str) -> str:
        """One line: what of checkpoint `path` cannot be loaded, and the complete checkpoint before it to resume from instead."""
        reason = " ".join(str(error).split()) or type(error).__name__
        return f"checkpoint {what} cannot be loaded ({reason}); {self._earlier_advice(path)}"

    def save(self, round_index: int, global_step: int, pairs: dict[str, dict] | None = None) -> Path:
        """Save the state after `round_index` on every process; the main process then commits it (with
        `pairs`, the pair store's manifest up to this round) and rotates old ones."""
        path = self.root / f"{CHECKPOINT_PREFIX}{round_index:05d}"
        self.accelerator.wait_for_everyone()
        with disk_full_error(path):
            if self.uses_deepspeed:
                # Only the LoRA and its optimizer state: the frozen 7.2 GB transformer is the base model's.
                self.accelerator.save_state(str(path), exclude_frozen_parameters=True)
            else:
                self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            if self.uses_deepspeed and self.model is not None:
                # The engine's files are DeepSpeed's; the LoRA in diffusers format is what export reads.
                with disk_full_error(path):
                    save_lora(self.pipeline_class, self.accelerator.unwrap_model(self.model), path)
            for extra in self.extra_state:
                with disk_full_error(path):
                    extra.save(path)
            # Written last: a checkpoint without it is incomplete and never resumed from.
            state = {
                "round": round_index,
                "global_step": global_step,
                "settings": self.settings,
                "pairs": pairs or {},
            }
            atomic_write_json(path / TRAINER_STATE, state)
            if self.total_limit:
                for stale in self.checkpoint_dirs()[: -self.total_limit]:
                    remove_tree(stale)
        self.accelerator.wait_for_everyone()
        return path

    def choose(self, spec: str, store=None) -> ResumePoint | None:
        """The checkpoint `spec` names ('latest' or a dir), checked on the main process before any model
        loads, and the same on every process; None when 'latest' finds none (a fresh start).

        Checked: every file reads as data only; the run's settings are the checkpoint's; the pair store
        (`store`) holds exactly the shards the checkpoint recorded. The main process decides: on several
        machines each node's view of a shared file system may lag (a directory listing cached by NFS),
        and processes resuming from different checkpoints would silently diverge.
        """
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return self._choose(spec, store)
        from accelerate.utils import broadcast_object_list

        choice: tuple[str, str | None, dict[str, Any] | None] | None = None
        if accelerator.is_main_process:
            try:
                point = self._choose(spec, store)
                choice = (
                    "ok",
                    None if point is None else str(point.path),
                    None if point is None else point.state,
                )
            except (ValueError, OSError) as error:  # on every process, not only here: no one hangs
                choice = (type(error).__name__, str(error), None)
        kind, value, state = broadcast_object_list([choice], from_process=0)[0]
        if kind != "ok":
            raise {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}.get(kind, OSError)(value)
        return None if value is None else ResumePoint(Path(value), state)

    def _choose(self, spec: str, store) -> ResumePoint | None:
        if spec == "latest":
            path = self.latest()
            if path is None:
                logger.warning(
                    "resume_from_checkpoint=latest but %s has no checkpoint; starting fresh.",
                    self.root.parent,
                )
                return None
        else:
            path = Path(spec)
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a complete checkpoint (no {TRAINER_STATE}); pass 'latest' or a checkpoint-NNNNN dir."
            )
        try:
            check_checkpoint_files(path)
        except UnsafeCheckpointError as error:
            raise ValueError(f"{error}; {self._earlier_advice(path)}") from error
        except UnreadableCheckpointFile as error:
            raise ValueError(self._unloadable(path, f"file {error.path}", error.reason)) from error
        state = json.loads(state_file.read_text())
        self._check_settings(path, state)
        point = ResumePoint(path, state)
        if store is not None:
            if point.pairs is None:
                logger.warning(
                    "checkpoint %s records no pair manifest (written by an older version); its pairs are not checked",
                    path,
                )
            else:
                store.verify(
                    point.pairs,
                    range(point.round + 1),
                    advice=(f"restore it, or {self._earlier_advice(path)} (its rounds are redone)"),
                )
        return point

    def _check_settings(self, path: Path, state: dict[str, Any]) -> None:
        if "settings" in state:
            differences = settings_differences(state["settings"], self.settings)
        else:
            differences = {
                name: (state.get(name), self.settings.get(name))
                for name in LEGACY_CHECKPOINT_IDENTITY
                if state.get(name) != self.settings.get(name)
            }
        if differences:
            raise ValueError(
                f"checkpoint {str(path)!r} belongs to a run with other settings ({describe_differences(differences)}); "
                "resume with the run's "
                "settings (its config.yaml) or start a new run in another --output_dir (what may change on resume: "
                "rounds, eval, checkpoint and logging cadence, batching and offloading, the guards' policy; see the README)"
            )

    def load(self, point: ResumePoint) -> None:
        """Load `point`'s states into the accelerator (every `torch.load` data-only, see `safe_load.py`)."""
        path = point.path
        try:
            with weights_only_loading():
                if self.uses_deepspeed:
                    # The checkpoint holds the trainable (LoRA) parameters only; the frozen ones come from the base model.
                    self.accelerator.load_state(str(path), load_module_strict=False)
                else:
                    self.accelerator.load_state(str(path))
        except (RuntimeError, EOFError) as error:
            # A truncated optimizer/scheduler/RNG file (torch.load; a pickle it refuses is an UnsafeCheckpointError
            # already naming the file); the LoRA is checked in the load hook.
            raise ValueError(self._unloadable(path, str(path), error)) from error
        for extra in self.extra_state:
            extra.load(path)
