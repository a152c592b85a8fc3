"""Images of a search for people: tensors to PIL, eval grids and base-vs-searched pairs with labels."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont


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


# Space around text, and between the cells of a grid.
PAD = 4


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font (the same on every machine with this Pillow), so images are reproducible."""
    return ImageFont.load_default()


def _line_height(font) -> int:
    return font.getbbox("Ag")[3] + 2


def fit_text(text: str, width: int, font=None, max_lines: int | None = None) -> list[str]:
    """`text` in lines at most `width` px wide in `font` (default: the default font): wrapped between words,
    a word wider than a line broken inside, and, past `max_lines`, cut with "..." at the end of the last line."""
    font = font or _font()
    width = max(1, width)

    def fits(candidate: str) -> bool:
        return font.getlength(candidate) <= width

    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        while not fits(word) and len(word) > 1:
            cut = 1  # the longest start of the word that fits (one character at least)
            while cut < len(word) - 1 and fits(word[: cut + 1]):
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    lines = lines or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and not fits(last.rstrip() + "..."):
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], x: int, y: int, font) -> None:
    for number, text in enumerate(lines):
        draw.text((x, y + number * _line_height(font)), text, fill="black", font=font)


def labelled_grid(
    rows: list[list[Image.Image]],
    captions: list[str],
    row_labels: list[str] | None = None,
    min_side: int = 160,
    cell_labels: list[list[str]] | None = None,
    max_caption_lines: int = 3,
) -> Image.Image:
    """Images in rows (one column per caption), each enlarged to at least `min_side` px, with text under
    every image: its own label (`cell_labels[row][column]`, e.g. its score) over its column's caption (the
    prompt, wrapped to the image's width and cut after `max_caption_lines` lines), and a label over each row:
    an eval grid a person can read. Every piece of text has its own space; none runs into a neighbour's."""
    font = _font()
    line = _line_height(font)
    cells = [[_enlarged(image, min_side) for image in row] for row in rows]
    cell_w = max(image.width for row in cells for image in row)
    cell_h = max(image.height for row in cells for image in row)
    texts = [
        [
            (fit_text(cell_labels[row][column], cell_w, font, 1) if cell_labels else [])
            + fit_text(captions[column], cell_w, font, max_caption_lines)
            for column in range(len(row_cells))
        ]
        for row, row_cells in enumerate(cells)
    ]
    label_h = line + PAD // 2 if row_labels else 0
    bands = [max((len(lines) for lines in row), default=0) * line + PAD for row in texts]
    width = len(captions) * (cell_w + PAD) + PAD
    height = PAD + sum(label_h + cell_h + band + PAD for band in bands)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for index, row in enumerate(cells):
        if row_labels:
            _draw_lines(draw, fit_text(row_labels[index], width - 2 * PAD, font, 1), PAD, y, font)
            y += label_h
        for column, image in enumerate(row):
            x = PAD + column * (cell_w + PAD)
            canvas.paste(image, (x, y))
            _draw_lines(draw, texts[index][column], x, y + cell_h + PAD // 2, font)
        y += cell_h + bands[index] + PAD
    return canvas


def labelled_tiles(
    images: list[Image.Image], labels: list[str], caption: str | None = None, max_caption_lines: int = 4
) -> Image.Image:
    """Images next to each other at their own pixel size (as generated, not resampled), each with its label
    above it, wrapped to its own width so labels never overlap, and `caption` (the prompt) under them all."""
    font = _font()
    line = _line_height(font)
    label_lines = [
        fit_text(label, image.width - PAD, font) for image, label in zip(images, labels, strict=True)
    ]
    label_band = max(len(lines) for lines in label_lines) * line + PAD
    width = sum(image.width for image in images)
    caption_lines = fit_text(caption, width - PAD, font, max_caption_lines) if caption else []
    caption_band = len(caption_lines) * line + PAD if caption_lines else 0
    tiles_h = max(image.height for image in images)
    canvas = Image.new("RGB", (width, label_band + tiles_h + caption_band), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for image, lines in zip(images, label_lines, strict=True):
        _draw_lines(draw, lines, left + PAD // 2, PAD // 2, font)
        canvas.paste(image, (left, label_band))
        left += image.width
    _draw_lines(draw, caption_lines, PAD // 2, label_band + tiles_h + PAD // 2, font)
    return canvas


def side_by_side(
    left: Image.Image,
    right: Image.Image,
    labels: tuple[str, str] = ("base", "SES"),
    caption: str | None = None,
) -> Image.Image:
    """Two images next to each other (base vs searched) at the generated resolution, each labelled, with
    the prompt under them when given (`labelled_tiles`)."""
    return labelled_tiles([left, right], list(labels), caption)
