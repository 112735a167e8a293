"""GPU check: the pipeline's real stage functions on a random-weight model of a 7B shape, no hub, no network.

    python benchmarks/gpu_check.py --queries HH.jsonl --tokenizer DIR [--shape llama2-7b] [--out DIR]

Builds a LLaMA-shaped model with random weights (bf16, on the GPU) and the given tokenizer, saves it as a
local model folder, and measures, each with its peak GPU memory:

1. generation of one response per contrastive prompt for the queries: the old path (one batch by count,
   transformers' `stop_strings`) as the baseline, then `dlma.generate.run_generate` under a token budget with
   token-id stops, then the same with a static KV cache (compiled decode step);
2. scoring of the generated pairs (`run_score`: the four S terms, prompts shared, under the token budget);
3. QLoRA training (`run_train`: NF4 base, LoRA, per-device batch 8 x accumulation 8 = the paper's global
   batch 64, 512 tokens) for one optimizer step.

Prints a Markdown table and writes `gpu_check.json` and `gpu_check.md` to --out as each step ends, so a
run stopped at its time limit still says what it measured. `--shape tiny` runs the same on a CPU in seconds
(a 2-layer model), which is how the script is tested.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # LlamaConfig fields; the vocabulary is the tokenizer's
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=2048),
}


def gib(n: float) -> float:
    return round(n / 2**30, 2)


class Check:
    """Collects one row per measured step and writes the results after each."""

    def __init__(self, out: Path, device: str, shape: str):
        self.out, self.device, self.rows = out, device, []
        self.meta = {"date": date.today().isoformat(), "shape": shape, "torch": torch.__version__,
                     "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"}
        out.mkdir(parents=True, exist_ok=True)

    def start(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        return time.perf_counter()

    def stop(self, t0: float, step: str, setting: str, amount: float, unit: str, **extra) -> dict:
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = gib(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None
        row = {"step": step, "setting": setting, "seconds": round(seconds, 1),
               "throughput": f"{amount / seconds:,.0f} {unit}/s", "peak_gib": peak, **extra}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()
        return row

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps({**self.meta, "rows": self.rows}, indent=1))
        lines = [f"GPU check on {self.meta['device']}, {self.meta['date']}, random-weight {self.meta['shape']} "
                 f"(torch {self.meta['torch']})", "", "| step | setting | time (s) | throughput | peak GPU memory "
                 "(GiB, allocated) |", "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['setting']} | {r['seconds']} | {r['throughput']} | {r['peak_gib']} |"
                  for r in self.rows]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def build_model(shape: str, tokenizer_dir: str, folder: Path, device: str):
    """A random-weight LLaMA of `shape` with the tokenizer, saved to `folder` (bf16 on CUDA, float32 on CPU)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **SHAPES[shape])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def old_generate(model, tok, examples, max_new_tokens: int) -> int:
    """The baseline: every query's two prompts in one batch by count, transformers' stop_strings."""
    from dlma.logprobs import pad
    from dlma.prompts import PAIRS, prompt_ids, render, stop_strings

    prompts = [prompt_ids(render(e.turns, PAIRS["harmless"], side, "affix", tok), tok, "affix")
               for e in examples for side in ("pos", "neg")]
    ids, mask = pad(prompts, tok.pad_token_id, "left")
    device = next(model.parameters()).device
    torch.manual_seed(0)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, top_k=50,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         stop_strings=stop_strings("affix"), tokenizer=tok)
    return int((out[:, ids.shape[1]:] != tok.pad_token_id).sum())


def new_tokens(rows: list[dict]) -> int:
    return sum(r["o1_tokens"] + r["o2_tokens"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", required=True, help="a query file (HH-RLHF rows work: their contexts)")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder (the embedded model's)")
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--n-queries", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--work", default="/tmp/dlma_gpu_check", help="scratch folder for the model and the stages")
    ap.add_argument("--max-batch-tokens", type=int, default=0, help="token budget of generation and scoring "
                    "(0: auto, from the free GPU memory)")
    ap.add_argument("--static-limit", type=int, default=150, help="seconds each static-cache call may take")
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: old, static, train")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from dlma.data import load_examples
    from dlma.generate import GenerateConfig, run_generate
    from dlma.models import ModelConfig
    from dlma.params import Out, Pairs, Queries
    from dlma.score import ScoreConfig, run_score
    from dlma.train import TrainConfig, run_train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    check = Check(Path(args.out), device, args.shape)
    t0 = check.start()
    model, tok = build_model(args.shape, args.tokenizer, work / "model", device)
    n_params = sum(p.numel() for p in model.parameters())
    check.stop(t0, "build", f"random {args.shape}, {n_params / 1e9:.2f} B parameters, saved", n_params / 1e9,
               "B parameters")
    model_cfg = ModelConfig(str(work / "model"), device=device)
    examples = load_examples(args.queries, limit=args.n_queries)
    n, new = len(examples), args.max_new_tokens

    if "old" not in skip:
        t0 = check.start()
        made = old_generate(model, tok, examples, new)
        check.stop(t0, "generate", f"baseline: {2 * n} sequences in one batch by count, stop_strings", made,
                   "new tokens")
    gen = GenerateConfig(max_new_tokens=new, gen_batch_size=n, max_batch_tokens=args.max_batch_tokens, seed=0)
    how = "auto" if not args.max_batch_tokens else "given"
    t0 = check.start()
    rows = run_generate(model_cfg, Queries(args.queries, n), gen, Out(str(work / "gen")), model=(model, tok))
    budget = json.loads((work / "gen" / "manifest.json").read_text())["max_batch_tokens"]
    check.stop(t0, "generate", f"token budget {budget:,} ({how}), token-id stops, dynamic cache", new_tokens(rows),
               "new tokens", batches=len({r["batch"] for r in rows}))
    t0 = check.start()
    scored = run_score(model_cfg, Pairs(str(work / "gen" / "pairs.jsonl")),
                       ScoreConfig(score_batch_size=64, score_max_length=1024, max_batch_tokens=args.max_batch_tokens),
                       Out(str(work / "score")), model=(model, tok))
    tokens = sum(len(tok(r["o1"]).input_ids) + len(tok(r["o2"]).input_ids) for r in scored)
    check.stop(t0, "score", f"R of {len(scored)} pairs, prompts shared, token budget {args.max_batch_tokens or 'auto'}",
               len(scored), "pairs",
               response_tokens=tokens)

    if "static" not in skip:  # last of the bf16 steps: compiling can take long, so it runs under an alarm
        import signal

        def too_long(*_):
            raise TimeoutError(f"not done in {args.static_limit} s")

        static = GenerateConfig(max_new_tokens=new, gen_batch_size=n, max_batch_tokens=args.max_batch_tokens, seed=0,
                                static_cache=True)
        for attempt in ("first call, compiling", "second call"):
            shutil.rmtree(work / "gen_static", ignore_errors=True)
            t0 = check.start()
            signal.signal(signal.SIGALRM, too_long)
            signal.alarm(args.static_limit)
            try:
                got = run_generate(model_cfg, Queries(args.queries, n), static, Out(str(work / "gen_static")),
                                   model=(model, tok))
                signal.alarm(0)
                check.stop(t0, "generate", f"same, static cache ({attempt})", new_tokens(got), "new tokens")
            except Exception as e:  # reported, not fatal: the plain path is the one CI tests
                signal.alarm(0)
                check.rows.append({"step": "generate", "setting": f"static cache ({attempt})", "seconds": None,
                                   "throughput": f"failed: {type(e).__name__}: {str(e)[:160]}", "peak_gib": None})
                check.write()
                break

    if "train" not in skip:
        del model
        gc.collect()
        cfg = TrainConfig(per_device_train_batch_size=8, gradient_accumulation_steps=8, max_length=512,
                          max_prompt_length=256, num_train_epochs=1, learning_rate=2e-5,
                          warmup_steps=0, qlora=True, seed=0, logging_steps=1)
        t0 = check.start()
        summary = run_train(ModelConfig(str(work / "model"), device=device), Pairs(str(work / "score")), cfg,
                            Out(str(work / "train")))
        check.stop(t0, "train", f"QLoRA (NF4 + LoRA), per-device 8 x accumulation 8, 512 tokens: "
                   f"{summary['s_per_step']} s per optimizer step, 4-bit load included", len(scored),
                   "pairs", s_per_step=summary["s_per_step"])
    print(open(check.out / "gpu_check.md").read())


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
