"""Model specs: the embedded alias, local folders, 4-bit, clear errors offline."""

from __future__ import annotations

import pytest
import torch

from dlma.errors import DLMAError
from dlma.models import ModelConfig, load_model, model_fingerprint, resolve_dtype, weights_sha256


def test_unresolvable_spec_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DLMAError) as e:
        load_model(ModelConfig("no-such-org/no-such-model", device="cpu"))
    msg = str(e.value)
    assert "\n" not in msg and "no-such-org/no-such-model" in msg and "offline" in msg


def test_bad_dtype_names_the_valid_ones():
    with pytest.raises(DLMAError, match="float32"):
        resolve_dtype("float8", "cpu")


def test_alias_loads_from_the_safetensors_cache(embedded):
    model, tok = embedded
    fp = model_fingerprint(ModelConfig())
    assert fp["resolved"].endswith("smollm2-135m-instruct")
    assert fp["weights_sha256"] == weights_sha256(fp["resolved"]) and len(fp["weights_sha256"]) == 64
    assert getattr(model.config, "quantization_config", None) is None  # plain float32 weights
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token_id is not None


@pytest.mark.slow
def test_cached_logits_match_the_gguf(embedded):
    """The cached safetensors model is the GGUF model: same logits on a prompt."""
    from transformers import AutoModelForCausalLM

    from dlma.models import _gguf_path

    model, tok = embedded
    gguf = _gguf_path("smollm2-135m-instruct")
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("USER: How do I bake bread?\nASSISTANT:\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)


def test_four_bit_load_uses_nf4(tiny_model_dir):
    import bitsandbytes as bnb

    model, _ = load_model(ModelConfig(tiny_model_dir, device="cpu", load_in_4bit=True))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" and m.weight.dtype == torch.uint8 for m in layers)


def test_four_bit_under_fsdp_stores_the_packed_weights_in_the_compute_dtype(tiny_model_dir, monkeypatch):
    import bitsandbytes as bnb

    from dlma.models import four_bit

    assert "bnb_4bit_quant_storage" not in four_bit(torch.float32)
    assert four_bit(torch.bfloat16, fsdp=True)["bnb_4bit_quant_storage"] == torch.bfloat16
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as accelerate launch sets it with an FSDP config
    model, tok = load_model(ModelConfig(tiny_model_dir, device="cpu", load_in_4bit=True))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.dtype == torch.float32 and m.weight.quant_type == "nf4" for m in layers)
    with torch.no_grad():  # and the model still computes
        assert torch.isfinite(model(tok("Hello", return_tensors="pt").input_ids).logits).all()


def test_adapter_folder_is_checked(tiny_model_dir, tmp_path):
    with pytest.raises(DLMAError, match="adapter_config.json"):
        load_model(ModelConfig(tiny_model_dir, device="cpu", adapter=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.parametrize("shown", ["0", "1"])
def test_first_conversion_draws_no_bar_where_progress_is_off(shown, tmp_path, monkeypatch, capsys):
    """The GGUF is converted once per cache; with DLMA_PROGRESS=0 (a notebook `dlma run` executes) that first
    run prints nothing, so its notebook has the bytes of a later run's. With progress on, the bar shows."""
    from dlma.models import materialize_alias

    monkeypatch.setenv("DLMA_CACHE", str(tmp_path))
    monkeypatch.setenv("DLMA_PROGRESS", shown)
    folder = materialize_alias("smollm2-135m-instruct")
    assert (folder / "model.safetensors").is_file() and folder.parent == tmp_path / "models"
    assert ("Converting and de-quantizing" in capsys.readouterr().err) == (shown == "1")
