"""Online SES -> flow-matching Diffusion-DPO on a FLUX.2-klein LoRA.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/flux2_klein_dpo.py \
        --config recipes/configs/flux2_klein_4b.yaml --prompts prompts.txt --output_dir runs/cat

With no arguments it trains FLUX.2-klein-4B with the default `OnlineDPOConfig` on the bundled prompts.
The loop lives in `tscale_train.trainer.OnlineDPOTrainer`; this file only launches it, as
`tscale train` does (same settings, same one-line errors and exit code 2 for bad input).
"""

import sys

from tscale_train.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
