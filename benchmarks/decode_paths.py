"""How much the 4-bit decoding path moves stage 5's answers: the portable path every CPU takes under
`dlma.models.portable_4bit` (NF4 dequantised to float32, PyTorch's matmul) against bitsandbytes' AVX512-BF16
kernel, which multiplies in bf16. A machine without AVX512-BF16 cannot run that kernel, so its arithmetic is
emulated: each 4-bit layer's weights dequantised and cast to bf16, its input cast to bf16, the product cast back.

Both answer sets are sampled from the base model with the same seeds and judged by the same (portable) base, as
stage 5 judges them: how many answers are the same text, and the paired differences of C(o) and perplexity.
On a machine with AVX512-BF16 the kernel itself runs too (a second copy of the model, whose layers keep
bitsandbytes' choice): its answers against the portable path's and the emulation's, and the time each path takes
to sample them (in the same run, one after the other: read the ratio).

    python benchmarks/decode_paths.py [--n-prompts 32]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import numpy as np
import torch

from dlma.alignment import base_judgements, respond
from dlma.artifacts import machine
from dlma.data import load_examples
from dlma.generate import GenerateConfig
from dlma.models import ModelConfig, load_model
from dlma.stats import bootstrap_items_ci


@contextlib.contextmanager
def bf16_4bit_layers():
    """Every Linear4bit multiplies as the AVX512-BF16 kernel does: bf16 weights and input, the result cast back."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    def forward(self, x):
        w = F.dequantize_4bit(self.weight.data, self.weight.quant_state).to(torch.bfloat16)
        out = torch.nn.functional.linear(x.to(torch.bfloat16), w).to(x.dtype)
        return out + self.bias if self.bias is not None else out

    original = bnb.nn.Linear4bit.forward
    bnb.nn.Linear4bit.forward = forward
    try:
        yield
    finally:
        bnb.nn.Linear4bit.forward = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=32, help="queries answered on each path")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="as the presets' eval_max_new_tokens")
    ap.add_argument("--pref-max-length", type=int, default=384, help="the judge's length, as the full preset's")
    args = ap.parse_args()
    model, tok = load_model(ModelConfig(load_in_4bit=True, device="cpu"))
    examples = load_examples("sample:queries", limit=args.n_prompts)
    cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, gen_batch_size=16, seed=0)
    started = time.perf_counter()
    portable = respond(model, tok, examples, cfg)
    seconds = {"portable": time.perf_counter() - started}
    with bf16_4bit_layers():
        bf16 = respond(model, tok, examples, cfg)
    answers = {"portable": portable, "bf16 emulated": bf16}
    cpu = machine()
    print(f"{platform.machine()} ({cpu['processor']}), AVX512-BF16: {cpu['avx512_bf16']}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {len(examples)} queries of "
          f"sample:queries, {args.max_new_tokens} new tokens, seed 0")
    if cpu["avx512_bf16"]:  # the kernel itself, on a copy whose layers keep bitsandbytes' choice (it repacks
        kernel, _ = load_model(ModelConfig(load_in_4bit=True, device="cpu"))  # the weights in place: not `model`)
        for layer in kernel.modules():
            if hasattr(layer, "support_avx512bf16_for_cpu"):
                layer.support_avx512bf16_for_cpu = True
        started = time.perf_counter()
        answers["bf16 kernel"] = respond(kernel, tok, examples, cfg)
        seconds["bf16 kernel"] = time.perf_counter() - started
        print(f"sampling time: portable {seconds['portable']:.1f} s, bf16 kernel {seconds['bf16 kernel']:.1f} s "
              f"(kernel / portable: {seconds['bf16 kernel'] / seconds['portable']:.2f})")
    judged = {name: base_judgements(model, tok, examples, a, "affix", 8, 0, args.pref_max_length)
              for name, a in answers.items()}
    for name in list(answers)[1:]:
        same = sum(a == b for a, b in zip(portable, answers[name], strict=True))
        print(f"same answer, portable and {name}: {same} of {len(examples)}")
        for key in ("contrastive_score", "perplexity"):
            a, b = (np.array([r[key] for r in judged[n]]) for n in ("portable", name))
            lo, hi = bootstrap_items_ci((b - a,), lambda d: d.mean(axis=-1))
            print(f"  {key}: mean {a.mean():.3f} (portable) vs {b.mean():.3f} ({name}); paired difference "
                  f"{(b - a).mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
    if "bf16 kernel" in answers:
        same = sum(a == b for a, b in zip(answers["bf16 emulated"], answers["bf16 kernel"], strict=True))
        print(f"same answer, bf16 emulated and bf16 kernel: {same} of {len(examples)}")


if __name__ == "__main__":
    main()
