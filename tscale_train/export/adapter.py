"""The adapter folder of a run (or of one of its checkpoints), as diffusers and the Hub expect it.

`find_adapter(path)` accepts a finished run, a run still training (its latest complete checkpoint),
or a checkpoint dir, and reads one committed round: its LoRA, and the pair manifest it recorded, so an
export never mixes one round's LoRA with another's pairs, whatever is running. `build_adapter_folder` writes, atomically:

    pytorch_lora_weights.safetensors   the LoRA as `save_lora_weights` writes it (`transformer.` keys,
                                       its LoRA config in the metadata), checked against the base model
    config.yaml, metrics.jsonl         the run's settings and its metrics up to this adapter's round
    eval_curve.png                     budget-0 eval reward per round
    images/                            examples: budget 0 without and with the LoRA, same seeds
    README.md                          the model card (`card.py`)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..checkpointing import CHECKPOINT_PREFIX, TRAINER_STATE, checkpoint_dirs
from ..io_utils import atomic_directory
from ..lora import LORA_WEIGHT_NAME
from ..run_dir import FINAL_STATE_NAME, METRICS_NAME, read_metrics

EXAMPLE_PROMPTS_COUNT = 2


@dataclass
class AdapterSource:
    lora_file: Path
    run_dir: Path
    label: str  # "final" or the checkpoint's name
    round: int | None  # the last round the adapter was trained on (None: unknown)
    config: dict
    # The committed round whose pairs go with this adapter, and what its commit recorded of the pair
    # store (None: a run written before commits recorded it; its pairs are taken as they are).
    pairs_round: int | None = None
    pairs: dict | None = None

    @property
    def pair_rounds(self) -> range | None:
        """The rounds whose pairs belong to this adapter's commit (None: all that are stored)."""
        return None if self.pairs_round is None else range(self.pairs_round + 1)


def find_adapter(path: str | Path) -> AdapterSource:
    """The LoRA of a finished run, of a run still training (latest complete checkpoint), or of a checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a directory; pass a run's --output_dir or one of its checkpoints."
        )
    if path.name.startswith(CHECKPOINT_PREFIX):
        return _from_checkpoint(path, run_dir=path.parent.parent)
    checkpoints = checkpoint_dirs(path / "checkpoints")
    final = json.loads((path / FINAL_STATE_NAME).read_text()) if (path / FINAL_STATE_NAME).is_file() else None
    newest = int(checkpoints[-1].name.removeprefix(CHECKPOINT_PREFIX)) if checkpoints else None
    if (
        final is not None
        and (path / LORA_WEIGHT_NAME).is_file()
        and (newest is None or final["round"] >= newest)
    ):
        # The finished run's commit. A run resumed for more rounds has newer checkpoints: those come first.
        return _from_final(path, final)
    legacy = final is None and (
        not checkpoints or "pairs" not in json.loads((checkpoints[-1] / TRAINER_STATE).read_text())
    )
    if checkpoints and not (legacy and (path / LORA_WEIGHT_NAME).is_file()):
        return _from_checkpoint(checkpoints[-1], run_dir=path)
    if (path / LORA_WEIGHT_NAME).is_file():  # a run finished before final_state.json existed
        rows = _metrics(path)
        last = max((row["round"] for row in rows), default=None)
        report = path / "guard" / "report.json"
        if report.is_file():
            # A guard stopped the run: its final LoRA is the last good round's, and its card says so.
            stop = json.loads(report.read_text())
            label = f"final: round {stop['final_lora_round']}'s, kept when a guard stopped the run at round {stop['stopped_at_round']}"
            return AdapterSource(
                path / LORA_WEIGHT_NAME, path, label, stop["final_lora_round"], _config(path)
            )
        return AdapterSource(path / LORA_WEIGHT_NAME, path, "final", last, _config(path))
    raise FileNotFoundError(
        f"no adapter in {str(path)!r}: expected {LORA_WEIGHT_NAME} (a finished run) or a complete checkpoint "
        "under checkpoints/ (a run still training)."
    )


def _from_final(run_dir: Path, final: dict) -> AdapterSource:
    label = "final"
    if (run_dir / "guard" / "report.json").is_file():
        # A guard stopped the run: its final LoRA is the last good round's, and its card says so.
        label = f"final: round {final['lora_round']}'s, kept when a guard stopped the run at round {final['round']}"
    return AdapterSource(
        run_dir / LORA_WEIGHT_NAME,
        run_dir,
        label,
        final["lora_round"],
        _config(run_dir),
        pairs_round=final["round"],
        pairs=final.get("pairs"),
    )


def _from_checkpoint(checkpoint: Path, run_dir: Path) -> AdapterSource:
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r} is not a complete checkpoint (no {TRAINER_STATE}).")
    lora = checkpoint / LORA_WEIGHT_NAME
    if not lora.is_file():
        raise FileNotFoundError(
            f"{str(checkpoint)!r} holds no {LORA_WEIGHT_NAME} (a DeepSpeed engine checkpoint?); export the run "
            "once it has finished, or a checkpoint of a DDP / single-GPU run."
        )
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    return AdapterSource(
        lora,
        run_dir,
        checkpoint.name,
        int(state["round"]),
        _config(run_dir),
        pairs_round=int(state["round"]),
        pairs=state.get("pairs"),
    )


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} has no config.yaml: is it the --output_dir of a tscale training run?"
        )
    return yaml.safe_load(path.read_text()) or {}


def _metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / METRICS_NAME)


def check_adapter_matches_model(lora_file: Path, model: str) -> int:
    """Every LoRA tensor must sit on a linear of the base model's transformer with the right shape.

    Checked on the meta device from the model's configs (no weights). Returns the number of adapted
    linears; raises ValueError naming the first mismatch.
    """
    import torch
    from safetensors import safe_open

    from ..plan.components import base_transformer_on_meta

    transformer = base_transformer_on_meta(model)
    linears = {
        name: module for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)
    }
    adapted = set()
    with safe_open(str(lora_file), framework="pt") as handle:
        for key in handle.keys():
            module_name, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
            shape = tuple(handle.get_slice(key).get_shape())
            module = linears.get(module_name)
            if module is None:
                raise ValueError(
                    f"the adapter has weights for {module_name!r}, which {model!r} does not have: "
                    "it was trained for another base model."
                )
            expected = module.in_features if kind.startswith("A") else module.out_features
            if expected not in shape:
                raise ValueError(
                    f"the adapter's {key} has shape {shape}, but {module_name!r} of {model!r} is "
                    f"{module.in_features} -> {module.out_features}: it was trained for another base model."
                )
            adapted.add(module_name)
    if not adapted:
        raise ValueError(f"{str(lora_file)!r} holds no LoRA weights.")
    return len(adapted)


def build_adapter_folder(
    source: AdapterSource,
    out_dir: str | Path,
    *,
    repo_id: str,
    examples: bool = True,
    comfyui: bool = False,
    pipe=None,
) -> Path:
    """Write the folder to upload (see the module docstring); returns `out_dir`.

    `pipe`: a loaded pipeline carrying this adapter, to render the examples with (see `render_examples`).
    """
    from .card import plot_eval_curve, write_model_card

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / LORA_WEIGHT_NAME).is_file():
        raise ValueError(f"{str(out_dir)!r} is not empty and is not an earlier export; pass another --out.")
    model = source.config.get("model", "")
    check_adapter_matches_model(source.lora_file, model)
    rows = [row for row in _metrics(source.run_dir) if source.round is None or row["round"] <= source.round]
    with atomic_directory(Path(out_dir), remove_stale=True) as staging:
        staging.mkdir(parents=True)
        shutil.copyfile(source.lora_file, staging / LORA_WEIGHT_NAME)
        (staging / "config.yaml").write_text(yaml.safe_dump(source.config, sort_keys=False))
        (staging / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        curve = plot_eval_curve(rows, staging / "eval_curve.png")
        shown = render_examples(source, staging / "images", pipe=pipe) if examples else []
        if comfyui:
            from .card import run_pipeline_class
            from .comfyui import save_comfyui_lora

            save_comfyui_lora(staging / LORA_WEIGHT_NAME, staging, run_pipeline_class(source.run_dir))
        write_model_card(staging, source, rows, repo_id=repo_id, examples=shown, has_curve=curve)
    return Path(out_dir)


def render_examples(source: AdapterSource, images_dir: Path, pipe=None) -> list[dict]:
    """Budget-0 images of a few eval prompts, without and with the LoRA, from the same seeds.

    `pipe`: a pipeline that already carries this adapter (the trainer's, at the end of training),
    used with its adapters switched off and on; by default the base model is loaded and the LoRA
    file loaded into it.
    """
    import torch

    from ..generation import generator_for_pipeline
    from ..loading import load_lora, load_pipeline
    from ..ses import to_pil

    config = source.config
    prompts = _example_prompts(source)
    if pipe is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = load_pipeline(
            config["model"], dtype="bfloat16" if device == "cuda" else "float32", device=device
        )
        load_lora(pipe, str(source.lora_file))
    generator = generator_for_pipeline(
        pipe,
        height=config.get("height"),
        width=config.get("width"),
        guidance_scale=config.get("guidance_scale"),
    )
    noises = torch.cat([generator.initial_noise(seed) for seed in range(len(prompts))])
    embeds = [generator.encode_prompt(prompt) for prompt in prompts]
    pipe.transformer.disable_adapters()
    try:
        base = to_pil(generator.generate(noises, embeds).images)
    finally:
        pipe.transformer.enable_adapters()
    adapted = to_pil(generator.generate(noises, embeds).images)
    images_dir.mkdir(parents=True, exist_ok=True)
    shown = []
    for index, prompt in enumerate(prompts):
        names = {"base": f"images/example_{index}_base.png", "lora": f"images/example_{index}_lora.png"}
        base[index].save(images_dir.parent / names["base"])
        adapted[index].save(images_dir.parent / names["lora"])
        shown.append({"prompt": prompt, "seed": index, **names})
    return shown


def _example_prompts(source: AdapterSource) -> list[str]:
    from ..prompts import BUNDLED_PROMPTS, load_prompts

    config = source.config
    if config.get("eval_prompts"):
        prompts = load_prompts(config["eval_prompts"], column=config.get("prompt_column", "prompt"))
    else:
        prompts = load_prompts(
            config.get("prompts") or BUNDLED_PROMPTS, column=config.get("prompt_column", "prompt")
        )
    return prompts[:EXAMPLE_PROMPTS_COUNT]
