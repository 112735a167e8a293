"""Shared fixtures: the embedded model (loaded once per session) and a tiny random model built from its
config (2 layers, same tokenizer), for tests that train or must be fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlma.models import DEFAULT_MODEL, ModelConfig, load_model, load_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_DEV = SHARED_DATA / "hh-rlhf-harmless-base-test-dev512.jsonl"


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, float32 on CPU."""
    return load_model(ModelConfig(DEFAULT_MODEL, dtype="float32", device="cpu"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama with the embedded model's tokenizer, saved as a local model folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def hh_dev() -> Path:
    if not HH_DEV.exists():
        pytest.skip(f"{HH_DEV} not present (the shared development data)")
    return HH_DEV
