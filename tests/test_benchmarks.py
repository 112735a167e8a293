"""The benchmark scripts run against the code they measure (a tiny size: seconds), so a changed signature shows
here rather than on the day a benchmark is rerun. benchmarks/gpu_check.py has its own test (test_gpu_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_decode_paths_runs_and_reports_each_path(embedded):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_paths.py"), "--n-prompts", "2",
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "2 queries of sample:queries, 4 new tokens" in out
    assert "same answer, portable and bf16 emulated: " in out and "contrastive_score: mean" in out
    if "AVX512-BF16: True" in out:  # the kernel itself runs only where the processor has it
        assert "same answer, portable and bf16 kernel: " in out and "kernel / portable: " in out
