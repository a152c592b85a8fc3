"""The model card of an exported adapter (`huggingface_hub.ModelCard`) and its eval-curve plot."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path
from typing import Any

CARD_TAGS = ["lora", "text-to-image", "diffusers", "dpo", "inference-time-scaling", "tscale-train"]


def family_tag(family: str) -> str:
    """The Hub tag of a family (`FlowGenerator.family`, e.g. "FLUX.2-klein"), from its registration."""
    from ..families import iter_families

    tags = {registered.name: registered.hub_tag for registered in iter_families() if registered.hub_tag}
    return tags.get(family, family.lower())


# Where the usage snippet starts and ends in the card; tests cut it out, swap the repo id for the export
# folder, and run it.
SNIPPET_START, SNIPPET_END = "```python\n", "```\n"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """Whether `name` is a Hub repo id (`namespace/name`) rather than an offline kit's name or a local folder."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def model_markdown(model: str) -> str:
    """How a card names a base model: a link to its Hub page, or (a kit, a local folder: no Hub page) its name."""
    from ..loading import is_offline_kit

    if is_hub_id(model):
        return f"[`{model}`](https://huggingface.co/{model})"
    if is_offline_kit(model):
        return f"`{_local_name(model)}` (tscale-train's offline random-weight test model)"
    return f"a local pipeline `{_local_name(model)}`"


def _local_name(model: str) -> str:
    """A kit's name as it is, a local folder's last part: no local path goes on the Hub."""
    from ..loading import kit_names

    return model if model in kit_names() else (Path(model).name or model)


def _model_argument(model: str) -> str:
    """A base model as `--model` or `from_pretrained` take it: a hub id or kit name as it is, a local folder as
    the placeholder `path/to/<folder name>` (its path is the exporter's, not the reader's)."""
    from ..loading import kit_names

    return model if is_hub_id(model) or model in kit_names() else f"path/to/{_local_name(model)}"


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
    call_kwargs: dict[str, Any],
    pipeline_class: str = "Flux2KleinPipeline",
) -> str:
    """Python that loads the base model and this LoRA and renders `prompt` with `call_kwargs` (size, steps, guidance,
    what else the pipeline needs: `prompt_call_arguments`).

    The base model is its hub id; an offline kit comes from tscale-train (`kit_pipeline_dir`, built on first
    use), and a local folder is a placeholder path, `path/to/<folder name>`, the user points at their copy.
    """
    from ..loading import kit_names

    imports = f"import torch\nfrom diffusers import {pipeline_class}\n"
    if base_model in kit_names():
        imports += "from tscale_train.loading import kit_pipeline_dir\n"
        source = f"str(kit_pipeline_dir({json.dumps(base_model)}))"
    else:
        source = json.dumps(_model_argument(base_model))
    arguments = "".join(
        f"    {name}={_literal(value)},\n" for name, value in {"prompt": prompt, **call_kwargs}.items()
    )
    return (
        f"{imports}\n"
        'device = "cuda" if torch.cuda.is_available() else "cpu"\n'
        'dtype = torch.bfloat16 if device == "cuda" else torch.float32\n'
        f"pipe = {pipeline_class}.from_pretrained({source}, dtype=dtype).to(device)\n"
        f"pipe.load_lora_weights({json.dumps(repo_id)})\n"
        f"image = pipe(\n{arguments}).images[0]\n"
        'image.save("example.png")\n'
    )


def _literal(value: Any) -> str:
    """A Python literal of a JSON value (strings in double quotes, as the rest of the snippet)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def prompt_call_arguments(info: dict | None, config: dict, pipeline_class: str) -> dict[str, Any]:
    """The keyword arguments of the snippet's `pipe(...)` call besides the prompt: the run's size, steps and
    guidance, and the other settings its generator sampled with (`pipeline.json`'s `prompt_call_kwargs`: a kit's
    text-encoder layers and text length, Qwen-Image's true CFG and negative prompt).

    A setting equal to the pipeline's own default is left out, the guidance and steps excepted, as is one the
    pipeline does not take. `info` is the run's `pipeline.json` (None: a run from before it, which trained klein).
    """
    import diffusers

    from ..generation import generator_class

    model = str(config.get("model", ""))
    if info:
        arguments: dict[str, Any] = {"height": info.get("height"), "width": info.get("width")}
        arguments["num_inference_steps"] = info["num_inference_steps"]
        recorded = info.get("prompt_call_kwargs")
        if recorded is None:  # a run from before pipeline.json recorded them
            guidance_argument = generator_class(pipeline_class).guidance_argument
            recorded = {guidance_argument: info["guidance_scale"], **_model_text_settings(model)}
    else:  # a run from before pipeline.json: the only family then was klein
        distilled = "base" not in model
        arguments = {"height": config.get("height"), "width": config.get("width")}
        arguments["num_inference_steps"] = 4 if distilled else 50
        guidance = config.get("guidance_scale") or (1.0 if distilled else 4.0)
        recorded = {"guidance_scale": guidance, **_model_text_settings(model)}
    arguments = {name: value for name, value in arguments.items() if value is not None}
    parameters = inspect.signature(getattr(diffusers, pipeline_class).__call__).parameters
    # The guidance is shown even at the pipeline's default, as the steps are: they say how the card's images and
    # eval were sampled.
    always = {"guidance_scale", "true_cfg_scale"}
    for name, value in recorded.items():
        if name not in parameters:
            continue
        default = parameters[name].default
        if name in always or _jsonable(default) != value:
            arguments[name] = value
    return arguments


def _model_text_settings(model: str) -> dict[str, Any]:
    """A model's own text-encoding settings (a kit's `tscale_tiny.json`), for runs whose pipeline.json lacks them."""
    from ..loading import generator_defaults

    settings = generator_defaults(model) if model else {}
    return {
        name: _jsonable(settings[name])
        for name in ("max_sequence_length", "text_encoder_out_layers")
        if name in settings
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_model_card(
    folder: Path, source, rows: list[dict], *, repo_id: str, examples: list[dict], has_curve: bool
) -> Path:
    """`folder/README.md`: metadata (base model, library, tags, widget) and the body users read."""
    from huggingface_hub import ModelCard, ModelCardData

    config = source.config
    base_model = str(config.get("model", ""))
    info = pipeline_info(source.run_dir)
    # A run from before pipeline.json: the only family then was klein.
    pipeline_class, family = (
        (info["pipeline_class"], info["family"]) if info else ("Flux2KleinPipeline", "FLUX.2-klein")
    )
    tags = [*CARD_TAGS[:3], family_tag(family), *CARD_TAGS[3:]]
    widget = [{"text": item["prompt"], "output": {"url": item["lora"]}} for item in examples]
    data = ModelCardData(
        # The Hub links `base_model` to that model's page: a kit or a local folder has none.
        base_model=base_model if is_hub_id(base_model) else None,
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
        f"A LoRA for {model_markdown(base_model)} trained with "
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
        + usage_snippet(
            base_model, repo_id, prompt, prompt_call_arguments(info, config, pipeline_class), pipeline_class
        )
        + SNIPPET_END
        + "\nOr search on top of it: `tscale ses --model "
        + _model_argument(base_model)
        + " --lora "
        + repo_id
        + ' --prompt "..."`.'
        + (
            "\n`pytorch_lora_weights_comfyui.safetensors`, when present, is the same adapter in the original FLUX.2 "
            "layout, for ComfyUI. With diffusers load the default file: diffusers' reader of the original layout "
            "keeps the final norm's modulation (`norm_out.linear`) in the original (shift, scale) order, so a LoRA "
            "that trained it (`lora_target_modules: all_linear`) reads back with those halves swapped."
            if family.startswith("FLUX.2")
            else ""
        )
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = folder / "README.md"
    card.save(str(path))
    return path
