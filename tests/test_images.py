"""Images for people (`tscale_train.ses.images`): eval grids with each image's score and prompt under it, and
side-by-side comparisons at the generated resolution whose labels never run into each other."""

import numpy as np
import pytest
from PIL import Image, ImageFont

from tscale_train.compare import comparison_strip
from tscale_train.ses.images import PAD, fit_text, labelled_grid, side_by_side

LONG_PROMPT = (
    "a watercolor painting of a lighthouse on a cliff above a stormy sea at dusk, seagulls circling, "
    "dramatic clouds, warm light in the window, highly detailed"
)


def tile(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    """A flat image with a pattern in one corner, so a tile pasted anywhere else or resampled is told apart."""
    array = np.full((height, width, 3), colour, dtype=np.uint8)
    array[: height // 4, : width // 4] = (255 - np.array(colour)).astype(np.uint8)
    return Image.fromarray(array)


def dark(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether any pixel inside `box` is drawn (text is black on white)."""
    return bool((np.asarray(image.crop(box).convert("L")) < 128).any())


def find_tile(canvas: Image.Image, image: Image.Image, left: int) -> int | None:
    """The row at which `image` appears pixel for pixel in `canvas` at column `left`, else None."""
    for top in range(canvas.height - image.height + 1):
        if canvas.crop((left, top, left + image.width, top + image.height)).tobytes() == image.tobytes():
            return top
    return None


def test_fit_text_wraps_to_the_width_and_cuts_after_the_last_line():
    font = ImageFont.load_default()
    lines = fit_text(LONG_PROMPT, 120, font)
    assert len(lines) > 3 and all(font.getlength(line) <= 120 for line in lines)
    assert " ".join(lines) == LONG_PROMPT  # wrapped between words, nothing lost
    cut = fit_text(LONG_PROMPT, 120, font, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith("...") and font.getlength(cut[-1]) <= 120
    word = "supercalifragilisticexpialidocious"  # wider than the line: broken inside it
    broken = fit_text(word, 40, font)
    assert len(broken) > 1 and "".join(broken) == word and all(font.getlength(line) <= 40 for line in broken)


def test_the_eval_grid_has_each_images_score_and_prompt_under_it():
    side, columns = 64, 3
    rows = [[tile(side, side, (40 * c, 90, 200)) for c in range(columns)] for _ in range(2)]
    prompts = ["a red cube", LONG_PROMPT, "two blue spheres"]
    scores = [[f"reward {0.1 * c + r:.4f}" for c in range(columns)] for r in range(2)]
    grid = labelled_grid(rows, prompts, ["budget 0", "SES"], min_side=side, cell_labels=scores)
    unlabelled = labelled_grid(
        [[tile(side, side, (0, 0, 0))] * columns] * 2, [""] * columns, None, min_side=side
    )
    assert grid.height > unlabelled.height > 2 * side  # bands for the labels, more for more text
    assert grid.width == columns * (side + PAD) + PAD  # at the images' size: min_side 64 enlarges nothing
    for row in range(2):
        for column in range(columns):
            left = PAD + column * (side + PAD)
            top = find_tile(grid, rows[row][column], left)
            assert top is not None
            below = (left, top + side, left + side, top + side + 40)
            assert dark(grid, below), (row, column)  # its score and prompt are written under it
    # The long prompt is cut to at most three lines: the band is a label and three lines high, not ten.
    line = ImageFont.load_default().getbbox("Ag")[3] + 2
    assert grid.height <= 2 * (line + PAD // 2 + side + 4 * line + 2 * PAD) + PAD
    # No text runs into a neighbouring column: the gaps between columns stay white.
    for column in range(1, columns):
        gap = PAD + column * (side + PAD) - PAD
        assert not dark(grid, (gap, PAD + line + PAD, gap + PAD, grid.height - PAD)), column


def test_the_comparison_is_at_the_generated_resolution_and_its_labels_have_their_own_space():
    width, height = 64, 48
    images = [tile(width, height, colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    labels = ["best-of-N -2.4655", "", ""]  # wider than its 64 px image in the default font
    strip = comparison_strip(images, labels)
    assert strip.width == 3 * width  # the tiles' own pixel size, side by side
    band = strip.height - height
    assert band > 0
    for index, image in enumerate(images):  # each tile as generated, not resampled
        assert find_tile(strip, image, index * width) == band
    assert dark(strip, (0, 0, width, band))
    # The long label is wrapped inside its own column: nothing of it over the neighbours' tiles.
    assert not dark(strip, (width, 0, 3 * width, band))


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_base_vs_ses_is_at_the_generated_resolution(size):
    base, searched = tile(*size, (120, 20, 20)), tile(*size, (20, 120, 20))
    image = side_by_side(base, searched, caption=LONG_PROMPT)
    assert image.width == 2 * size[0]
    top = find_tile(image, base, 0)
    assert top is not None and find_tile(image, searched, size[0]) == top
    assert dark(image, (0, 0, image.width, top))  # the labels above
    assert dark(image, (0, top + size[1], image.width, image.height))  # the prompt below
