"""Online SES -> flow-matching Diffusion-DPO on a Z-Image-Turbo LoRA.

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/z_image_turbo_dpo.py \
        --config recipes/configs/z_image_turbo.yaml --prompts prompts.txt --output_dir runs/cat

Z-Image-Turbo (`Tongyi-MAI/Z-Image-Turbo`, a `ZImagePipeline`) samples in 9 steps without CFG; the
settings live in the YAML (`recipes/configs/tiny_z_image.yaml` is its offline tiny twin). The loop lives
in `tscale_train.trainer.OnlineDPOTrainer`; this file only launches it, as `tscale train` does (same
settings, same one-line errors and exit code 2 for bad input).
"""

import sys

from tscale_train.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
