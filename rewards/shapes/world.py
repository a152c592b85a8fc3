"""The shapes world: procedural images and GenEval-style captions, deterministic from a seed.

One to four flat objects (circle, square, triangle) in eight exact colours on a white background.
Every caption belongs to one task family, in GenEval's manner:

- ``single_object``: "a red circle"
- ``two_objects``: "a blue square and a yellow triangle" (two shapes, two colours)
- ``counting``: "three green circles" (two to four of one kind)
- ``colour_attribution``: "a large red circle and a small blue circle" (one shape; which colour is which size)
- ``position``: "a red square to the left of a blue circle" (left of, right of, above, below)

A fixed split keeps some colour-shape combinations (:data:`HELD_OUT_PAIRS`) and some relation-shape
combinations (:data:`HELD_OUT_RELATIONS`) out of training altogether: no training image contains a
held-out pair, and no training caption uses a held-out relation with that first shape. The evaluation
prompts (:func:`evaluation_prompts`) each use at least one of them.

A caption is parsed back into its requirements by :func:`parse_prompt`, which the verifier checks.
Nothing here imports a diffusion library.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
BACKGROUND = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
    "cyan": (40, 200, 210),
    "black": (30, 30, 30),
}
SHAPES = ("circle", "square", "triangle")
FAMILIES = ("single_object", "two_objects", "counting", "colour_attribution", "position")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
# Half the side of an object's bounding box, in pixels of a RESOLUTION image: small and large.
SIZES = {"small": (6, 8), "large": (11, 14)}

# Never seen in training, in any image or caption.
HELD_OUT_PAIRS = (("purple", "triangle"), ("cyan", "square"), ("orange", "circle"))
# Never captioned in training: (relation, shape of the first object).
HELD_OUT_RELATIONS = (("above", "triangle"), ("right of", "circle"))

# A relation holds when the centres differ by at least this many pixels along its axis.
RELATION_MARGIN = 6
# Scenes are placed with this many pixels to spare beyond the margin, so that their ground truth is not on the
# judge's decision boundary (a render at a non-integer scale, or a blur that erodes a triangle's tip, moves a
# centre by up to half a pixel).
PLACEMENT_SLACK = 1


@dataclass(frozen=True)
class ShapeObject:
    """One object: its kind, size class and bounding box centre and half-side in pixels."""

    colour: str
    shape: str
    size: str
    x: int
    y: int
    half: int


@dataclass(frozen=True)
class Requirement:
    """What a caption asks for, family by family (see :func:`parse_prompt`).

    ``objects`` are (colour, shape) kinds; ``count`` is the number asked for (counting), ``relation`` the
    position relation of the first object to the second, and ``larger`` (colour attribution) says the
    first object is the larger one.
    """

    family: str
    objects: tuple[tuple[str, str], ...]
    count: int = 1
    relation: str | None = None
    larger: bool = False


@dataclass(frozen=True)
class Scene:
    """A rendered example: the objects drawn, the caption, and what the caption asks for."""

    objects: tuple[ShapeObject, ...]
    prompt: str
    requirement: Requirement

    def render(self, resolution: int = RESOLUTION) -> Image.Image:
        return render(self.objects, resolution)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _kind(colour: str, shape: str, *, size: str | None = None) -> str:
    words = f"{size} {colour} {shape}" if size else f"{colour} {shape}"
    return f"{_article(words)} {words}"


def caption(requirement: Requirement) -> str:
    """The caption of a requirement (the inverse of :func:`parse_prompt`)."""
    objects = requirement.objects
    if requirement.family == "single_object":
        return _kind(*objects[0])
    if requirement.family == "two_objects":
        return f"{_kind(*objects[0])} and {_kind(*objects[1])}"
    if requirement.family == "counting":
        colour, shape = objects[0]
        return f"{NUMBERS[requirement.count]} {colour} {shape}s"
    if requirement.family == "colour_attribution":
        first, second = ("large", "small") if requirement.larger else ("small", "large")
        return f"{_kind(*objects[0], size=first)} and {_kind(*objects[1], size=second)}"
    if requirement.family == "position":
        relation = requirement.relation
        words = f"to the {relation}" if relation in ("left of", "right of") else relation
        return f"{_kind(*objects[0])} {words} {_kind(*objects[1])}"
    raise ValueError(f"unknown family {requirement.family!r}; use one of {', '.join(FAMILIES)}")


def parse_prompt(prompt: str) -> Requirement:
    """Parse a shapes-world caption back into its :class:`Requirement`.

    Raises ValueError, naming the caption, for text outside the world's grammar.
    """
    words = prompt.strip().lower().rstrip(".").split()

    def kind(tokens: list[str]) -> tuple[str, str, str | None] | None:
        if tokens and tokens[0] in ("a", "an"):
            tokens = tokens[1:]
        size = tokens[0] if tokens and tokens[0] in SIZES else None
        tokens = tokens[1:] if size else tokens
        if len(tokens) == 2 and tokens[0] in COLOURS and tokens[1] in SHAPES:
            return tokens[0], tokens[1], size
        return None

    def fail() -> ValueError:
        return ValueError(
            f"{prompt!r} is not a shapes-world caption; write one like 'a red circle', 'two blue squares', "
            "'a red square to the left of a blue circle' or 'a large red circle and a small blue circle'"
        )

    if (
        len(words) == 3
        and words[0] in NUMBERS.values()
        and words[1] in COLOURS
        and words[2].endswith("s")
        and words[2][:-1] in SHAPES
    ):
        count = {name: number for number, name in NUMBERS.items()}[words[0]]
        return Requirement("counting", ((words[1], words[2][:-1]),), count=count)
    if "and" in words:
        at = words.index("and")
        first, second = kind(words[:at]), kind(words[at + 1 :])
        if first is None or second is None or (first[2] is None) != (second[2] is None):
            raise fail()
        objects = (first[:2], second[:2])
        if first[2] is None:
            return Requirement("two_objects", objects)
        if first[2] == second[2]:
            raise fail()
        return Requirement("colour_attribution", objects, larger=first[2] == "large")
    for relation, phrase in (
        ("left of", "to the left of"),
        ("right of", "to the right of"),
        ("above", "above"),
        ("below", "below"),
    ):
        phrase_words = phrase.split()
        for at in range(len(words) - len(phrase_words) + 1):
            if words[at : at + len(phrase_words)] == phrase_words:
                first, second = kind(words[:at]), kind(words[at + len(phrase_words) :])
                if first is None or second is None or first[2] or second[2]:
                    raise fail()
                return Requirement("position", (first[:2], second[:2]), relation=relation)
    single = kind(words)
    if single is None or single[2] is not None:
        raise fail()
    return Requirement("single_object", (single[:2],))


def family_of(prompt: str) -> str:
    return parse_prompt(prompt).family


def render(objects: tuple[ShapeObject, ...] | list[ShapeObject], resolution: int = RESOLUTION) -> Image.Image:
    """Draw flat objects on white, without anti-aliasing (every pixel is the background or a palette colour).

    Coordinates are in pixels of a RESOLUTION image and scaled to ``resolution``.
    """
    scale = resolution / RESOLUTION
    image = Image.new("RGB", (resolution, resolution), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in objects:
        x, y, half = item.x * scale, item.y * scale, item.half * scale
        box = (x - half, y - half, x + half - 1, y + half - 1)
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - half), (x + half - 1, y + half - 1), (x - half, y + half - 1)], fill=fill)
    return image


def _place(
    rng: random.Random, sizes: list[str], relation: str | None = None
) -> list[tuple[int, int, int]] | None:
    """Non-overlapping (x, y, half) for each size, with `relation` between the first two; None on a miss."""
    placed: list[tuple[int, int, int]] = []
    for index, size in enumerate(sizes):
        for _ in range(100):
            half = rng.randint(*SIZES[size])
            x = rng.randint(half + 1, RESOLUTION - half - 1)
            y = rng.randint(half + 1, RESOLUTION - half - 1)
            if any(abs(x - ox) < half + oh + 3 and abs(y - oy) < half + oh + 3 for ox, oy, oh in placed):
                continue
            margin = RELATION_MARGIN + PLACEMENT_SLACK
            if (
                index == 1
                and relation is not None
                and not relation_holds(relation, placed[0][:2], (x, y), margin)
            ):
                continue
            placed.append((x, y, half))
            break
        else:
            return None
    return placed


def relation_holds(
    relation: str, first: tuple[float, float], second: tuple[float, float], margin: float = RELATION_MARGIN
) -> bool:
    """Whether the object centred at `first` is `relation` the one at `second` (image y grows downwards)."""
    dx, dy = second[0] - first[0], second[1] - first[1]
    if relation == "left of":
        return dx >= margin
    if relation == "right of":
        return -dx >= margin
    if relation == "above":
        return dy >= margin
    if relation == "below":
        return -dy >= margin
    raise ValueError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")


def is_held_out(requirement: Requirement) -> bool:
    """Whether a requirement uses a held-out colour-shape pair or relation."""
    if any(kind in HELD_OUT_PAIRS for kind in requirement.objects):
        return True
    return (
        requirement.relation is not None
        and (requirement.relation, requirement.objects[0][1]) in HELD_OUT_RELATIONS
    )


def _random_requirement(rng: random.Random, family: str) -> Requirement:
    def kind() -> tuple[str, str]:
        return rng.choice(list(COLOURS)), rng.choice(SHAPES)

    if family == "single_object":
        return Requirement(family, (kind(),))
    if family == "counting":
        return Requirement(family, (kind(),), count=rng.choice(list(NUMBERS)))
    if family == "colour_attribution":
        shape = rng.choice(SHAPES)
        first, second = rng.sample(list(COLOURS), 2)
        return Requirement(family, ((first, shape), (second, shape)), larger=rng.random() < 0.5)
    first, second = kind(), kind()
    while first[1] == second[1] and family == "two_objects" or first == second:
        second = kind()
    if family == "two_objects":
        return Requirement(family, (first, second))
    if family == "position":
        return Requirement(family, (first, second), relation=rng.choice(RELATIONS))
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


def scene_for(requirement: Requirement, rng: random.Random) -> Scene | None:
    """A scene that satisfies `requirement` (positions and sizes drawn from `rng`); None on a placement miss."""
    if requirement.family == "counting":
        kinds = [requirement.objects[0]] * requirement.count
        sizes = (
            [rng.choice(["small", "small", "large"]) for _ in kinds]
            if requirement.count < 4
            else ["small"] * 4
        )
    elif requirement.family == "colour_attribution":
        kinds = list(requirement.objects)
        sizes = ["large", "small"] if requirement.larger else ["small", "large"]
    else:
        kinds = list(requirement.objects)
        sizes = [rng.choice(list(SIZES)) for _ in kinds]
    placed = _place(rng, sizes, requirement.relation)
    if placed is None:
        return None
    objects = tuple(
        ShapeObject(colour, shape, size, x, y, half)
        for (colour, shape), size, (x, y, half) in zip(kinds, sizes, placed, strict=True)
    )
    return Scene(objects, caption(requirement), requirement)


def sample_scene(rng: random.Random, *, split: str = "train", family: str | None = None) -> Scene:
    """One random scene of the `split` ("train": nothing held out; "heldout": uses a held-out pair or relation)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    while True:
        chosen_family = family or rng.choice(FAMILIES)
        requirement = _random_requirement(rng, chosen_family)
        if is_held_out(requirement) != (split == "heldout"):
            continue
        scene = scene_for(requirement, rng)
        if scene is not None:
            return scene


def training_batch(seed: int, size: int) -> list[Scene]:
    """`size` training scenes, deterministic from `seed`."""
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(size)]


def evaluation_prompts(per_family: int = 20, seed: int = 0) -> dict[str, list[str]]:
    """Held-out prompts per family: `per_family` distinct captions each (fewer where fewer exist)."""
    rng = random.Random(seed)
    prompts: dict[str, list[str]] = {}
    for family in FAMILIES:
        seen: list[str] = []
        for _ in range(per_family * 200):
            requirement = _random_requirement(rng, family)
            text = caption(requirement)
            if is_held_out(requirement) and text not in seen:
                seen.append(text)
            if len(seen) == per_family:
                break
        prompts[family] = seen
    return prompts


def pixels(image: Image.Image) -> np.ndarray:
    """An image as uint8 [H, W, 3]."""
    return np.asarray(image.convert("RGB"))


def training_prompts(count: int, seed: int = 0) -> list[str]:
    """Up to `count` distinct training-split captions, the families in turn (a family whose captions run
    out, as single objects do after 21, drops out), deterministic from `seed`."""
    rng = random.Random(seed)
    prompts: list[str] = []
    families = list(FAMILIES)
    misses = dict.fromkeys(FAMILIES, 0)
    turn = 0
    while len(prompts) < count and families:
        family = families[turn % len(families)]
        requirement = _random_requirement(rng, family)
        text = caption(requirement)
        if not is_held_out(requirement) and text not in prompts:
            prompts.append(text)
            turn += 1
        else:
            misses[family] += 1
            if misses[family] > 1000:
                families.remove(family)
    return prompts
