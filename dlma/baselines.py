"""Stage 6: the methods the paper compares DLMA with, trained on the same generated pairs with the same QLoRA
budget (steps, learning rate, LoRA rank, seed: the run's TrainConfig), then judged on the same held-out
prompts and human pairs as stage 5. Only the rows and the loss differ between methods:

- `base`: no training (stage 5's base responses).
- `rlcd`: DPO on the prompt labels (o1, sampled under p+, preferred): gamma 0 (RLCD, Yang et al. 2023).
- `dlma`: the run's own DLMA (stage 4's adapter and stage 5's responses, not trained twice).
- `dlma_weighting`: gamma 0, each pair's DPO loss times clamp(R) (the released code's variant).
- `rlaif_dpo`: the same pairs relabelled by the base model's RLAIF judge (both orders; a pair on which it
  prefers o2 is swapped, a tie keeps the prompt label), then DPO: what asking the model buys instead of R.
- `context_distillation`: SFT of the plain query on o1 (TRL's SFTTrainer, completion tokens only).
- `rlhf`: DPO on as many human-labelled pairs (chosen over rejected), disjoint from every pair the trained
  models are evaluated on: the stand-in for RLHF on human data.
- ablations of DLMA: `dlma_gamma0.1`, `dlma_gamma0.5` (gamma 0 is `rlcd`), `dlma_clamp20` (R clamped to
  +-20), `dlma_study` (R under the candidate the prompt-pair study of stage 3b selected).

Per method: judge verdicts against base and against DLMA (`dlma.judge`: the RLAIF judge in both orders and
the length-neutral contrast judge, each win rate also length-controlled), implicit-reward accuracy on the
held-out human pairs (also length-balanced, and paired with DLMA's within the length strata, as stage 3), and
of its responses the refusal rate, the base's contrastive score, perplexity under the base, distinct-2 and
length: each with a 95% bootstrap interval over prompts (or pairs).
"""

from __future__ import annotations

import urllib.parse
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from .alignment import EvalConfig, answered, evaluated_pairs, respond, unused_queries
from .artifacts import PartialJSONL, check_out, read_json, read_jsonl, write_json, write_json_if_changed, write_jsonl
from .data import Example, Source, load_examples, read_pairs
from .errors import DLMAError
from .folder import StageFolder
from .judge import ContrastJudge, HttpJudge, RlaifJudge, length_controlled, position_consistency
from .layout import Run
from .logprobs import response_ids
from .models import ModelConfig
from .params import Out, Pairs, check_split, documented, param
from .preference import PrefAccConfig, compare, length_strata, policy_logprobs, same_responses, summarize, tie_tolerance
from .prompts import get_pair, pairs_from_definitions
from .score import self_reward_terms, unreadable
from .stats import bootstrap_ci, bootstrap_items_ci, outcomes
from .study import StudyConfig, candidate_scores, needs, terms_row

TRAINED = {  # TrainConfig fields each trained method sets; everything else is the shared budget
    "rlcd": {"gamma": 0.0, "weighting": False},
    "dlma_weighting": {"gamma": 0.0, "weighting": True},
    "rlaif_dpo": {"gamma": 0.0, "weighting": False},
    "context_distillation": {},  # SFT: no DPO field is read
    "rlhf": {"gamma": 0.0, "weighting": False},
    "dlma_gamma0.1": {"gamma": 0.1, "weighting": False},
    "dlma_gamma0.5": {"gamma": 0.5, "weighting": False},
    "dlma_clamp20": {"weighting": False, "margin_low": -20.0, "margin_high": 20.0},
    "dlma_study": {"weighting": False},
}
METHODS = ("base", "dlma", *TRAINED)


@documented
@dataclass
class BaselineConfig:
    """Which methods stage 6 trains, and an optional OpenAI-compatible judge beside the two local ones (its
    key is read from the environment variable `judge_key_env` at each request, never written)."""

    baseline_methods: str = param(
        ",".join(TRAINED), "comma-separated methods trained on stage 4's pairs and budget, then judged against base "
                           "and DLMA: rlcd, dlma_weighting, rlaif_dpo, context_distillation, rlhf, and the ablations "
                           "dlma_gamma0.1, dlma_gamma0.5, dlma_clamp20, dlma_study")
    judge_url: str = param("", "an OpenAI-compatible endpoint (its base URL, before /chat/completions) judging beside "
                               "the local judges (none if empty)", added_in="2026-11-28")
    judge_model: str = param("gpt-4o", "the model name sent to judge_url", added_in="2026-11-28")
    judge_key_env: str = param("OPENAI_API_KEY", "the environment variable holding judge_url's API key (read at "
                                                 "each request, never written)", added_in="2026-11-28")
    rlhf_data: str = param("", "the human pairs the rlhf baseline trains on (empty: pref_data at pref_revision)",
                           path=True, added_in="2026-11-29")
    rlhf_split: str = param("train", "the split of the rlhf baseline's pairs (the paper's RLHF learns from the "
                                     "train split); from the source stage 5 evaluates on, its evaluated pairs are "
                                     "left out", added_in="2026-11-29")
    rlhf_revision: str = param("", "the hub revision of rlhf_data (empty: main; with rlhf_data empty, "
                                   "pref_revision)", added_in="2026-11-29")

    def __post_init__(self):
        method_list(self.baseline_methods)
        check_split(self.rlhf_split, "rlhf_split")
        if self.rlhf_revision and not self.rlhf_data:
            raise DLMAError(f"BaselineConfig: rlhf_revision={self.rlhf_revision!r} without rlhf_data: name the "
                            "dataset too (with rlhf_data empty, the pairs are pref_data's at pref_revision)")
        if self.judge_url and not self.judge_url.startswith(("http://", "https://")):
            raise DLMAError(f"BaselineConfig: judge_url={self.judge_url!r}: expected an http:// or https:// URL "
                            "(the endpoint's base, before /chat/completions)")
        if self.judge_url and "@" in urllib.parse.urlsplit(self.judge_url).netloc:
            # the URL is recorded in params.json and shown in messages: a credential in it would be written out
            raise DLMAError(f"BaselineConfig: judge_url: holds credentials (user:password@host), which would be "
                            f"recorded in params.json: give the URL without them and the key in the environment "
                            f"variable judge_key_env ({self.judge_key_env})")

    def rlhf_source(self, cfg: EvalConfig) -> Source:
        """The rlhf baseline's human pairs: rlhf_data, else stage 5's pref_data at its revision, at rlhf_split."""
        if self.rlhf_data:
            return Source(self.rlhf_data, self.rlhf_split, self.rlhf_revision, "rlhf")
        return Source(str(cfg.pref_data), self.rlhf_split, cfg.pref_revision, "rlhf")

    def judges(self) -> list[str]:
        return [*JUDGES, "http"] if self.judge_url else list(JUDGES)
JUDGES = ("rlaif", "contrast")  # the local judges; "http" is added when a judge_url is given
OPPONENTS = ("base", "dlma")


def method_list(text: str) -> list[str]:
    """The methods of `baseline_methods` in the order given, with base and dlma (always compared) first."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise DLMAError(f"baseline_methods: unknown method(s) {', '.join(bad)} (known: {', '.join(METHODS)})")
    return list(dict.fromkeys(["base", "dlma", *names]))


def method_config(cfg, method: str):
    """The shared TrainConfig with the method's own fields set."""
    if method not in TRAINED:
        raise DLMAError(f"method '{method}' is not trained here (trained: {', '.join(TRAINED)})")
    return replace(cfg, **TRAINED[method])


def relabel(rows: list[dict], verdicts: list[str]) -> tuple[list[dict], int]:
    """(rows, number swapped): o1 and o2 swapped where the judge's verdict on (o1 as A, o2 as B) is "lose",
    with R negated to match (R is antisymmetric in o1 and o2). "win" and "tie" keep the prompt label."""
    if len(rows) != len(verdicts):
        raise DLMAError(f"relabel: {len(rows)} pairs but {len(verdicts)} verdicts")
    out, swapped = [], 0
    for row, verdict in zip(rows, verdicts, strict=True):
        if verdict == "lose":
            row = {**row, "o1": row["o2"], "o2": row["o1"], "self_reward": -row.get("self_reward", 0.0)}
            swapped += 1
        out.append(row)
    return out, swapped


def human_rows(examples: list[Example], evaluated_ids) -> list[dict]:
    """Training rows from human-labelled pairs (chosen as o1), refusing any pair the evaluation also uses
    (`evaluated_ids`: those of the evaluation's pairs when they come from the same source, else none)."""
    overlap = sorted({ex.id for ex in examples} & set(map(str, evaluated_ids)))
    if overlap:
        raise DLMAError(f"rlhf: {len(overlap)} human pair(s) are also evaluation pairs (the first: {overlap[0]}); "
                        "train on pairs disjoint from the evaluation")
    return [{"id": ex.id, "turns": ex.turns, "o1": ex.chosen, "o2": ex.rejected, "self_reward": 0.0}
            for ex in examples]


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct-n: unique word n-grams over all n-grams of the responses (Li et al. 2016); None (undefined, as
    `distinct_2` says) when no response has n words."""
    grams = [tuple(words[k : k + n]) for t in texts for words in [t.split()] for k in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def _interval(values, statistic=np.mean, n_boot: int = 1000, seed: int = 0, undefined: str = "no item") -> dict:
    """The statistic with its bootstrap interval; with no item, null with the reason (JSON has no NaN)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"value": None, "ci95": None, "n": 0, "undefined": undefined}
    return {"value": float(statistic(values, axis=-1)), "ci95": list(bootstrap_ci(values, n_boot, seed, statistic)),
            "n": int(len(values))}


def verdict_summary(rows: list[dict], len_a: list[int], len_b: list[int], n_boot: int = 1000, seed: int = 0) -> dict:
    """Win / tie / lose of A against B with intervals: the win rate (a tie counts half) and the
    length-controlled win rate (`judge.length_controlled`), both bootstrapped over items, the exact sign
    test of wins against losses, and the position consistency of a two-order judge."""
    verdicts = [r["verdict"] for r in rows]
    outcome = np.array([{"win": 1.0, "tie": 0.5, "lose": 0.0}[v] for v in verdicts])
    codes = np.array(["wtl".index(v[0]) for v in verdicts])
    len_a, len_b = np.asarray(len_a, dtype=float), np.asarray(len_b, dtype=float)

    def lc(c, a, b):
        return length_controlled([("win", "tie", "lose")[k] for k in c], a, b)["lc_win_rate"]

    out = {v: int(sum(x == v for x in verdicts)) for v in ("win", "tie", "lose")}
    # the paired test on the same prompts: wins against losses, ties left out (an exact sign test)
    out["sign_test_p"] = float(binomtest(out["win"], out["win"] + out["lose"]).pvalue) if out["win"] + out["lose"] \
        else 1.0
    out["win_rate"] = _interval(outcome, np.mean, n_boot, seed)
    out["lc_win_rate"] = {"value": lc(codes, len_a, len_b),
                          "ci95": list(bootstrap_items_ci((codes, len_a, len_b), lc, n_boot, seed)), "n": len(rows)}
    if rows and "a_first" in rows[0]:
        out["position_consistency"] = position_consistency(rows)
    return out


def response_metrics(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Of one method's responses: refusal rate, mean contrastive score, median perplexity, distinct-2 and
    mean length in tokens, each with a bootstrap interval over prompts. Distinct-2 is each response's own
    (its unique bigrams over its bigrams: 1 for no repetition; a one-word answer has none and is left out),
    averaged: the corpus-level ratio (also given) has no honest bootstrap, since a resample repeats
    responses and so their bigrams."""
    return {
        "refusal_rate": _interval([r["refusal"] for r in rows], np.mean, n_boot, seed),
        "contrastive_score": _interval([r["contrastive_score"] for r in rows], np.mean, n_boot, seed),
        "perplexity_median": _interval([r["perplexity"] for r in rows], np.median, n_boot, seed),
        "distinct_2": _interval([distinct_n([r["response"]]) for r in rows if len(r["response"].split()) > 1],
                                np.mean, n_boot, seed, "no answer has two words"),
        "corpus_distinct_2": distinct_n([r["response"] for r in rows]),
        "length_tokens": _interval([r["n_tokens"] for r in rows], np.mean, n_boot, seed),
    }


def summarize_baselines(methods: list[str], responses: list[dict], human: list[dict], judgements: list[dict],
                        training: dict, n_boot: int = 1000, seed: int = 0, strata: dict | None = None,
                        same: dict | None = None, beta: float = PrefAccConfig.beta) -> dict:
    """baselines.json: per method, its training, judge verdicts against each opponent, implicit-reward
    accuracy (and its paired difference from DLMA's on the same pairs), and its responses' metrics. `strata`
    and `same`, by human pair id: its length stratum (the accuracies are then also length-balanced) and
    whether its two responses are one text (a tie); `beta`, the implicit reward's (its tie tolerance)."""
    by_model = {m: {r["id"]: r for r in responses if r["model"] == m} for m in methods}
    implicit = {m: {r["id"]: r["implicit"] for r in human if r["model"] == m} for m in methods}
    ids = list(by_model["base"])
    out = {}
    for m in methods:
        entry: dict = {"training": training.get(m), **response_metrics([by_model[m][i] for i in ids], n_boot, seed)}
        for opp in OPPONENTS:
            if opp == m:
                continue
            for judge in dict.fromkeys(r["judge"] for r in judgements):
                rows = {r["id"]: r for r in judgements if (r["judge"], r["model"], r["opponent"]) == (judge, m, opp)}
                if rows:
                    entry[f"{judge}_vs_{opp}"] = verdict_summary(
                        [rows[i] for i in ids], [by_model[m][i]["n_tokens"] for i in ids],
                        [by_model[opp][i]["n_tokens"] for i in ids], n_boot, seed)
        if implicit.get(m):
            pairs = list(implicit["dlma"])
            by_pair = [strata[i] for i in pairs] if strata else None
            tied = [same[i] for i in pairs] if same else None
            tolerance = tie_tolerance("implicit", beta)
            mine = np.array([implicit[m][i] for i in pairs])
            entry["implicit_accuracy"] = summarize(mine, n_boot, seed, by_pair, tied, tolerance)
            if m != "dlma":
                theirs = np.array([implicit["dlma"][i] for i in pairs])
                entry["implicit_vs_dlma"] = compare(outcomes(mine, tied, tolerance)[0],
                                                    outcomes(theirs, tied, tolerance)[0], n_boot, seed, by_pair)
        out[m] = entry
    return out


# ----------------------------------------------------------------------------------------------------------
# The stage


def study_rewards(model, tokenizer, rows: list[dict], study_dir: Path, score_batch_size: int, max_length: int,
                  max_tokens: int = 0) -> tuple[list[dict], str]:
    """The rows with R replaced by the candidate that stage 3b selected (read from its study.json and params),
    computed by the base model (adapter off) on the generated pairs within `max_length` tokens (the run's
    `pref_max_length`); and the candidate's name. A row that cannot be read so is refused before any is read."""
    for name in ("study.json", "params.json"):
        if not (study_dir / name).is_file():
            raise DLMAError(f"{study_dir / name}: no such file (dlma_study needs stage 3b's prompt-pair study)")
    selected = read_json(study_dir / "study.json")["selected"]
    study_params = read_json(study_dir / "params.json")
    prompt_pairs = pairs_from_definitions(study_params.get("pair_definitions", {}))  # the study's own, as it read them
    variants = StudyConfig(study_variants=study_params["study_variants"]).variant_list()
    ids = [str(r["id"]) for r in rows]
    items = [(r["turns"], r["o1"], r["o2"]) for r in rows]
    wanted = needs(selected, [v for v, _, _ in variants])
    used = [(v, pair, rendering) for v, pair, rendering in variants if v in wanted]
    used = [(v, get_pair(pair, prompt_pairs), rendering) for v, pair, rendering in used]
    for v, pair, rendering in used:
        for i, why in zip(ids, unreadable(items, tokenizer, max_length, pair, rendering), strict=True):
            if why:
                raise DLMAError(f"{study_dir.parent / '04_train_dlma' / 'train.jsonl'}: pair {i!r} under {v}: {why} "
                                f"(dlma_study reads the training pairs at pref_max_length)")
    scored = {}
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with ctx:
        for v, pair, rendering in used:
            terms = self_reward_terms(model, tokenizer, items, pair, rendering, score_batch_size,
                                      max_length=max_length, desc=v,
                                      share_prompts=True, max_tokens=max_tokens)
            for i, r, t in zip(ids, rows, terms, strict=True):
                n_o1, n_o2 = (len(response_ids(r[k], tokenizer)) for k in ("o1", "o2"))
                scored[(v, i)] = terms_row(t, n_o1, n_o2)
    reward = candidate_scores(scored, [v for v, _, _ in variants if (v, ids[0]) in scored], ids)[selected]
    return [{**r, "self_reward": float(x)} for r, x in zip(rows, reward, strict=True)], selected


@dataclass
class Setting:
    """What stage 6 reads from the run folder: stage 4's pairs and budget, stage 5's evaluation."""

    run_dir: Path
    out: Path
    methods: list[str]
    train_cfg: object  # stage 4's TrainConfig
    dlma_summary: dict
    cfg: EvalConfig  # stage 5's
    prompts: list[Example]
    pairs: dict[str, Example]
    stage5_rows: list[dict]
    stage5_human: list[dict]
    train_rows: list[dict]
    rlhf_examples: list[Example]
    inputs: dict
    rlhf_from_evaluated: bool = True  # the rlhf pairs come from the source of the evaluated pairs


def read_setting(run_dir: Path, study: BaselineConfig, tokenizer) -> Setting:
    """Stage 6's inputs, checked: the shared budget is stage 4's, the evaluation stage 5's (read from what they
    wrote, not given twice). `tokenizer()` gives the model's tokenizer, to leave out what stage 5 left out."""
    from .train import TrainConfig  # deferred: train loads trl, peft and datasets (seconds), for training only

    run = Run(run_dir)
    out, stage5 = run.baselines.folder, run.evaluate
    check_out(out)
    methods = method_list(study.baseline_methods)
    inputs = {"train": run.train.train, "adapter": run.train.weights, "responses": stage5.responses,
              "human_pairs": stage5.human_pairs}
    for path in [*inputs.values(), run.generate.pairs, run.train.summary, stage5.params]:
        if not path.is_file():
            raise DLMAError(f"{path}: no such file (run stages 1 to 5 first)")
    dlma_summary = read_json(run.train.summary)
    stage5_params = stage5.settings("stage 6")
    cfg = EvalConfig(**{k: stage5_params[k] for k in EvalConfig.__dataclass_fields__ if k in stage5_params})
    generated_from, queries = cfg.query_sources(run_dir)
    prompts = unused_queries(queries, [r["id"] for r in read_jsonl(run.generate.pairs)], cfg.eval_n_prompts,
                             generated_from)
    stage5_rows, stage5_human = read_jsonl(stage5.responses), read_jsonl(stage5.human_pairs)
    used = {r["id"] for r in read_jsonl(run.pref.predictions)}
    pairs = {e.id: e for e in evaluated_pairs(cfg, used, tokenizer(), [])}  # stage 5's: it noted those left out
    if [e.id for e in prompts] != [r["id"] for r in stage5_rows if r["model"] == "base"] or \
            list(pairs) != [r["id"] for r in stage5_human]:
        raise DLMAError(f"{stage5.folder}: its prompts or human pairs are not the ones these parameters select; "
                        "rerun stage 5")
    train_rows = read_pairs(run.train.train, need_self_reward=True)
    rlhf_examples, rlhf = [], study.rlhf_source(cfg)
    same = rlhf.key() == cfg.source().key()  # then the evaluated pairs are left out of the pool
    if "rlhf" in methods:  # as many human pairs as generated ones, none of them evaluated
        pool = load_examples(rlhf, require="labelled", label_field=cfg.label_field, on_invalid="skip",
                             exclude=set(pairs) if same else set())
        if len(pool) < len(train_rows):
            left = f" left after the {len(pairs)} evaluated ones" if same else ""
            raise DLMAError(f"{rlhf.path} [{rlhf.split}]: {len(pool)} human pairs{left}; rlhf needs {len(train_rows)}")
        rlhf_examples = pool[: len(train_rows)]
        inputs["rlhf_data"] = rlhf
    return Setting(run_dir, out, methods, TrainConfig(**dlma_summary["config"]), dlma_summary, cfg, prompts, pairs,
                   stage5_rows, stage5_human, train_rows, rlhf_examples, inputs, same)


def begin(model_cfg: ModelConfig, study: BaselineConfig, run) -> tuple[Setting, StageFolder]:
    folder = StageFolder(Run(run.run_dir).baselines.folder, "baselines", model_cfg)
    s = read_setting(Path(run.run_dir), study, folder.tokenizer)
    # the base with stage 4's adapter (the `dlma` method), loaded once, when first needed
    folder.model_cfg = ModelConfig(**{**model_cfg.to_dict(), "adapter": str(Run(s.run_dir).train.adapter),
                                      "load_in_4bit": s.train_cfg.qlora})
    params = {**asdict(study), "train": asdict(s.train_cfg), "evaluate": asdict(s.cfg)}
    folder.begin(params, s.inputs, run.force, launched=True, outputs=("baselines.json",))
    return s, folder


def train_methods(s: Setting, folder: StageFolder, model_cfg: ModelConfig) -> dict:
    """Phase 1: each method's training rows and adapter (each adapter folder resumes like stage 4's). Under a
    launch, the main process writes the rows and every process trains (`dlma baselines-train`)."""
    from .train import run_train  # deferred, as in read_setting

    training = {"dlma": {"adapter": str(Run(s.run_dir).train.adapter),
                         **{k: s.dlma_summary[k] for k in ("n_pairs", "n_steps", "final_loss", "wall_time_s")}}}
    for m in s.methods:
        if m in ("base", "dlma"):
            continue
        method_dir = s.out / m
        if folder.at.main and not (method_dir / "train.jsonl").exists():  # the others wait, then train beside it
            rows, note = s.train_rows, {}
            if m == "rlaif_dpo":
                model, tok = folder.model()
                with model.disable_adapter():
                    verdicts = RlaifJudge(model, tok, max_length=s.cfg.pref_max_length,
                                          batch_size=s.cfg.score_batch_size).judge(
                        [(r["turns"], r["o1"], r["o2"]) for r in s.train_rows])
                rows, swapped = relabel(s.train_rows, [v["verdict"] for v in verdicts])
                note = {"swapped": swapped, "ties": sum(v["verdict"] == "tie" for v in verdicts)}
            elif m == "rlhf":
                rows = human_rows(s.rlhf_examples, s.pairs if s.rlhf_from_evaluated else ())
                rlhf = s.inputs["rlhf_data"]
                note = {"human_pair_ids": [e.id for e in s.rlhf_examples], "source": rlhf.path, "split": rlhf.split,
                        "revision": rlhf.revision}
            elif m == "dlma_study":
                rows, selected = study_rewards(*folder.model(), s.train_rows, Run(s.run_dir).study.folder,
                                               s.cfg.score_batch_size, s.cfg.pref_max_length, s.cfg.max_batch_tokens)
                note = {"study_selected": selected}
            write_json(method_dir / "rows_note.json", note)
            write_jsonl(method_dir / "train.jsonl", rows)
        folder.at.barrier()
        summary = run_train(model_cfg, Pairs(str(method_dir / "train.jsonl")), method_config(s.train_cfg, m),
                            Out(str(method_dir / "adapter")), sft=m == "context_distillation")
        note = read_json(method_dir / "rows_note.json")
        training[m] = {**note, "n_pairs": summary["n_pairs"], "n_steps": summary["n_steps"],
                       "final_loss": summary["final_loss"], "wall_time_s": summary["wall_time_s"]}
    return training


def answer(s: Setting, folder: StageFolder) -> tuple[PartialJSONL, PartialJSONL]:
    """Phase 2: each method's responses to stage 5's prompts, judged by the base; its implicit reward on the
    human pairs (base and DLMA: stage 5's own rows)."""
    responses = PartialJSONL(s.out / "responses.jsonl", key=("model", "id"))
    human = PartialJSONL(s.out / "human_pairs.jsonl", key=("model", "id"))
    for name in ("base", "dlma"):
        if not any(r["model"] == name for r in responses.rows):
            responses.append([r for r in s.stage5_rows if r["model"] == name])
    if not any(r["model"] == "dlma" for r in human.rows):
        human.append([{"model": "dlma", "id": r["id"], "implicit": r["implicit"], "loglik": r["loglik_dlma"]}
                      for r in s.stage5_human])
    gen_cfg, pref_cfg = s.cfg.generate_config(), s.cfg.pref_config()
    loglik_base = {r["id"]: r["loglik_base"] for r in s.stage5_human}
    for m in s.methods:
        if m in ("base", "dlma") or all((m, e.id) in responses.done for e in s.prompts) and \
                all((m, i) in human.done for i in s.pairs):
            continue
        model, tok = folder.model()
        name = m.replace(".", "_")  # a peft adapter name is a module name
        if name not in model.peft_config:
            model.load_adapter(str(s.out / m / "adapter"), adapter_name=name)
        model.set_adapter(name)
        if not all((m, e.id) in responses.done for e in s.prompts):
            got = respond(model, tok, s.prompts, gen_cfg, adapter=True)
            responses.append(answered(model, tok, s.prompts, got, m, gen_cfg, pref_cfg))
        if not all((m, i) in human.done for i in s.pairs):
            scores = policy_logprobs(model, tok, list(s.pairs.values()), pref_cfg, m)
            human.append([{"model": m, "id": i, "implicit": pref_cfg.beta * ((a - b) - loglik_base[i]),
                           "loglik": float(a - b)} for i, (a, b) in zip(s.pairs, scores, strict=True)])
        model.set_adapter("default")
    return responses, human


def judge_methods(s: Setting, folder: StageFolder, study: BaselineConfig, responses: PartialJSONL) -> PartialJSONL:
    """Phase 3: the verdicts of every judge (the local ones: the base model, adapter off) on each method against
    base and DLMA. The HTTP judge's answers are cached in http_judge_cache.jsonl: a rerun asks nothing again."""
    judgements = PartialJSONL(s.out / "judgements.jsonl", key=("judge", "model", "opponent", "id"))
    text = {(r["model"], r["id"]): r["response"] for r in responses.rows}
    http = HttpJudge(study.judge_url, study.judge_model, s.out / "http_judge_cache.jsonl", study.judge_key_env) \
        if study.judge_url else None  # its cache read once
    for m in s.methods:
        for opp in OPPONENTS:
            if m == opp or m == "base":
                continue
            for judge in study.judges():
                if all((judge, m, opp, e.id) in judgements.done for e in s.prompts):
                    continue
                items = [(ex.turns, text[(m, ex.id)], text[(opp, ex.id)]) for ex in s.prompts]
                if judge == "http":
                    got = http.judge(items)
                else:
                    model, tok = folder.model()
                    j = (RlaifJudge if judge == "rlaif" else ContrastJudge)(
                        model, tok, max_length=s.cfg.pref_max_length, batch_size=s.cfg.score_batch_size)
                    with model.disable_adapter():
                        got = j.judge(items)
                judgements.append([{"judge": judge, "model": m, "opponent": opp, "id": ex.id, **g}
                                   for ex, g in zip(s.prompts, got, strict=True)])
    return judgements


def train_baselines(model_cfg: ModelConfig, study: BaselineConfig, run) -> dict:
    """`dlma baselines-train`: stage 6's phase 1 alone, the part that shares its work among the processes of a
    launch, so that `dlma run --launcher` trains every method on all GPUs before the notebook, on one, answers
    and judges."""
    s, folder = begin(model_cfg, study, run)
    training = train_methods(s, folder, model_cfg)
    folder.release()
    return training


def run_baselines(model_cfg: ModelConfig, study: BaselineConfig, run) -> dict:
    """Stage 6 (`dlma baselines`) in the run folder `run.run_dir`: train each method on stage 4's training pairs
    with stage 4's budget (06_baselines/<method>/train.jsonl and adapter/), answer stage 5's held-out prompts
    with it and judge the answers against base and DLMA; implicit-reward accuracy on stage 5's human pairs,
    with stage 5's settings. Writes responses.jsonl, human_pairs.jsonl, judgements.jsonl (each resumed as it
    goes), baselines.json and manifest.json."""
    s, folder = begin(model_cfg, study, run)
    training = train_methods(s, folder, model_cfg)
    responses, human = answer(s, folder)
    judgements = judge_methods(s, folder, study, responses)
    for store in (responses, human, judgements):
        store.finish()
    pref_cfg = s.cfg.pref_config()
    pairs = list(s.pairs.values())
    result = summarize_baselines(s.methods, responses.rows, human.rows, judgements.rows, training,
                                 pref_cfg.n_bootstrap, pref_cfg.seed,
                                 dict(zip(s.pairs, length_strata(pairs, folder.tokenizer()), strict=True)),
                                 dict(zip(s.pairs, same_responses(pairs), strict=True)), pref_cfg.beta)
    changed = write_json_if_changed(s.out / "baselines.json", result)  # a rerun over the results keeps the manifest
    folder.finish(changed, methods=s.methods, n_prompts=len(s.prompts), n_pairs=len(s.pairs), training=training)
    return result


def training_summary(training: dict, run) -> str:
    return "\n".join(f"{m}: {t['n_steps']} steps, final loss {t['final_loss']}" for m, t in training.items())


def summary(result: dict, run) -> str:
    """What `dlma baselines` prints: each method's win rate against the base by each judge."""
    from .report import baselines_frame  # deferred: report loads matplotlib and pandas, for this printout only

    return baselines_frame(result).to_string()
