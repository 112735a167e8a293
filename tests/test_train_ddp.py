"""`dlma train` on 2 CPU processes (DDP through accelerate, gloo): the adapter of one process with the whole
batch, within float tolerance, and one set of files written by the main process. The processes are started by
torchrun, what `accelerate launch` runs for several GPUs (its `--cpu` starts one process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from dlma.artifacts import write_jsonl

PAIRS = [{"id": f"p{i}", "turns": [f"How do I fix thing {i}?"], "o1": f"Carefully, step {i}, then test it.",
          "o2": f"Break it {i} times.", "self_reward": float(i) - 1.5} for i in range(4)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_processes_trains_the_single_process_adapter(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    common = ["train", "--model", tiny_model_dir, "--device", "cpu", "--pairs", str(tmp_path / "pairs.jsonl"),
              "--qlora", "false", "--gradient-checkpointing", "false", "--lora-dropout", "0",
              "--warmup-steps", "0", "--learning-rate", "1e-3", "--num_train_epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = subprocess.run([sys.executable, "-m", "dlma", *common, "--per-device-train-batch-size", "4",
                             "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
              "-m", "dlma"]
    ddp = subprocess.run([*launch, *common, "--per-device-train-batch-size", "2", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys() and len(one) > 0
    moved = 0
    for name in one:  # the same single step: 2 processes x 2 pairs averaged = 1 process x 4 pairs
        assert (one[name] - two[name]).abs().max() < 1e-5, name
        moved += int("lora_B" in name and one[name].abs().sum() > 0)  # B starts at 0: it moved
    assert moved == len(one) // 2
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["n_steps"] == 1
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["stage"] == "train"
