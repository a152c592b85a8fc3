"""The shapes world's ground-truth judge: find the objects in an image and check a caption's clauses.

GenEval-like and programmatic (numpy / torch only, no model):

1. **Segment.** Each pixel goes to the palette colour (:data:`world.COLOURS`) it is nearest, read as a blend of
   that colour with the white background (edge pixels a blur or anti-aliasing mixed with white lie on that
   line), when it is at least half colour and within :data:`COLOUR_DISTANCE` (0-255 RGB units) of the line;
   every other pixel is background. Exact renders segment exactly.
2. **Components.** Pixels of one colour that touch (4-connectivity) form an object: batched min-label
   propagation with pointer jumping, in torch, all images at once. Components smaller than
   :data:`MIN_AREA` pixels (at 64x64, scaled by ``H * W / 64**2``) are noise and dropped. Images larger than
   :data:`WORKING_SIDE` are first averaged down to it (area interpolation; the half-blend rule of step 1 keeps
   the objects' outlines), and what is found is reported in the input's pixels.
3. **Shape.** By the fill ratio ``area / bounding-box area`` (square ~1.0, circle ~0.785, triangle ~0.5), the
   skew (how unevenly the area splits between the box's halves: ~0.5 for a triangle, whichever way it points,
   ~0 for a circle or a square; it tells a blurred small triangle from a circle when the fill ratios meet)
   and the box's aspect ratio (objects of the world fill square boxes); anything else is ``"unknown"``.

:func:`verify` then scores a caption by the fraction of its clauses the detected objects satisfy:

- ``single_object``: an object of that colour and shape exists;
- ``two_objects``: the first kind exists; the second kind exists;
- ``counting``: exactly N objects of that kind (one clause);
- ``colour_attribution``: the first kind exists; the second exists; some pair of them has the first larger
  (by area) than the second when the caption says "a large <first> ...", smaller when it says "a small ...";
- ``position``: the first exists; the second exists; some pair satisfies :func:`world.relation_holds`
  between their bounding-box centres, measured in pixels of a 64x64 image whatever the resolution.

An image is correct when its score is 1.0. :class:`ShapesVerifierReward` is the same judge as a reward
(``load_reward("verifier")``); :func:`accuracy_report` tallies accuracy per family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..base import ImagesInput, PromptsInput, RewardModel, images_to_pixels, normalize_prompts
from .world import BACKGROUND, COLOURS, FAMILIES, RESOLUTION, Requirement, parse_prompt, relation_holds

COLOUR_NAMES = tuple(COLOURS)
# A pixel belongs to a palette colour when within this Euclidean RGB distance (0-255 units) of a blend of it with
# white that is at least half colour, and nearer that line than any other colour's. The two closest palette
# colours (yellow, orange) are 70 apart.
COLOUR_DISTANCE = 60.0
# Smallest object, in pixels of a 64x64 image (scaled by area for other sizes). The world's smallest object,
# a small triangle, covers about 75.
MIN_AREA = 12.0
# Larger images are averaged down to this longest side before segmentation: the world is drawn at 64 px, and
# labelling costs grow with the pixel count (a 1024 px image would be 256 times a 64 px one).
WORKING_SIDE = 128
# Fill ratio (area / bounding-box area) bounds of each shape; a box's aspect ratio (long side / short side)
# above MAX_ASPECT (MAX_TRIANGLE_ASPECT for triangles) makes a component "unknown". A triangle has a skew of at
# least TRIANGLE_SKEW (an exact one 0.5), a circle or square at most ROUND_SKEW.
SQUARE_FILL = 0.9
CIRCLE_FILL = 0.62
TRIANGLE_FILL = (0.3, 0.8)
TRIANGLE_SKEW = 0.25
ROUND_SKEW = 0.15
MAX_ASPECT = 1.5
MAX_TRIANGLE_ASPECT = 2.0
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Detected:
    """One object found in an image.

    ``centre`` is its bounding box's centre (x, y) and ``bbox`` its box (left, top, right, bottom, right and
    bottom exclusive), both in pixels of the image judged; ``area`` counts its pixels; ``fill`` is
    ``area / box area``; ``skew`` the larger of |top half - bottom half| and |left half - right half| of the
    area, over the area; ``shape`` is "circle", "square", "triangle" or "unknown".
    """

    colour: str
    shape: str
    centre: tuple[float, float]
    area: int
    bbox: tuple[int, int, int, int]
    fill: float
    skew: float = 0.0

    @property
    def kind(self) -> tuple[str, str]:
        return self.colour, self.shape


def classify_shape(fill: float, width: int, height: int, skew: float = 0.0) -> str:
    """A component's shape from its fill ratio, its bounding box's sides and its skew (see :class:`Detected`)."""
    aspect = max(width, height) / max(min(width, height), 1)
    if skew >= TRIANGLE_SKEW and TRIANGLE_FILL[0] <= fill < TRIANGLE_FILL[1]:
        return "triangle" if aspect <= MAX_TRIANGLE_ASPECT else UNKNOWN
    if skew > ROUND_SKEW or aspect > MAX_ASPECT:
        return UNKNOWN
    if fill >= SQUARE_FILL:
        return "square"
    if fill >= CIRCLE_FILL:
        return "circle"
    return UNKNOWN


def _to_batch(pixels: Any) -> torch.Tensor:
    """One image (uint8 [H, W, 3] array or tensor, float [3, H, W] tensor in [0, 1], PIL) as float [1, 3, H, W] in [0, 1]."""
    if isinstance(pixels, Image.Image):
        pixels = np.asarray(pixels.convert("RGB"))
    if isinstance(pixels, np.ndarray):
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"an image array must be [H, W, 3]; got shape {pixels.shape}")
        array = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    if isinstance(pixels, torch.Tensor):
        if pixels.ndim == 3 and pixels.dtype == torch.uint8 and pixels.shape[-1] == 3:
            return pixels.permute(2, 0, 1)[None].float() / 255.0
        if pixels.ndim == 3 and pixels.shape[0] == 3:
            pixels = pixels[None]
        result = images_to_pixels(pixels)
        assert isinstance(result, torch.Tensor)
        return result
    raise ValueError(
        f"an image must be a uint8 array [H, W, 3], a tensor [3, H, W] in [0, 1] or a PIL image; got {type(pixels).__name__}"
    )


def _segment(pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, H, W] palette index per pixel, -1 for background or no colour.

    A pixel is read as a blend ``white + alpha * (colour - white)`` of each palette colour with the background
    (an edge pixel that a blur or anti-aliasing mixed with white lies on that line): it takes the colour whose
    line passes nearest, when that distance is at most COLOUR_DISTANCE and the blend is at least half colour.
    """
    n, _, h, w = pixels.shape
    white = torch.tensor(BACKGROUND, dtype=torch.float32, device=pixels.device)
    directions = torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=pixels.device) - white
    norms = directions.square().sum(dim=1)
    offset = pixels.float().permute(0, 2, 3, 1).reshape(-1, 3) * 255.0 - white
    length = offset.square().sum(dim=1)
    index = torch.full(length.shape, -1, dtype=torch.long, device=pixels.device)
    # Half a blend is at least half the shortest colour's distance from white: the rest is background.
    candidates = torch.nonzero(length >= norms.min() / 4).squeeze(1)
    if candidates.numel():
        dots = offset[candidates] @ directions.T
        alpha = (dots / norms).clamp_(0.0, 1.0)
        # |offset - alpha * direction|^2, expanded.
        distance = length[candidates, None] - alpha * (2 * dots - alpha * norms)
        distance.masked_fill_(alpha < 0.5, math.inf)
        best, nearest = distance.min(dim=1)
        index[candidates] = nearest.masked_fill_(best > COLOUR_DISTANCE**2, -1)
    return index.view(n, h, w)


def _label(classes: torch.Tensor) -> torch.Tensor:
    """Connected components (4-connectivity) of equal non-negative classes: [N, H, W] -> labels [N, H, W].

    A component's label is the flat index (y * W + x) of its first pixel; background is H * W.
    """
    n, h, w = classes.shape
    hw = h * w
    foreground = classes >= 0
    labels = torch.arange(hw, device=classes.device).view(1, h, w).expand(n, h, w).clone()
    labels.masked_fill_(~foreground, hw)
    same_v = foreground[:, 1:] & (classes[:, 1:] == classes[:, :-1])  # (y, x) joins (y + 1, x)
    same_h = foreground[:, :, 1:] & (classes[:, :, 1:] == classes[:, :, :-1])  # (y, x) joins (y, x + 1)
    sentinel = torch.full((n, 1), hw, dtype=labels.dtype, device=labels.device)
    while True:
        new = labels.clone()
        new[:, 1:] = torch.minimum(new[:, 1:], torch.where(same_v, labels[:, :-1], hw))
        new[:, :-1] = torch.minimum(new[:, :-1], torch.where(same_v, labels[:, 1:], hw))
        new[:, :, 1:] = torch.minimum(new[:, :, 1:], torch.where(same_h, labels[:, :, :-1], hw))
        new[:, :, :-1] = torch.minimum(new[:, :, :-1], torch.where(same_h, labels[:, :, 1:], hw))
        # Pointer jumping: a label is a pixel of the same component whose own label is no larger.
        flat = new.view(n, hw)
        new = torch.gather(torch.cat([flat, sentinel], dim=1), 1, flat).view(n, h, w)
        if torch.equal(new, labels):
            return labels
        labels = new


def min_area(height: int, width: int) -> float:
    """The smallest component counted as an object in an image of this size."""
    return MIN_AREA * height * width / (RESOLUTION * RESOLUTION)


def detect_batch(pixels: torch.Tensor) -> list[list[Detected]]:
    """The objects in each image of a float batch [N, 3, H, W] in [0, 1] (any device), in raster order.

    Centres, boxes and areas are in pixels of the input, even where detection ran on a smaller copy.
    """
    n, _, height, width = pixels.shape
    if n == 0:
        return []
    if max(height, width) > WORKING_SIDE:
        shrink = max(height, width) / WORKING_SIDE
        size = (max(1, round(height / shrink)), max(1, round(width / shrink)))
        pixels = F.interpolate(pixels.float(), size=size, mode="area")
    h, w = pixels.shape[-2:]
    sx, sy = width / w, height / h
    classes = _segment(pixels)
    labels = _label(classes)
    image, ys, xs = torch.nonzero(classes >= 0, as_tuple=True)
    if image.numel() == 0:
        return [[] for _ in range(n)]
    keys = image * (h * w) + labels[image, ys, xs]
    components, inverse, areas = torch.unique(keys, return_inverse=True, return_counts=True)
    count = components.shape[0]

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        start = torch.full((count,), h * w if how == "amin" else -1, dtype=values.dtype, device=values.device)
        return start.scatter_reduce(0, inverse, values, how)

    left, right = reduce(xs, "amin"), reduce(xs, "amax") + 1
    top, bottom = reduce(ys, "amin"), reduce(ys, "amax") + 1
    owner, root = components // (h * w), components % (h * w)
    colour = classes.view(n, h * w)[owner, root]
    # +1 for a pixel in the first half of its box (top / left), -1 in the second, 0 on the middle line.
    vertical = torch.sign((top + bottom)[inverse] - (2 * ys + 1))
    horizontal = torch.sign((left + right)[inverse] - (2 * xs + 1))
    imbalance = torch.stack(
        [
            torch.zeros(count, dtype=ys.dtype, device=ys.device).scatter_add_(0, inverse, side).abs()
            for side in (vertical, horizontal)
        ]
    ).amax(dim=0)
    keep = areas >= min_area(h, w)
    rows = (
        torch.stack([owner, colour, areas, left, top, right, bottom, imbalance], dim=1)[keep].cpu().tolist()
    )
    found: list[list[Detected]] = [[] for _ in range(n)]
    for owner_index, colour_index, area, x0, y0, x1, y1, unbalanced in rows:
        fill, skew = area / ((x1 - x0) * (y1 - y0)), unbalanced / area
        found[owner_index].append(
            Detected(
                colour=COLOUR_NAMES[colour_index],
                shape=classify_shape(fill, x1 - x0, y1 - y0, skew),
                centre=((x0 + x1) / 2 * sx, (y0 + y1) / 2 * sy),
                area=round(area * sx * sy),
                bbox=(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)),
                fill=fill,
                skew=skew,
            )
        )
    return found


def detect_objects(pixels: np.ndarray | torch.Tensor | Image.Image) -> list[Detected]:
    """The objects in one image: a uint8 array or tensor [H, W, 3], a float tensor [3, H, W] in [0, 1], or PIL."""
    return detect_batch(_to_batch(pixels))[0]


def check(
    requirement: Requirement, objects: Sequence[Detected], size: tuple[int, int]
) -> list[tuple[str, bool]]:
    """Each clause of `requirement` (a description, and whether `objects` satisfy it); `size` is (width, height)."""
    kinds = requirement.objects

    def of(kind: tuple[str, str]) -> list[Detected]:
        return [item for item in objects if item.kind == kind]

    if requirement.family == "counting":
        colour, shape = kinds[0]
        found = len(of(kinds[0]))
        return [
            (f"exactly {requirement.count} {colour} {shape}s (found {found})", found == requirement.count)
        ]
    first = of(kinds[0])
    clauses = [(f"a {kinds[0][0]} {kinds[0][1]}", bool(first))]
    if requirement.family == "single_object":
        return clauses
    second = of(kinds[1])
    clauses.append((f"a {kinds[1][0]} {kinds[1][1]}", bool(second)))
    pairs = [(a, b) for a in first for b in second if a is not b]
    if requirement.family == "colour_attribution":
        word = "larger" if requirement.larger else "smaller"
        holds = any((a.area > b.area) if requirement.larger else (a.area < b.area) for a, b in pairs)
        clauses.append((f"the {kinds[0][0]} {kinds[0][1]} {word} than the {kinds[1][0]} one", holds))
    elif requirement.family == "position":
        sx, sy = RESOLUTION / size[0], RESOLUTION / size[1]
        relation = requirement.relation
        assert relation is not None
        holds = any(
            relation_holds(
                relation, (a.centre[0] * sx, a.centre[1] * sy), (b.centre[0] * sx, b.centre[1] * sy)
            )
            for a, b in pairs
        )
        clauses.append((f"the {kinds[0][0]} {kinds[0][1]} {relation} the {kinds[1][0]} {kinds[1][1]}", holds))
    return clauses


def _verdict(
    prompt: str, requirement: Requirement, objects: list[Detected], size: tuple[int, int]
) -> tuple[float, dict]:
    clauses = check(requirement, objects, size)
    score = sum(ok for _, ok in clauses) / len(clauses)
    details = {
        "prompt": prompt,
        "family": requirement.family,
        "requirement": requirement,
        "clauses": clauses,
        "objects": objects,
    }
    return score, details


def verify(pixels: np.ndarray | torch.Tensor | Image.Image, prompt: str) -> tuple[float, dict]:
    """(fraction of the caption's clauses the image satisfies, details).

    `details`: "prompt", "family", "requirement" (:class:`world.Requirement`), "clauses" (list of
    (description, satisfied)) and "objects" (the :class:`Detected` objects). Raises ValueError for a prompt
    outside the world's grammar.
    """
    requirement = parse_prompt(prompt)
    batch = _to_batch(pixels)
    return _verdict(prompt, requirement, detect_batch(batch)[0], (batch.shape[-1], batch.shape[-2]))


def verify_batch(
    images: ImagesInput,
    prompts: PromptsInput,
    *,
    batch_size: int | None = 256,
    device: str | torch.device | None = None,
) -> list[tuple[float, dict]]:
    """:func:`verify` for many images: a list of PIL images or a float tensor [N, 3, H, W] in [0, 1].

    Every prompt is parsed before any image is judged (a bad one raises ValueError at once); images go
    through detection `batch_size` at a time, on `device` (default: where they are).
    """
    pixels = images_to_pixels(images)
    count = len(pixels) if isinstance(pixels, list) else pixels.shape[0]
    return _judge(pixels, normalize_prompts(prompts, count), batch_size, device)


def _judge(
    pixels: torch.Tensor | list[torch.Tensor],
    prompts: list[str],
    batch_size: int | None,
    device: str | torch.device | None,
) -> list[tuple[float, dict]]:
    parsed = {prompt: parse_prompt(prompt) for prompt in dict.fromkeys(prompts)}
    if isinstance(pixels, list):
        chunks = [pixel[None] for pixel in pixels]
    else:
        step = batch_size or max(len(prompts), 1)
        chunks = [pixels[start : start + step] for start in range(0, len(prompts), step)]
    results: list[tuple[float, dict]] = []
    for chunk in chunks:
        if device is not None:
            chunk = chunk.to(device)
        size = (chunk.shape[-1], chunk.shape[-2])
        for objects in detect_batch(chunk):
            prompt = prompts[len(results)]
            results.append(_verdict(prompt, parsed[prompt], objects, size))
    return results


class ShapesVerifierReward(RewardModel):
    """The ground-truth judge as a reward: the fraction of each caption's clauses the image satisfies.

    No model and no files: `device` is where detection runs, `batch_size` images per detection pass (all of a
    call at once by default). Prompts must be shapes-world captions ("a red circle", "two blue squares", ...);
    anything else raises ValueError naming it.
    """

    name = "verifier"

    def _score(self, pixels: torch.Tensor | list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
        results = _judge(pixels, prompts, self.batch_size, None)
        return torch.tensor([score for score, _ in results], dtype=torch.float32)


def _summary(scores: list[float]) -> dict[str, float]:
    n = len(scores)
    accuracy = sum(score == 1.0 for score in scores) / n
    return {
        "n": n,
        "mean_score": sum(scores) / n,
        "accuracy": accuracy,
        "stderr": math.sqrt(accuracy * (1 - accuracy) / n),
    }


def accuracy_report(
    images: ImagesInput, prompts: PromptsInput, *, batch_size: int | None = 256
) -> dict[str, dict[str, float]]:
    """Per family (in :data:`world.FAMILIES` order, those present) and "overall": n, mean score, accuracy (share
    of images scoring 1.0) and the accuracy's standard error ``sqrt(p (1 - p) / n)``."""
    results = verify_batch(images, prompts, batch_size=batch_size)
    by_family: dict[str, list[float]] = {}
    for score, details in results:
        by_family.setdefault(details["family"], []).append(score)
    report = {family: _summary(by_family[family]) for family in FAMILIES if family in by_family}
    if results:
        report["overall"] = _summary([score for score, _ in results])
    return report


def format_accuracy_report(report: dict[str, dict[str, float]]) -> list[str]:
    """The report as aligned table lines: family, n, mean score, accuracy +- standard error."""
    lines = [f"{'family':<20} {'n':>5} {'mean score':>10} {'accuracy':>16}"]
    for family, row in report.items():
        accuracy = f"{row['accuracy']:.3f} +- {row['stderr']:.3f}"
        lines.append(f"{family:<20} {int(row['n']):>5} {row['mean_score']:>10.3f} {accuracy:>16}")
    return lines


__all__ = [
    "Detected",
    "ShapesVerifierReward",
    "accuracy_report",
    "check",
    "classify_shape",
    "detect_batch",
    "detect_objects",
    "format_accuracy_report",
    "verify",
    "verify_batch",
]
