"""Speed figures for the book: each compared with a baseline measured in the same run (ratios), since
the machines are shared and noisy. Writes `book/benchmarks.md`.

    python benchmarks/bench.py [--pairs 24]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dlma.data import load_examples
from dlma.generate import GenerateConfig, sample
from dlma.logprobs import response_ids, sequence_logprobs
from dlma.models import ModelConfig, load_model
from dlma.prompts import PAIRS, prompt_ids, render

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-dev512.jsonl"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    args = ap.parse_args()
    rows = []

    # 1. the embedded model: first load (dequantise the GGUF, save safetensors) vs a cached load
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DLMA_CACHE"] = cache
        cold, _ = timed(lambda: load_model(ModelConfig(device="cpu")))
        warm, (model, tok) = timed(lambda: load_model(ModelConfig(device="cpu")))
    rows.append(("load embedded model", "first load (GGUF, dequantise, cache)", f"{cold:.1f} s",
                 "cached safetensors", f"{warm:.2f} s", cold / warm))

    # 2. scoring: S over HH pairs, batch 1 (baseline) vs length-sorted batches of 8
    source = str(HH) if HH.exists() else "sample:pairs"
    ex = load_examples(source, limit=args.pairs, on_invalid="skip")
    prompts = [prompt_ids(render(e.turns, PAIRS["harmless"], "pos"), tok) for e in ex for _ in (0, 1)]
    resp = [response_ids(o, tok) for e in ex for o in (e.chosen, e.rejected)]
    n_tok = sum(len(p) + len(r) for p, r in zip(prompts, resp, strict=True))
    t1, s1 = timed(lambda: sequence_logprobs(model, prompts, resp, tok.pad_token_id, 1, max_length=512, desc=False))
    t8, s8 = timed(lambda: sequence_logprobs(model, prompts, resp, tok.pad_token_id, 8, max_length=512, desc=False))
    diff = max(abs(a - b) for a, b in zip(s1, s8, strict=True))
    rows.append((f"score {len(prompts)} sequences ({source.split('/')[-1]})", "batch 1", f"{n_tok / t1:.0f} tok/s",
                 "length-sorted batch 8", f"{n_tok / t8:.0f} tok/s (max abs diff {diff:.1e})", t1 / t8))

    # 3. generation: new tokens per second, batch 1 vs batch 16 (8 queries x p+/p-)
    q = load_examples("sample:queries", limit=8)
    gp = [prompt_ids(render(e.turns, PAIRS["harmless"], s), tok) for e in q for s in ("pos", "neg")]
    cfg = GenerateConfig(max_new_tokens=32)
    tb1, out1 = timed(lambda: [sample(model, tok, [p], cfg, 0) for p in gp[:4]])
    tb16, out16 = timed(lambda: sample(model, tok, gp, cfg, 0))
    new1 = sum(len(ids) for o in out1 for ids, _ in o) / tb1
    new16 = sum(len(ids) for ids, _ in out16) / tb16
    rows.append(("generate (sampling, 32 new tokens)", "batch 1", f"{new1:.0f} new tok/s", "batch 16",
                 f"{new16:.0f} new tok/s", new16 / new1))

    lines = [
        "# Performance",
        "",
        "Measured by `python benchmarks/bench.py` on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Each figure is set against a baseline measured in the same run; "
        "the ratio is what to read (the machines are shared and noisy).",
        "",
        "| what | baseline | baseline figure | ours | our figure | ratio |",
        "|---|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} | {f:.1f}x |" for a, b, c, d, e, f in rows],
        "",
        "Scoring results do not depend on the batch: the largest difference in a summed log-probability "
        "between batch 1 and batch 8 is given in the table (float32 forward, float64 sums).",
        "",
    ]
    (ROOT / "book" / "benchmarks.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
