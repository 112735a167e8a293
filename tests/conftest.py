"""Shared fixtures: the embedded model (loaded once per session) and a tiny random model built from its
config (2 layers, same tokenizer), for tests that train or must be fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_llama import save_tiny_llama  # the tests' folder is on sys.path (pytest's prepend mode)

from dlma.errors import DLMAError
from dlma.models import DEFAULT_MODEL, ModelConfig, load_model
from dlma.selection import selected_rows

# the default preset's 512 HH-RLHF rows: a committed row list, the rows from the dataset's source
HH_DEV = Path(__file__).resolve().parents[1] / "params" / "data" / "hh-rlhf-harmless-base-test-dev512.rows.json"


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
    """The selection file, its rows on this machine (DLMA_DATA_DIR, or downloaded by `make data`); skipped, with
    the loader's one line saying how to get them, where they are not."""
    try:
        selected_rows(HH_DEV)
    except DLMAError as e:
        pytest.skip(str(e))
    return HH_DEV
