"""`dlma compare`: a rerun beside another run, paired on the items both have.

Reads what the stages stored (no model, no data, no tokenizer): for each stage both runs finished, what differs
in their parameters and inputs (`params.json`, input hashes included), then the paired differences on the items
they share: stage 2's self-reward R on the same generated pairs, stage 3's preference accuracy per scorer (raw
and length-balanced: paired bootstrap, exact McNemar, the length-stratified test; and each run's logistic
length control), stage 4's training curves, stage 5's implicit-reward accuracy on the same human pairs and the
base model's contrastive score C(o) of the adapter's answers on the same prompts, stage 6's judges' win rates on
the same prompts. Items one run alone has are counted and left out. Runs after the first are each compared with the
first.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from .artifacts import json_text, read_json, read_jsonl, write_json
from .commands import COMPARE_HELP, STAGES
from .errors import DLMAError
from .layout import FOLDERS
from .preference import PAIR_LENGTHS, tie_tolerance
from .stats import (
    BALANCED,
    balanced_comparison,
    bootstrap_ci,
    length_controlled,
    length_stratum,
    outcomes,
    paired_comparison,
)

SCORE = {"win": 1.0, "tie": 0.5, "lose": 0.0}  # a verdict's share of a win rate


def stage_folders(path) -> dict[str, Path]:
    """{stage: its finished folder} of a run folder, or of one stage folder given alone."""
    p = Path(path)
    if not p.is_dir():
        raise DLMAError(f"{p}: not a folder; give a run folder (runs/NAME) or one of its stage folders")
    if p.name in STAGES:
        if not (p / "manifest.json").is_file():
            raise DLMAError(f"{p}: this stage did not finish (no manifest.json); rerun it first")
        return {p.name: p}
    found = {s: p / s for s in STAGES if (p / s / "manifest.json").is_file()}
    if not found:
        raise DLMAError(f"{p}: not a run folder (no finished stage folder such as {STAGES[0]}/ in it)")
    return found


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def stage_params(folder: Path) -> dict:
    """A stage folder's parameters, flat, with those of its sub-folders' params.json under their folder's name."""
    out = flat(read_json(folder / "params.json"))
    for sub in sorted(folder.glob("*/params.json")):
        out.update(flat(read_json(sub), f"{sub.parent.name}."))
    return out


def param_differences(a: Path, b: Path) -> list[dict]:
    """The parameters and input records (`inputs.NAME.sha256`, ...) whose values differ between two stage
    folders' params.json, and those of a folder within them (stage 4's `adapter/params.json`: the training's,
    named `adapter.gamma`, ...), each with both values (None where one run lacks it)."""
    pa, pb = (stage_params(f) for f in (a, b))
    return [{"name": k, "a": pa.get(k), "b": pb.get(k)} for k in sorted(set(pa) | set(pb))
            if in_run(pa.get(k)) != in_run(pb.get(k))]


IN_RUN = re.compile(r"^.*?/(?=(?:" + "|".join(map(re.escape, STAGES)) + r")(?:/|$))")


def in_run(value):
    """A path into a run's stage folder, named from the run folder (`RUN/01_generate/pairs.jsonl`): each run
    reads its own earlier stages, which is no difference between two runs (their content hashes say if the
    files differ)."""
    return IN_RUN.sub("RUN/", value) if isinstance(value, str) else value


def _paired(xa: np.ndarray, xb: np.ndarray, strata=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Run b against run a on the same items: the accuracy difference b - a with its paired interval and exact
    McNemar p (`right_only_a`, `right_only_b`: the discordant items), and length-balanced where strata are given."""
    p = paired_comparison(xb, xa, n_boot, seed)
    out = {"difference": p["difference"], "ci95": p["ci95"], "mcnemar_p": p["mcnemar_p"], "both_right": p["both"],
           "right_only_a": p["b_only"], "right_only_b": p["a_only"]}
    if strata is not None:
        bal = balanced_comparison(xb, xa, strata, BALANCED, n_boot, seed)
        out |= {k: bal[k] for k in ("balanced_difference", "balanced_ci95", "stratified_p")}
    return out


def _shared(a: dict, b: dict) -> tuple[list, int, int]:
    """The keys both have (in a's order), and how many each has alone."""
    keys = [k for k in a if k in b]
    return keys, len(a) - len(keys), len(b) - len(keys)


def _mean_difference(d: np.ndarray, n_boot: int, seed: int) -> dict:
    lo, hi = bootstrap_ci(d, n_boot, seed) if len(d) else (None, None)
    return {"difference": float(d.mean()) if len(d) else None, "ci95": [lo, hi] if len(d) else None}


def compare_self_reward(a: Path, b: Path, n_boot: int, seed: int) -> dict:
    """R of the same generated pairs (same id and the same two responses) in both runs: the mean difference b - a
    with a paired bootstrap interval, and on how many the sign agrees."""
    ra, rb = ({r["id"]: r for r in read_jsonl(f / "scored.jsonl")} for f in (a, b))
    ids, only_a, only_b = _shared(ra, rb)
    same = [i for i in ids if (ra[i]["o1"], ra[i]["o2"]) == (rb[i]["o1"], rb[i]["o2"])]
    d = np.array([rb[i]["self_reward"] - ra[i]["self_reward"] for i in same], dtype=float)
    agree = sum(np.sign(ra[i]["self_reward"]) == np.sign(rb[i]["self_reward"]) for i in same)
    return {"n": len(same), "other_responses": len(ids) - len(same), "n_only_a": only_a, "n_only_b": only_b,
            "sign_agrees": int(agree), **_mean_difference(d, n_boot, seed)}


def _outcomes3(folder: Path) -> tuple[dict, dict, dict]:
    """({scorer: {id: correct}}, {id: length difference}, {id: content hash}) of a stage 3 folder, as its metrics
    counted them."""
    params = read_json(folder / "params.json")
    if not (folder / PAIR_LENGTHS).is_file():
        raise DLMAError(f"{folder}: has no {PAIR_LENGTHS} (stage 3 of an earlier version): rerun stage 3 there "
                        "(it rereads its predictions, in seconds) to compare it")
    pairs = {p["id"]: p for p in read_json(folder / PAIR_LENGTHS)}
    by: dict[str, dict] = {}
    for r in read_jsonl(folder / "predictions.jsonl"):
        if r["id"] in pairs:
            by.setdefault(r["scorer"], {})[r["id"]] = r["score"]
    correct = {}
    for scorer, scores in by.items():
        ids = list(scores)
        ok, _ = outcomes([scores[i] for i in ids], [pairs[i]["same"] for i in ids],
                         tie_tolerance(scorer, params.get("beta", 0.1)))
        correct[scorer] = dict(zip(ids, ok.tolist(), strict=True))
    return (correct, {i: p["length_difference"] for i, p in pairs.items()},
            {i: p.get("pair_sha256") for i, p in pairs.items()})


def compare_preference(a: Path, b: Path, n_boot: int, seed: int) -> dict:
    """Each scorer both runs have, on the pairs both scored: accuracy b - a (paired bootstrap, exact McNemar),
    length-balanced (within the strata, stratified test), and each run's logistic length-controlled accuracy."""
    (ca, la, ha), (cb, lb, hb) = _outcomes3(a), _outcomes3(b)
    other = {i for i in ha if i in hb and ha[i] != hb[i]}  # one id, another pair: not the same item
    out = {}
    for scorer in [s for s in ca if s in cb]:
        ids, only_a, only_b = _shared({i: v for i, v in ca[scorer].items() if i not in other},
                                      {i: v for i, v in cb[scorer].items() if i not in other})
        if not ids:
            continue
        xa = np.array([ca[scorer][i] for i in ids])
        xb = np.array([cb[scorer][i] for i in ids])
        strata = [length_stratum(la[i], 0) for i in ids]
        row = {"n": len(ids), "n_only_a": only_a, "n_only_b": only_b, "n_other_pairs": len(other),
               "accuracy_a": float(xa.mean()),
               "accuracy_b": float(xb.mean()), **_paired(xa, xb, strata, n_boot, seed)}
        for side, x, lengths in (("a", xa, la), ("b", xb, lb)):
            lc = length_controlled(x, [lengths[i] for i in ids], n_boot, seed)
            row |= {f"length_controlled_{side}": lc["accuracy"], f"length_controlled_ci95_{side}": lc["ci95"]}
        out[scorer] = row
    if not out:
        raise DLMAError(f"{a} and {b}: runs of different data (no labelled pair with the same id and content in "
                        f"both{f'; {len(other)} ids name other pairs' if other else ''}): their preference accuracy "
                        "cannot be paired")
    return out


def compare_training(a: Path, b: Path) -> dict:
    """Both runs' training logs (stage 4's adapter), step by step, and their final losses."""
    logs = [read_jsonl(f / "adapter" / "train_log.jsonl") for f in (a, b)]
    return {"log_a": logs[0], "log_b": logs[1],
            "final_loss_a": logs[0][-1]["loss"] if logs[0] else None,
            "final_loss_b": logs[1][-1]["loss"] if logs[1] else None}


def compare_alignment(a: Path, b: Path, n_boot: int, seed: int) -> dict:
    """Stage 5 on the same items: the implicit reward's accuracy on the same held-out human pairs (b - a, paired
    bootstrap, exact McNemar), and the base model's C(o) of the adapter's answers to the same prompts."""
    out = {}
    beta = [read_json(f / "params.json").get("beta", 0.1) for f in (a, b)]
    ha, hb = ({r["id"]: r for r in read_jsonl(f / "human_pairs.jsonl")} for f in (a, b))
    # one id, another pair (by content hash; a stage 5 of an earlier version stored none: by id) or another query
    other = {i for i in ha if i in hb and ha[i].get("pair_sha256") != hb[i].get("pair_sha256")}
    ids, only_a, only_b = _shared(*({i: r for i, r in h.items() if i not in other} for h in (ha, hb)))
    if ids:
        xa = outcomes([ha[i]["implicit"] for i in ids], tolerance=tie_tolerance("implicit", beta[0]))[0]
        xb = outcomes([hb[i]["implicit"] for i in ids], tolerance=tie_tolerance("implicit", beta[1]))[0]
        out["implicit"] = {"n": len(ids), "n_only_a": only_a, "n_only_b": only_b, "n_other_pairs": len(other),
                           "accuracy_a": float(xa.mean()), "accuracy_b": float(xb.mean()),
                           **_paired(xa, xb, None, n_boot, seed)}
    ca, cb = ({r["id"]: r for r in read_jsonl(f / "responses.jsonl") if r["model"] == "dlma"} for f in (a, b))
    other = {i for i in ca if i in cb and ca[i]["query"] != cb[i]["query"]}
    ids, only_a, only_b = _shared(*({i: r for i, r in c.items() if i not in other} for c in (ca, cb)))
    d = np.array([cb[i]["contrastive_score"] - ca[i]["contrastive_score"] for i in ids], dtype=float)
    out["contrastive_score"] = {"n": len(ids), "n_only_a": only_a, "n_only_b": only_b, "n_other_queries": len(other),
                                **_mean_difference(d, n_boot, seed)}
    return out


def compare_verdicts(a: Path, b: Path, n_boot: int, seed: int) -> list[dict]:
    """Stage 6's judges on the same prompts: for each (judge, method, opponent) both runs judged, the win rate
    (ties count half) in each run and its paired difference b - a, and on how many prompts the verdict changed."""
    va, vb = ({(r["judge"], r["model"], r["opponent"], r["id"]): r["verdict"]
               for r in read_jsonl(f / "judgements.jsonl")} for f in (a, b))
    out = []
    for judge, model, opponent in dict.fromkeys(k[:3] for k in va if k in vb):
        ids = [k for k in va if k[:3] == (judge, model, opponent) and k in vb]
        xa = np.array([SCORE[va[k]] for k in ids])
        xb = np.array([SCORE[vb[k]] for k in ids])
        out.append({"judge": judge, "model": model, "opponent": opponent, "n": len(ids),
                    "win_rate_a": float(xa.mean()), "win_rate_b": float(xb.mean()),
                    "changed": int(sum(va[k] != vb[k] for k in ids)), **_mean_difference(xb - xa, n_boot, seed)})
    return out


PAIRED = {  # each stage's paired comparison of two of its folders
    FOLDERS["score"]: compare_self_reward,
    FOLDERS["pref"]: lambda a, b, n_boot, seed: {"scorers": compare_preference(a, b, n_boot, seed)},
    FOLDERS["train"]: lambda a, b, n_boot, seed: compare_training(a, b),
    FOLDERS["evaluate"]: compare_alignment,
    FOLDERS["baselines"]: lambda a, b, n_boot, seed: {"verdicts": compare_verdicts(a, b, n_boot, seed)},
}
COMPARED = tuple(PAIRED)


def compare_runs(paths: list, n_boot: int = 1000, seed: int = 0) -> dict:
    """Each run after the first against the first: {"runs": [...], "comparisons": [{"a", "b", "stages": {stage:
    {"parameters": [...], and the stage's paired results}}, "not_compared": [stages one run lacks]}]}. Every
    folder is checked before anything is read; two runs with no finished stage in common are one error."""
    if len(paths) < 2:
        raise DLMAError("give two runs or more (run folders, or a stage folder of each)")
    folders = [stage_folders(p) for p in paths]
    comparisons = []
    for path, stages in zip(paths[1:], folders[1:], strict=True):
        common = [s for s in COMPARED if s in folders[0] and s in stages]
        if not common:
            raise DLMAError(f"{paths[0]} and {path}: no finished stage in common among {', '.join(COMPARED)}; "
                            "nothing to compare")
        result = {}
        for s in common:
            a, b = folders[0][s], stages[s]
            result[s] = {"parameters": param_differences(a, b), **PAIRED[s](a, b, n_boot, seed)}
        lacking = sorted((set(folders[0]) ^ set(stages)) & set(COMPARED))
        comparisons.append({"a": str(paths[0]), "b": str(path), "stages": result, "not_compared": lacking})
    return {"runs": [str(p) for p in paths], "comparisons": comparisons}


def main(argv: list[str]) -> None:
    from .report import compare_summary  # deferred: matplotlib and pandas, for the printout only

    parser = argparse.ArgumentParser(prog="dlma compare", description=f"{COMPARE_HELP}: each run after the first "
                                     "against the first, stage by stage (" + ", ".join(COMPARED) + ").")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run folder (runs/NAME) or one of its stage folders")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of each interval")
    parser.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the whole comparison as JSON")
    args = parser.parse_args(argv)
    if args.n_bootstrap < 1:
        raise DLMAError(f"--n-bootstrap must be >= 1, got {args.n_bootstrap}")
    if args.json and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        raise DLMAError(f"--json {args.json}: give a file in an existing folder")  # before minutes of work
    result = compare_runs(args.runs, args.n_bootstrap, args.seed)
    json_text(result)  # checked before anything is printed or written
    print(compare_summary(result))
    if args.json:
        write_json(args.json, result)
