"""Write the shapes model's card (`README.md`) and its measured scores (`scores.json`) into the pipeline dir.

    python -m tscale_train.shapes.card [--pipeline tscale_train/shapes/pipeline]

The scores are budget-0 verifier accuracies per task family on the held-out prompts
(`tscale_train.shapes.evaluation`), which `tests/test_shapes_model.py` reproduces from the stored weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from rewards.shapes.world import COLOURS, FAMILIES, HELD_OUT_PAIRS, HELD_OUT_RELATIONS, SHAPES

from . import SHIPPED_PIPELINE_DIR
from .evaluation import evaluate_shapes, mean_and_se


def git_commit() -> str:
    """The checkout's short commit id ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _parameters(directory: Path) -> int:
    from safetensors.torch import load_file

    return sum(
        tensor.numel() for path in directory.glob("*.safetensors") for tensor in load_file(path).values()
    )


def _shown_path(pipeline_dir: Path) -> str:
    """The pipeline's path as a reader at the repository root would type it."""
    try:
        return str(pipeline_dir.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(pipeline_dir)


def measure(pipeline_dir: Path, images_per_family: int) -> dict:
    scores = evaluate_shapes(str(pipeline_dir), images_per_family=images_per_family)["base"]
    correct = scores.correct()
    families = {}
    for family in FAMILIES:
        mask = scores.mask(family)
        accuracy, se = mean_and_se(correct[mask])
        mean_score, _ = mean_and_se(torch.tensor(scores.verifier)[mask])
        families[family] = {
            "accuracy": accuracy,
            "se": se,
            "n": int(mask.sum()),
            "mean_clause_fraction": mean_score,
        }
    overall, overall_se = mean_and_se(correct)
    return {"model": str(pipeline_dir), "images_per_family": images_per_family, "families": families,
            "overall": {"accuracy": overall, "se": overall_se, "n": len(correct)}}  # fmt: skip


def card_text(pipeline_dir: Path, scores: dict) -> str:
    marker = json.loads((pipeline_dir / "tscale_tiny.json").read_text())
    training = marker.get("training", {})
    sizes = {name: _parameters(pipeline_dir / name) for name in ("transformer", "vae", "text_encoder")}
    rows = "\n".join(
        f"| {family} | {row['accuracy']:.3f} | {row['se']:.3f} | {row['n']} |"
        for family, row in scores["families"].items()
    )
    generator = marker["generator_kwargs"]
    history = (
        f"How the shipped weights were trained: {training['history']}\n" if training.get("history") else ""
    )
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [flux2-klein, tscale-train, shapes-world, miniature]
---
# shapes: a miniature FLUX.2-klein that draws the shapes world

A text-to-image model small enough to train on 2 CPU cores, built from the classes of
FLUX.2-klein (`Flux2KleinPipeline`: `AutoencoderKLFlux2`, `Flux2Transformer2DModel`, a `Qwen3ForCausalLM`
text encoder and a `Qwen2TokenizerFast`), trained on tscale-train's procedural shapes world. It is the
model on which tscale-train measures quality claims against a ground-truth judge; select it with
`--model shapes`.

```python
from diffusers import Flux2KleinPipeline

pipe = Flux2KleinPipeline.from_pretrained("{_shown_path(pipeline_dir)}")
image = pipe(prompt="a red circle to the left of a blue square", height={marker["resolution"]}, width={marker["resolution"]},
             num_inference_steps={generator["num_inference_steps"]}, guidance_scale={generator["guidance_scale"]},
             max_sequence_length={marker["max_sequence_length"]}, text_encoder_out_layers={tuple(marker["text_encoder_out_layers"])}).images[0]
```

![budget-0 samples on held-out prompts](samples.png)

## The world
{marker["resolution"]}x{marker["resolution"]} images of one to four flat objects ({", ".join(SHAPES)}) in eight exact colours
({", ".join(COLOURS)}) on white, with captions in GenEval's task families: {", ".join(FAMILIES)}.
Held out of training altogether (no training image or caption has them): the colour-shape pairs
{", ".join(" ".join(pair) for pair in HELD_OUT_PAIRS)}, and the relations {", ".join(f'"{shape} {relation}"' for relation, shape in HELD_OUT_RELATIONS)}.
Generator: `rewards/shapes/world.py`.

## The model
| component | class | parameters |
|---|---|---|
| transformer | `Flux2Transformer2DModel` (2 double + 4 single blocks, 4 heads x 32) | {sizes["transformer"]:,} |
| VAE | `AutoencoderKLFlux2` (4x downsampling, 8 latent channels) | {sizes["vae"]:,} |
| text encoder | `Qwen3ForCausalLM` (2 layers, width 64), frozen at random weights | {sizes["text_encoder"]:,} |
| tokenizer | byte-level BPE `Qwen2TokenizerFast`, one token per word of the grammar | |

An undistilled (klein-base-like) model: sampled with classifier-free guidance {generator["guidance_scale"]}, {generator["num_inference_steps"]} steps
({generator["preview_steps"]}-step previews while searching); these settings are recorded in `tscale_tiny.json` and every
`tscale` command picks them up. The transformer sees an 8x8 grid of 32-channel latent tokens; SES's
automatic wavelet level (1) searches a 4x4 low band per channel.

## Training
`python scripts/train_shapes_model.py` rebuilds these weights from seed {training.get("seed", 0)} on the CPU, resumably
(rerun the same command after an interruption). Settings: {json.dumps(training)}.
1. VAE: {training.get("vae_steps")} steps of L1 + MSE reconstruction (KL weight {training.get("kl_weight")}), batch {training.get("vae_batch_size")}; then its
   batch-norm statistics are set to the patchified training latents'.
2. Transformer: {training.get("transformer_steps")} steps of rectified flow matching, batch {training.get("batch_size")}, AdamW {training.get("learning_rate")}
   with warmup and cosine decay, logit-normal sigmas, {training.get("caption_dropout")} empty captions (for CFG); the EMA
   ({training.get("ema_decay")}) of the weights is stored.
3. Decoder: {training.get("decoder_steps")} more steps of the VAE's decoder alone, the encoder frozen (so the
   latent space the transformer learnt stays), for sharper edges and exact colours.
{history}Trained on a 2-core CPU shared with other work (no GPU was used).

## Scores: budget 0, held-out prompts, judged by the verifier
The verifier (`--reward verifier`, `rewards/shapes/verifier.py`) parses the prompt, segments the image by
the palette and checks every clause; an image is right when all clauses hold. One image per
(prompt, seed), about {scores["images_per_family"]} per family, seeds from `tscale_train.shapes.evaluation.EVAL_SEED`.

| family | accuracy | standard error | images |
|---|---|---|---|
{rows}
| overall | {scores["overall"]["accuracy"]:.3f} | {scores["overall"]["se"]:.3f} | {scores["overall"]["n"]} |

Measured at commit {git_commit()} on {platform.machine()} with {os.cpu_count()} CPUs; `tests/test_shapes_model.py`
regenerates them from these weights.
"""


def sample_grid(pipeline_dir: Path, per_family: int = 2, seed: int = 0):
    """Budget-0 images of the first held-out prompts of each family (one seed each), labelled."""
    from rewards.shapes.world import evaluation_prompts

    from ..generation import generator_for_pipeline
    from ..loading import load_pipeline
    from ..ses import labelled_grid, to_pil

    generator = generator_for_pipeline(load_pipeline(str(pipeline_dir), dtype="float32"), eval_batch_size=16)
    prompts = [prompt for family in evaluation_prompts().values() for prompt in family[:per_family]]
    noises = torch.cat([generator.initial_noise(seed + index) for index in range(len(prompts))])
    images = generator.generate(noises, [generator.encode_prompt(prompt) for prompt in prompts]).images
    return labelled_grid([to_pil(images)], prompts, None, min_side=128)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default=str(SHIPPED_PIPELINE_DIR))
    parser.add_argument("--images_per_family", type=int, default=80)
    args = parser.parse_args(argv)
    pipeline_dir = Path(args.pipeline)
    scores = measure(pipeline_dir, args.images_per_family)
    scores["model"] = pipeline_dir.name
    (pipeline_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    sample_grid(pipeline_dir).save(pipeline_dir / "samples.png")
    (pipeline_dir / "README.md").write_text(card_text(pipeline_dir, scores))
    for family, row in scores["families"].items():
        print(f"{family:<20} {row['accuracy']:.3f} +- {row['se']:.3f} (n={row['n']})")


if __name__ == "__main__":
    main()
