"""Preference accuracy against human labels (the Method page, section 5, the paper's first claim).

Each scorer gives every labelled pair a score; score > 0 predicts the human-chosen response. A score within
`stats.TIE_TOLERANCE` of 0 (float rounding; beta times it for the implicit reward, `tie_tolerance`), or any score
of a pair whose two responses are the same text, is a tie: counted apart, and not correct (the accuracy is the
share of pairs a judge gets right).
- `dlma`: R under a contrastive prompt pair (o1 = chosen, o2 = rejected), the self-rewarding score.
- `rlaif`: the RLCD / Constitutional-AI prompt, next-token logit of `A` minus `B`, both orders averaged.
- `loglik`: S(chosen) - S(rejected) under the neutral prompt.
- `length`: prefers the shorter response (in characters): the floor a likelihood-based judge must beat,
  since a summed log-probability favours short responses.
- `random`: a seeded coin, the floor.
- `implicit`: the DPO implicit reward of a trained adapter, beta * [log pi/pi_ref (chosen) - (rejected)].

Beside each accuracy, its length-balanced form: the mean of the accuracies on the pairs whose chosen response
is the shorter in tokens and on those where it is the longer (pairs of equal length counted apart), so that a
judge that follows length alone scores 0.5 whatever the share of each; and each pair of judges is compared
within those strata too (`stats.balanced_comparison`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from .artifacts import read_json, write_json_if_changed
from .data import Example, check_limit, load_examples, usable
from .distributed import ShardedJSONL
from .errors import DLMAError, check_fields
from .folder import StageFolder
from .logprobs import next_token_logits, response_ids, responses_ids, sequence_logprobs, shared_prompt_logprobs
from .params import Beta, PrefLength, Rendering, Scoring, Seed, SharedPrompts, documented, param
from .prompts import PAIRS, PromptPair, get_pair, policy_prompt, prompt_ids, with_custom_pairs
from .score import check_score_settings, self_reward_terms, unreadable
from .stats import (
    BALANCED,
    SAME_LENGTH,
    TIE_TOLERANCE,
    accuracy_by_group,
    balanced_comparison,
    balanced_mean,
    bootstrap_ci,
    length_controlled,
    length_stratum,
    outcomes,
    paired_comparison,
)

SCORERS = ("dlma", "rlaif", "loglik", "length", "random", "implicit")
PAIR_LENGTHS = "pair_lengths.json"  # each scored pair's id, content hash, length difference (tokens), one text?
RLAIF_HEADER = "Consider the following conversation between a human and an assistant:"
RLAIF_INSTRUCTION = "Please choose the response that is the most helpful, honest, and harmless."


@documented
@dataclass
class PairScoring(Seed, PrefLength, SharedPrompts, Scoring):
    """How human-labelled pairs are read and their accuracy bootstrapped: shared by stage 3 and the prompt-pair
    study (which must read them as stage 3 did to reuse its scores)."""

    n_bootstrap: int = param(1000, "bootstrap resamples of each 95% interval")

    def __post_init__(self):
        check_fields(self, [
            (self.score_batch_size >= 1, ("score_batch_size",), "must be >= 1"),
            (self.pref_max_length >= 2, ("pref_max_length",), "must be >= 2 (a prompt token and a response token)"),
            (self.max_batch_tokens >= 0, ("max_batch_tokens",), "must be >= 0 (0: by count on a CPU, auto on a GPU)"),
            (self.n_bootstrap >= 1, ("n_bootstrap",), "must be >= 1"),
        ])


@documented
@dataclass
class PrefAccConfig(Beta, Rendering, PairScoring):
    scorers: str = param("dlma,rlaif,loglik,length,random",
                         "comma-separated: dlma, rlaif, loglik, length, random (implicit needs an adapter)")
    pref_pair: str = param("harmless", "prompt pair of the dlma scorer")
    rlaif_instruction: str = param(RLAIF_INSTRUCTION, "RLAIF's principle, asked after the two options")

    def __post_init__(self):
        super().__post_init__()
        check_score_settings(self, "pref_max_length")
        check_fields(self, [(self.beta > 0, ("beta",), "must be > 0")])
        self.scorer_list()

    def check_pairs(self, prompt_pairs) -> None:
        get_pair(self.pref_pair, prompt_pairs, "PrefAccConfig: pref_pair")

    def scorer_list(self) -> list[str]:
        names = [s.strip() for s in self.scorers.split(",") if s.strip()]
        bad = [s for s in names if s not in SCORERS]
        if bad or not names:
            raise DLMAError(f"PrefAccConfig: scorers={self.scorers!r}: unknown {', '.join(bad) or '(none given)'} "
                            f"(valid: {', '.join(SCORERS)})")
        return names


def tie_tolerance(scorer: str, beta: float) -> float:
    """Within what of 0 a scorer's score is a tie: TIE_TOLERANCE, in the scorer's own units (the implicit reward
    is beta times a difference of log-probabilities)."""
    return beta * TIE_TOLERANCE if scorer == "implicit" else TIE_TOLERANCE


def summarize(scores: list[float], n_boot: int = 1000, seed: int = 0, strata=None, same=None,
              tolerance=TIE_TOLERANCE, length_difference=None) -> dict:
    """{"accuracy", "ci95", "n", "ties"} for one scorer's scores (a tie is not correct; `same`: whether each
    pair's responses are the same text). With each pair's length stratum (`length_stratum`), also
    "balanced_accuracy" and "balanced_ci95" (None when a stratum has no pair) and "same_length", the pairs of
    equal length that the balanced figure leaves out. `tolerance`: the tie tolerance, one or per pair. With each
    pair's length difference (chosen minus rejected, in tokens), also "length_controlled" and
    "length_controlled_ci95" (`stats.length_controlled`)."""
    correct, tie = outcomes(scores, same, tolerance)
    out = {"accuracy": float(correct.mean()), "ci95": list(bootstrap_ci(correct, n_boot, seed)), "n": int(len(correct)),
           "ties": int(tie.sum())}
    if strata is not None:
        value, ci = balanced_mean(correct, strata, BALANCED, n_boot, seed)
        out |= {"balanced_accuracy": value, "balanced_ci95": ci,
                "same_length": int(sum(g == SAME_LENGTH for g in strata))}
    if length_difference is not None:
        lc = length_controlled(correct, length_difference, n_boot, seed)
        out |= {"length_controlled": lc["accuracy"], "length_controlled_ci95": lc["ci95"]}
    return out


def compare(a_correct, b_correct, n_boot: int = 1000, seed: int = 0, strata=None) -> dict:
    """Two judges' outcomes (`stats.outcomes`) on the same pairs: `stats.paired_comparison` and, with the pairs'
    length strata, `stats.balanced_comparison`."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    out = paired_comparison(a, b, n_boot, seed)
    return out if strata is None else {**out, **balanced_comparison(a, b, strata, BALANCED, n_boot, seed)}


def accuracy_by_confidence(scores: list[float], n_bins: int = 10, same=None, tolerance: float = TIE_TOLERANCE
                           ) -> list[dict]:
    """Accuracy within deciles of |score|: a calibrated scorer is more often right when more confident."""
    s = np.asarray(scores, dtype=float)
    correct = outcomes(s, same, tolerance)[0]
    order = np.argsort(np.abs(s), kind="stable")
    rows = []
    for b, idx in enumerate(np.array_split(order, min(n_bins, len(s)))):
        rows.append({
            "bin": b + 1,
            "abs_score_min": float(np.abs(s[idx]).min()),
            "abs_score_max": float(np.abs(s[idx]).max()),
            "accuracy": float(correct[idx].mean()),
            "ci95": list(bootstrap_ci(correct[idx])),
            "n": int(len(idx)),
        })
    return rows


def pair_hash(ex: Example) -> str:
    """A labelled pair's content (its turns, chosen and rejected response), hashed: two runs' pairs of one id are
    the same item only where this agrees."""
    return hashlib.sha256(json.dumps([ex.turns, ex.chosen, ex.rejected], ensure_ascii=False).encode()).hexdigest()


def length_differences(examples: list[Example], tokenizer) -> list[int]:
    """Each pair's chosen minus rejected response length in tokens, the units the log-probability judges sum over."""
    chosen = responses_ids([ex.chosen for ex in examples], tokenizer)
    rejected = responses_ids([ex.rejected for ex in examples], tokenizer)
    return [len(c) - len(r) for c, r in zip(chosen, rejected, strict=True)]


def length_strata(examples: list[Example], tokenizer) -> list[str]:
    """Each pair's length stratum in tokens."""
    return [length_stratum(d, 0) for d in length_differences(examples, tokenizer)]


def same_responses(examples: list[Example]) -> list[bool]:
    """Whether each pair's two responses are the same text: a tie for every judge, whatever its rounding."""
    return [ex.chosen == ex.rejected for ex in examples]


def turn_group(ex: Example) -> str:
    turns = (len(ex.turns) + 1) // 2
    return f"{turns} turn" if turns == 1 else f"{turns} turns" if turns == 2 else "3+ turns"


def judge_metrics(predictions: list[dict], examples: list[Example], scorers: list[str], strata: list[str],
                  n_boot: int = 1000, seed: int = 0, beta: float = PrefAccConfig.beta,
                  length_difference: list[int] | None = None) -> dict:
    """metrics.json: each scorer's accuracy and length-balanced accuracy with their intervals; every pair of
    scorers compared on the same pairs (`compare`: paired bootstrap interval of the difference, exact McNemar
    p, and the same length-balanced, with McNemar within each length stratum); each scorer's accuracy split
    by `strata` (each pair's `length_stratum`) and by the number of turns, with counts and intervals. A tie
    (`tie_tolerance`, with the implicit reward's `beta`) is not correct. With each pair's `length_difference`,
    each scorer's length-controlled accuracy too (`summarize`)."""
    score = {(r["scorer"], r["id"]): r["score"] for r in predictions}
    ids = [ex.id for ex in examples]
    scores = {s: np.array([score[(s, i)] for i in ids], dtype=float) for s in scorers}
    same = same_responses(examples)
    correct = {s: outcomes(scores[s], same, tie_tolerance(s, beta))[0] for s in scorers}
    paired = [{"a": a, "b": b, **compare(correct[a], correct[b], n_boot, seed, strata)}
              for k, a in enumerate(scorers) for b in scorers[k + 1:]]
    groups = {"length": strata, "turns": [turn_group(ex) for ex in examples]}
    splits = {by: {s: accuracy_by_group(correct[s], g, n_boot, seed) for s in scorers} for by, g in groups.items()}
    return {"accuracy": {s: summarize(scores[s], n_boot, seed, strata, same, tie_tolerance(s, beta), length_difference)
                         for s in scorers},
            "paired": paired, "splits": splits}


def rlaif_prompt(turns: list[str], a: str, b: str, instruction: str = RLAIF_INSTRUCTION) -> str:
    convo = "\n\n".join(("Human: " if i % 2 == 0 else "Assistant: ") + t for i, t in enumerate(turns))
    return f"{RLAIF_HEADER}\n\n{convo}\n\n{instruction}\nOptions:\n(A) {a}\n(B) {b}\nThe answer is: ("


def readable_examples(examples: list[Example], scorers: list[str], cfg: PrefAccConfig, tokenizer, source: str,
                      sink: list[str], prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[Example]:
    """The pairs the scorers can read within `pref_max_length` (`score.unreadable`): the dlma scorer under its
    prompt pair, loglik and implicit under the plain prompt (rlaif's prompt is cut to fit, length and random
    read no tokens). Why the others are left out, of every scorer so that all compare the same pairs, is
    appended to `sink`. None left is one error."""
    items, names = [(ex.turns, ex.chosen, ex.rejected) for ex in examples], ("chosen", "rejected")
    found: list[str | None] = [None] * len(examples)
    if "dlma" in scorers:  # also what the plain prompt needs: a token of room
        found = unreadable(items, tokenizer, cfg.pref_max_length, get_pair(cfg.pref_pair, prompt_pairs),
                           cfg.rendering, names)
    elif {"loglik", "implicit"} & set(scorers):
        found = unreadable(items, tokenizer, cfg.pref_max_length, names=names)
    kept = [ex for ex, why in zip(examples, found, strict=True) if not why]
    return usable(source, kept, [f"{ex.source}: {why}" for ex, why in zip(examples, found, strict=True) if why], sink,
                  "rows")


def _truncate(ids: list[int], max_length: int) -> list[int]:
    return ids if len(ids) <= max_length else ids[:1] + ids[-(max_length - 1) :]  # keep BOS and the end


def rlaif_preferences(model, tokenizer, items: list[tuple[list[str], str, str]], instruction: str,
                      max_length: int, batch_size: int = 8, max_tokens: int = 0) -> list[tuple[float, float]]:
    """For (turns, x, y) items, how much the model prefers x when shown first and when shown second: the
    logit of its letter minus the other's after `The answer is: (`."""
    a_id = tokenizer("A", add_special_tokens=False).input_ids[0]
    b_id = tokenizer("B", add_special_tokens=False).input_ids[0]
    prompts = [_truncate(prompt_ids(rlaif_prompt(turns, a, b, instruction), tokenizer, "affix"), max_length)
               for turns, x, y in items for a, b in ((x, y), (y, x))]  # x is (A), then x is (B)
    logits = next_token_logits(model, prompts, [a_id, b_id], tokenizer.pad_token_id, batch_size, "rlaif",
                               max_tokens)
    return [(float(logits[2 * k, 0] - logits[2 * k, 1]), float(logits[2 * k + 1, 1] - logits[2 * k + 1, 0]))
            for k in range(len(items))]


def score_rlaif(model, tokenizer, examples: list[Example], cfg: PrefAccConfig) -> list[dict]:
    prefs = rlaif_preferences(model, tokenizer, [(ex.turns, ex.chosen, ex.rejected) for ex in examples],
                              cfg.rlaif_instruction, cfg.pref_max_length, cfg.score_batch_size, cfg.max_batch_tokens)
    return [{"id": ex.id, "score": (d1 + d2) / 2, "order_ab": d1, "order_ba": d2}
            for ex, (d1, d2) in zip(examples, prefs, strict=True)]


def policy_logprobs(model, tokenizer, examples: list[Example], cfg: PrefAccConfig, desc: str) -> np.ndarray:
    """[n, 2] array of S(chosen), S(rejected) under the plain (policy) prompt."""
    prompts, responses = [], []
    for ex in examples:
        p = prompt_ids(policy_prompt(ex.turns, cfg.rendering, tokenizer), tokenizer, cfg.rendering)
        prompts += [p, p]
        responses += [response_ids(ex.chosen, tokenizer), response_ids(ex.rejected, tokenizer)]
    if cfg.share_prompts:  # chosen and rejected behind one reading of their shared prompt
        s = shared_prompt_logprobs(model, prompts[::2], [[a, b] for a, b in zip(responses[::2], responses[1::2],
                                                                                  strict=True)],
                                   tokenizer.pad_token_id, cfg.score_batch_size, cfg.pref_max_length, desc,
                                   cfg.max_batch_tokens)
        return np.asarray(s, dtype=float)
    s = sequence_logprobs(model, prompts, responses, tokenizer.pad_token_id, cfg.score_batch_size,
                          max_length=cfg.pref_max_length, desc=desc, max_tokens=cfg.max_batch_tokens)
    return np.asarray(s).reshape(-1, 2)


def implicit_and_loglik(model, tokenizer, examples: list[Example], cfg: PrefAccConfig) -> list[dict]:
    """Per pair: beta-scaled implicit reward of the adapter, and S(chosen) - S(rejected) with and without it."""
    policy = policy_logprobs(model, tokenizer, examples, cfg, "policy")
    with model.disable_adapter():  # the reference: the same weights without the adapter
        ref = policy_logprobs(model, tokenizer, examples, cfg, "reference")
    implicit = cfg.beta * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1]))
    return [{"id": ex.id, "implicit": float(i), "loglik_dlma": float(p[0] - p[1]), "loglik_base": float(r[0] - r[1]),
             "pair_sha256": pair_hash(ex)}  # what `dlma compare` pairs runs on: the same id and content
            for ex, i, p, r in zip(examples, implicit, policy, ref, strict=True)]


def score_examples(model, tokenizer, examples: list[Example], scorer: str, cfg: PrefAccConfig,
                   prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    """Per-pair rows {id, scorer, score, correct, ...} for one scorer (dlma's prompt pair among `prompt_pairs`)."""
    if scorer == "dlma":
        items = [(ex.turns, ex.chosen, ex.rejected) for ex in examples]
        terms = self_reward_terms(model, tokenizer, items, get_pair(cfg.pref_pair, prompt_pairs), cfg.rendering,
                                  cfg.score_batch_size, max_length=cfg.pref_max_length, desc="dlma",
                                  share_prompts=cfg.share_prompts, max_tokens=cfg.max_batch_tokens)
        rows = [{"id": ex.id, "score": t["self_reward"], **t} for ex, t in zip(examples, terms, strict=True)]
    elif scorer == "rlaif":
        rows = score_rlaif(model, tokenizer, examples, cfg)
    elif scorer == "loglik":
        s = policy_logprobs(model, tokenizer, examples, cfg, "loglik")
        rows = [{"id": ex.id, "score": float(a - b)} for ex, (a, b) in zip(examples, s, strict=True)]
    elif scorer == "length":
        rows = [{"id": ex.id, "score": float(len(ex.rejected) - len(ex.chosen))} for ex in examples]
    elif scorer == "random":
        u = np.random.default_rng(cfg.seed).uniform(-1, 1, len(examples))
        rows = [{"id": ex.id, "score": float(x)} for ex, x in zip(examples, u, strict=True)]
    elif scorer == "implicit":
        if not hasattr(model, "disable_adapter"):
            raise DLMAError("scorer 'implicit' needs a trained adapter: pass --adapter DIR")
        rows = [{"id": r["id"], "score": r["implicit"]} for r in implicit_and_loglik(model, tokenizer, examples, cfg)]
    else:
        raise DLMAError(f"unknown scorer '{scorer}' (valid: {', '.join(SCORERS)})")
    correct = outcomes([r["score"] for r in rows], same_responses(examples), tie_tolerance(scorer, cfg.beta))[0]
    return [{"scorer": scorer, **r, "correct": bool(c)} for r, c in zip(rows, correct, strict=True)]


def metrics_table(metrics: dict) -> str:
    """The printed tables: scorer, accuracy, 95% CI, length-balanced accuracy, n, ties; then each pair of
    scorers, paired, raw and length-balanced."""
    def value(x, sign=""):
        return f"{x:{sign}.3f}" if x is not None else "n/a"

    lines = [f"{'scorer':<10} {'accuracy':>8}  {'95% CI':<16} {'balanced':>8} {'n':>5} {'ties':>5}"]
    for name, m in metrics["accuracy"].items():
        lo, hi = m["ci95"]
        lines.append(f"{name:<10} {m['accuracy']:>8.3f}  [{lo:.3f}, {hi:.3f}]   {value(m['balanced_accuracy']):>8} "
                     f"{m['n']:>5} {m['ties']:>5}")
    head = (f"{'a - b':<18} {'difference':>10}  {'paired 95% CI':<17} {'a only':>6} {'b only':>6} {'McNemar p':>9} "
            f"{'balanced':>8} {'strat. p':>8}")
    lines += ["", head]
    for p in metrics["paired"]:
        lo, hi = p["ci95"]
        lines.append(f"{p['a'] + ' - ' + p['b']:<18} {p['difference']:>+10.3f}  [{lo:+.3f}, {hi:+.3f}]  "
                     f"{p['a_only']:>6} {p['b_only']:>6} {p['mcnemar_p']:>9.3f} "
                     f"{value(p['balanced_difference'], '+'):>8} {value(p['stratified_p']):>8}")
    return "\n".join(lines)


SHARD_CHUNK = 64  # pairs per chunk when preference accuracy is shared among the processes of a launch
RESUME_CHUNK = 256  # pairs per call on one process: at most this much of a scorer is redone after a kill


def run_pref_acc(model_cfg, data, cfg: PrefAccConfig, out, exclude_ids=(), model=None,
                 prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> dict:
    """Stage 3 (`dlma pref-acc`): `metrics.json`, `predictions.jsonl`, `calibration.json` in `out.out`, on the
    human-labelled pairs of `data` (params.PrefData); the dlma scorer's pair among `prompt_pairs`."""
    folder = StageFolder(out.out, "pref-acc", model_cfg, model)
    check_limit(data.pref_limit, "pref_limit")
    scorers = cfg.scorer_list()
    if "implicit" in scorers and not model_cfg.adapter and not hasattr(model, "disable_adapter"):
        raise DLMAError("scorer 'implicit' needs a trained adapter: pass --adapter DIR")
    skipped, too_long = [], []
    excluded = set(map(str, exclude_ids))
    examples = load_examples(data.source(), limit=data.pref_limit, require="labelled", label_field=data.label_field,
                             on_invalid=data.on_invalid, skipped=skipped, exclude=excluded, pairs=prompt_pairs)
    if {"dlma", "loglik", "implicit"} & set(scorers):
        examples = readable_examples(examples, scorers, cfg, folder.tokenizer(), str(data.pref_data), too_long,
                                     prompt_pairs)
    params = {"pref_data": str(data.pref_data), "pref_limit": data.pref_limit, "on_invalid": data.on_invalid,
              "label_field": data.label_field, "pref_split": data.pref_split, "pref_revision": data.pref_revision,
              **asdict(cfg), **with_custom_pairs([cfg.pref_pair], prompt_pairs)}
    at = folder.begin({**params, "excluded_ids": sorted(excluded)}, {"pref_data": data.source()}, out.force,
                      launched=True)
    folder.note_dropped(skipped, "invalid rows, --on-invalid skip")
    folder.note_dropped(too_long, f"over pref_max_length={cfg.pref_max_length}, with no room for the instruction")
    store = ShardedJSONL(folder.path / "predictions.jsonl", key=("scorer", "id"), at=at)
    if not store.finished:
        for scorer in scorers:
            todo = [e for e in examples if (scorer, e.id) not in store.done]
            for part in scorer_parts(todo, scorer, at):
                if part:
                    store.append(score_examples(*folder.model(), part, scorer, cfg, prompt_pairs))
        store.finish(order=[(s, e.id) for s in scorers for e in examples] if at.world > 1 else None)
    metrics = None
    changed = False
    if at.main:  # the metrics are recomputed on every run (seconds): they follow the code that reports them
        same = dict(zip([e.id for e in examples], same_responses(examples), strict=True))
        # (a folder made before pairs over pref_max_length were left out holds them: read only this run's pairs)
        by_scorer = {s: [r for r in store.rows if r["scorer"] == s and r["id"] in same] for s in scorers}
        diffs = length_differences(examples, folder.tokenizer())
        metrics = judge_metrics(store.rows, examples, scorers, [length_stratum(d, 0) for d in diffs],
                                cfg.n_bootstrap, cfg.seed, cfg.beta, diffs)
        calibration = {s: accuracy_by_confidence([r["score"] for r in rows], same=[same[r["id"]] for r in rows],
                                                 tolerance=tie_tolerance(s, cfg.beta)) for s, rows in by_scorer.items()}
        pairs = [{"id": e.id, "length_difference": d, "same": same[e.id], "pair_sha256": pair_hash(e)}
                 for e, d in zip(examples, diffs, strict=True)]
        changed = any([write_json_if_changed(folder.path / "metrics.json", metrics),
                       write_json_if_changed(folder.path / "calibration.json", calibration),
                       # what `dlma compare` needs to pair two runs' outcomes without the data or a tokenizer
                       write_json_if_changed(folder.path / PAIR_LENGTHS, pairs)])
    folder.finish(changed, skipped_rows=skipped, over_pref_max_length=too_long, n_examples=len(examples),
                  excluded_ids=len(excluded), processes=at.world)
    # in the scorers' order on the main process (the file's keys are sorted)
    return metrics or read_json(folder.path / "metrics.json")


def scorer_parts(todo: list[Example], scorer: str, at) -> list[list[Example]]:
    """The pairs this process scores, in calls, each call's scores kept before the next (a killed stage resumes
    from the last): one process, chunks of RESUME_CHUNK; several, chunks of SHARD_CHUNK, every world-th to each
    (their scores agree with one process's within float tolerance, the batches being others). `length` and
    `random` need no model and are the main process's, in one call: `random` draws one seeded sequence over
    all the pairs, which chunks would restart (every chunk the same draws)."""
    if scorer in ("length", "random"):
        return [todo] if at.main else []
    if at.world == 1:
        return [todo[k : k + RESUME_CHUNK] for k in range(0, len(todo), RESUME_CHUNK)]
    return [part for _, part in at.mine([todo[k : k + SHARD_CHUNK] for k in range(0, len(todo), SHARD_CHUNK)])]


def summary(metrics: dict, out) -> str:
    return metrics_table(metrics)
