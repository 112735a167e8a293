"""Shared fixtures: the embedded model (loaded once per session) and a tiny random model built from its
config (2 layers, same tokenizer), for tests that train or must be fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_llama import save_tiny_llama  # the tests' folder is on sys.path (pytest's prepend mode)

from dlma.models import DEFAULT_MODEL, ModelConfig, load_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_DEV = SHARED_DATA / "hh-rlhf-harmless-base-test-dev512.jsonl"


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, float32 on CPU."""
    return load_model(ModelConfig(DEFAULT_MODEL, dtype="float32", device="cpu"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama with the embedded model's tokenizer, saved as a local model folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def hh_dev() -> Path:
    if not HH_DEV.exists():
        pytest.skip(f"{HH_DEV} not present (the shared development data)")
    return HH_DEV
