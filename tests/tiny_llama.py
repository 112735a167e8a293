"""A tiny random-weight LLaMA-architecture model (2 layers, hidden size 64) with the embedded model's tokenizer,
saved as a local model folder: for tests that train or must be fast."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(folder: Path, chat_template: bool = True) -> str:
    """`chat_template` False: the tokenizer has none, as a base model's (Llama-2-7b-hf's) has none."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dlma.models import DEFAULT_MODEL, load_tokenizer

    tok = load_tokenizer(DEFAULT_MODEL)
    if not chat_template:
        tok.chat_template = None
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
