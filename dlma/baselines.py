"""The methods the paper compares DLMA with, as what each one trains on and how, all on the same generated
pairs and the same QLoRA budget (steps, learning rate, LoRA rank, seed): only the rows and the loss differ.

- `base`: no training.
- `rlcd`: DPO on the prompt labels (o1, sampled under p+, preferred): gamma 0 (RLCD, Yang et al. 2023).
- `dlma`: DPO with the clamped self-rewarding score as a per-pair margin (gamma 0.2, clamp +-40).
- `dlma_weighting`: gamma 0, each pair's DPO loss times clamp(R) (the released code's variant).
- `rlaif_dpo`: the same pairs relabelled by the base model's RLAIF judge (a pair on which it prefers o2 is
  swapped; a tie keeps the prompt label), then DPO: what asking the model buys instead of R.
- `rlhf`: DPO on human-labelled pairs (chosen over rejected): the stand-in for RLHF on human data. Its pairs
  must be disjoint from every pair the trained models are evaluated on (`human_rows` checks it).
- `context_distillation`: SFT of the plain query on o1. Not a DPO method: it needs an SFT trainer, which
  is not built yet, so it is named here and refused by `method_config`.
"""

from __future__ import annotations

from dataclasses import replace

from .data import Example
from .errors import DLMAError

METHODS = {  # TrainConfig fields each method sets; everything else is the shared budget
    "rlcd": {"gamma": 0.0, "weighting": False},
    "dlma": {"gamma": 0.2, "weighting": False, "margin_low": -40.0, "margin_high": 40.0},
    "dlma_weighting": {"gamma": 0.0, "weighting": True},
    "rlaif_dpo": {"gamma": 0.0, "weighting": False},
    "rlhf": {"gamma": 0.0, "weighting": False},
}
NOT_BUILT = {"context_distillation": "SFT of the plain query on o1 needs an SFT trainer, not built yet"}


def method_config(cfg, method: str):
    """The shared TrainConfig with the method's own fields set."""
    if method in NOT_BUILT:
        raise DLMAError(f"method '{method}': {NOT_BUILT[method]}")
    if method not in METHODS:
        raise DLMAError(f"unknown method '{method}' (known: base, {', '.join([*METHODS, *NOT_BUILT])})")
    return replace(cfg, **METHODS[method])


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
    """Training rows from human-labelled pairs (chosen as o1), refusing any pair the evaluation also uses."""
    overlap = sorted({ex.id for ex in examples} & set(map(str, evaluated_ids)))
    if overlap:
        raise DLMAError(f"rlhf: {len(overlap)} human pair(s) are also evaluation pairs (the first: {overlap[0]}); "
                        "train on pairs disjoint from the evaluation")
    return [{"id": ex.id, "turns": ex.turns, "o1": ex.chosen, "o2": ex.rejected, "self_reward": 0.0}
            for ex in examples]
