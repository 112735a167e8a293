"""The method's stages as functions that read inputs by path and write a run folder.

Each writes its data (JSONL/JSON) and a `manifest.json` into `out_dir`, atomically, and resumes from
what is already there. The CLI and the notebooks both call these, so there is one code path.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .artifacts import PartialJSONL, record_params, write_json, write_jsonl, write_manifest
from .data import Example, load_examples
from .errors import DLMAError, where
from .generate import GenerateConfig, generate_pairs
from .models import ModelConfig, load_model, model_fingerprint
from .preference import PrefAccConfig, accuracy_by_confidence, implicit_and_loglik, score_examples, summarize
from .prompts import get_pair
from .score import ScoreConfig, self_reward_terms


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin(out_dir: Path, params: dict) -> None:
    record_params(out_dir, params, "write to another folder, or delete this one to start over")


def _model(model_cfg: ModelConfig, model=None):
    return model if model is not None else load_model(model_cfg)


def run_generate(out_dir, model_cfg: ModelConfig, queries: str, cfg: GenerateConfig, limit: int | None = None,
                 model=None) -> list[dict]:
    """Stage 1: `pairs.jsonl`, one (o1 under p+, o2 under p-) per query."""
    started, out_dir = time.time(), Path(out_dir)
    params = {"queries": str(queries), "limit": limit, **asdict(cfg)}
    examples = load_examples(queries, limit=limit)
    for ex in examples:  # fail on a bad pair name before any generation
        get_pair(ex.pair or cfg.pair, f"{ex.source}: field 'pair'")
    begin(out_dir, {**params, "model": model_cfg.to_dict()})
    model, tokenizer = _model(model_cfg, model)
    rows = generate_pairs(model, tokenizer, examples, cfg, out_dir / "pairs.jsonl")
    write_manifest(out_dir, "generate", params, started,
                   model=model_fingerprint(model_cfg), n_pairs=len(rows))
    return rows


def read_pairs(path) -> list[dict]:
    """Generated (or scored) pairs, validated: each row needs id, turns, o1, o2."""
    path = Path(path)
    if path.is_dir():
        path = path / ("scored.jsonl" if (path / "scored.jsonl").exists() else "pairs.jsonl")
    if not path.exists():
        raise DLMAError(f"{path}: no such file (run the previous stage first)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DLMAError(f"{where(path, n)}: malformed JSON ({e})") from None
        for key in ("id", "turns", "o1", "o2"):
            if key not in row:
                raise DLMAError(f"{where(path, n, key)}: missing")
        if "pair" in row:
            get_pair(row["pair"], where(path, n, "pair"))
        rows.append(row)
    return rows


def run_score(out_dir, model_cfg: ModelConfig, pairs_path, cfg: ScoreConfig, chunk: int = 32, model=None) -> list[dict]:
    """Stage 2: `scored.jsonl`, each pair with its four S terms and R (under the row's own pair, if any)."""
    started, out_dir = time.time(), Path(out_dir)
    pairs = read_pairs(pairs_path)
    begin(out_dir, {"pairs": str(pairs_path), **asdict(cfg), "model": model_cfg.to_dict()})
    store = PartialJSONL(out_dir / "scored.jsonl")
    todo = [p for p in pairs if p["id"] not in store.done]
    if todo and not store.finished:
        model, tokenizer = _model(model_cfg, model)
        for k in range(0, len(todo), chunk):
            part = todo[k : k + chunk]
            rows = []
            for name in dict.fromkeys(p.get("pair") or cfg.pair for p in part):  # one call per prompt pair
                group = [p for p in part if (p.get("pair") or cfg.pair) == name]
                terms = self_reward_terms(model, tokenizer, [(p["turns"], p["o1"], p["o2"]) for p in group],
                                          get_pair(name), group[0].get("rendering", cfg.rendering), cfg.batch_size,
                                          max_length=cfg.max_length, desc=f"score {k + len(part)}/{len(todo)}")
                rows += [{**p, "pair": name, **t} for p, t in zip(group, terms, strict=True)]
            store.append(rows)
    store.finish()
    write_manifest(out_dir, "score", {"pairs": str(pairs_path), **asdict(cfg)}, started,
                   model=model_fingerprint(model_cfg), n_pairs=len(store.rows))
    return store.rows


def run_pref_acc(out_dir, model_cfg: ModelConfig, data: str, cfg: PrefAccConfig, limit: int | None = None,
                 on_invalid: str = "skip", label_field: str = "safer_response_id", exclude_ids=(),
                 model=None) -> dict:
    """Stage 3: `metrics.json`, `predictions.jsonl`, `calibration.json` on human-labelled pairs."""
    started, out_dir = time.time(), Path(out_dir)
    scorers = cfg.scorer_list()
    skipped: list[str] = []
    examples = load_examples(data, limit=None, require="labelled", label_field=label_field,
                             on_invalid=on_invalid, skipped=skipped)
    excluded = set(map(str, exclude_ids))
    examples = [e for e in examples if e.id not in excluded][:limit]
    begin(out_dir, {"data": str(data), "limit": limit, "on_invalid": on_invalid, "label_field": label_field,
                    "excluded_ids": sorted(excluded), **asdict(cfg), "model": model_cfg.to_dict()})
    store = PartialJSONL(out_dir / "predictions.jsonl", key=("scorer", "id"))
    if not store.finished:
        model_tok = None
        for scorer in scorers:
            todo = [e for e in examples if (scorer, e.id) not in store.done]
            if todo:
                model_tok = model_tok or _model(model_cfg, model)
                store.append(score_examples(*model_tok, todo, scorer, cfg))
        store.finish()
    by_scorer = {s: [r["score"] for r in store.rows if r["scorer"] == s] for s in scorers}
    metrics = {s: summarize(v, cfg.n_bootstrap, cfg.seed) for s, v in by_scorer.items()}
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "calibration.json", {s: accuracy_by_confidence(v) for s, v in by_scorer.items()})
    write_manifest(out_dir, "pref-acc", {"data": str(data), "limit": limit, "on_invalid": on_invalid,
                                         "label_field": label_field, **asdict(cfg)}, started,
                   model=model_fingerprint(model_cfg), skipped_rows=skipped, n_examples=len(examples),
                   excluded_ids=len(excluded))
    return metrics


def run_train(out_dir, model_cfg: ModelConfig, scored_path, cfg) -> dict:
    """Stage 4: a QLoRA DLMA adapter in `out_dir` (see dlma.train)."""
    from .train import train_dlma

    started, out_dir = time.time(), Path(out_dir)
    rows = read_pairs(scored_path)
    for n, r in enumerate(rows, start=1):
        if not isinstance(r.get("self_reward"), (int, float)):
            raise DLMAError(f"{where(scored_path, n, 'self_reward')}: missing or not a number (run `dlma score`)")
    summary = train_dlma(rows, model_cfg, cfg, out_dir)
    write_manifest(out_dir, "train", {"pairs": str(scored_path), **asdict(cfg)}, started,
                   model=model_fingerprint(model_cfg), summary=summary)
    return summary


def split_holdout(rows: list[dict], fraction: float = 0.05, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle and hold out a fraction of pairs for evaluation (SPEC section 2): (train, held out)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    k = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    return rows[k:], rows[:k]


def run_alignment(out_dir, model_cfg: ModelConfig, adapter_dir, prompts: list[Example], pairs: list[Example],
                  heldout: list[dict], gen_cfg: GenerateConfig, pref_cfg: PrefAccConfig) -> dict:
    """Stage 5: base vs DLMA adapter. Writes `responses.jsonl`, `alignment.json`, `implicit.jsonl`."""
    from .alignment import base_judgements, respond

    started, out_dir = time.time(), Path(out_dir)
    cfg = ModelConfig(**{**model_cfg.to_dict(), "adapter": str(adapter_dir)})
    model, tokenizer = load_model(cfg)
    responses = []
    for name, use_adapter in (("base", False), ("dlma", True)):
        texts = respond(model, tokenizer, prompts, gen_cfg, adapter=use_adapter)
        judged = base_judgements(model, tokenizer, prompts, texts, gen_cfg.rendering, pref_cfg.batch_size)
        responses += [{"id": ex.id, "model": name, "query": ex.turns[-1], "response": t, **j}
                      for ex, t, j in zip(prompts, texts, judged, strict=True)]
    write_jsonl(out_dir / "responses.jsonl", responses)
    # Human pairs: log-probs under the policy (adapter on) and the reference (off) give at once the DPO
    # implicit reward and each model's own likelihood preference (loglik) for base vs DLMA.
    human = implicit_and_loglik(model, tokenizer, pairs, pref_cfg)
    write_jsonl(out_dir / "human_pairs.jsonl", human)
    summary = {k: summarize([r[k] for r in human], pref_cfg.n_bootstrap, pref_cfg.seed)
               for k in ("implicit", "loglik_base", "loglik_dlma")}
    # The held-out generated pairs: does the policy now prefer o1 (the p+ response) over o2?
    heldout_ex = [Example(str(r["id"]), r["turns"], r["o1"], r["o2"]) for r in heldout]
    if heldout_ex:
        generated = implicit_and_loglik(model, tokenizer, heldout_ex, pref_cfg)
        write_jsonl(out_dir / "heldout_generated.jsonl", generated)
        summary["implicit_heldout_generated"] = summarize([r["implicit"] for r in generated],
                                                          pref_cfg.n_bootstrap, pref_cfg.seed)
    for name in ("base", "dlma"):
        rows = [r for r in responses if r["model"] == name]
        summary[name] = {
            "refusal_rate": float(np.mean([r["refusal"] for r in rows])),
            "contrastive_score_mean": float(np.mean([r["contrastive_score"] for r in rows])),
            "perplexity_median": float(np.median([r["perplexity"] for r in rows])),
            "n": len(rows),
        }
    write_json(out_dir / "alignment.json", summary)
    write_manifest(out_dir, "evaluate-alignment", {"adapter": str(adapter_dir), "generate": asdict(gen_cfg),
                                                   "pref": asdict(pref_cfg), "n_prompts": len(prompts),
                                                   "n_pairs": len(pairs)}, started, model=model_fingerprint(cfg))
    return summary


def unused_queries(source: str, used_ids, n: int, prefer_pair: str | None = "harmless") -> list[Example]:
    """n queries from `source` that generation did not use, those tagged `prefer_pair` first."""
    used = set(map(str, used_ids))
    fresh = [e for e in load_examples(source) if e.id not in used]
    fresh.sort(key=lambda e: e.pair != prefer_pair)  # stable: file order within each group
    return fresh[:n]


def unused_pairs(data: str, used_ids, n: int, label_field: str = "safer_response_id") -> list[Example]:
    """n human-labelled pairs that an earlier evaluation did not use (valid rows only)."""
    used = set(map(str, used_ids))
    return [e for e in load_examples(data, require="labelled", label_field=label_field, on_invalid="skip")
            if e.id not in used][:n]
