"""Images of a search for people: tensors to PIL, eval grids and base-vs-searched pairs with labels."""

from __future__ import annotations

import textwrap

import torch
from PIL import Image, ImageDraw


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`[N, 3, H, W]` floats in [0, 1] -> N RGB images."""
    array = (
        (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(item) for item in array]


def _enlarged(image: Image.Image, min_side: int) -> Image.Image:
    """`image` scaled up by a whole factor (nearest neighbour, so flat colours stay flat) to at least `min_side`."""
    factor = max(1, -(-min_side // min(image.size)))
    return (
        image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    )


def _wrapped(text: str, width: int, char_width: int = 6) -> list[str]:
    return textwrap.wrap(text, max(8, width // char_width)) or [""]


def labelled_grid(
    rows: list[list[Image.Image]],
    captions: list[str],
    row_labels: list[str] | None = None,
    min_side: int = 160,
) -> Image.Image:
    """Images in rows (one column per caption), each enlarged to at least `min_side` px, the caption under
    each column and a label over each row: an eval grid a person can read."""
    cells = [[_enlarged(image, min_side) for image in row] for row in rows]
    cell_w = max(image.width for row in cells for image in row)
    cell_h = max(image.height for row in cells for image in row)
    line = 12
    label_h = line + 2 if row_labels else 0
    caption_lines = max(len(_wrapped(caption, cell_w)) for caption in captions) if captions else 0
    pad = 4
    width = len(captions) * (cell_w + pad) + pad
    height = len(cells) * (cell_h + label_h + pad) + caption_lines * line + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for index, row in enumerate(cells):
        if row_labels:
            draw.text((pad, y), row_labels[index], fill="black")
            y += label_h
        for column, image in enumerate(row):
            canvas.paste(image, (pad + column * (cell_w + pad), y))
        y += cell_h + pad
    for column, caption in enumerate(captions):
        for number, text in enumerate(_wrapped(caption, cell_w)):
            draw.text((pad + column * (cell_w + pad), y + number * line), text, fill="black")
    return canvas


def side_by_side(
    left: Image.Image,
    right: Image.Image,
    labels: tuple[str, str] = ("base", "SES"),
    caption: str | None = None,
    min_side: int = 256,
) -> Image.Image:
    """Two images next to each other (base vs searched), enlarged to at least `min_side` px, each labelled,
    with the prompt under them when given."""
    left, right = _enlarged(left, min_side), _enlarged(right, min_side)
    line, pad = 12, 4
    caption_lines = _wrapped(caption, left.width + right.width) if caption else []
    canvas = Image.new(
        "RGB",
        (
            left.width + right.width + 3 * pad,
            max(left.height, right.height) + line + pad * 3 + line * len(caption_lines),
        ),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for offset, (image, label) in zip(
        (pad, 2 * pad + left.width), ((left, labels[0]), (right, labels[1])), strict=True
    ):
        draw.text((offset, pad), label, fill="black")
        canvas.paste(image, (offset, pad + line))
    y = 2 * pad + line + max(left.height, right.height)
    for number, text in enumerate(caption_lines):
        draw.text((pad, y + number * line), text, fill="black")
    return canvas
