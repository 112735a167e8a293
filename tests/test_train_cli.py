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


KILLED_AT_STEP_3 = """
import os, signal, sys
from dlma import train
from dlma.cli import main

def on_step_end(self, args, state, control, **kwargs):  # as `kill -9` would, after checkpoint-2 and mid-step 3
    if state.global_step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return control

train.Checkpoints.on_step_end = on_step_end
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_train_killed_resumes_from_its_last_checkpoint_to_the_same_adapter(tiny_model_dir, tmp_path):
    pairs = tmp_path / "scored.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in scored_rows(16)))
    args = ["--model", tiny_model_dir, "--pairs", str(pairs), "--per-device-train-batch-size", "4",
            "--max-length", "64", "--max-prompt-length", "32", "--learning-rate", "1e-3", "--device", "cpu",
            "--save-steps", "2", "--lora-dropout", "0.1"]  # dropout: the RNG state must resume too
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli("train", *args, "--out", str(whole)).returncode == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_3, "train", *args, "--out", str(cut)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = sorted(p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert left == ["checkpoint-2"] and not (cut / "manifest.json").exists()
    resumed = cli("train", *args, "--out", str(cut))  # the same command: resumed, not refused or restarted
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "train: resuming from step 2" in resumed.stdout
    # the adapter of the run that was killed and resumed is the uninterrupted run's, byte for byte
    assert (cut / "adapter_model.safetensors").read_bytes() == (whole / "adapter_model.safetensors").read_bytes()
    logs = [[json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (whole, cut)]
    assert [(r["step"], r["loss"]) for r in logs[0]] == [(r["step"], r["loss"]) for r in logs[1]] and len(logs[0]) == 4
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in (whole, cut)]
    assert summaries[1]["resumed_from_step"] == 2 and "resumed_from_step" not in summaries[0]
    for key in ("step0", "train_loss", "final_loss", "n_steps", "trainable_tensors_changed"):
        assert summaries[0][key] == summaries[1][key], key
    assert not (cut / "checkpoints").exists() and not (whole / "checkpoints").exists()  # optimizer states gone

    # killed again, then --force: the checkpoints are the stage's own, removed with the rest; trained anew
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_3, "train", *args, "--out", str(cut), "--force"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert killed.returncode == -9 and (cut / "checkpoints" / "checkpoint-2").is_dir()
    forced = cli("train", *args, "--out", str(cut), "--force")
    assert forced.returncode == 0 and "resuming" not in forced.stdout, forced.stderr[-2000:]
    assert (cut / "adapter_model.safetensors").read_bytes() == (whole / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_train_stopped_by_ctrl_c_says_where_it_resumes(tiny_model_dir, tmp_path):
    pairs = tmp_path / "scored.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in scored_rows(16)))
    stopped_at_3 = KILLED_AT_STEP_3.replace("os.kill(os.getpid(), signal.SIGKILL)", "raise KeyboardInterrupt")
    res = subprocess.run([sys.executable, "-c", stopped_at_3, "train", "--model", tiny_model_dir, "--pairs",
                          str(pairs), "--per-device-train-batch-size", "4", "--max-length", "64",
                          "--max-prompt-length", "32", "--device", "cpu", "--save-steps", "2", "--out",
                          str(tmp_path / "cut")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 130 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"dlma train: stopped; the same command resumes from step 2 ({tmp_path / 'cut' / 'checkpoints'}" in \
        res.stderr
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-2" / "dlma_resume.json").is_file()
