"""`shapes-clip`: the shapes world's small learned CLIP reward (`rewards/shapes/clip.py`) and its shipped weights."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rewards import BUILTIN_REWARDS, load_reward
from rewards.shapes.clip import SHAPES_CLIP_DIR, WEIGHTS_FILE, ShapesClipReward, train_shapes_clip
from rewards.shapes.world import COLOURS, caption, sample_scene


def _held_out(count: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    return [sample_scene(rng, split="heldout") for _ in range(count)]


def _wrong_colour(scene, rng: random.Random) -> str:
    objects = list(scene.requirement.objects)
    index = rng.randrange(len(objects))
    objects[index] = (rng.choice([c for c in COLOURS if c != objects[index][0]]), objects[index][1])
    return caption(replace(scene.requirement, objects=tuple(objects)))


def _tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.array(image) for image in images])).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def reward():
    # Through load_reward, as training loads it ("shapes-clip" once registered, the class path before).
    name = "shapes-clip" if "shapes-clip" in BUILTIN_REWARDS else "rewards.shapes.clip:ShapesClipReward"
    loaded = load_reward(name, device="cpu")
    assert isinstance(loaded, ShapesClipReward) and loaded.path == SHAPES_CLIP_DIR
    return loaded


def test_shipped_directory_is_safetensors_and_json_only():
    names = {path.name for path in SHAPES_CLIP_DIR.iterdir()}
    assert {"open_clip_config.json", WEIGHTS_FILE, "tokenizer.json", "README.md"} <= names
    assert all(name.endswith((".json", ".safetensors", ".md")) for name in names), names
    assert (SHAPES_CLIP_DIR / WEIGHTS_FILE).stat().st_size < 4_000_000


def test_scores_are_deterministic(reward):
    scenes = _held_out(6)
    images, prompts = [scene.render() for scene in scenes], [scene.prompt for scene in scenes]
    first = reward(images, prompts)
    assert first.shape == (6,) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, reward(images, prompts))
    assert torch.equal(first, ShapesClipReward(device="cpu")(images, prompts))


def test_true_caption_beats_wrong_colour_on_held_out_scenes(reward):
    rng = random.Random(0)
    scenes = _held_out(50)
    wrong = [_wrong_colour(scene, rng) for scene in scenes]
    pixels = _tensor([scene.render() for scene in scenes])
    right_scores = reward(pixels, [scene.prompt for scene in scenes])
    wrong_scores = reward(pixels, wrong)
    # Measured 0.995 on 200 held-out scenes (shapes_clip/README.md); chance is 0.5.
    assert (right_scores > wrong_scores).float().mean() >= 0.8


def test_tensor_and_pil_inputs_agree_and_any_size_works(reward):
    scenes = _held_out(4, seed=3)
    prompts = [scene.prompt for scene in scenes]
    images = [scene.render() for scene in scenes]
    torch.testing.assert_close(reward(images, prompts), reward(_tensor(images), prompts), atol=1e-4, rtol=0)
    large = [scene.render(128) for scene in scenes]
    large_scores = reward(_tensor(large), prompts)
    assert large_scores.shape == (4,) and torch.isfinite(large_scores).all()
    torch.testing.assert_close(large_scores, reward(large, prompts), atol=1e-4, rtol=0)
    # Words outside the world's vocabulary are <unk>, not an error.
    assert torch.isfinite(reward(images[:1], "a pink hexagon, please!")).all()


def test_directory_is_a_plain_open_clip_model(reward):
    """The "clip" reward loads the same directory (open_clip local-dir) and gives the same scores."""
    scenes = _held_out(3, seed=5)
    images, prompts = [scene.render() for scene in scenes], [scene.prompt for scene in scenes]
    plain = load_reward("clip", model_name=str(SHAPES_CLIP_DIR), device="cpu")
    torch.testing.assert_close(plain(images, prompts), reward(images, prompts))


@pytest.mark.slow
def test_tiny_training_run_saves_a_loadable_deterministic_model(tmp_path):
    first = train_shapes_clip(tmp_path / "a", seed=3, steps=2, batch_size=8)
    second = train_shapes_clip(tmp_path / "b", seed=3, steps=2, batch_size=8)
    other = train_shapes_clip(tmp_path / "c", seed=4, steps=2, batch_size=8)
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left
    weights = [load_file(str(path / WEIGHTS_FILE)) for path in (first, second, other)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not all(torch.equal(weights[0][name], weights[2][name]) for name in weights[0])
    scene = _held_out(1)[0]
    loaded = load_reward("rewards.shapes.clip:ShapesClipReward", path=str(first), device="cpu")
    score = loaded([scene.render()], [scene.prompt])
    assert torch.equal(score, ShapesClipReward(second, device="cpu")([scene.render()], [scene.prompt]))
    assert torch.isfinite(score).all()
    with pytest.raises(FileNotFoundError, match="no shapes-clip model"):
        ShapesClipReward(tmp_path)
