"""Contrastive generation (the Method page, section 2): o1 ~ pi(. | p+, q) and o2 ~ pi(. | p-, q), one sample each.

Queries are cut into batches; each batch is seeded from (seed, batch index), generated p+ and p- side by
side, left-padded, and appended to the output as soon as it is done. A rerun skips the batches already on
disk, so an interrupted run ends with the same pairs, byte for byte, as an uninterrupted one.

Batches are either `gen_batch_size` queries in query order, or, under a token budget (`max_batch_tokens`,
on a GPU by default), length-sorted queries packed until prompt and new tokens of the batch would pass the
budget: the KV cache, not a count, bounds memory. The output is in query order either way.

A sequence stops at EOS or where its last tokens spell the start of a new turn (token ids compared on the
device, not a string search per step); the response is then cut at the turn's text (`cut_response`), so the
early stop changes no kept token. `static_cache` uses transformers' static KV cache, whose decode step it
compiles on a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .artifacts import read_jsonl
from .data import Example, check_limit, load_examples
from .distributed import Launch, ShardedJSONL
from .errors import DLMAError, check_fields
from .folder import StageFolder
from .logprobs import buckets, kv_bytes_per_token, pad, token_budget
from .params import Batching, PairName, Rendering, Seed, documented, param
from .prompts import PAIRS, RENDERINGS, PromptPair, get_pair, prompt_ids, render, stop_strings, with_custom_pairs
from .quiet import progress


@documented
@dataclass
class GenerateConfig(Seed, Batching, Rendering, PairName):
    """Sampling: do_sample at the paper's temperature 1 and 200 new tokens, top-k 50 (transformers' default, which
    the released code leaves in place; it sets no temperature); a query row's own `pair` wins."""

    temperature: float = param(1.0, "sampling temperature (the paper: 1.0; the released code sets none: the "
                                     "checkpoint's)")
    top_k: int = param(50, "top-k sampling (the paper names none; the released code: transformers' default, 50)")
    top_p: float = param(1.0, "nucleus sampling, 1.0 is off (the paper names none; the released code: the "
                              "checkpoint's)")
    max_new_tokens: int = param(200, "response length cap (the paper and the released code: 200)")
    max_query_words: int = param(600, "longer queries are left out and counted, as in the released code")
    gen_batch_size: int = param(16, "queries per generation batch (2 sequences each)")
    static_cache: bool = param(False, "generate with a static KV cache, whose decode step transformers compiles on "
                                      "a GPU", added_in="2026-11-27")

    def __post_init__(self):
        check_fields(self, [
            (self.temperature > 0, ("temperature",), "must be > 0 (sampling)"),
            (self.top_k >= 0, ("top_k",), "must be >= 0 (0: no top-k filter)"),
            (0 < self.top_p <= 1, ("top_p",), "must be in (0, 1]"),
            (self.max_new_tokens >= 1, ("max_new_tokens",), "must be >= 1"),
            (self.max_query_words >= 1, ("max_query_words",), "must be >= 1"),
            (self.gen_batch_size >= 1, ("gen_batch_size",), "must be >= 1"),
            (self.max_batch_tokens >= 0, ("max_batch_tokens",), "must be >= 0 (0: by count on a CPU, auto on a GPU)"),
            (self.rendering in RENDERINGS, ("rendering",), f"must be one of {', '.join(RENDERINGS)}"),
        ])

    def check_pairs(self, prompt_pairs) -> None:
        get_pair(self.pair, prompt_pairs, "GenerateConfig: pair")


def cut_response(tokens: list[int], tokenizer, eos_ids: set[int], stops: list[str]) -> tuple[list[int], str]:
    """Cut generated ids at the first EOS, then before the token where a new turn starts.

    The cut is always at a token boundary: the kept ids are a prefix of the generated ids, and the
    text is their decoding. Returns (ids, why it ended: eos | turn | length).
    """
    why = "length"
    for i, t in enumerate(tokens):
        if t in eos_ids:
            tokens, why = tokens[:i], "eos"
            break
    text = tokenizer.decode(tokens, skip_special_tokens=False)
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        cut_char = min(hits)
        k = len(tokens)
        while k > 0 and len(tokenizer.decode(tokens[:k], skip_special_tokens=False)) > cut_char:
            k -= 1
        tokens, why = tokens[:k], "turn"
    return tokens, why


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | {tokenizer.eos_token_id}


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**63)


class StopAtTurn(StoppingCriteria):
    """Done where a sequence's last tokens are one of the token spellings of a new turn: a comparison of ids
    on the device, cheap at every step. A spelling it misses only lets the sequence run on; the cut below
    is made on the text, so the kept tokens are the same either way."""

    def __init__(self, tokenizer, stops: list[str], device):
        spellings = {tuple(tokenizer(s, add_special_tokens=False).input_ids) for s in stops}
        spellings |= {tuple(tokenizer("x" + s, add_special_tokens=False).input_ids[1:]) for s in stops}
        self.stops = [torch.tensor(t, device=device) for t in sorted(spellings) if t]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for t in self.stops:
            if input_ids.shape[1] >= len(t):
                done |= (input_ids[:, -len(t):] == t).all(-1)
        return done


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], cfg: GenerateConfig, seed: int) -> list[tuple[list[int], str]]:
    """One sampled continuation per prompt (ids), left-padded in one batch, cut at EOS or a new turn."""
    ids, mask = pad(prompts, tokenizer.pad_token_id, "left")
    width = ids.shape[1]
    device = next(model.parameters()).device
    stops = stop_strings(cfg.rendering)
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([StopAtTurn(tokenizer, stops, device)]) if stops else None,
        cache_implementation="static" if cfg.static_cache else None,
    )[:, width:].tolist()
    eos = eos_token_ids(model, tokenizer)
    return [cut_response(o, tokenizer, eos, stops) for o in out]


def generate_batch(model, tokenizer, examples: list[Example], cfg: GenerateConfig, batch_index: int,
                   prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    prompts, names = [], []
    for ex in examples:
        pair = get_pair(ex.pair or cfg.pair, prompt_pairs, f"{ex.source}: field 'pair'")
        names.append(pair.name)
        for side in ("pos", "neg"):
            prompts.append(prompt_ids(render(ex.turns, pair, side, cfg.rendering, tokenizer), tokenizer, cfg.rendering))
    out = sample(model, tokenizer, prompts, cfg, batch_seed(cfg.seed, batch_index))
    rows = []
    for k, ex in enumerate(examples):
        (o1, why1), (o2, why2) = out[2 * k], out[2 * k + 1]
        rows.append({
            "id": ex.id,
            "turns": ex.turns,
            "pair": names[k],
            "rendering": cfg.rendering,
            "o1": tokenizer.decode(o1, skip_special_tokens=True).strip(),  # under p+
            "o2": tokenizer.decode(o2, skip_special_tokens=True).strip(),  # under p-
            "o1_tokens": len(o1),
            "o2_tokens": len(o2),
            "o1_end": why1,
            "o2_end": why2,
            "batch": batch_index,
        })
    return rows


def query_batches(model, tokenizer, examples: list[Example], cfg: GenerateConfig,
                  prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> tuple[list[list[Example]], int]:
    """(batches, token budget): `gen_batch_size` queries in query order when there is no budget; else
    length-sorted batches whose 2 x queries x (longest prompt + max_new_tokens) fit the budget."""
    budget = token_budget(model, cfg.max_batch_tokens, kv_bytes_per_token(model), share=0.6)
    if not budget:
        return [examples[i : i + cfg.gen_batch_size] for i in range(0, len(examples), cfg.gen_batch_size)], 0
    widths = []
    for ex in examples:
        pair = get_pair(ex.pair or cfg.pair, prompt_pairs, f"{ex.source}: field 'pair'")
        widths.append(max(len(prompt_ids(render(ex.turns, pair, side, cfg.rendering, tokenizer), tokenizer,
                                         cfg.rendering)) for side in ("pos", "neg")) + cfg.max_new_tokens)
    return [[examples[i] for i in b] for b in buckets(widths, cfg.gen_batch_size, budget // 2)], budget


def generate_pairs(model, tokenizer, examples: list[Example], cfg: GenerateConfig, out_path: str | Path,
                   info: dict | None = None, at: Launch | None = None,
                   prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    """Generate (o1, o2) for every query into `out_path` (JSONL, in query order), resuming what is already
    there. `info` receives the token budget the batches were formed under (0: by count). Under a launch of
    several processes (`at`), each takes every world-th batch and the main process merges (dlma.distributed):
    the same file, since each batch is seeded by its index."""
    at = at or Launch()
    examples = [ex for ex in examples if sum(len(t.split()) for t in ex.turns) <= cfg.max_query_words]
    store = ShardedJSONL(out_path, at=at)
    if store.finished:
        return store.rows
    batches, budget = query_batches(model, tokenizer, examples, cfg, prompt_pairs)
    if info is not None:
        info["max_batch_tokens"] = budget
    mine = at.mine(batches)
    todo = [(b, batch) for b, batch in mine if not all(ex.id in store.done for ex in batch)]
    total = sum(len(batch) for _, batch in mine)
    with tqdm(total=total, initial=total - sum(len(batch) for _, batch in todo), desc="generate",
              disable=not progress() or not at.main) as bar:
        for b, batch in todo:
            # a batch cut short mid-write has some rows on disk: regenerate it whole (same seed, same
            # rows) and append only the missing ones, so no row is written twice
            rows = generate_batch(model, tokenizer, batch, cfg, b, prompt_pairs)
            store.append([r for r in rows if r["id"] not in store.done])
            bar.update(len(batch))
    store.finish(order=[ex.id for ex in examples] if budget or at.world > 1 else None)
    return store.rows


def run_generate(model_cfg, data, cfg: GenerateConfig, out, model=None,
                 prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    """Stage 1 (`dlma generate`): `pairs.jsonl` in `out.out`, one (o1 under p+, o2 under p-) per query of
    `data` (params.Queries), under the prompt pair each query names (or `cfg.pair`), among `prompt_pairs`. Queries
    longer than `max_query_words` are left out, as in the released code, and counted."""
    folder = StageFolder(out.out, "generate", model_cfg, model)
    check_limit(data.n_queries, "n_queries")
    examples = load_examples(data.source(), limit=data.n_queries, pairs=prompt_pairs)
    for ex in examples:  # fail on a bad pair name before any generation
        get_pair(ex.pair or cfg.pair, prompt_pairs, f"{ex.source}: field 'pair'")
    params = {"queries": str(data.queries), "n_queries": data.n_queries, "queries_split": data.queries_split,
              "queries_revision": data.queries_revision, **asdict(cfg),
              **with_custom_pairs((ex.pair or cfg.pair for ex in examples), prompt_pairs)}
    words = [sum(len(t.split()) for t in ex.turns) for ex in examples]
    too_long = [f"{ex.source}: field 'prompt': {n} words" for ex, n in zip(examples, words, strict=True)
                if n > cfg.max_query_words]
    examples = [ex for ex, n in zip(examples, words, strict=True) if n <= cfg.max_query_words]
    if not examples:
        raise DLMAError(f"{data.queries}: every query is over max_query_words={cfg.max_query_words} words")
    at = folder.begin(params, {"queries": data.source()}, out.force, launched=True)
    folder.note_dropped(too_long, f"over max_query_words={cfg.max_query_words}")
    if folder.done:  # e.g. by a launch, before its notebook: no model to load
        folder.release()
        return read_jsonl(folder.path / "pairs.jsonl")
    info: dict = {}
    rows = generate_pairs(*folder.model(), examples, cfg, folder.path / "pairs.jsonl", info, at, prompt_pairs)
    folder.finish(n_pairs=len(rows), dropped={"over_max_query_words": too_long}, processes=at.world, **info)
    return rows


def summary(rows: list[dict], out) -> str:
    return f"{len(rows)} pairs -> {Path(out.out) / 'pairs.jsonl'}"
