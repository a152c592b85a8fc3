"""`shapes-clip`: a small CLIP trained on the shapes world, the learned reward that plays PickScore's part.

The model is an ``open_clip.CLIP`` (a ViT on 64x64 images, patch 8, and a text transformer) with a
word-level tokenizer over the shapes world's vocabulary. Its directory is an ordinary open_clip
"local-dir" model: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), the weights as
``open_clip_model.safetensors`` and a Hugging Face ``tokenizer.json`` that open_clip's
``get_tokenizer`` picks up through ``text_cfg.hf_tokenizer_name``. So it loads offline, without
pickles, through the same code as the "clip" reward (``rewards.clip.create_open_clip_model``);
``load_reward("clip", model_name=SHAPES_CLIP_DIR)`` gives the same scores.

Score = ``100 * cosine(image_embedding, text_embedding)``, the "clip" reward's convention. Images of
any size are resized (shortest side, bicubic, antialiased) and centre-cropped to 64x64 on the
reward's device, one batched operation.

The shipped weights (``rewards/shapes/shapes_clip/``) come from :func:`train_shapes_clip` with its
defaults (``scripts/train_shapes_clip.py``): symmetric InfoNCE on freshly generated training-split
scenes (no held-out colour-shape pair or relation ever appears, in images or captions), with
augmentations a generated image shows (softness, noise, small colour shifts) and, for each image,
one caption that differs from its own in a single detail (a colour, a shape, the count, the relation,
which object is larger) as an extra negative. See ``shapes_clip/README.md`` for its measurements.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..clip import CLIPSCORE_SCALE, OpenClipEmbeddingReward, create_open_clip_model, quiet_root_warnings
from .world import (
    COLOURS,
    NUMBERS,
    RELATIONS,
    RESOLUTION,
    SHAPES,
    SIZES,
    Requirement,
    Scene,
    caption,
    is_held_out,
    training_batch,
)

SHAPES_CLIP_DIR = Path(__file__).resolve().parent / "shapes_clip"
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
TRAINING_FILE = "training.json"

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<start_of_text>", "<end_of_text>"
_WORDS = sorted(
    {"a", "an", "and", "to", "the", "of", "left", "right", "above", "below"}
    | set(SIZES)
    | set(NUMBERS.values())
    | set(COLOURS)
    | set(SHAPES)
    | {shape + "s" for shape in SHAPES}
)
# The end-of-text token has the highest id: open_clip's text tower pools at argmax(token id).
VOCAB = (PAD, UNK, SOT, *_WORDS, EOT)
CONTEXT_LENGTH = 16
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / STD
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": RESOLUTION, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32},
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": len(VOCAB),
        "width": 64,
        "heads": 2,
        "layers": 3,
        # Any non-empty name: for a "local-dir:" model open_clip then loads the tokenizer files beside the config.
        "hf_tokenizer_name": "shapes-clip-words",
        "pad_id": 0,
    },
}
PREPROCESS_CONFIG: dict[str, Any] = {
    "size": RESOLUTION,
    "mean": list(IMAGE_MEAN),
    "std": list(IMAGE_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


class ShapesClipReward(OpenClipEmbeddingReward):
    """`100 * cosine` on the shapes-world CLIP; `path` is a directory saved by :func:`train_shapes_clip`
    (default: the shipped weights, ``rewards/shapes/shapes_clip/``)."""

    name = "shapes-clip"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        directory = Path(path).expanduser() if path is not None else SHAPES_CLIP_DIR
        if not (directory / WEIGHTS_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{str(directory)!r} holds no shapes-clip model ({CONFIG_FILE} and {WEIGHTS_FILE}); pass a "
                "directory written by rewards.shapes.clip.train_shapes_clip, or none for the shipped weights"
            )
        model, tokenizer, self.model_name = create_open_clip_model(directory, None)
        self.path = directory
        self._setup(model, tokenizer)

    def score_scale(self) -> float:
        return CLIPSCORE_SCALE


# ---------------------------------------------------------------------------------------------------------
# Training


def write_model_files(directory: str | Path) -> Path:
    """Write the config and tokenizer of a shapes-clip directory (everything but the weights)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CONFIG, "preprocess_cfg": PREPROCESS_CONFIG}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    ids = {token: index for index, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(WordLevel(ids, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex("[^a-z]+"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, ids[SOT]), (EOT, ids[EOT])]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SOT,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=CONTEXT_LENGTH,
    ).save_pretrained(directory)
    return directory


def perturb(requirement: Requirement, rng: random.Random) -> Requirement | None:
    """A requirement that differs from `requirement` in one detail (None when the drawn change is impossible):
    a colour, a shape, the count, the relation, which object is larger, or the two colours swapped."""
    objects = list(requirement.objects)
    family = requirement.family
    changes = ["colour", "shape"]
    if family == "counting":
        changes.append("count")
    if family == "position":
        changes += ["relation", "relation"]
    if family == "colour_attribution":
        changes += ["larger", "swap"]
    if family in ("two_objects", "position"):
        changes.append("swap")
    change = rng.choice(changes)
    if change == "colour":
        index = rng.randrange(len(objects))
        colour = rng.choice([name for name in COLOURS if name != objects[index][0]])
        objects[index] = (colour, objects[index][1])
    elif change == "shape":
        if family == "colour_attribution":  # both objects share the shape
            shape = rng.choice([name for name in SHAPES if name != objects[0][1]])
            objects = [(colour, shape) for colour, _ in objects]
        else:
            index = rng.randrange(len(objects))
            shape = rng.choice([name for name in SHAPES if name != objects[index][1]])
            objects[index] = (objects[index][0], shape)
    elif change == "count":
        return replace(requirement, count=rng.choice([n for n in NUMBERS if n != requirement.count]))
    elif change == "relation":
        return replace(requirement, relation=rng.choice([r for r in RELATIONS if r != requirement.relation]))
    elif change == "larger":
        return replace(requirement, larger=not requirement.larger)
    else:
        if objects[0][0] == objects[1][0]:
            return None
        objects = [(objects[1][0], objects[0][1]), (objects[0][0], objects[1][1])]
    if family == "two_objects" and objects[0][1] == objects[1][1] or len(set(objects)) < len(objects):
        return None
    return replace(requirement, objects=tuple(objects))


def hard_negative_caption(scene: Scene, rng: random.Random, *, allow_held_out: bool = False) -> str:
    """A caption one detail away from the scene's own (never a held-out one unless `allow_held_out`)."""
    for _ in range(100):
        other = perturb(scene.requirement, rng)
        if other is not None and (allow_held_out or not is_held_out(other)):
            text = caption(other)
            if text != scene.prompt:
                return text
    raise RuntimeError(f"found no caption one detail away from {scene.prompt!r}")


def _gaussian_kernels(sigmas: torch.Tensor, radius: int = 2) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None].clamp_min(1e-3) ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a generated image shows that a clean rendering does not: softness (a per-image Gaussian blur,
    sigma up to 1 px), a small colour shift (per-channel gain and offset) and pixel noise. [N, 3, H, W] in [0, 1]."""
    count = pixels.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    sigmas = uniform(0.0, 1.0, count) * (torch.rand(count, generator=generator) < 0.6)
    kernels = _gaussian_kernels(sigmas)  # [N, 5]
    radius = kernels.shape[1] // 2
    height, width = pixels.shape[-2:]
    flat = pixels.reshape(1, count * 3, height, width)
    padded = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = F.conv2d(padded, kernels.repeat_interleave(3, dim=0)[:, None, None, :], groups=count * 3)
    padded = F.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = F.conv2d(padded, kernels.repeat_interleave(3, dim=0)[:, None, :, None], groups=count * 3)
    pixels = flat.reshape(count, 3, height, width)
    gain = 1.0 + uniform(-0.08, 0.08, count, 3, 1, 1)
    offset = uniform(-0.05, 0.05, count, 3, 1, 1)
    noise = torch.randn(pixels.shape, generator=generator) * uniform(0.0, 0.05, count, 1, 1, 1)
    return (pixels * gain + offset + noise).clamp(0.0, 1.0)


def render_batch(scenes: list[Scene], rng: random.Random) -> torch.Tensor:
    """Scenes as [N, 3, 64, 64] in [0, 1]; a quarter drawn at 128 px and downscaled (antialiased edges, as the
    reward sees a large generated image)."""
    import numpy as np

    images = []
    for scene in scenes:
        if rng.random() < 0.25:
            large = torch.from_numpy(np.array(scene.render(2 * RESOLUTION))).permute(2, 0, 1).float() / 255
            image = F.interpolate(large[None], size=RESOLUTION, mode="bicubic", antialias=True)[0].clamp(0, 1)
        else:
            image = torch.from_numpy(np.array(scene.render())).permute(2, 0, 1).float() / 255
        images.append(image)
    return torch.stack(images)


def _set_modes(path: Path) -> None:
    """Plain umask modes for a directory made by mkdtemp (0700) and its files (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    for item in path.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def train_shapes_clip(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 1100,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    warmup_steps: int = 50,
    weight_decay: float = 0.05,
    hard_negatives: bool = True,
    progress: Callable[[int, float, float], None] | None = None,
) -> Path:
    """Train a shapes-clip model from scratch and save it to `out_dir` (replacing what is there); returns it.

    Step `s` trains on ``training_batch(seed + s, batch_size)`` (training split only), rendered and
    augmented (:func:`augment`) under RNGs seeded from (seed, s), so the result is a function of the
    arguments (on one machine and thread count). Loss: symmetric InfoNCE with a learned temperature; with
    `hard_negatives`, each image also sees one caption a single detail away from its own
    (:func:`hard_negative_caption`) as an extra negative. AdamW, linear warm-up then cosine decay.
    `progress(step, loss, seconds)` is called after every step. The directory is written beside
    `out_dir` under a temporary name and renamed into place.
    """
    import open_clip
    from safetensors.torch import save_file

    if steps < 1 or batch_size < 2:
        raise ValueError(
            f"steps must be >= 1 and batch_size >= 2; got steps={steps}, batch_size={batch_size}"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.training-", dir=out_dir.parent))
    try:
        write_model_files(tmp_dir)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_dir}")
        with torch.random.fork_rng(devices=[]), quiet_root_warnings():
            torch.manual_seed(seed)
            model = open_clip.CLIP(**MODEL_CONFIG)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate,
            betas=(0.9, 0.98),
            eps=1e-6,
        )

        def schedule(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(steps - warmup_steps, 1)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        start = time.perf_counter()
        for step in range(steps):
            scenes = training_batch(seed + step, batch_size)
            rng = random.Random(f"shapes-clip/{seed}/{step}")
            generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
            pixels = (augment(render_batch(scenes, rng), generator) - mean) / std
            texts = [scene.prompt for scene in scenes]
            negatives = [hard_negative_caption(scene, rng) for scene in scenes] if hard_negatives else []
            all_texts = texts + negatives
            image_features = F.normalize(model.encode_image(pixels), dim=-1)
            text_features = F.normalize(model.encode_text(tokenizer(all_texts)), dim=-1)
            scale = model.logit_scale.exp()
            logits = scale * image_features @ text_features.T  # [B, B (+ B)]
            # A column holding the image's own caption (a duplicate in the batch) is not a negative.
            same = torch.tensor([[text == other for other in all_texts] for text in texts])
            target = torch.arange(batch_size)
            own = F.one_hot(target, len(all_texts)).bool()
            image_loss = F.cross_entropy(logits.masked_fill(same & ~own, float("-inf")), target)
            text_logits = logits[:, :batch_size].T
            text_loss = F.cross_entropy(
                text_logits.masked_fill(same[:, :batch_size] & ~own[:, :batch_size], float("-inf")), target
            )
            loss = (image_loss + text_loss) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if progress is not None:
                progress(step, loss.item(), time.perf_counter() - start)
        state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state_dict, str(tmp_dir / WEIGHTS_FILE))
        training = {
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup_steps": warmup_steps,
            "weight_decay": weight_decay,
            "hard_negatives": hard_negatives,
            "final_loss": round(loss.item(), 4),
            "seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
        }
        (tmp_dir / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        _set_modes(tmp_dir)
        if out_dir.exists():
            # Move the old directory aside first: renaming onto a non-empty directory fails.
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old_dir / "previous")
            shutil.rmtree(old_dir, ignore_errors=True)
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


__all__ = [
    "MODEL_CONFIG",
    "SHAPES_CLIP_DIR",
    "ShapesClipReward",
    "augment",
    "hard_negative_caption",
    "perturb",
    "train_shapes_clip",
    "write_model_files",
]
