"""Rebuild the shapes model (`--model shapes`) from its seed on the CPU, resumably.

    python scripts/train_shapes_model.py --work-dir runs/shapes-model --out tscale_train/shapes/pipeline

Run it again with the same arguments to resume after an interruption or a `--max-minutes` stop: the
checkpoints in `--work-dir` hold the step reached, and each batch is drawn from the seed and the step.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from tscale_train.shapes import SHIPPED_PIPELINE_DIR
from tscale_train.shapes.training import ShapesTrainingConfig, assemble_from_state, train_shapes_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="runs/shapes-model", help="checkpoints; the same dir resumes")
    parser.add_argument(
        "--out", default=str(SHIPPED_PIPELINE_DIR), help="where the finished pipeline is saved"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--assemble-from-state",
        action="store_true",
        help="save the pipeline from the latest checkpoint of an unfinished run (the EMA weights) and exit",
    )
    for field in dataclasses.fields(ShapesTrainingConfig):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.assemble_from_state:
        print(f"saved the shapes pipeline to {assemble_from_state(args.out, args.work_dir)}")
        return
    config = ShapesTrainingConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(ShapesTrainingConfig)}
    )
    out = train_shapes_model(args.out, args.work_dir, config, max_minutes=args.max_minutes)
    print(
        f"saved the shapes pipeline to {out}"
        if out
        else f"stopped after {args.max_minutes} min; run again to resume"
    )


if __name__ == "__main__":
    main()
