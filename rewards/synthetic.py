"""Synthetic rewards: cheap pixel statistics that ignore the prompt.

Random tiny models make caption matching meaningless, so tests and the offline demo use rewards a
tiny random generator can actually move. Load them by name, e.g.
`load_reward("rewards.synthetic:brightness")`. Each takes `(images, prompts)` like any reward
(images: a tensor `[N, 3, H, W]` in [0, 1] or a list of PIL images) and returns `Tensor[N]`.
"""

from __future__ import annotations

import torch

from .base import ImagesInput, PromptsInput, images_to_pixels


def _pixels(images: ImagesInput) -> torch.Tensor:
    pixels = images_to_pixels(images)
    if isinstance(pixels, list):
        # Images of different sizes cannot be stacked into one batch; these rewards stay loop-free.
        raise ValueError("synthetic rewards take images of one size; resize them or pass a tensor")
    return pixels.float()


def brightness(images: ImagesInput, prompts: PromptsInput | None = None) -> torch.Tensor:
    """Mean pixel value of each image, in [0, 1]."""
    return _pixels(images).mean(dim=(1, 2, 3))


def darkness(images: ImagesInput, prompts: PromptsInput | None = None) -> torch.Tensor:
    """Negative mean pixel value (higher for darker images), in [-1, 0]."""
    return -brightness(images, prompts)


def redness(images: ImagesInput, prompts: PromptsInput | None = None) -> torch.Tensor:
    """Mean of red minus the average of green and blue, in [-1, 1]."""
    pixels = _pixels(images)
    red, green, blue = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    return (red - 0.5 * (green + blue)).mean(dim=(1, 2))


def contrast(images: ImagesInput, prompts: PromptsInput | None = None) -> torch.Tensor:
    """Standard deviation of each image's grey levels, in [0, 0.5]."""
    grey = _pixels(images).mean(dim=1)
    return grey.flatten(1).std(dim=1, unbiased=False)


def coin_flip(images: ImagesInput, prompts: PromptsInput | None = None) -> torch.Tensor:
    """A pseudo-random score in [0, 1) that is a fixed function of the pixels but carries no direction.

    Pairs ranked by it are coin flips: the control that training must beat to show it learns.
    """
    pixels = _pixels(images).flatten(1)
    projection = torch.randn(pixels.shape[1], generator=torch.Generator().manual_seed(0)).to(pixels.device)
    return torch.frac(torch.sin(pixels @ projection * 12.9898) * 43758.5453).abs()
