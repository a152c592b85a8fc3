"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences.

Score = `logit_scale.exp() * cosine(image_embedding, text_embedding)`, exactly as the authors'
reference code computes it (about 20-23 for typical generations). The model is a transformers
`CLIPModel`; the processor (laion's CLIP-ViT-H-14 one by default) supplies the tokenizer and the
image settings (size, crop, mean, std), but the image transform itself runs on tensors here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import EmbeddingReward, resize_crop_normalize
from .paths import check_local_path

DEFAULT_PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

# PIL resample codes used by transformers image processors -> torch interpolate modes.
_RESAMPLE_TO_MODE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _size_field(size: Any, key: str) -> int | None:
    """Read one field of an image processor size (a dict, a transformers 5 SizeDict, or an int)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size if key in ("shortest_edge", "height", "width") else None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def pooled_embeddings(output: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers 4 and an output object in 5."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find embeddings in a {type(output).__name__}; expected .pooler_output")
    return pooled


class PickScoreReward(EmbeddingReward):
    """PickScore through transformers; see the module docstring for the score."""

    name = "pickscore"

    def __init__(
        self,
        model_name_or_path: str | Path = DEFAULT_PICKSCORE_MODEL,
        processor_name_or_path: str | Path = DEFAULT_PICKSCORE_PROCESSOR,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        from transformers import AutoProcessor, CLIPModel

        model_source = check_local_path(model_name_or_path, "PickScore model")
        processor_source = check_local_path(processor_name_or_path, "PickScore processor")
        processor = AutoProcessor.from_pretrained(processor_source)
        self.tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if self.tokenizer is None or image_processor is None:
            raise ValueError(
                f"processor {processor_source!r} has no tokenizer or image processor; "
                "pass a CLIP processor as processor_name_or_path"
            )
        self.model = CLIPModel.from_pretrained(model_source, dtype=dtype)
        self.model.requires_grad_(False).eval().to(self.device)
        self._configure_image_transform(image_processor)
        self.max_text_length = min(
            int(getattr(self.tokenizer, "model_max_length", 77) or 77),
            int(self.model.config.text_config.max_position_embeddings),
        )

    def _configure_image_transform(self, image_processor: Any) -> None:
        """Copy the processor's evaluation transform settings (applied on tensors in `encode_images`)."""
        size = getattr(image_processor, "size", None)
        self.resize_to: int | tuple[int, int] | None = None
        if getattr(image_processor, "do_resize", True):
            shortest = _size_field(size, "shortest_edge")
            height, width = _size_field(size, "height"), _size_field(size, "width")
            if shortest is not None:
                self.resize_to = int(shortest)
            elif height is not None and width is not None:
                self.resize_to = (int(height), int(width))
        crop = getattr(image_processor, "crop_size", None)
        self.crop_to: tuple[int, int] | None = None
        if getattr(image_processor, "do_center_crop", True) and crop is not None:
            self.crop_to = (int(_size_field(crop, "height")), int(_size_field(crop, "width")))
        self.image_mean = (
            image_processor.image_mean if getattr(image_processor, "do_normalize", True) else None
        )
        self.image_std = image_processor.image_std if getattr(image_processor, "do_normalize", True) else None
        resample = getattr(image_processor, "resample", 3)
        self.interpolation = _RESAMPLE_TO_MODE.get(int(getattr(resample, "value", resample)), "bicubic")

    def _modules(self) -> list[Any]:
        return [self.model]

    def preprocess(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """[0, 1] pixels -> the model's normalised `pixel_values`, on the reward's device and dtype."""
        pixel_values = resize_crop_normalize(
            pixels,
            resize_to=self.resize_to,
            crop_to=self.crop_to,
            mean=self.image_mean,
            std=self.image_std,
            interpolation=self.interpolation,
            resize_mode="shortest" if isinstance(self.resize_to, int) else "squash",
        )
        return pixel_values.to(self.dtype)

    def encode_images(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return pooled_embeddings(self.model.get_image_features(pixel_values=self.preprocess(pixels)))

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        ).to(self.device)
        return pooled_embeddings(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )

    def score_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()
