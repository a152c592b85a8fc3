"""`PushToHubCallback`: a finished training run's LoRA, with its model card, to the Hugging Face Hub.

The export layer reads finished runs; the training loop knows nothing of it. This callback is what
joins them: the entry points (`tscale train`, the recipes, through `cli.make_trainer`) add it for
`--push_to_hub`, next to `callbacks.default_callbacks(config)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..callbacks import TrainerCallback
from .hub import resolve_token

if TYPE_CHECKING:
    from ..callbacks import TrainerControl
    from ..config import OnlineDPOConfig
    from ..trainer import OnlineDPOTrainer

__all__ = ["PushToHubCallback"]


class PushToHubCallback(TrainerCallback):
    """Push the final LoRA to `repo_id` once the run has finished (not after a call that stops early,
    resumable), from the main process, with examples rendered by the run's own pipeline."""

    pushes_to_hub = True

    def __init__(self, repo_id: str, private: bool = False) -> None:
        # On every rank (it only reads the environment), so all fail together, before the run claims its dir:
        # without a token, fail now, not after the last round.
        resolve_token()
        self.repo_id = repo_id
        self.private = private

    @classmethod
    def from_config(cls, config: OnlineDPOConfig) -> list[PushToHubCallback]:
        """The push `config` asks for (`push_to_hub`, `hub_model_id`, `hub_private_repo`): one callback, or none."""
        return [cls(config.hub_model_id, private=config.hub_private_repo)] if config.push_to_hub else []

    def on_train_end(self, trainer: OnlineDPOTrainer, control: TrainerControl) -> None:
        if not (control.run_finished and trainer.accelerator.is_main_process):
            return
        from .run import ExportArguments, export_run

        arguments = ExportArguments(run=str(trainer.output_dir), repo_id=self.repo_id, private=self.private)
        export_run(arguments, pipe=trainer.pipe, log=tqdm.write)
