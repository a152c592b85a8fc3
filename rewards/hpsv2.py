"""HPS v2.1 (Human Preference Score v2, Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on HPDv2.

Score = `cosine(image_embedding, text_embedding)`, the diagonal of
`image_features @ text_features.T` on normalised features, as the HPSv2 repository computes it
(no logit scale; typical values 0.25-0.35). The checkpoint is a PyTorch pickle; it is only ever
read with `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .clip import DEFAULT_OPEN_CLIP_MODEL, OpenClipEmbeddingReward, create_open_clip_model

HPSV2_REPO_ID = "xswu/HPSv2"
HPSV2_FILENAME = "HPS_v2.1_compressed.pt"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `.pt`/`.pth`/`.bin` file, safely.

    Unwraps a `{"state_dict": ...}` checkpoint and strips DataParallel's "module." prefixes.
    Raises ValueError for a pickle holding anything but tensors (weights_only refuses it) and
    FileNotFoundError for a missing file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass an existing .pt or .safetensors file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: object = load_file(str(path), device="cpu")
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"refusing to load {str(path)!r}: it holds pickled objects other than tensors, which "
                "torch.load(weights_only=True) will not execute; re-save only the state dict "
                "(or convert it to .safetensors)"
            ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise ValueError(
            f"{str(path)!r} is not a state dict (a mapping of names to tensors, optionally under 'state_dict')"
        )
    return {
        (name[len("module.") :] if name.startswith("module.") else name): tensor
        for name, tensor in checkpoint.items()
    }


def download_hpsv2_checkpoint() -> str:
    """Fetch HPS v2.1's checkpoint from the Hub (cached by huggingface_hub)."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(HPSV2_REPO_ID, HPSV2_FILENAME)
    except Exception as error:  # network, auth or offline-mode errors all mean the same to the user
        raise FileNotFoundError(
            f"could not fetch {HPSV2_FILENAME} from {HPSV2_REPO_ID} ({type(error).__name__}: {error}); "
            "download it elsewhere and pass checkpoint_path="
        ) from error


class HPSv2Reward(OpenClipEmbeddingReward):
    """HPS v2.1 on open_clip; see the module docstring for the score."""

    name = "hpsv2"

    def __init__(
        self,
        checkpoint_path: str | Path | None = None,
        model_name: str | Path = DEFAULT_OPEN_CLIP_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        checkpoint = checkpoint_path if checkpoint_path is not None else download_hpsv2_checkpoint()
        state_dict = load_state_dict_file(checkpoint)
        # The architecture is built without weights (HPS replaces all of them), then loaded strictly.
        model, tokenizer, self.model_name = create_open_clip_model(model_name, None, load_weights=False)
        if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
            state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[1] if len(str(error).splitlines()) > 1 else str(error)
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} does not fit open_clip model {str(model_name)!r} "
                f"({first_line.strip()}); pass the matching model_name="
            ) from error
        self.checkpoint_path = str(checkpoint)
        self._setup(model, tokenizer)
