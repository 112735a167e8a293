"""The prompt-pair study: which way of reading the self-rewarding score judges human preferences best, chosen
on one slice of the labelled pairs and confirmed on the others (the paper uses one pair; RLCD used 16).

1. The valid labelled pairs are split once, by a seed: a selection slice of `study_select` pairs, and the rest.
2. On the slice every candidate is scored: each variant's R (a prompt pair, `pair@chat` for the chat
   rendering), its length-normalised R (each contrast divided by its response's token count, `pair/norm`),
   and `ensemble`, the mean R over the variants. The most accurate candidate is selected; a tie goes to the
   one listed first (the paper's pair is first).
3. On the rest, which the selection never saw, the selected candidate against the paper's pair: the
   difference in accuracy with a paired bootstrap interval and the exact McNemar p-value.

Both steps also report each accuracy length-balanced (`preference.summarize`) and the paired comparison within
the length strata (`preference.compare`), the lengths being the stored token counts of each pair's responses;
the selection itself is by raw accuracy.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .artifacts import PartialJSONL, read_jsonl, with_added_later, write_json_if_changed
from .data import check_limit, input_record, load_examples
from .errors import DLMAError, check_fields
from .folder import StageFolder
from .layout import Run
from .logprobs import response_ids
from .params import documented, param
from .preference import PairScoring, compare, same_responses, summarize
from .prompts import PAIRS, RENDERINGS, PromptPair, get_pair, with_custom_pairs
from .score import SCORE_KEYS, self_reward_terms, unreadable
from .stats import TIE_TOLERANCE, length_stratum, outcomes

ENSEMBLE, NORM = "ensemble", "/norm"


@documented
@dataclass
class StudyConfig(PairScoring):
    """The variants and the selection slice, read with stage 3's settings (the variants bring their own pair and
    rendering)."""

    study_variants: str = param(
        "harmless,harmless@chat,helpful", "comma-separated prompt pairs to compare (pair@chat for the chat "
                                          "rendering), the paper's pair first; each also length-normalised, and "
                                          "their mean R as an ensemble")
    study_select: int = param(400, "labelled pairs drawn (by the seed) to select the best variant on; the rest "
                                   "confirm it")

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, [(self.study_select >= 1, ("study_select",), "must be >= 1")])
        self.variant_list()

    def variant_list(self) -> list[tuple[str, str, str]]:
        """[(variant, pair, rendering)] in the order given; the first is the reference (the paper's pair)."""
        out = []
        for v in (s.strip() for s in self.study_variants.split(",")):
            if not v:
                continue
            pair, _, rendering = v.partition("@")
            rendering = rendering or "affix"
            if rendering not in RENDERINGS:
                raise DLMAError(f"StudyConfig: study_variants: '{v}': unknown rendering '{rendering}' "
                                f"(valid: {', '.join(RENDERINGS)})")
            out.append((v, pair, rendering))
        if len(out) < 2 or len({v for v, _, _ in out}) != len(out):
            raise DLMAError(f"StudyConfig: study_variants={self.study_variants!r}: needs two or more distinct "
                            "variants, the reference first")
        return out

    def check_pairs(self, prompt_pairs) -> list[tuple[str, str, str]]:
        """`variant_list()`, each variant's pair found among `prompt_pairs` (or one error naming it)."""
        variants = self.variant_list()
        for v, pair, _ in variants:
            get_pair(pair, prompt_pairs, f"StudyConfig: study_variants: '{v}'")
        return variants


def split_ids(ids: list[str], n_select: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(selection slice, rest), each in the order of `ids`: a seeded draw of `n_select` of them."""
    if n_select >= len(ids):
        raise DLMAError(f"study_select={n_select}: leaves no pair to confirm on (there are {len(ids)})")
    chosen = set(random.Random(seed).sample(ids, n_select))
    return [i for i in ids if i in chosen], [i for i in ids if i not in chosen]


def normalised_reward(row: dict) -> float:
    """R with each contrast divided by its response's token count: C(o1)/|o1| - C(o2)/|o2|."""
    c1 = (row["s_o1_pos"] - row["s_o1_neg"]) / max(row["n_o1"], 1)
    c2 = (row["s_o2_pos"] - row["s_o2_neg"]) / max(row["n_o2"], 1)
    return c1 - c2


def candidate_scores(rows: dict[tuple[str, str], dict], variants: list[str], ids: list[str]) -> dict[str, np.ndarray]:
    """{candidate: scores over `ids`} from the per-(variant, id) rows: each variant's R, its normalised R,
    and the ensemble (mean R over the variants)."""
    out = {}
    for v in variants:
        out[v] = np.array([rows[(v, i)]["self_reward"] for i in ids], dtype=float)
    for v in variants:
        out[v + NORM] = np.array([normalised_reward(rows[(v, i)]) for i in ids], dtype=float)
    out[ENSEMBLE] = np.mean([out[v] for v in variants], axis=0)
    return out


def needs(candidate: str, variants: list[str]) -> list[str]:
    """The scored variants a candidate is computed from."""
    return list(variants) if candidate == ENSEMBLE else [candidate.removesuffix(NORM)]


def select(accuracy: dict[str, dict]) -> str:
    """The most accurate candidate; a tie goes to the one listed first."""
    best = max(m["accuracy"] for m in accuracy.values())
    return next(name for name, m in accuracy.items() if m["accuracy"] == best)


def stored_strata(rows: dict[tuple[str, str], dict], variant: str, ids: list[str]) -> list[str]:
    """Each pair's length stratum from a variant's stored token counts (o1 is the chosen response)."""
    return [length_stratum(rows[(variant, i)]["n_o1"], rows[(variant, i)]["n_o2"]) for i in ids]


def candidate_tolerance(candidate: str, rows: dict[tuple[str, str], dict], ids: list[str]) -> float | np.ndarray:
    """Within what of 0 a candidate's score is a tie: TIE_TOLERANCE for R and the ensemble; for a length-normalised
    R, each pair's TIE_TOLERANCE * (1/|o1| + 1/|o2|) / 2, the rounding of R shared between the two contrasts and
    divided by their lengths (for one text twice, R's tolerance over its length)."""
    if not candidate.endswith(NORM):
        return TIE_TOLERANCE
    v = candidate.removesuffix(NORM)
    return np.array([TIE_TOLERANCE * (1 / max(rows[(v, i)]["n_o1"], 1) + 1 / max(rows[(v, i)]["n_o2"], 1)) / 2
                     for i in ids])


def terms_row(terms: dict, n_o1: int, n_o2: int) -> dict:
    """A stored row: the four S terms, R and the two responses' token counts."""
    return {**{k: terms[k] for k in SCORE_KEYS}, "self_reward": terms["self_reward"], "n_o1": n_o1, "n_o2": n_o2}


def stage3_rows(run_dir: Path, data, study, variant: tuple[str, str, str]) -> dict:
    """{id: dlma row} of stage 3 when it scored `variant` with the very settings the study would use (the same
    numbers, so not computed twice); else {}."""
    stage3 = Run(run_dir).pref
    if not stage3.predictions.is_file():
        return {}
    before = stage3.settings()
    same = {"pref_data": str(data.pref_data), "pref_pair": variant[1], "rendering": variant[2],
            "label_field": data.label_field, "pref_max_length": study.pref_max_length,
            "share_prompts": study.share_prompts, "pref_split": data.pref_split, "pref_revision": data.pref_revision}
    before = with_added_later(before, same)  # a folder made before pref_split and pref_revision were recorded
    if any(before.get(k) != v for k, v in same.items()) or \
            before["inputs"]["pref_data"] != input_record(data.source()):
        return {}
    return {r["id"]: r for r in read_jsonl(stage3.predictions) if r["scorer"] == "dlma"}


def score_variant(store, folder, by_id: dict, reuse: dict, study: StudyConfig, variant: tuple[str, str, str],
                  ids: list[str], prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> None:
    """One variant's S terms on the pairs `ids` it has not scored yet, appended to `store` (scores.jsonl); stage
    3's rows of the same reading (`reuse`, by id) are taken rather than read again."""
    v, name, rendering = variant
    pair = get_pair(name, prompt_pairs)
    todo = [i for i in ids if (v, i) not in store.done]
    if not todo:
        return
    m, tok = folder.model()
    fresh = [i for i in todo if i not in reuse]
    items = [(by_id[i].turns, by_id[i].chosen, by_id[i].rejected) for i in fresh]
    # a pair this variant cannot read within pref_max_length is stored as left out, and leaves every candidate
    why = dict(zip(fresh, unreadable(items, tok, study.pref_max_length, pair, rendering,
                                     ("chosen", "rejected")), strict=True))
    ok = [k for k, i in enumerate(fresh) if not why[i]]
    terms = dict(zip([fresh[k] for k in ok], self_reward_terms(
        m, tok, [items[k] for k in ok], pair, rendering, study.score_batch_size,
        max_length=study.pref_max_length, desc=v, share_prompts=study.share_prompts,
        max_tokens=study.max_batch_tokens), strict=True)) if ok else {}
    store.append([{"variant": v, "id": i, "left_out": f"{by_id[i].source}: {why[i]}"} if why.get(i) else
                  {"variant": v, "id": i, **terms_row(terms.get(i) or reuse[i],
                                                     len(response_ids(by_id[i].chosen, tok)),
                                                     len(response_ids(by_id[i].rejected, tok)))} for i in todo])


def kept(ids: list[str], left_out: dict[str, str], pref_data) -> list[str]:
    """The ids no variant left out; none is one error."""
    out = [i for i in ids if i not in left_out]
    if not out:
        raise DLMAError(f"{pref_data}: no pair left to compare on: {len(ids)} left out, the first: "
                        f"{left_out[ids[0]]}")
    return out


def facts(rows: dict, by_id: dict, reference: str, candidate: str, ids: list[str]) -> dict:
    """How a candidate's scores are read: the length strata (from the reference's rows, scored on every pair),
    the pairs of one text, the candidate's tie tolerance."""
    return {"strata": stored_strata(rows, reference, ids), "same": same_responses([by_id[i] for i in ids]),
            "tolerance": candidate_tolerance(candidate, rows, ids)}


def run_pair_study(model_cfg, data, study: StudyConfig, run, model=None,
                   prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> dict:
    """Stage 3b (`dlma pair-study`) in `run.run_dir` on the labelled pairs of `data` (params.PrefData), the variants'
    pairs among `prompt_pairs`: `03b_pair_study/`, resumed variant by variant, reusing stage 3's scores."""
    run_dir = Path(run.run_dir)
    folder = StageFolder(Run(run_dir).study.folder, "pair-study", model_cfg, model)
    check_limit(data.pref_limit, "pref_limit")
    variants = study.check_pairs(prompt_pairs)
    skipped: list[str] = []
    examples = load_examples(data.source(), limit=data.pref_limit, require="labelled", label_field=data.label_field,
                             on_invalid=data.on_invalid, skipped=skipped, pairs=prompt_pairs)
    by_id = {e.id: e for e in examples}
    select_ids, rest_ids = split_ids(list(by_id), study.study_select, study.seed)
    params = {**asdict(data), "pref_data": str(data.pref_data), **asdict(study),
              **with_custom_pairs([p for _, p, _ in variants], prompt_pairs)}
    folder.begin(params, {"pref_data": data.source()}, run.force)
    store = PartialJSONL(folder.path / "scores.jsonl", key=("variant", "id"))
    if not store.finished:
        for variant in variants:  # step 2: every variant on the selection slice
            score_variant(store, folder, by_id, stage3_rows(run_dir, data, study, variant), study, variant,
                          select_ids, prompt_pairs)
    left_out = {r["id"]: r["left_out"] for r in store.rows if "left_out" in r}
    rows = {(r["variant"], r["id"]): r for r in store.rows}
    names = [v for v, _, _ in variants]
    select_ids = kept(select_ids, left_out, data.pref_data)
    on_slice = candidate_scores(rows, names, select_ids)
    reference = names[0]  # scored on every pair: its rows give each pair's token counts
    selection = {c: summarize(s, study.n_bootstrap, study.seed, **facts(rows, by_id, reference, c, select_ids))
                 for c, s in on_slice.items()}
    chosen = select(selection)
    if not store.finished:  # step 3: the selected candidate and the reference on the rest
        for variant in variants:
            if variant[0] in needs(chosen, names) or variant[0] == names[0]:
                score_variant(store, folder, by_id, stage3_rows(run_dir, data, study, variant), study, variant,
                              rest_ids, prompt_pairs)
        store.finish()
    left_out = {r["id"]: r["left_out"] for r in store.rows if "left_out" in r}
    folder.note_dropped(list(left_out.values()), f"over pref_max_length={study.pref_max_length}, with no room for "
                        "a variant's instruction")
    rows = {(r["variant"], r["id"]): r for r in store.rows}
    rest_ids = kept(rest_ids, left_out, data.pref_data)
    scored_rest = [v for v in names if all((v, i) in rows for i in rest_ids)]
    on_rest = candidate_scores(rows, scored_rest, rest_ids)  # the selected candidate and the reference among them
    sel, ref = facts(rows, by_id, reference, chosen, rest_ids), facts(rows, by_id, reference, reference, rest_ids)
    result = {
        "split": {"seed": study.seed, "n_select": len(select_ids), "n_rest": len(rest_ids)},
        "reference": reference,
        "selection": selection,
        "selected": chosen,
        "confirmation": {
            "selected": summarize(on_rest[chosen], study.n_bootstrap, study.seed, **sel),
            "reference": summarize(on_rest[reference], study.n_bootstrap, study.seed, **ref),
            "paired": compare(outcomes(on_rest[chosen], sel["same"], sel["tolerance"])[0],
                              outcomes(on_rest[reference], ref["same"], ref["tolerance"])[0], study.n_bootstrap,
                              study.seed, sel["strata"]),
        },
    }
    folder.finish(write_json_if_changed(folder.path / "study.json", result), skipped_rows=skipped,
                  over_pref_max_length=list(left_out.values()), n_examples=len(examples))
    return result
