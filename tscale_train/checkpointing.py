"""Checkpoints of the online loop: what is saved, how a run resumes, which checkpoints are kept.

A checkpoint is `output_dir/checkpoints/checkpoint-NNNNN` (the round) holding accelerate's state:
the LoRA only (diffusers format, through save/load hooks) plus optimizer, scheduler and RNG states,
or under DeepSpeed the engine checkpoint of the trainable parameters. `trainer_state.json` is written
last, so a directory without it is incomplete: never resumed from, and removed when a run resumes.
A checkpoint that cannot be read, or a full disk while saving, is a one-line error naming the file.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

from .io_utils import atomic_write_json, disk_full_error, remove_tree
from .lora import LORA_WEIGHT_NAME, save_lora

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
# Settings a checkpoint must agree on to be resumed: the weights it holds only make sense for them.
CHECKPOINT_IDENTITY = ("model", "lora_rank", "lora_alpha", "lora_target_modules")


class CheckpointManager:
    """Saves, finds, rotates and resumes checkpoints under `output_dir/checkpoints`.

    `identity` holds the values of `CHECKPOINT_IDENTITY` for this run: saved with every checkpoint
    and compared on resume. `total_limit` keeps only the newest that many (0 or None: all).
    """

    def __init__(self, accelerator, output_dir: Path, pipeline_class: type, identity: dict[str, Any], total_limit: int | None) -> None:
        self.accelerator = accelerator
        self.root = Path(output_dir) / "checkpoints"
        self.pipeline_class = pipeline_class
        self.identity = identity
        self.total_limit = total_limit
        # The LoRA's moving average (`ema.LoraEMA`), saved beside the state when the run keeps one.
        self.ema = None

    @property
    def uses_deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def register_hooks(self) -> None:
        """accelerate's save/load_state keep only the LoRA (diffusers format), not the frozen base model."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self.uses_deepspeed:
            return  # DeepSpeed writes its own engine checkpoint (trainable parameters + partitioned optimizer).
        accelerator, pipeline_class = self.accelerator, self.pipeline_class

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
                    raise ValueError(f"checkpoint {input_dir} holds LoRA keys this model lacks: {result.unexpected_keys[:3]}...")

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    @staticmethod
    def _round(path: Path) -> int:
        return int(path.name.removeprefix(CHECKPOINT_PREFIX))

    def _all_dirs(self) -> list[Path]:
        """Every checkpoint dir, complete or not, oldest first."""
        found = [path for path in self.root.glob(f"{CHECKPOINT_PREFIX}*") if path.is_dir()]
        return sorted((path for path in found if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()), key=self._round)

    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return [path for path in self._all_dirs() if (path / TRAINER_STATE).is_file()]

    def latest(self) -> Path | None:
        """The newest complete checkpoint. Newer incomplete ones (a save cut short) are named in a
        warning and, on the main process, removed: the run redoes their rounds."""
        complete = self.checkpoint_dirs()
        for path in self._all_dirs():
            if (path / TRAINER_STATE).is_file():
                continue
            if self.accelerator.is_main_process and (not complete or self._round(path) > self._round(complete[-1])):
                logger.warning("skipping incomplete checkpoint %s (no %s; a save cut short?) and removing it", path, TRAINER_STATE)
            if self.accelerator.is_main_process:
                remove_tree(path)
        return complete[-1] if complete else None

    def _unloadable(self, path: Path, what: str, error: BaseException) -> str:
        """One line: what of checkpoint `path` cannot be loaded, and the complete checkpoint before it to resume from instead."""
        named = path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        earlier = [other for other in self.checkpoint_dirs() if (self._round(other) < self._round(path) if named else other != path)]
        advice = (
            f"resume from the previous complete checkpoint with --resume_from_checkpoint {earlier[-1]}"
            if earlier
            else "there is no earlier complete checkpoint; start afresh with --overwrite_output_dir"
        )
        reason = " ".join(str(error).split()) or type(error).__name__
        return f"checkpoint {what} cannot be loaded ({reason}); {advice}"

    def save(self, round_index: int, global_step: int) -> Path:
        """Save the state after `round_index` on every process; the main process then rotates old ones."""
        path = self.root / f"{CHECKPOINT_PREFIX}{round_index:05d}"
        self.accelerator.wait_for_everyone()
        with disk_full_error(path):
            if self.uses_deepspeed:
                # Only the LoRA and its optimizer state: the frozen 7.2 GB transformer is the base model's.
                self.accelerator.save_state(str(path), exclude_frozen_parameters=True)
            else:
                self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            if self.ema is not None:
                with disk_full_error(path):
                    self.ema.save(path)
            # Written last: a checkpoint without it is incomplete and never resumed from.
            atomic_write_json(path / TRAINER_STATE, {"round": round_index, "global_step": global_step, **self.identity})
            if self.total_limit:
                for stale in self.checkpoint_dirs()[: -self.total_limit]:
                    remove_tree(stale)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, spec: str) -> dict[str, Any] | None:
        """Load `spec` ('latest' or a checkpoint dir) into the accelerator; its trainer state, or None if none to resume.

        The main process picks the checkpoint and reads its state, and every process loads that one:
        on several machines, each node's view of a shared file system may lag (a directory listing
        cached by NFS), and processes resuming from different checkpoints would silently diverge.
        """
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            path, state = self._choose(spec)
        else:
            from accelerate.utils import broadcast_object_list

            choice: tuple[str, str | None, dict[str, Any] | None] | None = None
            if accelerator.is_main_process:
                try:
                    path, state = self._choose(spec)
                    choice = ("ok", None if path is None else str(path), state)
                except (ValueError, OSError) as error:  # on every process, not only here: no one hangs
                    choice = (type(error).__name__, str(error), None)
            kind, value, state = broadcast_object_list([choice], from_process=0)[0]
            if kind != "ok":
                raise {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}.get(kind, OSError)(value)
            path = None if value is None else Path(value)
        if path is None:
            return None
        try:
            if self.uses_deepspeed:
                # The checkpoint holds the trainable (LoRA) parameters only; the frozen ones come from the base model.
                self.accelerator.load_state(str(path), load_module_strict=False)
            else:
                self.accelerator.load_state(str(path))
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            # A truncated optimizer/scheduler/RNG file (torch.load); the LoRA is checked in the load hook.
            raise ValueError(self._unloadable(path, str(path), error)) from error
        if self.ema is not None:
            self.ema.load(path)
        return state

    def _choose(self, spec: str) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint `spec` names and its trainer state, checked against this run; (None, None) if none."""
        if spec == "latest":
            path = self.latest()
            if path is None:
                logger.warning("resume_from_checkpoint=latest but %s has no checkpoint; starting fresh.", self.root.parent)
                return None, None
        else:
            path = Path(spec)
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a complete checkpoint (no {TRAINER_STATE}); pass 'latest' or a checkpoint-NNNNN dir.")
        state = json.loads(state_file.read_text())
        mismatched = {name: (state.get(name), value) for name, value in self.identity.items() if state.get(name) != value}
        if mismatched:
            detail = ", ".join(f"{name}: checkpoint {old!r} vs config {new!r}" for name, (old, new) in mismatched.items())
            raise ValueError(f"checkpoint {str(path)!r} was made with another model or LoRA config ({detail}); resume with the same settings.")
        return path, state
