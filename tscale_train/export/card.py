"""The model card of an exported adapter (`huggingface_hub.ModelCard`) and its eval-curve plot."""

from __future__ import annotations

import math
from pathlib import Path

CARD_TAGS = ["lora", "text-to-image", "diffusers", "dpo", "inference-time-scaling", "tscale-train"]


def family_tag(family: str) -> str:
    """The Hub tag of a family (`FlowGenerator.family`, e.g. "FLUX.2-klein"), from its registration."""
    from ..families import iter_families

    tags = {registered.name: registered.hub_tag for registered in iter_families() if registered.hub_tag}
    return tags.get(family, family.lower())


# Placeholders of the usage snippet; tests swap them for the tiny model and a local folder and run it.
SNIPPET_START, SNIPPET_END = "```python\n", "```\n"


def plot_eval_curve(rows: list[dict], path: Path) -> bool:
    """Budget-0 eval reward per round (and SES where measured); False when the run has no eval."""
    points = [
        (row["round"], row["eval/reward_budget0"]) for row in rows if _finite(row.get("eval/reward_budget0"))
    ]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    axis.plot(*zip(*points, strict=True), marker="o", label="budget 0 (the LoRA alone)")
    searched = [(row["round"], row["eval/reward_ses"]) for row in rows if _finite(row.get("eval/reward_ses"))]
    if searched:
        axis.plot(*zip(*searched, strict=True), marker="s", linestyle="--", label="with SES")
    axis.set_xlabel("round (-1: before training)")
    axis.set_ylabel("eval reward")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def pipeline_info(run_dir: Path) -> dict | None:
    """The run's `pipeline.json` (written by the trainer), or None for older runs."""
    import json

    from ..run_dir import PIPELINE_INFO_NAME

    path = Path(run_dir) / PIPELINE_INFO_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def run_pipeline_class(run_dir: Path) -> str:
    """The pipeline class a run trained (its `pipeline.json`; runs from before that file trained klein)."""
    info = pipeline_info(run_dir)
    return info["pipeline_class"] if info else "Flux2KleinPipeline"


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def usage_snippet(
    base_model: str,
    repo_id: str,
    prompt: str,
    steps: int,
    guidance_scale: float,
    pipeline_class: str = "Flux2KleinPipeline",
) -> str:
    return (
        "import torch\n"
        f"from diffusers import {pipeline_class}\n\n"
        'device = "cuda" if torch.cuda.is_available() else "cpu"\n'
        'dtype = torch.bfloat16 if device == "cuda" else torch.float32\n'
        f'pipe = {pipeline_class}.from_pretrained("{base_model}", dtype=dtype).to(device)\n'
        f'pipe.load_lora_weights("{repo_id}")\n'
        f'image = pipe(prompt="{prompt}", num_inference_steps={steps}, guidance_scale={guidance_scale}).images[0]\n'
        'image.save("example.png")\n'
    )


def write_model_card(
    folder: Path, source, rows: list[dict], *, repo_id: str, examples: list[dict], has_curve: bool
) -> Path:
    """`folder/README.md`: metadata (base model, library, tags, widget) and the body users read."""
    from huggingface_hub import ModelCard, ModelCardData

    config = source.config
    base_model = config.get("model", "")
    info = pipeline_info(source.run_dir)
    if info:
        pipeline_class, family = info["pipeline_class"], info["family"]
        steps, guidance = info["num_inference_steps"], info["guidance_scale"]
    else:  # a run from before pipeline.json: the only family then was klein
        pipeline_class, family = "Flux2KleinPipeline", "FLUX.2-klein"
        distilled = "base" not in base_model
        steps = 4 if distilled else 50
        guidance = config.get("guidance_scale") or (1.0 if distilled else 4.0)
    tags = [*CARD_TAGS[:3], family_tag(family), *CARD_TAGS[3:]]
    widget = [{"text": item["prompt"], "output": {"url": item["lora"]}} for item in examples]
    data = ModelCardData(
        base_model=base_model,
        library_name="diffusers",
        tags=tags,
        pipeline_tag="text-to-image",
        widget=widget or None,
    )
    evals = [row for row in rows if _finite(row.get("eval/reward_budget0"))]
    table = "\n".join(
        f"| {row['round']} | {row['eval/reward_budget0']:.4f} | {row['eval/reward_ses']:.4f} |"
        if _finite(row.get("eval/reward_ses"))
        else f"| {row['round']} | {row['eval/reward_budget0']:.4f} | |"
        for row in evals
    )
    trained_rounds = max((row["round"] for row in rows), default=-1) + 1
    sections = [
        f"# {repo_id.split('/')[-1]}",
        f"A LoRA for [{base_model}](https://huggingface.co/{base_model}) trained with "
        "tscale-train, online: each round, Spectral Evolution Search over the initial "
        "noise made chosen/rejected pairs by reward, and flow-matching Diffusion-DPO trained the LoRA on them, "
        "so the model learns to produce at budget 0 what it used to need a search for.",
        "## Training\n\n"
        f"| setting | value |\n|---|---|\n"
        f"| reward | `{config.get('reward')}` |\n"
        f"| search budget (candidates per prompt) | {config.get('budget')} |\n"
        f"| pairing | `{config.get('pairing')}` |\n"
        f"| rounds trained | {trained_rounds} ({source.label}) |\n"
        f"| prompts per round | {config.get('prompts_per_round')} |\n"
        f"| DPO beta | {config.get('beta')} |\n"
        f"| LoRA rank / alpha | {config.get('lora_rank')} / {config.get('lora_alpha') or config.get('lora_rank')} |\n"
        f"| LoRA targets | `{config.get('lora_target_modules')}` |\n"
        f"| resolution | {config.get('height') or 'model default'} x {config.get('width') or 'model default'} |"
        + (
            f"\n| held-out judges (guards) | `{config.get('guard_rewards')}` |"
            if config.get("guard_rewards")
            else ""
        )
        + (f"\n| LoRA EMA decay | {config.get('ema_decay')} |" if config.get("ema_decay") else ""),
    ]
    if evals:
        curve = "\n\n![eval curve](eval_curve.png)" if has_curve else ""
        sections.append(
            "## Eval: reward at budget 0 per round\n\n"
            'Held-out prompts, fixed seeds; round -1 is the base model. "with SES" is the search\'s reward '
            f"at budget {config.get('eval_budget') or config.get('budget')}, scored at the same steps.\n\n"
            "| round | budget 0 | with SES |\n|---|---|---|\n" + table + curve
        )
    if examples:
        rows_md = "\n".join(
            f"| {item['prompt']} | ![base]({item['base']}) | ![lora]({item['lora']}) |" for item in examples
        )
        sections.append(
            "## Examples (budget 0, same seeds)\n\n| prompt | without the LoRA | with the LoRA |\n|---|---|---|\n"
            + rows_md
        )
    prompt = examples[0]["prompt"] if examples else "a photo of a cat"
    sections.append(
        "## Use it\n\n"
        + SNIPPET_START
        + usage_snippet(base_model, repo_id, prompt, steps, guidance, pipeline_class)
        + SNIPPET_END
        + "\nOr search on top of it: `tscale ses --model "
        + base_model
        + " --lora "
        + repo_id
        + ' --prompt "..."`.'
        + (
            "\n`pytorch_lora_weights_comfyui.safetensors`, when present, is the same adapter in the original FLUX.2 layout "
            "for ComfyUI."
            if family.startswith("FLUX.2")
            else ""
        )
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = folder / "README.md"
    card.save(str(path))
    return path
