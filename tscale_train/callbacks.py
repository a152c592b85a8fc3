"""Callbacks of the online loop, in the manner of transformers' and TRL's `TrainerCallback`.

`OnlineDPOTrainer` runs the algorithm (search -> pairs -> DPO steps, round after round) and calls its
callbacks at fixed events; what a run does besides, the callbacks do: the LoRA's moving average
(`EMACallback`), the held-out eval (`EvaluationCallback`), the guards against reward hacking
(`GuardCallback`), when checkpoints are saved (`CheckpointCallback`), and, added by the entry points
(`tscale train`, the recipes) for `--push_to_hub`, the Hub push (`tscale_train.export.callback`), a layer
above: the loop knows nothing of it. `default_callbacks(config)` builds the loop's own callbacks.

Callbacks run in list order at every event, on every process unless an event says otherwise (most
of them gather, so every process must take part). A `TrainerControl` is shared by all of them and
the trainer: callbacks set its flags, the trainer acts on them (evaluate, save, stop), so every
process takes the same decisions from the same, gathered, metrics.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ema import LoraEMA
from .evaluation import GRID_NAME, Evaluator
from .guards import GuardMonitor, GuardVerdict, embedding_function
from .io_utils import atomic_directory, atomic_write_json, disk_full_error, remove_tree
from .lora import LORA_WEIGHT_NAME, save_lora
from .progress import write

if TYPE_CHECKING:
    from .config import OnlineDPOConfig

# The `trainer.OnlineDPOTrainer` the events get (not imported, even for types: it imports this module).
OnlineDPOTrainer = Any

__all__ = [
    "CallbackHandler",
    "CheckpointCallback",
    "EMACallback",
    "EvaluationCallback",
    "GuardCallback",
    "TrainerCallback",
    "TrainerControl",
    "default_callbacks",
]


def due(every: int, round_index: int) -> bool:
    """Whether something done every `every` rounds (0: never) is due after round `round_index`."""
    return every > 0 and (round_index + 1) % every == 0


@dataclass
class TrainerControl:
    """What the callbacks ask the trainer to do; the per-round flags are reset at every round's start."""

    should_evaluate: bool = False  # evaluate after this round's DPO steps
    should_search: bool = False  # ... with a search too (else at budget 0 only)
    should_save: bool = False  # save a checkpoint once the round is logged
    should_stop: bool = False  # end the run after this round (and, on resume, before any round)
    # Set with `should_stop`: the round the run stopped at, and the LoRA file (with its round) to keep as
    # the final LoRA instead of the trained one; the file is used only if it still exists at the end.
    stop_round: int | None = None
    final_lora: Path | None = None
    final_lora_round: int | None = None
    # True once the run has reached its last round or stopped (not when a call ends early, resumable).
    run_finished: bool = False

    def new_round(self) -> None:
        self.should_evaluate = self.should_search = self.should_save = False


class TrainerCallback:
    """A no-op at every event; subclasses override the events they need.

    Every event gets the trainer (its `config`, `accelerator`, models, `output_dir`...) and the shared
    `TrainerControl`. Metrics dicts are the round's, to read or extend.
    """

    # Whether the callback publishes the run (`--push_to_hub`): the trainer refuses that setting without one.
    pushes_to_hub: bool = False

    def on_init_end(self, trainer: OnlineDPOTrainer, control: TrainerControl) -> None:
        """Models, LoRA and optimizer are set up (before any resume): make what the callback needs."""

    def on_resume(
        self,
        trainer: OnlineDPOTrainer,
        control: TrainerControl,
        rows: list[dict[str, Any]],
        resumed_round: int | None,
    ) -> None:
        """The checkpoint of `resumed_round` (None: none, the run restarts) is loaded; `rows` are the
        metrics rows the run keeps, the same on every process: rebuild any state from them."""

    def on_train_begin(self, trainer: OnlineDPOTrainer, control: TrainerControl) -> None:
        """The run's config is written and trackers started; no round has run in this call yet."""

    def on_round_begin(self, trainer: OnlineDPOTrainer, control: TrainerControl, round_index: int) -> None:
        """A round starts: set what is due after it (`should_evaluate`, `should_search`, `should_save`)."""

    def on_step_end(self, trainer: OnlineDPOTrainer, control: TrainerControl, round_index: int) -> None:
        """One optimizer step was taken (gradients synchronised)."""

    def on_evaluate(
        self,
        trainer: OnlineDPOTrainer,
        control: TrainerControl,
        round_index: int,
        metrics: dict[str, float],
        with_search: bool,
    ) -> None:
        """Eval of round `round_index` (-1: before training), with the evaluated weights in the model
        (`evaluated_weights`): add to `metrics`, or judge what an earlier callback added."""

    def on_round_end(
        self, trainer: OnlineDPOTrainer, control: TrainerControl, round_index: int, metrics: dict[str, float]
    ) -> None:
        """The round is logged (and checkpointed when due): `should_stop` ends the run here."""

    def on_final_save(self, trainer: OnlineDPOTrainer, control: TrainerControl, lora_round: int) -> None:
        """Main process only: the final LoRA (of `lora_round`) is written, `final_state.json`, which
        commits it, not yet: write what belongs with it."""

    def on_train_end(self, trainer: OnlineDPOTrainer, control: TrainerControl) -> None:
        """This `train()` call ends (`control.run_finished` says whether the run did), after the final LoRA."""

    def evaluated_weights(self, trainer: OnlineDPOTrainer) -> AbstractContextManager | None:
        """A context that puts other weights in the model for eval, the last-good snapshot and the final
        LoRA (the moving average, for `EMACallback`); None to leave them."""
        return None


class CallbackHandler:
    """The trainer's callbacks, called in order at every event."""

    def __init__(self, callbacks: list[TrainerCallback]) -> None:
        self.callbacks = list(callbacks)

    def __iter__(self) -> Iterator[TrainerCallback]:
        return iter(self.callbacks)

    def call(self, event: str, *args, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args, **kwargs)

    @contextmanager
    def evaluated_weights(self, trainer: OnlineDPOTrainer) -> Iterator[None]:
        with ExitStack() as stack:
            for callback in self.callbacks:
                context = callback.evaluated_weights(trainer)
                if context is not None:
                    stack.enter_context(context)
            yield


class EMACallback(TrainerCallback):
    """An exponential moving average of the LoRA (`ema.LoraEMA`), updated after every optimizer step.

    The average is what is evaluated, kept by the guards and exported; checkpoints hold it (`ema.safetensors`).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: LoraEMA | None = None

    def on_init_end(self, trainer, control):
        self.ema = LoraEMA(trainer.lora_parameters, self.decay)
        trainer.checkpoints.extra_state.append(self.ema)  # saved in (and loaded from) every checkpoint

    def on_step_end(self, trainer, control, round_index):
        self.ema.update()

    def evaluated_weights(self, trainer):
        return self.ema.applied()


class EvaluationCallback(TrainerCallback):
    """The held-out eval (`evaluation.Evaluator`): before training (round -1, with search: the yardstick of
    `eval/amortisation_ratio`), every `eval_every` rounds (with search every `eval_ses_every`) and after
    the last round (with search)."""

    def __init__(self) -> None:
        self.evaluator: Evaluator | None = None

    def on_init_end(self, trainer, control):
        config = trainer.config
        # Diversity is seen through the training reward's image encoder: what that reward could collapse.
        embed = embedding_function(trainer.reward) if config.guard_diversity_seeds > 1 else None
        # The trainer's search, so pairs and eval search alike (and one patch reaches both).
        self.evaluator = Evaluator(
            config,
            trainer.accelerator,
            trainer.generator,
            trainer.model,
            trainer.eval_reward,
            trainer.prompt_cache,
            trainer.eval_prompts,
            trainer.output_dir,
            config.ses_config,
            search=trainer.search,
            guard_rewards=trainer.guard_rewards,
            embed=embed,
        )

    @property
    def measures_diversity(self) -> bool:
        return (
            self.evaluator is not None and self.evaluator.embed is not None and bool(self.evaluator.prompts)
        )

    def on_resume(self, trainer, control, rows, resumed_round):
        self.evaluator.before = next((row for row in rows if row["round"] == -1), None)

    def on_train_begin(self, trainer, control):
        if trainer.start_round == 0 and trainer.config.eval_every > 0:
            trainer.log(trainer.evaluate(-1, with_search=True), -1)

    def on_round_begin(self, trainer, control, round_index):
        config = trainer.config
        final_round = round_index == config.rounds - 1
        control.should_evaluate |= due(config.eval_every, round_index) or final_round
        control.should_search |= due(config.eval_ses_every, round_index) or final_round

    def on_evaluate(self, trainer, control, round_index, metrics, with_search):
        metrics.update(self.evaluator(round_index, with_search))
        # The grid eval/round_NNNNN.png holds (main process only) goes to the trackers too, at every eval; then it
        # is dropped (2 rows of 8 images at 1024px: ~50 MB of CPU memory not kept until the next eval).
        grid, self.evaluator.grid = self.evaluator.grid, None
        if grid is not None:
            trainer.log_images({GRID_NAME: grid}, round_index)


class GuardCallback(TrainerCallback):
    """The guards' policy (`guards.GuardMonitor`) over the metrics an `EvaluationCallback` before it measured.

    At every eval it adds `guard/held`; with `guard_policy: stop` it keeps the LoRA of the last eval
    where every guard held (`guard/last_good`) and, after `guard_patience` failing evals, stops the run
    with that LoRA as the final one and `guard/report.json` saying why. Its state follows from the logged
    metrics, so a resumed run rebuilds it, and a run a guard stopped stays stopped.
    """

    def __init__(self) -> None:
        self.monitor: GuardMonitor | None = None
        self.evaluation: EvaluationCallback | None = None  # whose round -1 metrics every guard judges against
        self.verdict: GuardVerdict | None = None  # the latest eval's, this round
        self.stopped: GuardVerdict | None = None

    def on_init_end(self, trainer, control):
        config = trainer.config
        self.evaluation = next(
            (callback for callback in trainer.callbacks if isinstance(callback, EvaluationCallback)), None
        )
        diversity = self.evaluation is not None and self.evaluation.measures_diversity
        self.monitor = GuardMonitor(
            reward_keys=[f"guard/{name}" for name in trainer.guard_rewards],
            diversity=diversity,
            tolerance=config.guard_tolerance,
            patience=config.guard_patience,
            policy=config.guard_policy,
            max_drift=config.guard_max_drift,
        )

    @property
    def keeps_last_good(self) -> bool:
        return self.monitor.active and self.monitor.policy == "stop"

    @staticmethod
    def last_good_dir(trainer: OnlineDPOTrainer) -> Path:
        """The LoRA of the last eval where every guard held (with `guard_policy: stop`)."""
        return trainer.output_dir / "guard" / "last_good"

    def on_resume(self, trainer, control, rows, resumed_round):
        # The streak and last good round follow from the logged rows.
        self.monitor.replay(rows)
        self._check_last_good(trainer, resumed_round)

    def _check_last_good(self, trainer: OnlineDPOTrainer, resumed_round: int | None) -> None:
        """After a resume: the saved last-good LoRA must be the replayed last good round's.

        A snapshot written after the checkpoint (in rounds this resume drops) is stale: when the last
        good round is the checkpoint's own, its LoRA is the one just loaded and is saved again; else it
        is removed, with a warning. Files are the main process's; every process meets at the barrier.
        """
        good = self.monitor.last_good_round
        directory = self.last_good_dir(trainer)
        if self.keeps_last_good and good is not None and trainer.accelerator.is_main_process:
            marker = directory / "round.json"
            saved = json.loads(marker.read_text())["round"] if marker.is_file() else None
            if saved != good and good == resumed_round:
                with trainer.evaluated_lora():
                    self._save_last_good(trainer, good)
            elif saved != good:
                remove_tree(directory)  # another round's LoRA: never to be passed off as this one
                warnings.warn(
                    f"the LoRA of round {good}, the last eval where every guard held, is no longer saved (guard/last_good "
                    f"held round {saved}); if a guard stops this run, its final LoRA will be the one at the stop.",
                    stacklevel=2,
                )
        trainer.accelerator.wait_for_everyone()

    def on_train_begin(self, trainer, control):
        # A run a guard stopped stays stopped: resuming it (a scheduler relaunching the job) only finishes it.
        history = self.monitor.history
        if history and history[-1].action == "stop":
            self._stop(trainer, control, history[-1])

    def on_round_begin(self, trainer, control, round_index):
        self.verdict = None

    def on_evaluate(self, trainer, control, round_index, metrics, with_search):
        if not metrics:
            return  # no held-out prompts: nothing to judge
        # Round -1's metrics, as the evaluation keeps them (set by its eval or its resume), not a copy.
        before = self.evaluation.evaluator.before if self.evaluation is not None else None
        self.verdict = self.monitor.observe(round_index, before, metrics)
        metrics["guard/held"] = float(self.verdict.held)
        if self.verdict.held and self.keeps_last_good:
            self._save_last_good(trainer, round_index)  # the evaluated LoRA: the trainer applied it

    def _save_last_good(self, trainer: OnlineDPOTrainer, round_index: int) -> None:
        """The evaluated LoRA (the average, with EMA) as it stands, swapped in whole for the previous one."""
        if not trainer.accelerator.is_main_process:
            return
        directory = self.last_good_dir(trainer)
        with disk_full_error(directory), atomic_directory(directory, remove_stale=True) as staging:
            save_lora(type(trainer.pipe), trainer.unwrapped_transformer, staging)
            atomic_write_json(staging / "round.json", {"round": round_index})

    def on_round_end(self, trainer, control, round_index, metrics):
        verdict = self.verdict
        if verdict is None:
            return
        if verdict.action == "warn":
            write(
                f"guard warning at round {round_index}: " + "; ".join(verdict.failures),
                main=trainer.accelerator.is_main_process,
            )
        if verdict.action == "stop":  # the same verdict on every rank: all stop together
            self._stop(trainer, control, verdict)

    def _stop(self, trainer: OnlineDPOTrainer, control: TrainerControl, verdict: GuardVerdict) -> None:
        self.stopped = verdict
        control.should_stop = True
        control.stop_round = verdict.round
        control.final_lora = self.last_good_dir(trainer) / LORA_WEIGHT_NAME
        control.final_lora_round = self.monitor.last_good_round

    def on_final_save(self, trainer, control, lora_round):
        if self.stopped is None:
            return
        report = {
            "stopped_at_round": self.stopped.round,
            "final_lora_round": lora_round,
            "failures": self.stopped.failures,
            "guard_patience": self.monitor.patience,
            "guard_tolerance": self.monitor.tolerance,
        }
        atomic_write_json(trainer.output_dir / "guard" / "report.json", report)
        write(self.monitor.stop_message(self.stopped), main=trainer.accelerator.is_main_process)


class CheckpointCallback(TrainerCallback):
    """A checkpoint every `checkpoint_every` rounds and after the last one (see `checkpointing.py`)."""

    def on_round_begin(self, trainer, control, round_index):
        config = trainer.config
        control.should_save |= due(config.checkpoint_every, round_index) or round_index == config.rounds - 1


def default_callbacks(config: OnlineDPOConfig) -> list[TrainerCallback]:
    """The loop's callbacks for the run `config` describes: EMA (with `ema_decay`), eval, guards, checkpoints.

    The order matters: the guards judge what the eval before them measured. The Hub push (`push_to_hub`)
    is not among them: the entry points add `tscale_train.export.callback.PushToHubCallback`.
    """
    callbacks: list[TrainerCallback] = []
    if config.ema_decay is not None:
        callbacks.append(EMACallback(config.ema_decay))
    callbacks += [EvaluationCallback(), GuardCallback(), CheckpointCallback()]
    return callbacks
