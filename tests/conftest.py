import os
from pathlib import Path

import pytest

# Tests run offline: never reach for the Hub, and keep the tiny kit in one place per checkout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TSCALE_TINY_DIR", str(Path(__file__).resolve().parents[1] / ".tiny_models"))


@pytest.fixture(scope="session")
def kit_dir() -> Path:
    from tscale_train.tiny import ensure_tiny_kit

    return ensure_tiny_kit()


@pytest.fixture(scope="session")
def tiny_pipe(kit_dir):
    from tscale_train.loading import load_pipeline

    return load_pipeline("tiny", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def shapes_kit_dir(kit_dir) -> Path:
    """The saved real-shape pipeline (`shapes-klein-4b`, 1.1 GB), built on first use, reused afterwards."""
    from tscale_train.tiny import ensure_shapes_kit

    return ensure_shapes_kit(kit_dir)
