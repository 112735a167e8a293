"""`dlma train` end to end on the tiny model: scored pairs in, a reloadable adapter and a manifest out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dlma.models import ModelConfig, load_model


def scored_rows(n: int) -> list[dict]:
    return [{"id": f"p{i}", "turns": [f"How do I do thing number {i}?"], "pair": "harmless",
             "o1": f"Here is a careful, safe answer about thing {i}.", "o2": f"Do something reckless with {i}.",
             "self_reward": float((-1) ** i * (i + 1))} for i in range(n)]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlma.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


@pytest.mark.slow
def test_train_cli_writes_a_reloadable_adapter(tiny_model_dir, tmp_path):
    pairs = tmp_path / "scored.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in scored_rows(8)))
    out = tmp_path / "adapter"
    args = ["train", "--model", tiny_model_dir, "--pairs", str(pairs), "--out", str(out),
            "--per-device-train-batch-size", "4", "--max-length", "64", "--max-prompt-length", "32",
            "--learning-rate", "1e-3", "--device", "cpu"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    again = cli(*args)  # the same job: the finished run, not retrained
    assert again.returncode == 0 and "already holds this run" in again.stdout
    other = cli(*args, "--gamma", "0.1")  # another job may not overwrite it
    assert other.returncode == 2 and "holds results made with other parameters (gamma)" in other.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "train" and manifest["params"]["gamma"] == 0.2
    assert manifest["summary"]["n_steps"] == 2 and "adapter_model.safetensors" in manifest["files"]
    base, tok = load_model(ModelConfig(tiny_model_dir, device="cpu"))
    tuned, _ = load_model(ModelConfig(tiny_model_dir, device="cpu", adapter=str(out)))
    ids = tok("USER: How do I do thing number 3?\nASSISTANT:\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (base(ids).logits - tuned(ids).logits).abs().max() > 1e-4


def test_train_cli_names_a_row_without_self_reward(tmp_path):
    rows = scored_rows(3)
    del rows[1]["self_reward"]
    pairs = tmp_path / "scored.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli("train", "--pairs", str(pairs), "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # our own line, whatever a library prints beside it (bitsandbytes does at import on some CPUs)
    ours = [line for line in res.stderr.splitlines() if line.startswith("dlma train: error: ")]
    assert ours == [f"dlma train: error: {pairs}:2: field 'self_reward': missing or not a finite number (got None); "
                    "run `dlma score`"]
    assert not (tmp_path / "a").exists()
