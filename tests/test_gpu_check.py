"""benchmarks/gpu_check.py, at its `tiny` shape on the CPU: the same code path the GPU run takes, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_the_stages_on_a_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--shape", "tiny", "--queries",
           "sample:queries", "--tokenizer", tiny_model_dir, "--n-queries", "4", "--max-new-tokens", "8",
           "--max-batch-tokens", "64", "--out", str(out), "--work", str(tmp_path / "work"), "--skip", "train"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((out / "gpu_check.json").read_text())
    settings = [(r["step"], r["setting"]) for r in run["rows"]]
    assert [s for s, _ in settings] == ["build", "generate", "generate", "score", "generate", "generate"]
    assert "token budget 64 (given)" in settings[2][1] and "static cache" in settings[4][1]
    assert run["rows"][2]["batches"] >= 2  # 4 queries cannot share one batch of 64 tokens
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in run["rows"])
    assert (out / "gpu_check.md").read_text().count("\n| ") == len(settings) + 1
