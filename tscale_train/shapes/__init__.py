"""The shapes world's model: a miniature FLUX.2-klein built from the real diffusers classes and trained
on the procedural world of `rewards.shapes.world` (`--model shapes`).

`model` declares its components; `training` trains them (resumable, on 2 CPU cores); the trained
pipeline ships in `tscale_train/shapes/pipeline` and loads with `Flux2KleinPipeline.from_pretrained`.
"""

from pathlib import Path

SHAPES_MODEL_NAME = "shapes"
# The trained pipeline shipped with the package (weights as safetensors).
SHIPPED_PIPELINE_DIR = Path(__file__).parent / "pipeline"
