"""Tiny random-weight reward models for offline tests and the demo.

`build_tiny_rewards(kit_dir)` writes two directories that load through the same code paths as the
real models (`load_reward(name, **tiny_reward_kwargs(name, kit_dir))`):

- `kit_dir/pickscore/`: a transformers `CLIPModel` (32px images, 2+2 layers of width 32,
  projection 16) and a `CLIPProcessor` whose tokenizer is a byte-level CLIP BPE with no merges
  (the 256 byte symbols, their end-of-word forms and the two special tokens), so it needs no
  download. Loaded by `CLIPModel.from_pretrained` / `AutoProcessor.from_pretrained`.
- `kit_dir/open_clip/`: a tiny open_clip architecture (`tscale-tiny-open-clip.json`), its weights
  as `open_clip_model.safetensors` (the "clip" reward's `pretrained=` file; with
  `open_clip_config.json` the directory is also a valid open_clip "local-dir:"), and the same
  weights as an HPS-style `HPS_v2.1_tiny.pt` checkpoint (`{"state_dict": ...}`) for "hpsv2".
  open_clip's SimpleTokenizer ships with the package, so the text tower keeps its 49408 vocab.

Weights are a function of `seed` only (built under a forked, seeded RNG). Every build goes to a
temporary sibling directory that is renamed into place, so an interrupted build never leaves a
half directory; `build_tiny_rewards` skips components that are already complete for that seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..io_utils import respect_umask

PICKSCORE_SUBDIR = "pickscore"
OPEN_CLIP_SUBDIR = "open_clip"
TINY_OPEN_CLIP_NAME = "tscale-tiny-open-clip"
TINY_OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
TINY_HPS_CHECKPOINT = "HPS_v2.1_tiny.pt"
_MARKER = "tiny_reward_complete.json"
# Bump when a tiny config changes so that existing kits are rebuilt rather than reused.
_FORMAT_VERSION = 1

TINY_IMAGE_SIZE = 32
TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": TINY_IMAGE_SIZE,
        "layers": 2,
        "width": 32,
        "head_width": 16,
        "patch_size": 8,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _is_complete(directory: Path, kind: str, seed: int) -> bool:
    marker = directory / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded == {"kind": kind, "seed": seed, "format": _FORMAT_VERSION}


def _atomic_build(out_dir: str | Path, kind: str, seed: int, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)`, mark it complete, and move it to `out_dir` (replacing what was there)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        build(tmp_dir)
        (tmp_dir / _MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "format": _FORMAT_VERSION}))
        respect_umask(tmp_dir)  # mkdtemp's 0700 and safetensors' 0600 -> the modes the umask gives
        if out_dir.exists():
            # Move the old directory aside first: renaming onto a non-empty directory fails.
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old_dir / "previous")
            shutil.rmtree(old_dir, ignore_errors=True)
        try:
            os.replace(tmp_dir, out_dir)
        except OSError:
            # Another process finished the same build first: keep its result if it is complete.
            if not _is_complete(out_dir, kind, seed):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def byte_level_clip_vocab() -> dict[str, int]:
    """CLIP's BPE vocabulary without merges: bytes, bytes + "</w>", then the two special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny_pickscore(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny PickScore-style `CLIPModel` + `CLIPProcessor` to `out_dir`; returns `out_dir`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    def build(directory: Path) -> None:
        tokenizer = CLIPTokenizer(vocab=byte_level_clip_vocab(), merges=[], model_max_length=77)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": TINY_IMAGE_SIZE},
            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        )
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 77,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "image_size": TINY_IMAGE_SIZE,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.save_pretrained(directory)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)

    return _atomic_build(out_dir, "pickscore", seed, build)


def build_tiny_open_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny open_clip model (config, safetensors weights, HPS-style .pt) to `out_dir`."""
    import open_clip
    from safetensors.torch import save_file

    from rewards.clip import quiet_root_warnings

    def build(directory: Path) -> None:
        config_path = directory / f"{TINY_OPEN_CLIP_NAME}.json"
        config_path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2))
        # The hub / local-dir layout: {"model_cfg", "preprocess_cfg"} next to the weights.
        hub_config = {
            "model_cfg": TINY_OPEN_CLIP_CONFIG,
            "preprocess_cfg": {
                "mean": list(open_clip.OPENAI_DATASET_MEAN),
                "std": list(open_clip.OPENAI_DATASET_STD),
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
        }
        (directory / "open_clip_config.json").write_text(json.dumps(hub_config, indent=2))
        with torch.random.fork_rng(devices=[]), quiet_root_warnings():
            torch.manual_seed(seed)
            # "local-dir:" reads the config just written without touching open_clip's global registry.
            model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
        state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state_dict, str(directory / TINY_OPEN_CLIP_WEIGHTS))
        torch.save({"state_dict": state_dict}, directory / TINY_HPS_CHECKPOINT)

    return _atomic_build(out_dir, "open_clip", seed, build)


def build_tiny_rewards(kit_dir: str | Path, seed: int = 0) -> Path:
    """Build both tiny reward models under `kit_dir` (skipping complete ones); returns `kit_dir`."""
    kit_dir = Path(kit_dir)
    if not _is_complete(kit_dir / PICKSCORE_SUBDIR, "pickscore", seed):
        build_tiny_pickscore(kit_dir / PICKSCORE_SUBDIR, seed=seed)
    if not _is_complete(kit_dir / OPEN_CLIP_SUBDIR, "open_clip", seed):
        build_tiny_open_clip(kit_dir / OPEN_CLIP_SUBDIR, seed=seed)
    return kit_dir


def needs_kit_weights(name: str) -> bool:
    """Whether reward `name` loads weights from the tiny kit: not a "package.module:callable" reward, nor
    one whose weights ship with the package (`verifier`, `shapes-clip`)."""
    from rewards.registry import SHIPPED_REWARDS

    return ":" not in name and name.strip().lower() not in SHIPPED_REWARDS


def tiny_reward_kwargs(name: str, kit_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments that make `load_reward(name, **kwargs)` load the tiny model from `kit_dir`.

    "package.module:callable" rewards and those whose weights ship with the package (`verifier`,
    `shapes-clip`) need nothing ({}). Raises FileNotFoundError when the kit has
    not been built (call `build_tiny_rewards(kit_dir)` first) and ValueError for unknown names.
    """
    from rewards import BUILTIN_REWARDS

    if not needs_kit_weights(name):
        return {}
    builtin = name.strip().lower()
    if builtin not in BUILTIN_REWARDS:
        raise ValueError(
            f"no tiny version of reward {name!r}; use one of {', '.join(BUILTIN_REWARDS)} or a 'module:callable'"
        )
    kit_dir = Path(kit_dir)
    subdir = kit_dir / (PICKSCORE_SUBDIR if builtin == "pickscore" else OPEN_CLIP_SUBDIR)
    if not (subdir / _MARKER).is_file():
        raise FileNotFoundError(
            f"tiny reward models missing in {subdir}; run build_tiny_rewards({str(kit_dir)!r})"
        )
    if builtin == "pickscore":
        return {"model_name_or_path": str(subdir), "processor_name_or_path": str(subdir)}
    architecture = str(subdir / f"{TINY_OPEN_CLIP_NAME}.json")
    if builtin == "hpsv2":
        return {"model_name": architecture, "checkpoint_path": str(subdir / TINY_HPS_CHECKPOINT)}
    return {"model_name": architecture, "pretrained": str(subdir / TINY_OPEN_CLIP_WEIGHTS)}
