"""Speed figures for the book: each compared with a baseline measured in the same run (ratios), since
the machines are shared and noisy. Writes `book/benchmarks.md`.

    python benchmarks/bench.py [--pairs 24]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from dlma.artifacts import machine
from dlma.data import load_examples
from dlma.generate import GenerateConfig, sample
from dlma.logprobs import buckets, packed_inputs, packed_mask, pad, response_ids, sequence_logprobs
from dlma.models import ModelConfig, load_model
from dlma.prompts import PAIRS, prompt_ids, render
from dlma.score import contrast_prompts, self_reward_terms
from dlma.selection import available as have_rows

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "params" / "data" / "hh-rlhf-harmless-base-test-dev512.rows.json"  # its rows: dlma.selection


def stop_strings_sample(model, tok, prompts, max_new_tokens: int):
    """The generation before token-id stops: transformers' `stop_strings`, then the same cut."""
    from dlma.generate import cut_response, eos_token_ids
    from dlma.prompts import stop_strings

    ids, mask = pad(prompts, tok.pad_token_id, "left")
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         stop_strings=stop_strings("affix"), tokenizer=tok)[:, ids.shape[1]:].tolist()
    return [cut_response(o, tok, eos_token_ids(model, tok), stop_strings("affix")) for o in out]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--r-pairs", type=int, default=48, help="HH pairs for the self-reward scoring figure")
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
    source = str(HH) if have_rows(HH) else "sample:pairs"
    ex = load_examples(source, limit=args.pairs, on_invalid="skip")
    prompts = [prompt_ids(render(e.turns, PAIRS["harmless"], "pos"), tok) for e in ex for _ in (0, 1)]
    resp = [response_ids(o, tok) for e in ex for o in (e.chosen, e.rejected)]
    n_tok = sum(len(p) + len(r) for p, r in zip(prompts, resp, strict=True))
    t1, s1 = timed(lambda: sequence_logprobs(model, prompts, resp, tok.pad_token_id, 1, max_length=512, desc=False))
    t8, s8 = timed(lambda: sequence_logprobs(model, prompts, resp, tok.pad_token_id, 8, max_length=512, desc=False))
    diff = max(abs(a - b) for a, b in zip(s1, s8, strict=True))
    rows.append((f"score {len(prompts)} sequences ({source.split('/')[-1]})", "batch 1", f"{n_tok / t1:.0f} tok/s",
                 "length-sorted batch 8", f"{n_tok / t8:.0f} tok/s (max abs diff {diff:.1e})", t1 / t8))

    # 2b. the self-rewarding score R of human pairs: one sequence per S term (baseline) vs each contrastive
    #     prompt read once with both responses behind it, and the raw forward pass over those same packed
    #     batches (the ceiling: what the shared scorer would cost if gathering log-probs were free)
    ex2 = load_examples(source, limit=args.r_pairs, on_invalid="skip")
    items = [(e.turns, e.chosen, e.rejected) for e in ex2]
    pair = PAIRS["harmless"]
    t_sep, sep = timed(lambda: self_reward_terms(model, tok, items, pair, batch_size=8, max_length=384, desc=False))
    t_sh, sh = timed(lambda: self_reward_terms(model, tok, items, pair, batch_size=8, max_length=384, desc=False,
                                               share_prompts=True))
    d_r = max(abs(a["self_reward"] - b["self_reward"]) for a, b in zip(sep, sh, strict=True))
    groups = [(p, [response_ids(e.chosen, tok), response_ids(e.rejected, tok)]) for e in ex2
              for p in contrast_prompts(e.turns, pair, "affix", tok)]
    fit = [packed_inputs(p, rs) for p, rs in groups if all(len(p) + len(r) <= 384 for r in rs)]
    tok_sep = sum(min(len(p) + len(r), 384) for p, rs in groups for r in rs)
    tok_sh = sum(len(ids) for ids, _, _ in fit) + sum(min(len(p) + len(r), 384) for p, rs in groups
                                                      if not all(len(p) + len(r) <= 384 for r in rs) for r in rs)

    def ceiling():
        with torch.no_grad():
            for b in buckets([len(ids) for ids, _, _ in fit], 8):
                ids, real = pad([fit[i][0] for i in b], tok.pad_token_id, "right")
                pos, _ = pad([fit[i][1] for i in b], 0, "right")
                seg, _ = pad([fit[i][2] for i in b], -1, "right")
                model(input_ids=ids, attention_mask=packed_mask(seg, real, torch.float32), position_ids=pos)

    t_ceil, _ = timed(ceiling)
    n_fit = sum(len(ids) for ids, _, _ in fit)
    rows.append((f"self-reward R of {len(items)} HH pairs (4 S terms each, max length 384)", "one sequence per S",
                 f"{len(items) / t_sep:.2f} pairs/s, {tok_sep / t_sep:.0f} tok/s ({tok_sep} tokens)",
                 "each prompt read once", f"{len(items) / t_sh:.2f} pairs/s, {tok_sh / t_sh:.0f} tok/s ({tok_sh} "
                 f"tokens; raw forward over them {n_fit / t_ceil:.0f} tok/s; max abs diff of R {d_r:.1e})",
                 t_sep / t_sh))

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

    # 4. the end of a turn: transformers' stop_strings (a string search every step) vs token-id stops
    t_str, same = timed(lambda: stop_strings_sample(model, tok, gp, 48))
    t_ids, ours = timed(lambda: sample(model, tok, gp, GenerateConfig(max_new_tokens=48), 0))
    n_new = sum(len(ids) for ids, _ in ours)
    rows.append(("generate batch 16, 48 new tokens: end-of-turn check", "stop_strings",
                 f"{n_new / t_str:.0f} new tok/s", "token-id stops",
                 f"{n_new / t_ids:.0f} new tok/s (kept tokens identical: {same == ours})",
                 t_str / t_ids))

    # 5. the KV cache: transformers' dynamic cache vs its static cache (`static_cache`), same seed; on a GPU
    # the static cache's decode step is compiled (the GPU table below), here it shows what it costs on a CPU
    t_dyn, dyn = timed(lambda: sample(model, tok, gp, GenerateConfig(max_new_tokens=48), 0))
    t_st1, st = timed(lambda: sample(model, tok, gp, GenerateConfig(max_new_tokens=48, static_cache=True), 0))
    t_st2, _ = timed(lambda: sample(model, tok, gp, GenerateConfig(max_new_tokens=48, static_cache=True), 0))
    n_dyn = sum(len(ids) for ids, _ in dyn)
    n_st = sum(len(ids) for ids, _ in st)
    rows.append(("generate batch 16, 48 new tokens: KV cache", "dynamic", f"{n_dyn / t_dyn:.0f} new tok/s",
                 "static (`static_cache`)", f"{n_st / t_st2:.0f} new tok/s on a second call, {n_st / t_st1:.0f} "
                 f"on the first (same kept tokens: {st == dyn})", t_dyn / t_st2 * n_st / n_dyn))

    cpu = machine()
    lines = [
        "# Performance",
        "",
        "Measured by `python benchmarks/bench.py` on "
        f"{cpu['arch']} ({cpu['processor']}), {cpu['cores']} CPU cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Each figure is set against a baseline measured in the same run; "
        "the ratio is what to read (the machines are shared and noisy).",
        "",
        "| what | baseline | baseline figure | ours | our figure | ratio |",
        "|---|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} | {f:.1f}x |" for a, b, c, d, e, f in rows],
        "",
        "Scoring results do not depend on the batch: the largest difference in a summed log-probability "
        "between batch 1 and batch 8 is given in the table (float32 forward, float64 sums). For R, the shared "
        "scorer packs each contrastive prompt with both responses behind it, an attention mask keeping the "
        "responses apart and their positions restarting after the prompt; a pair whose prompt must be cut "
        "to the maximum length is scored one sequence per term, cut as before. The raw forward pass over the "
        "shared scorer's packed batches is its ceiling.",
        "",
        "Generation's two switches keep every token: token-id stops end a sequence where `stop_strings` would, "
        "and the static KV cache samples what the dynamic one does (same seed). On a CPU the static cache's "
        "decode step is not compiled, so it buys nothing there; on a GPU it is what makes generation fast "
        "(below), and the `paper` preset turns it on.",
        "",
    ]
    lines += gpu_section()
    # every figure below the title is this script's: tests/test_pages.py reads the marked region as written by code
    lines = [*lines[:2], "<!-- BENCHMARKS -->", *lines[2:], "<!-- END BENCHMARKS -->", ""]
    (ROOT / "book" / "benchmarks.md").write_text("\n".join(lines))
    print("\n".join(lines))


GPU_SETUP = """\
Each table is one run of `benchmarks/gpu_check.py` (the command is above it): a random-weight model of
LLaMA2-7B's shape ({params} parameters, the embedded model's tokenizer, bf16), 64 HH-RLHF harmless-base
contexts, one response of up to 200 new tokens under each prompt of the `harmless` pair, through the
pipeline's own stage functions. A random model rarely emits EOS, so every sequence runs to 200 tokens: the
worst case for memory. The baseline (one batch of 128 sequences by count, transformers' `stop_strings`) is
measured in the same run; read the ratios. Peak memory is PyTorch's allocated peak; a card needs about 1 GiB
more (the CUDA context). A 24 GB card holds about 22 GiB.
"""
KV_MIB_PER_TOKEN = 2 * 32 * 4096 * 2 / 2**20  # K and V, 32 layers of width 4096, bf16: LLaMA2-7B's cache per token
PAPER_BUDGET = 8192  # params/paper.yaml's max_batch_tokens, for a 24 GB card


def shown(row: dict) -> str:
    """A row's throughput as the table prints it, without its unit: "5,189"."""
    return row["throughput"].split()[0]


def throughput(row: dict) -> float:
    return float(shown(row).replace(",", ""))


def gpu_reading(auto: dict, budget: dict) -> str:
    """What the two GPU runs show (the automatic token budget, and 16,384 tokens), every figure read from them."""
    def row(run, start):
        return next(r for r in run["rows"] if r["setting"].startswith(start))

    base_a, base_b = row(auto, "baseline"), row(budget, "baseline")
    static_a, static_b = row(auto, "same, static cache (second"), row(budget, "same, static cache (second")
    stops, small = row(auto, "token budget"), row(budget, "token budget")
    train = next(r for r in auto["rows"] if r["step"] == "train")
    weights = next(r for r in auto["rows"] if r["step"] == "build")["peak_gib"]
    tokens = small["setting"].split()[2]  # "token budget 16,384 (given), ..."
    return f"""\
What the two runs show:
- The compiled decode step (`static_cache`) is what makes generation fast: on the second call, after the
  first paid for compiling, {throughput(static_a) / throughput(base_a):.1f}x the baseline of the same run with \
the automatic budget ({shown(static_a)} against
  {shown(base_a)} new tokens/s) and {throughput(static_b) / throughput(base_b):.1f}x under a \
budget of {tokens} tokens ({shown(static_b)} against {shown(base_b)}). \
Token-id stops
  alone cost no speed against the baseline ({shown(stops)} against \
{shown(base_a)} in one batch).
- A token budget bounds memory: {tokens} tokens keep generation at {small['peak_gib']:.1f} GiB (dynamic cache), \
where the one
  batch of 128 sequences takes {base_b['peak_gib']:.0f} GiB; but small batches decode slowly without the \
compiled step ({small['throughput']}), whose static cache takes {static_b['peak_gib']:.0f} GiB at that budget. \
For a 24 GB card the paper preset sets
  `max_batch_tokens: {PAPER_BUDGET}` (not measured: by the {KV_MIB_PER_TOKEN:.1f} MiB of KV cache per token, \
about {KV_MIB_PER_TOKEN * PAPER_BUDGET / 1024:.0f} GiB of cache
  beside the {weights:.1f} GiB of weights).
- QLoRA training at the paper's global batch 64 (per-device 8 x accumulation 8, 512 tokens) peaks at
  {train['peak_gib']:.1f} GiB, within 24 GB; a step of 64 pairs takes about {train['s_per_step']:.0f} s on \
this card.
"""


def gpu_section() -> list[str]:
    """The GPU check's figures, from the JSON files `benchmarks/gpu_check.py` wrote (kept in benchmarks/results)."""
    import json

    files = sorted((ROOT / "benchmarks" / "results").glob("gpu_check_*.json"))
    if not files:
        return []
    lines = ["## The paper's shape on a GPU", ""]
    for f in files:
        run = json.loads(f.read_text())
        budget = " --max-batch-tokens 16384 --skip train" if "16k" in f.name else ""
        lines += [f"{run['device']}, {run['date']}, torch {run['torch']}: `python benchmarks/gpu_check.py "
                  f"--queries HH.jsonl --tokenizer TOKENIZER{budget}` ({f.name})", "",
                  "| step | setting | time (s) | throughput | peak GPU memory (GiB) |", "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['setting']} | {r['seconds']} | {r['throughput']} | {r['peak_gib']} |"
                  for r in run["rows"] if r["step"] != "build"]
        lines.append("")
    runs = {f.name: json.loads(f.read_text()) for f in files}
    auto, budget = (next(r for n, r in runs.items() if key in n) for key in ("auto", "16k"))
    params = next(r for r in auto["rows"] if r["step"] == "build")["setting"].split(", ")[1].split(" parameters")[0]
    return lines + [GPU_SETUP.format(params=params), gpu_reading(auto, budget)]


if __name__ == "__main__":
    main()
