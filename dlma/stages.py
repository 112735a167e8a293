"""The method's stages as functions that read inputs by path and write a run folder.

Each writes its data (JSONL/JSON) and a `manifest.json` into `out_dir`, atomically, and resumes from
what is already there. The CLI and the notebooks both call these, so there is one code path.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from .alignment import EvalConfig
from .artifacts import (
    PartialJSONL,
    check_out,
    input_record,
    read_jsonl,
    record_params,
    write_json,
    write_json_if_changed,
    write_jsonl,
    write_manifest,
)
from .data import Example, check_limit, load_examples, read_text, usable
from .distributed import ShardedJSONL, launch
from .errors import DLMAError, where
from .generate import GenerateConfig, generate_pairs
from .logprobs import response_ids
from .models import ModelConfig, check_model, load_model, model_fingerprint, resolve_device
from .preference import (
    PrefAccConfig,
    accuracy_by_confidence,
    implicit_and_loglik,
    judge_metrics,
    score_examples,
    summarize,
)
from .prompts import PAIRS, RENDERINGS, custom_pairs, get_pair
from .quiet import progress
from .score import ScoreConfig, self_reward_terms
from .study import StudyConfig

SHARD_CHUNK = 64  # pairs per chunk when preference accuracy is shared among the processes of a launch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin(out_dir: Path, params: dict, inputs: dict | None = None, force: bool = False) -> None:
    """Called once every parameter and input has been checked: from here on the stage writes."""
    record_params(out_dir, params, "write to another folder, pass --force to redo it, or delete it to start over",
                  inputs, force)


def begin_launch(out_dir: Path, model_cfg: ModelConfig, params: dict, inputs: dict, force: bool = False):
    """`begin` on the main process of a launch (`dlma.distributed`; in a single process, that process), the
    others waiting for it; returns this process's Launch."""
    at = launch(cpu=resolve_device(model_cfg.device) == "cpu")
    if at.main:
        begin(out_dir, {**params, "model": model_cfg.to_dict()}, inputs, force)
    at.barrier()
    return at


def ran_through(out_dir: Path) -> bool:
    """A stage writes its manifest last: a folder holding one (whose parameters `begin` has just checked) ran
    through, and a rerun over it (a notebook over a launch's results) keeps its manifest, times and process
    count."""
    return (out_dir / "manifest.json").exists()


def with_custom_pairs(names) -> dict:
    """{"pair_definitions": ...} when user-defined prompt pairs are used, else nothing (params stay as they were)."""
    defs = custom_pairs(names)
    return {"pair_definitions": defs} if defs else {}


def note_dropped(stage: str, dropped: list[str], why: str) -> None:
    """Say once, on stderr, that items were left out for a documented reason (the manifest lists them)."""
    if dropped:
        more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
        print(f"dlma {stage}: left out {len(dropped)} item(s) ({why}): {dropped[0]}{more}; "
              "listed in manifest.json", file=sys.stderr)


def _model(model_cfg: ModelConfig, model=None):
    return model if model is not None else load_model(model_cfg)


def run_generate(out_dir, model_cfg: ModelConfig, queries: str, cfg: GenerateConfig, n_queries: int | None = None,
                 model=None, force: bool = False) -> list[dict]:
    """Stage 1: `pairs.jsonl`, one (o1 under p+, o2 under p-) per query. Queries longer than
    `max_query_words` are left out, as in the released code, and counted."""
    started, out_dir = time.time(), Path(out_dir)
    check_out(out_dir)
    check_limit(n_queries, "n_queries")
    examples = load_examples(queries, limit=n_queries)
    for ex in examples:  # fail on a bad pair name before any generation
        get_pair(ex.pair or cfg.pair, f"{ex.source}: field 'pair'")
    params = {"queries": str(queries), "n_queries": n_queries, **asdict(cfg),
              **with_custom_pairs(ex.pair or cfg.pair for ex in examples)}
    words = [sum(len(t.split()) for t in ex.turns) for ex in examples]
    too_long = [f"{ex.source}: field 'prompt': {n} words" for ex, n in zip(examples, words, strict=True)
                if n > cfg.max_query_words]
    examples = [ex for ex, n in zip(examples, words, strict=True) if n <= cfg.max_query_words]
    if not examples:
        raise DLMAError(f"{queries}: every query is over max_query_words={cfg.max_query_words} words")
    check_model(model_cfg)  # after the data: a data error is named even when the model is wrong too
    at = begin_launch(out_dir, model_cfg, params, {"queries": queries}, force)
    if at.main:
        note_dropped("generate", too_long, f"over max_query_words={cfg.max_query_words}")
    if ran_through(out_dir):  # e.g. by a launch, before its notebook: no model to load
        return read_jsonl(out_dir / "pairs.jsonl")
    model, tokenizer = _model(model_cfg, model)
    info: dict = {}
    rows = generate_pairs(model, tokenizer, examples, cfg, out_dir / "pairs.jsonl", info, at)
    if at.main:
        write_manifest(out_dir, "generate", params, started, model=model_fingerprint(model_cfg), n_pairs=len(rows),
                       dropped={"over_max_query_words": too_long}, processes=at.world, **info)
    at.barrier()
    return rows


class GeneratedPair(TypedDict, total=False):
    """A row of `pairs.jsonl` (stage 1). id, turns, o1 and o2 are required; `read_pairs` checks every field."""

    id: str | int
    turns: list[str]  # the context, user turn first
    o1: str  # sampled under p+
    o2: str  # sampled under p-
    pair: str
    rendering: str
    o1_tokens: int
    o2_tokens: int
    o1_end: str  # eos, turn or length
    o2_end: str
    batch: int


class ScoredPair(GeneratedPair, total=False):
    """A row of `scored.jsonl` (stage 2): the generated pair, its four S terms and R."""

    s_o1_pos: float
    s_o1_neg: float
    s_o2_pos: float
    s_o2_neg: float
    self_reward: float


def pairs_file(path) -> Path:
    """A pairs artifact given as its file or as its stage folder (scored.jsonl first, then pairs.jsonl)."""
    path = Path(path)
    if path.is_dir():
        for name in ("scored.jsonl", "pairs.jsonl"):
            if (path / name).is_file():
                return path / name
        raise DLMAError(f"{path}: a folder without scored.jsonl or pairs.jsonl (run the previous stage first)")
    if not path.exists():
        raise DLMAError(f"{path}: no such file (run the previous stage first)")
    return path


def read_pairs(path, need_self_reward: bool = False, dropped: list[str] | None = None) -> list[ScoredPair]:
    """Generated (or scored) pairs, each row checked: id, turns (a list of strings, user first), o1, o2
    (strings), and where present pair, rendering, self_reward (or required, with `need_self_reward`).
    A pair with an empty response is left out (an empty response has no token for S to score) and its
    reason appended to `dropped`; anything else wrong is one error naming file, line and field."""
    path = pairs_file(path)
    rows, first_line, empty = [], {}, []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DLMAError(f"{where(path, n)}: malformed JSON ({e})") from None
        if not isinstance(row, dict):
            raise DLMAError(f"{where(path, n)}: a row must be a JSON object, got {type(row).__name__}")
        problem = _pair_row_problem(row, need_self_reward)
        if problem:
            raise DLMAError(f"{where(path, n, problem[0])}: {problem[1]}")
        if row["id"] in first_line:
            first = first_line[row["id"]]
            raise DLMAError(f"{where(path, n, 'id')}: duplicate id {row['id']!r} (first at line {first})")
        first_line[row["id"]] = n
        blank = [k for k in ("o1", "o2") if not row[k].strip()]
        if blank:
            empty.append(f"{where(path, n, blank[0])}: empty response")
            continue
        rows.append(row)
    return usable(str(path), rows, empty, dropped, "pairs")


def _pair_row_problem(row: dict, need_self_reward: bool) -> tuple[str, str] | None:
    """(field, what is wrong) for the first bad field of a pairs row, or None."""
    for key in ("id", "turns", "o1", "o2"):
        if key not in row:
            return key, "missing"
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        return "id", f"expected a string or an integer, got {type(row['id']).__name__}"
    turns = row["turns"]
    if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t.strip() for t in turns)):
        return "turns", "expected a non-empty list of non-empty strings (the context, user turn first)"
    for key in ("o1", "o2"):
        if not isinstance(row[key], str):
            return key, f"expected a string, got {type(row[key]).__name__}"
    if "pair" in row and row["pair"] not in PAIRS:
        return "pair", f"unknown prompt pair {row['pair']!r} (known: {', '.join(sorted(PAIRS))})"
    if "rendering" in row and row["rendering"] not in RENDERINGS:
        return "rendering", f"unknown rendering {row['rendering']!r} (valid: {', '.join(RENDERINGS)})"
    value = row.get("self_reward")
    if (need_self_reward or "self_reward" in row) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return "self_reward", f"missing or not a finite number (got {value!r}); run `dlma score`"
    return None


def run_score(out_dir, model_cfg: ModelConfig, pairs_path, cfg: ScoreConfig, chunk: int = 32, model=None,
              force: bool = False) -> list[dict]:
    """Stage 2: `scored.jsonl`, each pair with its four S terms and R (under the row's own pair and
    rendering, if it names them)."""
    started, out_dir = time.time(), Path(out_dir)
    check_out(out_dir)
    empty: list[str] = []
    pairs = read_pairs(pairs_path, dropped=empty)
    params = {"pairs": str(pairs_path), **asdict(cfg), **with_custom_pairs(p.get("pair") or cfg.pair for p in pairs)}
    check_model(model_cfg)
    at = begin_launch(out_dir, model_cfg, params, {"pairs": pairs_file(pairs_path)}, force)
    done = ran_through(out_dir)
    if at.main:
        note_dropped("score", empty, "an empty response has no token to score")
    store = ShardedJSONL(out_dir / "scored.jsonl", at=at)
    chunks = [pairs[k : k + chunk] for k in range(0, len(pairs), chunk)]  # each process: every world-th chunk
    settings = [[(p.get("pair") or cfg.pair, p.get("rendering") or cfg.rendering) for p in part] for part in chunks]
    order = [p["id"] for part, setting in zip(chunks, settings, strict=True) for s in dict.fromkeys(setting)
             for p, ps in zip(part, setting, strict=True) if ps == s]  # grouped by setting within a chunk
    todo = [(k, part) for k, part in at.mine(chunks) if not all(p["id"] in store.done for p in part)]
    if todo and not store.finished:
        model, tokenizer = _model(model_cfg, model)
        for k, part in todo:
            rows = []
            for name, rendering in dict.fromkeys(settings[k]):  # one call per (prompt pair, rendering)
                group = [p for p, s in zip(part, settings[k], strict=True) if s == (name, rendering)]
                terms = self_reward_terms(model, tokenizer, [(p["turns"], p["o1"], p["o2"]) for p in group],
                                          get_pair(name), rendering, cfg.score_batch_size,
                                          max_length=cfg.score_max_length, desc=f"score {k + 1}/{len(chunks)}",
                                          share_prompts=cfg.share_prompts, max_tokens=cfg.max_batch_tokens)
                rows += [{**p, "pair": name, **t} for p, t in zip(group, terms, strict=True)]
            store.append(rows)  # grouped by setting within a chunk: the order the published run's split used
    store.finish(order=order if at.world > 1 else None)
    if at.main and not done:
        write_manifest(out_dir, "score", params, started, model=model_fingerprint(model_cfg),
                       n_pairs=len(store.rows), dropped={"empty_response": empty}, processes=at.world)
    at.barrier()
    return store.rows


def run_pref_acc(out_dir, model_cfg: ModelConfig, pref_data: str, cfg: PrefAccConfig, pref_limit: int | None = None,
                 on_invalid: str = "skip", label_field: str = "safer_response_id", exclude_ids=(),
                 model=None, force: bool = False) -> dict:
    """Stage 3: `metrics.json`, `predictions.jsonl`, `calibration.json` on human-labelled pairs."""
    started, out_dir = time.time(), Path(out_dir)
    check_out(out_dir)
    check_limit(pref_limit, "pref_limit")
    scorers = cfg.scorer_list()
    if "implicit" in scorers and not model_cfg.adapter and not hasattr(model, "disable_adapter"):
        raise DLMAError("scorer 'implicit' needs a trained adapter: pass --adapter DIR")
    skipped: list[str] = []
    excluded = set(map(str, exclude_ids))
    examples = load_examples(pref_data, limit=pref_limit, require="labelled", label_field=label_field,
                             on_invalid=on_invalid, skipped=skipped, exclude=excluded)
    params = {"pref_data": str(pref_data), "pref_limit": pref_limit, "on_invalid": on_invalid,
              "label_field": label_field, **asdict(cfg), **with_custom_pairs([cfg.pref_pair])}
    check_model(model_cfg)
    at = begin_launch(out_dir, model_cfg, {**params, "excluded_ids": sorted(excluded)}, {"pref_data": pref_data},
                      force)
    done = ran_through(out_dir)
    if at.main:
        note_dropped("pref-acc", skipped, "invalid rows, --on-invalid skip")
    store = ShardedJSONL(out_dir / "predictions.jsonl", key=("scorer", "id"), at=at)
    if not store.finished:
        model_tok = None
        for scorer in scorers:
            todo = [e for e in examples if (scorer, e.id) not in store.done]
            for part in scorer_parts(todo, scorer, at):
                if part:
                    model_tok = model_tok or _model(model_cfg, model)
                    store.append(score_examples(*model_tok, part, scorer, cfg))
        store.finish(order=[(s, e.id) for s in scorers for e in examples] if at.world > 1 else None)
    metrics = None
    if at.main:  # the metrics are recomputed on every run (seconds): they follow the code that reports them
        by_scorer = {s: [r["score"] for r in store.rows if r["scorer"] == s] for s in scorers}
        metrics = judge_metrics(store.rows, examples, scorers, cfg.n_bootstrap, cfg.seed)
        changed = [write_json_if_changed(out_dir / "metrics.json", metrics),
                   write_json_if_changed(out_dir / "calibration.json",
                                         {s: accuracy_by_confidence(v) for s, v in by_scorer.items()})]
        if not done or any(changed):  # the manifest hashes what the folder holds
            write_manifest(out_dir, "pref-acc", params, started, model=model_fingerprint(model_cfg),
                           skipped_rows=skipped, n_examples=len(examples), excluded_ids=len(excluded),
                           processes=at.world)
    at.barrier()
    # in the scorers' order on the main process (the file's keys are sorted)
    return metrics or json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))


def scorer_parts(todo: list[Example], scorer: str, at) -> list[list[Example]]:
    """The pairs this process scores, in calls: one process, all in one call; several, chunks of SHARD_CHUNK,
    every world-th to each (their scores agree with one process's within float tolerance, the batches being
    others); `length` and `random` need no model and are the main process's, in one call."""
    if at.world == 1:
        return [todo]
    if scorer in ("length", "random"):
        return [todo] if at.main else []
    return [part for _, part in at.mine([todo[k : k + SHARD_CHUNK] for k in range(0, len(todo), SHARD_CHUNK)])]


def stage3_rows(run_dir: Path, pref_data: str, cfg: PrefAccConfig, variant: tuple[str, str, str],
                label_field: str) -> dict[str, dict]:
    """{id: dlma row} of stage 3 when it scored `variant` with the very settings the study would use (the same
    numbers, so not computed twice); else {}."""
    folder = run_dir / "03_preference_accuracy"
    if not (folder / "predictions.jsonl").is_file():
        return {}
    before = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    same = {"pref_data": str(pref_data), "pref_pair": variant[1], "rendering": variant[2], "label_field": label_field,
            "pref_max_length": cfg.pref_max_length, "share_prompts": cfg.share_prompts}
    if any(before.get(k) != v for k, v in same.items()) or before["inputs"]["pref_data"] != input_record(pref_data):
        return {}
    return {r["id"]: r for r in read_jsonl(folder / "predictions.jsonl") if r["scorer"] == "dlma"}


def run_pair_study(run_dir, model_cfg: ModelConfig, pref_data: str, cfg: PrefAccConfig, study: StudyConfig,
                   pref_limit: int | None = None, label_field: str = "safer_response_id", model=None,
                   force: bool = False) -> dict:
    """Stage 3b in a run folder: the prompt-pair study (see dlma.study). Writes `03b_pair_study/` (scores.jsonl,
    study.json, manifest.json) and resumes variant by variant, reusing stage 3's scores of the reference."""
    from .study import candidate_scores, confirm, needs, select, split_ids, terms_row

    started, run_dir = time.time(), Path(run_dir)
    out = run_dir / "03b_pair_study"
    check_out(out)
    check_limit(pref_limit, "pref_limit")
    variants = study.variant_list()
    skipped: list[str] = []
    examples = load_examples(pref_data, limit=pref_limit, require="labelled", label_field=label_field,
                             on_invalid="skip", skipped=skipped)
    by_id = {e.id: e for e in examples}
    select_ids, rest_ids = split_ids(list(by_id), study.study_select, cfg.seed)
    check_model(model_cfg)
    params = {"pref_data": str(pref_data), "pref_limit": pref_limit, "label_field": label_field, **asdict(study),
              **{k: v for k, v in asdict(cfg).items() if k not in ("scorers", "pref_pair", "rendering",
                                                                    "rlaif_instruction", "beta")},
              **with_custom_pairs([p for _, p, _ in variants])}
    begin(out, {**params, "model": model_cfg.to_dict()}, {"pref_data": pref_data}, force)
    store = PartialJSONL(out / "scores.jsonl", key=("variant", "id"))
    loaded = [model]

    def score(variant: tuple[str, str, str], ids: list[str]) -> None:
        v, pair, rendering = variant
        todo = [i for i in ids if (v, i) not in store.done]
        if not todo:
            return
        if loaded[0] is None:
            loaded[0] = _model(model_cfg)
        m, tok = loaded[0]
        reuse = stage3_rows(run_dir, pref_data, cfg, variant, label_field)
        fresh = [i for i in todo if i not in reuse]
        items = [(by_id[i].turns, by_id[i].chosen, by_id[i].rejected) for i in fresh]
        terms = dict(zip(fresh, self_reward_terms(m, tok, items, get_pair(pair), rendering, cfg.score_batch_size,
                                                  max_length=cfg.pref_max_length, desc=v,
                                                  share_prompts=cfg.share_prompts, max_tokens=cfg.max_batch_tokens),
                         strict=True)) if fresh else {}
        store.append([{"variant": v, "id": i, **terms_row(terms.get(i) or reuse[i],
                                                         len(response_ids(by_id[i].chosen, tok)),
                                                         len(response_ids(by_id[i].rejected, tok)))} for i in todo])

    if not store.finished:
        for variant in variants:  # step 2: every variant on the selection slice
            score(variant, select_ids)
    rows = {(r["variant"], r["id"]): r for r in store.rows}
    names = [v for v, _, _ in variants]
    on_slice = candidate_scores(rows, names, select_ids)
    selection = {c: summarize(s, cfg.n_bootstrap, cfg.seed) for c, s in on_slice.items()}
    chosen = select(selection)
    if not store.finished:  # step 3: the selected candidate and the reference on the rest
        for variant in variants:
            if variant[0] in needs(chosen, names) or variant[0] == names[0]:
                score(variant, rest_ids)
        store.finish()
    rows = {(r["variant"], r["id"]): r for r in store.rows}
    scored_rest = [v for v in names if all((v, i) in rows for i in rest_ids)]
    on_rest = candidate_scores(rows, scored_rest, rest_ids)  # the selected candidate and the reference among them
    reference = names[0]
    result = {
        "split": {"seed": cfg.seed, "n_select": len(select_ids), "n_rest": len(rest_ids)},
        "reference": reference,
        "selection": selection,
        "selected": chosen,
        "confirmation": {
            "selected": summarize(on_rest[chosen], cfg.n_bootstrap, cfg.seed),
            "reference": summarize(on_rest[reference], cfg.n_bootstrap, cfg.seed),
            "paired": confirm(on_rest[chosen], on_rest[reference], cfg.n_bootstrap, cfg.seed),
        },
    }
    write_json(out / "study.json", result)
    write_manifest(out, "pair-study", params, started, model=model_fingerprint(model_cfg), skipped_rows=skipped,
                   n_examples=len(examples))
    return result


def run_train(out_dir, model_cfg: ModelConfig, scored_path, cfg, force: bool = False, sft: bool = False) -> dict:
    """Stage 4: a QLoRA DLMA adapter in `out_dir` (see dlma.train); `sft`: context distillation instead."""
    from .train import train_dlma

    started, out_dir = time.time(), Path(out_dir)
    check_out(out_dir)
    empty: list[str] = []
    rows = read_pairs(scored_path, need_self_reward=True, dropped=empty)
    check_model(model_cfg)
    params = {"pairs": str(scored_path), **asdict(cfg), **({"objective": "sft"} if sft else {})}
    # under `accelerate launch`, the main process checks and writes; the others train beside it
    at = begin_launch(out_dir, model_cfg, params, {"pairs": pairs_file(scored_path)}, force)
    if ran_through(out_dir):
        if progress():  # console only: a notebook shows the same whether it trained or found the adapter
            print(f"train: {out_dir} already holds this run; not retraining")
        return json.loads((out_dir / "train_summary.json").read_text(encoding="utf-8"))
    if at.main:
        note_dropped("train", empty, "an empty response")
    summary = train_dlma(rows, model_cfg, cfg, out_dir, sft=sft)
    if at.main:
        write_manifest(out_dir, "train", params, started, model=model_fingerprint(model_cfg), summary=summary,
                       dropped={"empty_response": empty}, processes=at.world)
    return summary


def split_holdout(rows: list[dict], fraction: float = 0.05, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle and hold out a fraction of pairs for evaluation (SPEC section 2): (train, held out)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    k = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    return rows[k:], rows[:k]


def run_split(out_dir, scored_path, holdout_fraction: float, seed: int = 0, force: bool = False):
    """Stage 4's hold-out: `train.jsonl` and `heldout.jsonl` in `out_dir`, from scored pairs."""
    started, out_dir = time.time(), Path(out_dir)
    check_out(out_dir)
    if not 0 <= holdout_fraction < 1:
        raise DLMAError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    empty: list[str] = []
    rows = read_pairs(scored_path, need_self_reward=True, dropped=empty)
    if holdout_fraction > 0 and len(rows) < 2:
        raise DLMAError(f"{scored_path}: {len(rows)} pair(s) cannot be split into training and held-out pairs")
    params = {"pairs": str(scored_path), "holdout_fraction": holdout_fraction, "seed": seed}
    begin(out_dir, params, {"pairs": pairs_file(scored_path)}, force)
    if ran_through(out_dir):  # done earlier, from the same pairs and parameters
        return read_jsonl(out_dir / "train.jsonl"), read_jsonl(out_dir / "heldout.jsonl")
    note_dropped("split", empty, "an empty response")
    train, heldout = split_holdout(rows, holdout_fraction, seed)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "heldout.jsonl", heldout)
    write_manifest(out_dir, "split", params, started, n_train=len(train), n_heldout=len(heldout),
                   dropped={"empty_response": empty})
    return train, heldout


def train_stage(run_dir, model_cfg: ModelConfig, cfg, holdout_fraction: float) -> dict:
    """Stage 4 in a run folder: split 02's scored pairs, then QLoRA DLMA on the training part, into
    `04_train_dlma/` (train.jsonl, heldout.jsonl, adapter/)."""
    run_dir = Path(run_dir)
    out = run_dir / "04_train_dlma"
    run_split(out, run_dir / "02_self_reward" / "scored.jsonl", holdout_fraction, cfg.seed)
    return run_train(out / "adapter", model_cfg, out / "train.jsonl", cfg)


def run_evaluate(run_dir, model_cfg: ModelConfig, cfg: EvalConfig, force: bool = False) -> dict:
    """Stage 5 in a run folder: base (adapter off) against DLMA (adapter on) on what no earlier stage used:
    queries stage 1 did not generate from, human pairs stage 3 did not score, and the pairs stage 4 held
    out. Writes `05_evaluate_alignment/` (responses.jsonl, human_pairs.jsonl, heldout_generated.jsonl,
    alignment.json) and resumes: sampled responses are kept batch by batch, each other file once done."""
    from .alignment import MODELS, base_judgements, respond, summarize_alignment

    started, run_dir = time.time(), Path(run_dir)
    out, adapter = run_dir / "05_evaluate_alignment", run_dir / "04_train_dlma" / "adapter"
    check_out(out)
    generated, heldout_path = run_dir / "01_generate" / "pairs.jsonl", run_dir / "04_train_dlma" / "heldout.jsonl"
    for path in (generated, run_dir / "01_generate" / "params.json", run_dir / "03_preference_accuracy" /
                 "predictions.jsonl", heldout_path, adapter / "adapter_model.safetensors"):
        if not path.is_file():
            raise DLMAError(f"{path}: no such file (run the earlier stages first)")
    queries = json.loads((run_dir / "01_generate" / "params.json").read_text(encoding="utf-8"))["queries"]
    used_pairs = {r["id"] for r in read_jsonl(run_dir / "03_preference_accuracy" / "predictions.jsonl")}
    prompts = unused_queries(queries, [r["id"] for r in read_jsonl(generated)], cfg.eval_n_prompts)
    pairs = unused_pairs(cfg.pref_data, used_pairs, cfg.eval_n_pairs, cfg.label_field)
    reused = [e.id for e in pairs if e.id in used_pairs]
    heldout = [Example(str(r["id"]), r["turns"], r["o1"], r["o2"]) for r in read_pairs(heldout_path)] \
        if heldout_path.read_text(encoding="utf-8").strip() else []
    if not prompts:
        raise DLMAError(f"{queries}: no query left that stage 1 did not use")
    model_cfg = ModelConfig(**{**model_cfg.to_dict(), "adapter": str(adapter)})
    check_model(model_cfg)
    params = {**asdict(cfg), "model": model_cfg.to_dict()}
    begin(out, params, {"adapter": adapter / "adapter_model.safetensors", "heldout": heldout_path,
                        "pref_data": cfg.pref_data}, force)
    print(f"{len(prompts)} held-out prompts, {len(pairs)} held-out human pairs from {cfg.pref_data}, "
          f"{len(heldout)} held-out generated pairs")
    if reused:
        print(f"{len(reused)} of the human pairs were also scored in stage 3, which used all but "
              f"{len(pairs) - len(reused)} of the file (stage 3 trains nothing, so the adapter has seen none)")
    gen_cfg, pref_cfg = cfg.generate_config(), cfg.pref_config()
    model = tokenizer = None

    def loaded():
        nonlocal model, tokenizer
        if model is None:
            model, tokenizer = load_model(model_cfg)
        return model, tokenizer

    if not (out / "responses.jsonl").exists():
        texts = PartialJSONL(out / "generations.jsonl", key=("model", "id"))
        responses = []
        for name in MODELS:
            done = {r["id"]: r["response"] for r in texts.rows if r["model"] == name}

            def save(new: dict, name=name):
                texts.append([{"model": name, "id": i, "response": t} for i, t in new.items()])

            got = respond(*loaded(), prompts, gen_cfg, adapter=name == "dlma", done=done, save=save)
            judged = base_judgements(*loaded(), prompts, got, gen_cfg.rendering, pref_cfg.score_batch_size,
                                     pref_cfg.max_batch_tokens)
            responses += [{"id": ex.id, "model": name, "query": ex.turns[-1], "response": t, **j}
                          for ex, t, j in zip(prompts, got, judged, strict=True)]
        write_jsonl(out / "responses.jsonl", responses)
        texts.finish()
    # Human pairs: log-probs under the policy (adapter on) and the reference (off) give at once the DPO
    # implicit reward and each model's own likelihood preference (loglik) for base vs DLMA.
    for name, examples in (("human_pairs", pairs), ("heldout_generated", heldout)):
        if examples and not (out / f"{name}.jsonl").exists():
            write_jsonl(out / f"{name}.jsonl", implicit_and_loglik(*loaded(), examples, pref_cfg))
    read = [read_jsonl(out / f"{n}.jsonl") if (out / f"{n}.jsonl").exists() else []
            for n in ("responses", "human_pairs", "heldout_generated")]
    summary = summarize_alignment(*read, pref_cfg.n_bootstrap, pref_cfg.seed)
    write_json(out / "alignment.json", summary)
    write_manifest(out, "evaluate", params, started, model=model_fingerprint(model_cfg), n_prompts=len(prompts),
                   n_pairs=len(pairs), n_pairs_also_in_stage3=len(reused), n_heldout_generated=len(heldout))
    return summary


def unused_queries(source: str, used_ids, n: int, prefer_pair: str | None = "harmless") -> list[Example]:
    """n queries from `source` that generation did not use, those tagged `prefer_pair` first."""
    used = set(map(str, used_ids))
    fresh = [e for e in load_examples(source) if e.id not in used]
    fresh.sort(key=lambda e: e.pair != prefer_pair)  # stable: file order within each group
    return fresh[:n]


def unused_pairs(data: str, used_ids, n: int, label_field: str = "safer_response_id") -> list[Example]:
    """n human-labelled pairs (valid rows only), those an earlier evaluation did not use first: when stage 3
    scored (nearly) all of the file, the rest are pairs it scored, in file order."""
    used = set(map(str, used_ids))
    rows = load_examples(data, require="labelled", label_field=label_field, on_invalid="skip")
    return ([e for e in rows if e.id not in used] + [e for e in rows if e.id in used])[:n]
