"""Launched by tests/test_launch.py under `accelerate launch`: the recipe's run, then every rank's view.

After training, each rank writes `ranks/rank_<i>.safetensors` (its own copy of the LoRA) and
`ranks/rank_<i>.json` (how the accelerate state and the model wrapper came up), so a test can check
that the processes really formed one data-parallel group and ended with the same weights.
"""

import json
from pathlib import Path

from safetensors.torch import save_file

from tscale_train.config import parse_config
from tscale_train.lora import lora_state_dict
from tscale_train.trainer import OnlineDPOTrainer


def main() -> None:
    config = parse_config()
    trainer = OnlineDPOTrainer(config)
    trainer.train()
    accelerator = trainer.accelerator
    ranks = Path(config.output_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    rank = accelerator.process_index
    state = lora_state_dict(trainer.unwrapped_transformer)
    save_file(
        {name: value.detach().float().cpu().contiguous() for name, value in state.items()},
        ranks / f"rank_{rank}.safetensors",
    )
    info = {
        "process_index": rank,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "model_class": type(trainer.model).__name__,
        "weight_dtype": str(trainer.weight_dtype),
    }
    (ranks / f"rank_{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
