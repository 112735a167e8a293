"""The prompt-pair study: which way of reading the self-rewarding score judges human preferences best, chosen
on one slice of the labelled pairs and confirmed on the others (the paper uses one pair; RLCD used 16).

1. The valid labelled pairs are split once, by a seed: a selection slice of `study_select` pairs, and the rest.
2. On the slice every candidate is scored: each variant's R (a prompt pair, `pair@chat` for the chat
   rendering), its length-normalised R (each contrast divided by its response's token count, `pair/norm`),
   and `ensemble`, the mean R over the variants. The most accurate candidate is selected; a tie goes to the
   one listed first (the paper's pair is first).
3. On the rest, which the selection never saw, the selected candidate against the paper's pair: the
   difference in accuracy with a paired bootstrap interval and the exact McNemar p-value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .errors import DLMAError, check_fields
from .params import documented
from .prompts import RENDERINGS, get_pair
from .score import SCORE_KEYS
from .stats import paired_comparison

ENSEMBLE, NORM = "ensemble", "/norm"


@documented
@dataclass
class StudyConfig:
    study_variants: str = "harmless,harmless@chat,helpful"
    study_select: int = 400

    def __post_init__(self):
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
            get_pair(pair, f"StudyConfig: study_variants: '{v}'")
            out.append((v, pair, rendering))
        if len(out) < 2 or len({v for v, _, _ in out}) != len(out):
            raise DLMAError(f"StudyConfig: study_variants={self.study_variants!r}: needs two or more distinct "
                            "variants, the reference first")
        return out


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


def confirm(selected: np.ndarray, reference: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """The selected candidate against the reference on the same pairs (ties are wrong)."""
    return paired_comparison(selected > 0, reference > 0, n_boot, seed)


def terms_row(terms: dict, n_o1: int, n_o2: int) -> dict:
    """A stored row: the four S terms, R and the two responses' token counts."""
    return {**{k: terms[k] for k in SCORE_KEYS}, "self_reward": terms["self_reward"], "n_o1": n_o1, "n_o2": n_o2}
