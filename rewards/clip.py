"""CLIPScore-style reward on an open_clip model, and the open_clip plumbing HPSv2 shares.

Score = `100 * cosine(image_embedding, text_embedding)`: the CLIPScore convention (Hessel et al.
2021 use `2.5 * max(cos, 0)`; the "100 * cos" form is the one torchmetrics' CLIPScore reports),
without clipping at zero so the reward stays informative for poor images.

`model_name` may be an open_clip built-in architecture ("ViT-H-14"), an open_clip schema
("hf-hub:org/repo", "local-dir:/path"), a local directory holding `open_clip_config.json` plus
weights (treated as "local-dir:"), or a path to an architecture JSON file (`embed_dim`,
`vision_cfg`, `text_cfg`), which is registered with open_clip under its file stem.
`pretrained` is a tag ("laion2b_s32b_b79k", downloaded by open_clip) or a local weights file;
it is ignored for schema / directory model names, whose weights come from that source.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .base import EmbeddingReward, resize_crop_normalize

DEFAULT_OPEN_CLIP_MODEL = "ViT-H-14"
DEFAULT_OPEN_CLIP_PRETRAINED = "laion2b_s32b_b79k"
CLIPSCORE_SCALE = 100.0


def resolve_open_clip_name(model_name: str | Path) -> tuple[str, bool]:
    """Map the accepted `model_name` forms to a name open_clip understands.

    Returns `(name, has_own_weights)`: `has_own_weights` is True for schema / directory names,
    whose weights open_clip loads from that source instead of from `pretrained`.
    """
    text = str(model_name)
    if text.startswith(("hf-hub:", "local-dir:")):
        return text, True
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"open_clip model directory {text!r} has no open_clip_config.json; "
                "pass a directory saved in open_clip's hub format or an architecture name"
            )
        return f"local-dir:{path}", True
    if text.endswith(".json"):
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {text!r} does not exist")
        return _register_architecture_json(path), False
    return text, False


def _register_architecture_json(path: Path) -> str:
    """Register an architecture JSON with open_clip under its stem and return that name."""
    import open_clip

    config = json.loads(path.read_text())
    if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(
            f"{path} is not an open_clip architecture config (needs embed_dim, vision_cfg, text_cfg); "
            "for a directory with open_clip_config.json pass the directory itself"
        )
    # open_clip's registry is global and keyed by file stem; re-adding the file makes it the one
    # that wins if another file with the same stem was registered earlier.
    if open_clip.get_model_config(path.stem) != config:
        open_clip.add_model_config(path)
    return path.stem


@contextlib.contextmanager
def quiet_root_warnings() -> Iterator[None]:
    """Silence root-logger warnings for a moment.

    open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger when
    a model is built without weights, which is misleading when the weights are loaded right after.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def create_open_clip_model(
    model_name: str | Path, pretrained: str | Path | None, *, load_weights: bool = True
) -> tuple[Any, Any, str]:
    """Create an open_clip model (fp32, CPU) and its tokenizer; returns `(model, tokenizer, name)`."""
    import open_clip

    name, has_own_weights = resolve_open_clip_name(model_name)
    if pretrained is not None and not has_own_weights:
        pretrained_text = str(pretrained)
        looks_like_file = isinstance(pretrained, Path) or "/" in pretrained_text or "." in pretrained_text
        if looks_like_file and not Path(pretrained_text).expanduser().is_file():
            raise FileNotFoundError(f"open_clip weights file {pretrained_text!r} does not exist")
        pretrained = str(Path(pretrained_text).expanduser()) if looks_like_file else pretrained_text
    quiet = quiet_root_warnings() if not load_weights else contextlib.nullcontext()
    with quiet:
        model = open_clip.create_model(
            name,
            pretrained=None if has_own_weights else pretrained,
            load_weights=load_weights,
            # Never fetch separate tower weights: the full CLIP checkpoint replaces them anyway.
            pretrained_text=False,
            pretrained_image=False,
        )
    tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer, name


class OpenClipEmbeddingReward(EmbeddingReward):
    """Shared image/text encoding for open_clip models (CLIPScore here, HPSv2 in `hpsv2.py`)."""

    def _setup(self, model: Any, tokenizer: Any) -> None:
        import open_clip

        self.model = model.requires_grad_(False).eval().to(device=self.device, dtype=self.dtype)
        self.tokenizer = tokenizer
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
        size = preprocess_cfg.get("size", 224)
        size = tuple(size) if isinstance(size, list | tuple) else (int(size), int(size))
        self.resize_mode = preprocess_cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(
                f"open_clip resize_mode {self.resize_mode!r} is not supported; use shortest or squash"
            )
        # open_clip's eval transform: Resize(max(size)) on the shortest side, then CenterCrop(size).
        self.resize_to: int | tuple[int, int] = max(size) if self.resize_mode == "shortest" else size
        self.crop_to = size
        self.image_mean = tuple(preprocess_cfg.get("mean"))
        self.image_std = tuple(preprocess_cfg.get("std"))
        self.interpolation = preprocess_cfg.get("interpolation", "bicubic")

    def _modules(self) -> list[Any]:
        return [self.model]

    def preprocess(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """[0, 1] pixels -> normalised model input on the reward's device and dtype."""
        pixel_values = resize_crop_normalize(
            pixels,
            resize_to=self.resize_to,
            crop_to=self.crop_to,
            mean=self.image_mean,
            std=self.image_std,
            interpolation=self.interpolation,
            resize_mode=self.resize_mode,
        )
        return pixel_values.to(self.dtype)

    def encode_images(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(pixels))

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


class ClipScoreReward(OpenClipEmbeddingReward):
    """`100 * cosine` on an open_clip model; see the module docstring for the accepted names."""

    name = "clip"

    def __init__(
        self,
        model_name: str | Path = DEFAULT_OPEN_CLIP_MODEL,
        pretrained: str | Path | None = DEFAULT_OPEN_CLIP_PRETRAINED,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        model, tokenizer, self.model_name = create_open_clip_model(model_name, pretrained)
        self._setup(model, tokenizer)

    def score_scale(self) -> float:
        return CLIPSCORE_SCALE
