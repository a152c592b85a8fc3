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
def dims_kit_dir(kit_dir) -> Path:
    """The saved real-dimension pipeline (`dims-klein-4b`, 1.1 GB), built on first use, reused afterwards."""
    from tscale_train.tiny import ensure_dims_kit

    return ensure_dims_kit(kit_dir)


# The family test modules (`test_family_<family>.py`) each name their kit in a module-level `MODEL`.
@pytest.fixture(scope="module")
def pipe(request, kit_dir):
    """The pipeline of the requesting module's `MODEL` kit, loaded once per module through the real loading code."""
    from tscale_train.loading import load_pipeline

    return load_pipeline(request.module.MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def generator(pipe):
    """The family's default generator on `pipe`, small batches so batching paths run."""
    from tscale_train.generation import generator_for_pipeline

    return generator_for_pipeline(pipe, eval_batch_size=3)
