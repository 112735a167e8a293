"""The prompt-pair study (stage 3b): the split, the candidates, the selection and its confirmation, and the
stage as the notebook calls it: resumable, and reusing stage 3's scores of the paper's pair."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dlma.study
from dlma.errors import DLMAError
from dlma.models import DEFAULT_MODEL, ModelConfig
from dlma.params import Out, PrefData, Run
from dlma.preference import PrefAccConfig, run_pref_acc
from dlma.prompts import PAIRS
from dlma.stats import TIE_TOLERANCE
from dlma.study import (
    StudyConfig,
    candidate_scores,
    candidate_tolerance,
    needs,
    normalised_reward,
    run_pair_study,
    select,
    split_ids,
)


def row(s1p, s1n, s2p, s2n, n1, n2):
    return {"s_o1_pos": s1p, "s_o1_neg": s1n, "s_o2_pos": s2p, "s_o2_neg": s2n,
            "self_reward": (s1p - s1n) - (s2p - s2n), "n_o1": n1, "n_o2": n2}


def test_split_is_seeded_disjoint_and_in_file_order():
    ids = [f"r{i}" for i in range(50)]
    a, b = split_ids(ids, 20, seed=3)
    assert (len(a), len(b)) == (20, 30) and not set(a) & set(b) and sorted(a + b) == sorted(ids)
    assert a == sorted(a, key=ids.index) and (a, b) == split_ids(ids, 20, seed=3)
    assert split_ids(ids, 20, seed=4)[0] != a
    with pytest.raises(DLMAError, match="study_select=50: leaves no pair to confirm on"):
        split_ids(ids, 50)


def test_length_normalised_reward_divides_each_contrast_by_its_length():
    r = row(-10.0, -14.0, -30.0, -31.0, 4, 10)  # C(o1) = 4 over 4 tokens, C(o2) = 1 over 10
    assert r["self_reward"] == 3.0
    assert normalised_reward(r) == pytest.approx(1.0 - 0.1)


def test_candidates_selection_and_ensemble():
    rows = {("a", "x"): row(0, 1, 0, 0, 1, 1), ("a", "y"): row(3, 0, 0, 0, 1, 1),
            ("b", "x"): row(4, 0, 0, 0, 2, 1), ("b", "y"): row(0, 1, 0, 0, 1, 1)}
    c = candidate_scores(rows, ["a", "b"], ["x", "y"])
    assert list(c) == ["a", "b", "a/norm", "b/norm", "ensemble"]
    np.testing.assert_allclose(c["a"], [-1, 3])
    np.testing.assert_allclose(c["b/norm"], [2, -1])
    np.testing.assert_allclose(c["ensemble"], [1.5, 1])
    assert select({"a": {"accuracy": 0.5}, "b": {"accuracy": 0.6}, "c": {"accuracy": 0.6}}) == "b"  # first of ties
    assert needs("ensemble", ["a", "b"]) == ["a", "b"] and needs("b/norm", ["a", "b"]) == ["b"]


def test_a_length_normalised_reward_ties_within_the_tolerance_over_its_lengths():
    rows = {("a", "x"): row(0, 1, 0, 0, 10, 10), ("a", "y"): row(0, 1, 0, 0, 4, 1)}
    assert candidate_tolerance("a", rows, ["x", "y"]) == candidate_tolerance("ensemble", rows, ["x"]) == TIE_TOLERANCE
    np.testing.assert_allclose(candidate_tolerance("a/norm", rows, ["x", "y"]),
                               [TIE_TOLERANCE / 10, TIE_TOLERANCE * (1 / 4 + 1) / 2])


@pytest.mark.parametrize("variants, message", [
    ("harmless,nosuch", "study_variants: 'nosuch': unknown prompt pair 'nosuch'"),
    ("harmless,helpful@html", "unknown rendering 'html'"),
    ("harmless", "needs two or more distinct variants"),
    ("harmless,harmless", "needs two or more distinct variants"),
])
def test_bad_variants_are_named(variants, message):
    with pytest.raises(DLMAError, match=message):
        StudyConfig(study_variants=variants).check_pairs(PAIRS)


def test_study_stage_reuses_stage3_and_resumes(tmp_path, monkeypatch):
    """Stage 3's R of the paper's pair is reused, not recomputed, and equals what the study would compute;
    a rerun computes nothing; the result file says what was selected and confirms it on the other pairs."""
    model_cfg, cfg = ModelConfig(DEFAULT_MODEL), PrefAccConfig(scorers="dlma", pref_max_length=256, seed=0)
    data = PrefData("sample:pairs", 6)
    study = StudyConfig(study_variants="harmless,helpful", study_select=3, pref_max_length=256, seed=0)
    run_pref_acc(model_cfg, data, cfg, Out(str(tmp_path / "run" / "03_preference_accuracy")))
    scored = []
    real = dlma.study.self_reward_terms  # what the study calls (imported at the top of dlma.study)

    def counting(model, tok, items, *args, **kwargs):
        scored.append(len(items))
        return real(model, tok, items, *args, **kwargs)

    monkeypatch.setattr(dlma.study, "self_reward_terms", counting)
    result = run_pair_study(model_cfg, data, study, Run(str(tmp_path / "run")))
    assert result["split"] == {"seed": 0, "n_select": 3, "n_rest": 3}
    assert scored in ([3], [3, 3])  # harmless from stage 3; helpful on the slice (and on the rest if selected)
    assert set(result["selection"]) == {"harmless", "helpful", "harmless/norm", "helpful/norm", "ensemble"}
    assert result["selected"] == select(result["selection"])
    assert result["confirmation"]["paired"]["n"] == 3
    fresh = run_pair_study(model_cfg, data, study, Run(str(tmp_path / "alone")))
    assert fresh == result  # scoring the reference afresh gives the very same numbers
    before = (tmp_path / "run" / "03b_pair_study" / "scores.jsonl").read_bytes()
    scored.clear()
    assert run_pair_study(model_cfg, data, study, Run(str(tmp_path / "run"))) == result
    assert scored == [] and (tmp_path / "run" / "03b_pair_study" / "scores.jsonl").read_bytes() == before
    manifest = json.loads((tmp_path / "run" / "03b_pair_study" / "manifest.json").read_text())
    assert manifest["stage"] == "pair-study" and manifest["params"]["study_select"] == 3
    with pytest.raises(DLMAError, match="other parameters"):
        run_pair_study(model_cfg, data, StudyConfig(study_variants="harmless,helpful", study_select=2,
                                                    pref_max_length=256, seed=0), Run(str(tmp_path / "run")))
