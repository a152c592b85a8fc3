"""Online SES -> flow-matching Diffusion-DPO on a FLUX.2-klein LoRA.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/flux2_klein_dpo.py \
        --config recipes/configs/flux2_klein_4b.yaml --prompts prompts.txt --output_dir runs/cat

With no arguments it trains FLUX.2-klein-4B with the default `OnlineDPOConfig` on the bundled prompts.
The loop lives in `tscale_train.trainer.OnlineDPOTrainer`; this file only parses and launches.
"""

from tscale_train.config import parse_config
from tscale_train.trainer import OnlineDPOTrainer


def main() -> None:
    OnlineDPOTrainer(parse_config()).train()


if __name__ == "__main__":
    main()
