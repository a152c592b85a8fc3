"""The shapes world (`rewards/shapes/world.py`) and its ground-truth judge (`rewards/shapes/verifier.py`).

Fast and CPU only: procedural scenes, no model. The judge must score the world's own renders 1.0 (at 64, 128
and 256 px, and under mild blur and noise), and less than 1.0 for each way an image can miss its caption.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

from rewards import load_reward
from rewards.shapes import world
from rewards.shapes.verifier import (
    ShapesVerifierReward,
    accuracy_report,
    detect_batch,
    detect_objects,
    format_accuracy_report,
    verify,
    verify_batch,
)

PALETTE = {*world.COLOURS.values(), world.BACKGROUND}
SPLITS = ("train", "heldout")


def _scenes(count: int, seed: int) -> list[world.Scene]:
    """`count` scenes, alternating splits and cycling through the families."""
    rng = random.Random(seed)
    return [
        world.sample_scene(
            rng, split=SPLITS[index % 2], family=world.FAMILIES[(index // 2) % len(world.FAMILIES)]
        )
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def scenes() -> list[world.Scene]:
    return _scenes(500, seed=0)


def _of_family(scenes: list[world.Scene], family: str, count: int = 40) -> list[world.Scene]:
    return [scene for scene in scenes if scene.requirement.family == family][:count]


def _score(image: Image.Image, prompt: str) -> float:
    return verify(world.pixels(image), prompt)[0]


def _as_tensor(images: list[Image.Image]) -> torch.Tensor:
    return (
        torch.from_numpy(np.stack([world.pixels(image) for image in images])).permute(0, 3, 1, 2).float()
        / 255
    )


# ---- the world ----


def test_generation_is_deterministic_from_seed():
    first, again, other = (
        world.training_batch(3, 30),
        world.training_batch(3, 30),
        world.training_batch(4, 30),
    )
    assert first == again
    assert [scene.prompt for scene in first] != [scene.prompt for scene in other]
    assert all(a.render().tobytes() == b.render().tobytes() for a, b in zip(first, again, strict=True))
    assert _scenes(40, seed=7) == _scenes(40, seed=7)
    assert world.evaluation_prompts(5, seed=1) == world.evaluation_prompts(5, seed=1)


def test_renders_hold_only_palette_colours_on_white(scenes):
    for scene in scenes[:60]:
        for resolution in (64, 128):
            colours = {
                tuple(colour)
                for colour in np.unique(
                    world.pixels(scene.render(resolution)).reshape(-1, 3), axis=0
                ).tolist()
            }
            assert colours <= PALETTE, (
                f"{scene.prompt!r} at {resolution}px has off-palette colours {colours - PALETTE}"
            )
            assert world.BACKGROUND in colours
            assert {world.COLOURS[item.colour] for item in scene.objects} <= colours


def test_captions_and_parse_prompt_round_trip(scenes):
    families = set()
    for scene in scenes:
        parsed = world.parse_prompt(scene.prompt)
        assert parsed == scene.requirement, scene.prompt
        assert world.caption(parsed) == scene.prompt
        assert world.parse_prompt(f"  {scene.prompt.capitalize()}. ") == parsed
        assert world.family_of(scene.prompt) == scene.requirement.family
        families.add(parsed.family)
    assert families == set(world.FAMILIES)


def test_training_scenes_never_hold_a_held_out_pair_or_relation():
    for scene in world.training_batch(11, 1000):
        kinds = {(item.colour, item.shape) for item in scene.objects} | set(scene.requirement.objects)
        assert not kinds & set(world.HELD_OUT_PAIRS), scene.prompt
        relation = scene.requirement.relation
        assert (
            relation is None or (relation, scene.requirement.objects[0][1]) not in world.HELD_OUT_RELATIONS
        ), scene.prompt
        assert not world.is_held_out(scene.requirement)


def test_every_evaluation_prompt_is_held_out():
    prompts = world.evaluation_prompts(per_family=20)
    assert set(prompts) == set(world.FAMILIES)
    for family, texts in prompts.items():
        assert texts and len(set(texts)) == len(texts), family
        for text in texts:
            requirement = world.parse_prompt(text)
            assert requirement.family == family
            assert world.is_held_out(requirement), text
    for scene in _scenes(100, seed=3)[1::2]:  # the held-out split
        assert world.is_held_out(scene.requirement), scene.prompt


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat",
        "",
        "a red",
        "a red circle and",
        "a pink circle",
        "a red hexagon",
        "a big red circle",
        "three green circle",
        "two red circless",
        "five red circles",
        "a large red circle and a blue circle",
        "a large red circle and a large blue circle",
        "a red circle to the left of",
        "a large red circle above a blue square",
        "a red circle next to a blue square",
    ],
)
def test_parse_prompt_rejects_text_outside_the_grammar(prompt):
    with pytest.raises(ValueError, match="is not a shapes-world caption") as error:
        world.parse_prompt(prompt)
    assert repr(prompt) in str(error.value) and "'a red circle'" in str(error.value)


# ---- the verifier: ground truth ----


def test_verifier_scores_ground_truth_renders_one(scenes):
    results = verify_batch([scene.render() for scene in scenes], [scene.prompt for scene in scenes])
    failures = [
        (details["prompt"], details["clauses"], details["objects"]) for _, details in results if _ < 1.0
    ]
    for family in world.FAMILIES:
        scores = [score for score, details in results if details["family"] == family]
        assert len(scores) == 100
        accuracy = sum(score == 1.0 for score in scores) / len(scores)
        assert accuracy >= 0.99, (
            f"{family}: accuracy {accuracy:.3f} on ground truth; failures: {failures[:5]}"
        )


@pytest.mark.parametrize("resolution", [128, 256])
def test_verifier_works_at_higher_resolutions(scenes, resolution):
    chosen = scenes[:: 500 // 50]
    results = verify_batch([scene.render(resolution) for scene in chosen], [scene.prompt for scene in chosen])
    failures = [details["prompt"] for score, details in results if score < 1.0]
    assert len(failures) <= 1, f"{resolution}px ground truth not judged correct: {failures}"


def test_detect_objects_finds_kind_position_and_size():
    objects = (
        world.ShapeObject("red", "circle", "large", 16, 16, 12),
        world.ShapeObject("yellow", "square", "small", 48, 16, 7),
        world.ShapeObject("orange", "triangle", "large", 32, 46, 13),
    )
    image = world.render(objects)
    array = world.pixels(image)
    as_inputs = [
        array,
        torch.from_numpy(array.copy()),
        torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255,
        image,
    ]
    for found in (detect_objects(item) for item in as_inputs):
        by_kind = {item.kind: item for item in found}
        assert set(by_kind) == {("red", "circle"), ("yellow", "square"), ("orange", "triangle")}
        for item in objects:
            detected = by_kind[(item.colour, item.shape)]
            assert detected.centre == (item.x, item.y)
            assert detected.bbox == (
                item.x - item.half,
                item.y - item.half,
                item.x + item.half,
                item.y + item.half,
            )
        assert by_kind[("yellow", "square")].area == 14 * 14
    # Four times the pixels: the same objects, centres and boxes scaled by two.
    big = {item.kind: item for item in detect_objects(world.render(objects, 128))}
    assert big[("red", "circle")].centre == (32, 32) and big[("yellow", "square")].area == 28 * 28
    # Above WORKING_SIDE the image is averaged down first; what is found is still in the input's pixels.
    huge = {item.kind: item for item in detect_objects(world.render(objects, 256))}
    assert huge[("red", "circle")].centre == (64, 64) and huge[("yellow", "square")].area == 56 * 56
    assert huge[("orange", "triangle")].bbox == (4 * (32 - 13), 4 * (46 - 13), 4 * (32 + 13), 4 * (46 + 13))
    assert detect_objects(Image.new("RGB", (64, 64), "white")) == []


# ---- the verifier: wrong images ----


def _other_colour(scene: world.Scene, rng: random.Random) -> str:
    used = {colour for colour, _ in scene.requirement.objects}
    return rng.choice([colour for colour in world.COLOURS if colour not in used])


def test_verifier_fails_wrong_colour_and_wrong_shape(scenes):
    rng = random.Random(0)
    for scene in scenes[:200]:
        first = scene.objects[0]
        recoloured = (dataclasses.replace(first, colour=_other_colour(scene, rng)), *scene.objects[1:])
        assert _score(world.render(recoloured), scene.prompt) < 1.0, f"wrong colour passes {scene.prompt!r}"
        shape = rng.choice([shape for shape in world.SHAPES if shape != first.shape])
        reshaped = (dataclasses.replace(first, shape=shape), *scene.objects[1:])
        if (first.colour, shape) in scene.requirement.objects and scene.requirement.family != "counting":
            continue  # the swap made the other object of the caption: still a correct image
        assert _score(world.render(reshaped), scene.prompt) < 1.0, (
            f"{first.shape} -> {shape} passes {scene.prompt!r}"
        )


def test_verifier_fails_wrong_count(scenes):
    counting = _of_family(scenes, "counting")
    assert counting
    for scene in counting:
        assert _score(world.render(scene.objects[:-1]), scene.prompt) == 0.0, scene.prompt
    three = tuple(world.ShapeObject("red", "circle", "small", x, 32, 6) for x in (10, 32, 54))
    assert _score(world.render(three), "three red circles") == 1.0
    assert _score(world.render(three), "two red circles") == 0.0
    assert _score(world.render(three), "four red circles") == 0.0
    assert _score(world.render(three), "three blue circles") == 0.0


def test_verifier_fails_swapped_sizes(scenes):
    for scene in _of_family(scenes, "colour_attribution"):
        first, second = scene.objects
        swapped = (
            dataclasses.replace(first, half=second.half, size=second.size),
            dataclasses.replace(second, half=first.half, size=first.size),
        )
        score, details = verify(world.pixels(world.render(swapped)), scene.prompt)
        assert score < 1.0 and not details["clauses"][2][1], scene.prompt
        flipped = world.caption(dataclasses.replace(scene.requirement, larger=not scene.requirement.larger))
        score, details = verify(world.pixels(scene.render()), flipped)
        assert score == pytest.approx(2 / 3) and details["clauses"][:2] == [
            (details["clauses"][0][0], True),
            (details["clauses"][1][0], True),
        ]


def test_verifier_fails_mirrored_and_flipped_positions(scenes):
    position = _of_family(scenes, "position", count=100)
    horizontal = [scene for scene in position if scene.requirement.relation in ("left of", "right of")]
    vertical = [scene for scene in position if scene.requirement.relation in ("above", "below")]
    assert len(horizontal) >= 10 and len(vertical) >= 10
    for scenes_of, transform in ((horizontal, ImageOps.mirror), (vertical, ImageOps.flip)):
        for scene in scenes_of:
            score, details = verify(world.pixels(transform(scene.render())), scene.prompt)
            assert score == pytest.approx(2 / 3), (scene.prompt, details["clauses"])


def test_verifier_position_compares_the_best_pair():
    left = world.ShapeObject("red", "square", "small", 10, 32, 6)
    right = world.ShapeObject("red", "square", "small", 54, 32, 6)
    circle = world.ShapeObject("blue", "circle", "small", 32, 32, 7)
    image = world.render((left, right, circle))
    assert _score(image, "a red square to the left of a blue circle") == 1.0
    assert _score(image, "a red square to the right of a blue circle") == 1.0
    assert _score(image, "a red square above a blue circle") == pytest.approx(2 / 3)
    # Closer than the margin on the relation's axis: not left of.
    near = world.render(
        (
            world.ShapeObject("red", "square", "small", 20, 10, 6),
            world.ShapeObject("blue", "circle", "small", 24, 40, 6),
        )
    )
    assert _score(near, "a red square to the left of a blue circle") == pytest.approx(2 / 3)
    assert _score(near, "a red square above a blue circle") == 1.0


def test_blank_image_scores_zero_for_every_family(scenes):
    blank = Image.new("RGB", (64, 64), world.BACKGROUND)
    for family in world.FAMILIES:
        for scene in _of_family(scenes, family, count=5):
            assert _score(blank, scene.prompt) == 0.0, scene.prompt


def test_verifier_is_robust_to_mild_blur_and_noise(scenes):
    rng = np.random.default_rng(0)
    chosen = scenes[::2]

    def degrade(image: Image.Image) -> Image.Image:
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
        noisy = blurred + rng.normal(0.0, 8.0, blurred.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))

    results = verify_batch([degrade(scene.render()) for scene in chosen], [scene.prompt for scene in chosen])
    failures = [(details["prompt"], details["clauses"]) for score, details in results if score < 1.0]
    assert len(failures) <= 0.05 * len(chosen), failures[:5]


# ---- the reward ----


def test_reward_on_tensors_and_pil_lists_gives_the_same_scores(scenes):
    reward = load_reward("verifier", device="cpu")
    assert isinstance(reward, ShapesVerifierReward) and reward.name == "verifier"
    chosen = scenes[:40]
    images = [scene.render() for scene in chosen]
    # Half of the images wrong (mirrored, or blank), so the scores are not all 1.
    images[::2] = [ImageOps.mirror(image) for image in images[::2]]
    images[1::4] = [Image.new("RGB", (64, 64), "white")] * len(images[1::4])
    prompts = [scene.prompt for scene in chosen]
    from_pil = reward(images, prompts)
    from_tensor = reward(_as_tensor(images), prompts)
    chunked = load_reward("verifier", device="cpu", batch_size=7)(_as_tensor(images), prompts)
    assert from_pil.dtype == torch.float32 and from_pil.device.type == "cpu" and from_pil.shape == (40,)
    torch.testing.assert_close(from_pil, from_tensor)
    torch.testing.assert_close(from_pil, chunked)
    expected = torch.tensor([_score(image, prompt) for image, prompt in zip(images, prompts, strict=True)])
    torch.testing.assert_close(from_pil, expected)
    assert 0.0 < float(from_pil.mean()) < 1.0
    # PIL images of different sizes are judged one by one.
    mixed = reward([chosen[1].render(), chosen[1].render(128)], chosen[1].prompt)
    assert mixed.tolist() == [1.0, 1.0]


def test_reward_names_a_prompt_outside_the_grammar():
    reward = ShapesVerifierReward(device="cpu")
    image = world.render((world.ShapeObject("red", "circle", "small", 32, 32, 7),))
    assert reward([image], "a red circle").tolist() == [1.0]
    with pytest.raises(ValueError, match="'a photo of a cat' is not a shapes-world caption.*'a red circle'"):
        reward([image, image], ["a red circle", "a photo of a cat"])


def test_accuracy_report_on_a_hand_built_batch():
    circle = world.ShapeObject("red", "circle", "small", 20, 32, 7)
    squares = tuple(world.ShapeObject("blue", "square", "small", x, 20, 6) for x in (16, 48))
    left = (
        world.ShapeObject("green", "triangle", "large", 16, 32, 12),
        world.ShapeObject("black", "circle", "small", 50, 32, 7),
    )
    images = [
        world.render((circle,)),  # correct
        Image.new("RGB", (64, 64), "white"),  # nothing
        world.render(squares),  # correct
        ImageOps.mirror(world.render(left)),  # two of three clauses
    ]
    prompts = [
        "a red circle",
        "a red circle",
        "two blue squares",
        "a green triangle to the left of a black circle",
    ]
    report = accuracy_report(images, prompts)
    assert list(report) == ["single_object", "counting", "position", "overall"]
    assert report["single_object"] == pytest.approx(
        {"n": 2, "mean_score": 0.5, "accuracy": 0.5, "stderr": math.sqrt(0.25 / 2)}
    )
    assert report["counting"] == pytest.approx({"n": 1, "mean_score": 1.0, "accuracy": 1.0, "stderr": 0.0})
    assert report["position"] == pytest.approx({"n": 1, "mean_score": 2 / 3, "accuracy": 0.0, "stderr": 0.0})
    assert report["overall"] == pytest.approx(
        {"n": 4, "mean_score": (1 + 0 + 1 + 2 / 3) / 4, "accuracy": 0.5, "stderr": math.sqrt(0.25 / 4)}
    )
    lines = format_accuracy_report(report)
    assert len(lines) == 5 and lines[0].split()[:2] == ["family", "n"]
    assert lines[1].split()[:4] == ["single_object", "2", "0.500", "0.500"] and lines[-1].startswith(
        "overall"
    )


def test_detection_is_fast_on_a_batch():
    images = _as_tensor([scene.render() for scene in world.training_batch(5, 256)])
    detect_batch(images[:4])
    start = time.perf_counter()
    found = detect_batch(images)
    elapsed = time.perf_counter() - start
    assert len(found) == 256 and all(found)
    # About 0.2 s on one loaded CPU core; the bound only catches an accidental per-pixel Python loop.
    assert elapsed < 10.0, f"256 images of 64x64 took {elapsed:.1f} s"
