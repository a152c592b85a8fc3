"""The reward-model base class and the input handling every reward shares.

A reward is called as `reward(images, prompts) -> Tensor[N]` (float32, on the CPU). Images are
either a list of PIL images or a float tensor `[N, 3, H, W]` in [0, 1] on any device; prompts are
one string for every image or a list of N strings. Inputs are normalised here, once, so that each
concrete reward only ever sees a pixel tensor on its own device and a list of N prompts.

Preprocessing for CLIP-style models (resize the shortest side, centre-crop, normalise) is done on
tensors on the reward's device, as one batched operation: a generator's decoded images go straight
from the GPU into the reward without a round trip through PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImagesInput = torch.Tensor | Image.Image | Sequence[Image.Image]
PromptsInput = str | Sequence[str]

# A float image may overshoot [0, 1] by rounding in a decoder; anything further out is a caller bug
# (typically images still in [-1, 1]), which would silently give meaningless scores.
_RANGE_TOLERANCE = 1e-2


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images_to_pixels(images: ImagesInput) -> torch.Tensor | list[torch.Tensor]:
    """Turn the accepted image inputs into float pixels in [0, 1], channels first.

    Returns one tensor `[N, 3, H, W]` (on the input's device for tensor input, on the CPU for PIL),
    or, only for a list of PIL images of different sizes, a list of N tensors `[3, H_i, W_i]`.
    uint8 tensors are divided by 255. Raises ValueError for anything else.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        return _check_pixel_tensor(images)
    if isinstance(images, np.ndarray):
        raise ValueError(
            "images must be a list of PIL images or a torch tensor [N, 3, H, W] in [0, 1]; got a numpy "
            "array: convert it with torch.from_numpy(array).permute(0, 3, 1, 2) / 255"
        )
    if not isinstance(images, Sequence):
        raise ValueError(
            f"images must be a list of PIL images or a tensor [N, 3, H, W] in [0, 1]; got {type(images).__name__}"
        )
    if len(images) == 0:
        return torch.zeros(0, 3, 1, 1)
    if not all(isinstance(image, Image.Image) for image in images):
        bad_type = next(type(image).__name__ for image in images if not isinstance(image, Image.Image))
        raise ValueError(
            f"a list of images must hold only PIL images; found a {bad_type} "
            "(pass tensors as one stacked tensor [N, 3, H, W] in [0, 1])"
        )
    arrays = [np.asarray(image.convert("RGB")) for image in images]
    if len({array.shape for array in arrays}) == 1:
        # Same size: one stack and one conversion for the whole batch.
        stacked = torch.from_numpy(np.stack(arrays))
        return stacked.permute(0, 3, 1, 2).float().div_(255.0)
    return [torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0) for array in arrays]


def _check_pixel_tensor(pixels: torch.Tensor) -> torch.Tensor:
    """Validate a `[N, 3, H, W]` tensor and return it as floats in [0, 1]."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        hint = " (add the batch dimension with images[None])" if pixels.ndim == 3 else ""
        raise ValueError(f"an image tensor must have shape [N, 3, H, W]; got {tuple(pixels.shape)}{hint}")
    if pixels.dtype == torch.uint8:
        return pixels.float().div_(255.0)
    if not pixels.is_floating_point():
        raise ValueError(f"an image tensor must be float in [0, 1] or uint8; got dtype {pixels.dtype}")
    if pixels.numel() > 0:
        low, high = torch.aminmax(pixels.detach())
        low, high = float(low), float(high)
        if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"image tensor values must lie in [0, 1]; got range [{low:.3f}, {high:.3f}] "
                "(for images in [-1, 1] pass (images + 1) / 2)"
            )
    return pixels.clamp(0.0, 1.0)


def normalize_prompts(prompts: PromptsInput, num_images: int) -> list[str]:
    """One prompt per image: a single string is repeated, a list must have one entry per image."""
    if isinstance(prompts, str):
        return [prompts] * num_images
    if not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a string or a list of strings; got {type(prompts).__name__}")
    prompts = list(prompts)
    if len(prompts) != num_images:
        raise ValueError(
            f"got {len(prompts)} prompts for {num_images} images; pass one string for all images "
            "or exactly one prompt per image"
        )
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError("every prompt must be a string")
    return prompts


def resize_crop_normalize(
    pixels: torch.Tensor | list[torch.Tensor],
    *,
    resize_to: int | tuple[int, int] | None,
    crop_to: tuple[int, int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> torch.Tensor:
    """The CLIP evaluation transform, done on a batch of tensors.

    `pixels`: `[N, 3, H, W]` in [0, 1] (or a list of `[3, H_i, W_i]`, each transformed on its own
    and then stacked). `resize_mode="shortest"` scales the shortest side to `resize_to` (an int)
    keeping the aspect ratio, as torchvision's `Resize(int)` and the transformers CLIP processor do;
    `"squash"` (or a `(h, w)` tuple) resizes to exactly that size. Then a centre crop to `crop_to`
    and normalisation with `mean` / `std`. Resizing is antialiased; the result is clamped to [0, 1]
    before normalising, because bicubic overshoot cannot happen in the uint8 images the reference
    pipelines resize.
    """
    if isinstance(pixels, list):
        resized = [
            resize_crop_normalize(
                image[None],
                resize_to=resize_to,
                crop_to=crop_to,
                mean=None,
                std=None,
                interpolation=interpolation,
                resize_mode=resize_mode,
            )
            for image in pixels
        ]
        pixels = torch.cat(resized)
    else:
        if resize_to is not None:
            pixels = _resize(pixels, resize_to, interpolation, resize_mode)
        if crop_to is not None:
            pixels = _center_crop(pixels, crop_to)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        pixels = (pixels - mean_t) / std_t
    return pixels


def _resize(
    pixels: torch.Tensor, resize_to: int | tuple[int, int], interpolation: str, resize_mode: str
) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    if isinstance(resize_to, int) and resize_mode == "shortest":
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = resize_to, int(resize_to * long / short)
        target = (new_short, new_long) if height <= width else (new_long, new_short)
    elif resize_mode in ("shortest", "squash"):
        target = (resize_to, resize_to) if isinstance(resize_to, int) else tuple(resize_to)
    else:
        raise ValueError(f"unsupported resize mode {resize_mode!r}; supported: 'shortest', 'squash'")
    if tuple(target) == (height, width):
        return pixels
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"unsupported interpolation {interpolation!r}; use bicubic, bilinear or nearest")
    antialias = interpolation != "nearest"
    align = {"align_corners": False} if interpolation != "nearest" else {}
    resized = F.interpolate(pixels, size=target, mode=interpolation, antialias=antialias, **align)
    return resized.clamp_(0.0, 1.0)


def _center_crop(pixels: torch.Tensor, crop_to: tuple[int, int]) -> torch.Tensor:
    crop_h, crop_w = crop_to
    height, width = pixels.shape[-2:]
    if height < crop_h or width < crop_w:
        # Images smaller than the crop are padded with black, as torchvision's CenterCrop does.
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = pixels.shape[-2:]
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return pixels[..., top : top + crop_h, left : left + crop_w]


class RewardModel:
    """Base class: `reward(images, prompts) -> Tensor[N]`, float32 on the CPU, higher is better.

    Subclasses implement `_score(pixels, prompts)`, which receives pixels already on `self.device`
    (a `[N, 3, H, W]` float tensor in [0, 1], or a list of `[3, H_i, W_i]` tensors when PIL images
    of different sizes came in) and exactly N prompts, and `_modules()` (what `.to()` moves).
    Everything runs under `torch.no_grad()`; scores are returned on the CPU as float32 so callers
    never have to care where the reward model lives (it is offloaded between uses in training).
    """

    name: str = "reward"

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size}")
        self._device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        # Images per forward pass; None = the whole call in one forward.
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        """Where the model runs and where inputs are preprocessed."""
        return self._device

    def _modules(self) -> list[Any]:
        """Objects with a `.to(device)` method that must move with the reward (models)."""
        return []

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the reward model to `device` (e.g. offload to "cpu" between uses) and return self."""
        device = torch.device(device)
        for module in self._modules():
            module.to(device)
        self._device = device
        return self

    def _chunks(self, num_items: int) -> list[slice]:
        step = self.batch_size or max(num_items, 1)
        return [slice(start, min(start + step, num_items)) for start in range(0, num_items, step)]

    def __call__(self, images: ImagesInput, prompts: PromptsInput) -> torch.Tensor:
        """Score N images against their prompts; returns float32 `Tensor[N]` on the CPU."""
        pixels = images_to_pixels(images)
        num_images = len(pixels) if isinstance(pixels, list) else pixels.shape[0]
        prompt_list = normalize_prompts(prompts, num_images)
        if num_images == 0:
            return torch.zeros(0, dtype=torch.float32)
        if isinstance(pixels, list):
            pixels = [image.to(self.device) for image in pixels]
        else:
            pixels = pixels.to(self.device)
        with torch.no_grad():
            scores = self._score(pixels, prompt_list)
        scores = torch.as_tensor(scores).detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        if scores.shape[0] != num_images:
            raise ValueError(
                f"reward {self.name!r} returned {scores.shape[0]} scores for {num_images} images"
            )
        return scores

    def _score(self, pixels: torch.Tensor | list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, dtype={self.dtype})"


class EmbeddingReward(RewardModel):
    """A CLIP-style reward: `scale * cosine(image_embedding, text_embedding)` per (image, prompt).

    Subclasses provide `encode_images(pixels) -> [n, D]` (preprocessing included) and
    `encode_texts(prompts) -> [m, D]`, and set `score_scale()`. Each distinct prompt is encoded
    once per call (training scores many images per prompt), and images go through the model in
    chunks of `batch_size` (all at once by default).
    """

    def encode_images(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def image_embeddings(self, images: ImagesInput) -> torch.Tensor:
        """Unit-length image embeddings `[N, D]` (float32, CPU): what the reward sees of each image."""
        pixels = images_to_pixels(images)
        if isinstance(pixels, list):
            pixels = [image.to(self.device) for image in pixels]
        else:
            pixels = pixels.to(self.device)
        with torch.no_grad():
            embeddings = torch.cat([self.encode_images(pixels[chunk]) for chunk in self._chunks(len(pixels))])
        return F.normalize(embeddings.float(), dim=-1).cpu()

    def score_scale(self) -> float | torch.Tensor:
        """Multiplier applied to the cosine similarity."""
        return 1.0

    def _score(self, pixels: torch.Tensor | list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
        unique_prompts = list(dict.fromkeys(prompts))
        prompt_index = {prompt: index for index, prompt in enumerate(unique_prompts)}
        text_embeddings = torch.cat(
            [self.encode_texts(unique_prompts[chunk]) for chunk in self._chunks(len(unique_prompts))]
        )
        text_embeddings = F.normalize(text_embeddings.float(), dim=-1)
        image_embeddings = torch.cat(
            [self.encode_images(pixels[chunk]) for chunk in self._chunks(len(prompts))]
        )
        image_embeddings = F.normalize(image_embeddings.float(), dim=-1)
        index = torch.tensor([prompt_index[prompt] for prompt in prompts], device=text_embeddings.device)
        cosine = (image_embeddings * text_embeddings[index].to(image_embeddings.device)).sum(dim=-1)
        return cosine * self.score_scale()
