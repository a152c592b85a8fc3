"""Tests for the `rewards` package on the tiny offline reward kit (CPU, random weights)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import rewards.clip
import rewards.hpsv2
import rewards.pickscore
from rewards import RewardModel, images_to_pixels, load_reward, resize_crop_normalize
from tscale_train.tiny.rewards import (
    OPEN_CLIP_SUBDIR,
    PICKSCORE_SUBDIR,
    TINY_HPS_CHECKPOINT,
    TINY_OPEN_CLIP_WEIGHTS,
    build_tiny_open_clip,
    build_tiny_pickscore,
    build_tiny_rewards,
    tiny_reward_kwargs,
)

MODEL_REWARDS = ("pickscore", "hpsv2", "clip")
PROMPTS = ["a red cube", "a cat on a mat", "a red cube", "an astronaut riding a horse on the moon"]


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_rewards(tmp_path_factory.mktemp("tiny_rewards"), seed=0)


@pytest.fixture(scope="module")
def loaded(kit_dir: Path) -> dict[str, RewardModel]:
    return {
        name: load_reward(name, device="cpu", **tiny_reward_kwargs(name, kit_dir)) for name in MODEL_REWARDS
    }


def smooth_images(num: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 images [N, 3, H, W] that look like something (upsampled low-res noise), not white noise."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(num, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    upsampled = torch.nn.functional.interpolate(
        low, size=(height, width), mode="bilinear", align_corners=False
    )
    return (upsampled * 255).round().to(torch.uint8)


def to_pil(images_uint8: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images_uint8]


@pytest.mark.parametrize("name", [*MODEL_REWARDS, "rewards.synthetic:brightness"])
def test_every_reward_loads_from_the_kit_and_returns_finite_float_scores(
    name: str, kit_dir: Path, loaded: dict[str, RewardModel]
) -> None:
    reward = loaded.get(name) or load_reward(name, device="cpu", **tiny_reward_kwargs(name, kit_dir))
    images = smooth_images(4, 48, 40).float() / 255
    scores = reward(images, PROMPTS)
    assert scores.shape == (4,)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    assert reward.name == name


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_batched_scores_equal_one_by_one_and_chunked(name: str, loaded: dict[str, RewardModel]) -> None:
    reward = loaded[name]
    images = smooth_images(4, 48, 40, seed=1).float() / 255
    batched = reward(images, PROMPTS)
    one_by_one = torch.cat([reward(images[i : i + 1], PROMPTS[i]) for i in range(4)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-4, rtol=0)
    reward.batch_size = 3  # chunks of 3 + 1 images (and of prompts)
    try:
        chunked = reward(images, PROMPTS)
    finally:
        reward.batch_size = None
    torch.testing.assert_close(batched, chunked, atol=1e-4, rtol=0)
    # Different prompts and different images must actually change the score (the model is used).
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_pil_list_equals_tensor_input(name: str, loaded: dict[str, RewardModel]) -> None:
    images_uint8 = smooth_images(3, 48, 40, seed=2)
    from_tensor = loaded[name](images_uint8.float() / 255, PROMPTS[:3])
    from_pil = loaded[name](to_pil(images_uint8), PROMPTS[:3])
    from_uint8_tensor = loaded[name](images_uint8, PROMPTS[:3])
    torch.testing.assert_close(from_pil, from_tensor, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_uint8_tensor, from_tensor, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_pil_images_of_different_sizes_score_as_each_alone(name: str, loaded: dict[str, RewardModel]) -> None:
    pils = [to_pil(smooth_images(1, 48, 40, seed=3))[0], to_pil(smooth_images(1, 64, 96, seed=4))[0]]
    together = loaded[name](pils, ["a cat", "a dog"])
    alone = torch.cat([loaded[name]([pils[0]], "a cat"), loaded[name]([pils[1]], "a dog")])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_one_prompt_string_equals_a_list_of_that_prompt(name: str, loaded: dict[str, RewardModel]) -> None:
    images = smooth_images(3, 40, 40, seed=5).float() / 255
    torch.testing.assert_close(
        loaded[name](images, "a bowl of fruit"),
        loaded[name](images, ["a bowl of fruit"] * 3),
        atol=1e-6,
        rtol=0,
    )


def test_prompt_count_mismatch_and_bad_images_raise_clear_errors(loaded: dict[str, RewardModel]) -> None:
    reward = loaded["pickscore"]
    images = smooth_images(3, 32, 32).float() / 255
    with pytest.raises(ValueError, match="got 2 prompts for 3 images"):
        reward(images, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        reward(images[0], "a")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward(images * 2 - 1, "a")
    with pytest.raises(ValueError, match="PIL"):
        reward([images[0]], "a")


def test_unknown_name_raises_before_any_model_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reward model was constructed for an invalid name")

    for reward_class in (
        rewards.pickscore.PickScoreReward,
        rewards.hpsv2.HPSv2Reward,
        rewards.clip.ClipScoreReward,
    ):
        monkeypatch.setattr(reward_class, "__init__", must_not_load)
    for bad_name in ("pickscroe", "image_reward", "", "not a:callable form"):
        with pytest.raises(ValueError, match="pickscore, hpsv2, clip") as error:
            load_reward(bad_name)
        assert "module:callable" in str(error.value)
    with pytest.raises(ValueError, match="cannot import module"):
        load_reward("no_such_module_anywhere:score")
    with pytest.raises(ValueError, match="has no attribute"):
        load_reward("rewards.synthetic:no_such_function")


def test_module_callable_synthetic_rewards_order_images() -> None:
    dark = torch.full((1, 3, 24, 24), 0.2)
    bright = torch.full((1, 3, 24, 24), 0.8)
    red = torch.zeros(1, 3, 24, 24)
    red[:, 0] = 0.9
    blue = torch.zeros(1, 3, 24, 24)
    blue[:, 2] = 0.9
    brightness = load_reward("rewards.synthetic:brightness", device="cpu")
    darkness = load_reward("rewards.synthetic:darkness", device="cpu")
    redness = load_reward("rewards.synthetic:redness", device="cpu")
    pair = torch.cat([dark, bright])
    brightness_scores = brightness(pair, "anything")
    assert brightness_scores[1] > brightness_scores[0]
    torch.testing.assert_close(brightness_scores, torch.tensor([0.2, 0.8]))
    darkness_scores = darkness(pair, "anything")
    assert darkness_scores[0] > darkness_scores[1]
    redness_scores = redness(torch.cat([red, blue]), ["x", "y"])
    assert redness_scores[0] > 0 > redness_scores[1]
    # The wrapper normalises inputs: a PIL list gives the same scores as the tensor.
    pil_pair = to_pil((pair * 255).round().to(torch.uint8))
    torch.testing.assert_close(brightness(pil_pair, "anything"), brightness_scores, atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="prompts for"):
        brightness(pair, ["only one", "two", "three"])


def test_pickscore_is_logit_scale_times_cosine_like_the_reference(kit_dir: Path) -> None:
    from transformers import AutoProcessor, CLIPModel

    reward = load_reward("pickscore", device="cpu", **tiny_reward_kwargs("pickscore", kit_dir))
    # Make the scale distinctive so a forgotten (or un-exponentiated) logit scale cannot pass.
    with torch.no_grad():
        reward.model.logit_scale.fill_(math.log(37.0))
    images_uint8 = smooth_images(3, 32, 32, seed=6)  # model size: the processor's resize is exact
    prompts = ["a cat", "a red cube on a table", "a dog"]
    scores = reward(to_pil(images_uint8), prompts)

    # The PickScore authors' code, on the processor's own PIL path.
    model = CLIPModel.from_pretrained(kit_dir / PICKSCORE_SUBDIR).eval()
    processor = AutoProcessor.from_pretrained(kit_dir / PICKSCORE_SUBDIR)
    with torch.no_grad():
        image_inputs = processor(images=to_pil(images_uint8), return_tensors="pt")
        text_inputs = processor(
            text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        image_embs = rewards.pickscore.pooled_embeddings(model.get_image_features(**image_inputs))
        text_embs = rewards.pickscore.pooled_embeddings(model.get_text_features(**text_inputs))
        image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
        text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
        cosine = (image_embs * text_embs).sum(dim=-1)
    torch.testing.assert_close(scores, 37.0 * cosine, atol=1e-4, rtol=1e-5)


def test_tensor_preprocessing_matches_the_reference_pil_transforms(loaded: dict[str, RewardModel]) -> None:
    import open_clip
    from transformers import CLIPImageProcessor

    images_uint8 = smooth_images(3, 96, 80, seed=7)  # resize shortest side 80 -> 32, then crop
    pickscore = loaded["pickscore"]
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    reference = processor(images=to_pil(images_uint8), return_tensors="pt")["pixel_values"]
    ours = pickscore.preprocess(images_uint8.float() / 255)
    assert ours.shape == reference.shape == (3, 3, 32, 32)
    # The references resize uint8 images; the remaining gap is about one 8-bit level (/ std ~0.27).
    assert (ours - reference).abs().max() < 2 / 255 / 0.26
    open_clip_transform = open_clip.image_transform(32, is_train=False)
    open_clip_reference = torch.stack([open_clip_transform(image) for image in to_pil(images_uint8)])
    assert (
        loaded["hpsv2"].preprocess(images_uint8.float() / 255) - open_clip_reference
    ).abs().max() < 2 / 255 / 0.26


def test_resize_keeps_aspect_and_crops_the_centre() -> None:
    # A wide image whose centre is white and edges black: after shortest-side resize + centre crop,
    # the crop sees only the white centre.
    image = torch.zeros(1, 3, 20, 60)
    image[..., 20:40] = 1.0
    out = resize_crop_normalize(image, resize_to=10, crop_to=(10, 10), mean=None, std=None)
    assert out.shape == (1, 3, 10, 10)
    assert out[..., 1:-1].min() > 0.9
    squashed = resize_crop_normalize(
        image, resize_to=(10, 10), crop_to=None, mean=None, std=None, resize_mode="squash"
    )
    assert squashed.shape == (1, 3, 10, 10) and squashed.min() < 0.1


class _Tripwire:
    """A pickled object that would record it was unpickled (i.e. that code ran)."""

    triggered = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_trip, ())


def _trip() -> _Tripwire:
    _Tripwire.triggered = True
    return _Tripwire()


def test_hpsv2_loads_pt_checkpoints_with_weights_only(
    kit_dir: Path, tmp_path: Path, loaded: dict[str, RewardModel]
) -> None:
    images = smooth_images(2, 40, 40, seed=8).float() / 255
    expected = loaded["hpsv2"](images, ["a", "b"])
    open_clip_dir = kit_dir / OPEN_CLIP_SUBDIR
    kwargs = tiny_reward_kwargs("hpsv2", kit_dir)
    state_dict = load_file(str(open_clip_dir / TINY_OPEN_CLIP_WEIGHTS))

    # DataParallel-style "module." prefixes under a {"state_dict": ...} wrapper.
    prefixed = tmp_path / "prefixed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, prefixed)
    from_prefixed = load_reward("hpsv2", device="cpu", **{**kwargs, "checkpoint_path": str(prefixed)})
    torch.testing.assert_close(from_prefixed(images, ["a", "b"]), expected)

    # A safetensors checkpoint goes through the same loader.
    from_safetensors = load_reward(
        "hpsv2", device="cpu", **{**kwargs, "checkpoint_path": str(open_clip_dir / TINY_OPEN_CLIP_WEIGHTS)}
    )
    torch.testing.assert_close(from_safetensors(images, ["a", "b"]), expected)

    # A checkpoint carrying a pickled object is refused, and the object's code never runs.
    malicious = tmp_path / "malicious.pt"
    torch.save({"state_dict": state_dict, "extra": _Tripwire()}, malicious)
    _Tripwire.triggered = False
    with pytest.raises(ValueError, match="refusing to load"):
        load_reward("hpsv2", device="cpu", **{**kwargs, "checkpoint_path": str(malicious)})
    assert not _Tripwire.triggered

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward("hpsv2", device="cpu", **{**kwargs, "checkpoint_path": str(tmp_path / "missing.pt")})


def test_hpsv2_is_plain_cosine_and_clip_is_100_cosine(loaded: dict[str, RewardModel]) -> None:
    images = smooth_images(3, 40, 40, seed=9).float() / 255
    hps = loaded["hpsv2"](images, PROMPTS[:3])
    clip = loaded["clip"](images, PROMPTS[:3])
    assert hps.abs().max() <= 1.0
    # The tiny kit gives both the same weights, so they differ exactly by CLIPScore's factor 100.
    torch.testing.assert_close(clip, 100 * hps, atol=1e-3, rtol=1e-5)
    # Direct computation with open_clip's own encoders and the HPSv2 formula.
    model = loaded["hpsv2"].model
    with torch.no_grad():
        image_features = model.encode_image(loaded["hpsv2"].preprocess(images), normalize=True)
        text_features = model.encode_text(loaded["hpsv2"].tokenizer(PROMPTS[:3]), normalize=True)
        reference = torch.diagonal(image_features @ text_features.T)
    torch.testing.assert_close(hps, reference, atol=1e-5, rtol=1e-5)


def test_clip_loads_from_an_open_clip_directory_too(kit_dir: Path, loaded: dict[str, RewardModel]) -> None:
    images = smooth_images(2, 40, 40, seed=10).float() / 255
    from_directory = load_reward("clip", device="cpu", model_name=str(kit_dir / OPEN_CLIP_SUBDIR))
    torch.testing.assert_close(from_directory(images, "a cat"), loaded["clip"](images, "a cat"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward(
            "clip",
            device="cpu",
            model_name=tiny_reward_kwargs("clip", kit_dir)["model_name"],
            pretrained=str(kit_dir / "missing.safetensors"),
        )


def test_to_moves_the_model_and_returns_the_reward(loaded: dict[str, RewardModel]) -> None:
    reward = loaded["pickscore"]
    images = smooth_images(2, 32, 32, seed=11).float() / 255
    before = reward(images, "a cat")
    assert reward.to("cpu") is reward
    assert reward.device == torch.device("cpu")
    assert next(reward.model.parameters()).device == torch.device("cpu")
    torch.testing.assert_close(reward(images, "a cat"), before)


def test_low_precision_weights_still_return_float32(kit_dir: Path, loaded: dict[str, RewardModel]) -> None:
    images = smooth_images(2, 32, 32, seed=12).float() / 255
    reward = load_reward("clip", device="cpu", dtype=torch.bfloat16, **tiny_reward_kwargs("clip", kit_dir))
    assert next(reward.model.parameters()).dtype == torch.bfloat16
    scores = reward(images, "a cat")
    assert scores.dtype == torch.float32
    # bf16 keeps ~3 significant digits; CLIPScore values are O(10), cosine errors O(1e-2).
    torch.testing.assert_close(scores, loaded["clip"](images, "a cat"), atol=2.0, rtol=0)


def _weights(directory: Path, filename: str) -> dict[str, torch.Tensor]:
    return load_file(str(directory / filename))


def test_tiny_models_are_deterministic_in_the_seed(tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    first = build_tiny_pickscore(tmp_path / "a", seed=0)
    second = build_tiny_pickscore(tmp_path / "b", seed=0)
    other = build_tiny_pickscore(tmp_path / "c", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is left alone
    weights_a, weights_b, weights_c = (_weights(d, "model.safetensors") for d in (first, second, other))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert any(not torch.equal(weights_a[k], weights_c[k]) for k in weights_a)

    open_a = build_tiny_open_clip(tmp_path / "oa", seed=0)
    open_b = build_tiny_open_clip(tmp_path / "ob", seed=0)
    open_c = build_tiny_open_clip(tmp_path / "oc", seed=1)
    weights_a, weights_b, weights_c = (_weights(d, TINY_OPEN_CLIP_WEIGHTS) for d in (open_a, open_b, open_c))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert any(not torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    hps = torch.load(open_a / TINY_HPS_CHECKPOINT, weights_only=True)["state_dict"]
    assert all(torch.equal(hps[k], weights_a[k]) for k in weights_a)


def test_build_tiny_rewards_is_idempotent_and_replaces_half_builds(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    # A directory left by an interrupted build (no completion marker) must be rebuilt, not reused.
    (kit / PICKSCORE_SUBDIR).mkdir(parents=True)
    (kit / PICKSCORE_SUBDIR / "config.json").write_text("{ truncated")
    with pytest.raises(FileNotFoundError, match="build_tiny_rewards"):
        tiny_reward_kwargs("pickscore", kit)
    build_tiny_rewards(kit, seed=0)
    config = json.loads((kit / PICKSCORE_SUBDIR / "config.json").read_text())
    assert config["projection_dim"] == 16
    marker_times = {p: p.stat().st_mtime_ns for p in kit.rglob("tiny_reward_complete.json")}
    assert len(marker_times) == 2
    build_tiny_rewards(kit, seed=0)
    assert {p: p.stat().st_mtime_ns for p in kit.rglob("tiny_reward_complete.json")} == marker_times
    assert not [p for p in kit.iterdir() if p.name.startswith(".")]  # no temporary directories left
    assert tiny_reward_kwargs("rewards.synthetic:brightness", kit) == {}
    with pytest.raises(ValueError, match="no tiny version"):
        tiny_reward_kwargs("imagereward", kit)


def test_rewards_imports_neither_tscale_train_nor_model_libraries_eagerly() -> None:
    code = (
        "import sys, torch, rewards\n"
        "r = rewards.load_reward('rewards.synthetic:brightness', device='cpu')\n"
        "assert r(torch.rand(2, 3, 8, 8), 'x').shape == (2,)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tscale_train', 'transformers', 'open_clip')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_images_to_pixels_keeps_tensors_on_their_device_and_stacks_same_size_pil() -> None:
    pils = to_pil(smooth_images(2, 16, 24))
    stacked = images_to_pixels(pils)
    assert isinstance(stacked, torch.Tensor) and stacked.shape == (2, 3, 16, 24)
    assert 0.0 <= float(stacked.min()) and float(stacked.max()) <= 1.0
    mixed = images_to_pixels([pils[0], pils[0].resize((8, 8))])
    assert isinstance(mixed, list) and [tuple(t.shape) for t in mixed] == [(3, 16, 24), (3, 8, 8)]


def test_one_local_path_rule(tmp_path):
    from rewards.paths import check_local_path, looks_like_local_path
    from rewards.pickscore import check_local_path as pickscore_check

    assert pickscore_check is check_local_path
    for local in ("./model", "../model", "/abs/model", "~/model", ".hidden", "a/b/c", "a\\b", Path("rel")):
        assert looks_like_local_path(local), local
    for hub in ("org/name", "yuvalkirstain/PickScore_v1", "name"):
        assert not looks_like_local_path(hub), hub
    assert check_local_path("org/name", "model") == "org/name"
    assert check_local_path(str(tmp_path), "model") == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_local_path(str(tmp_path / "missing"), "PickScore model")
