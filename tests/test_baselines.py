"""The baselines as what each trains on: the same budget, the method's own loss settings, relabelled or human
rows."""

from __future__ import annotations

import pytest

from dlma.baselines import METHODS, human_rows, method_config, relabel
from dlma.data import Example
from dlma.errors import DLMAError
from dlma.train import TrainConfig


def test_every_method_shares_the_budget_and_sets_only_its_loss():
    shared = TrainConfig(learning_rate=1e-4, train_batch_size=4, lora_r=16, seed=3, epochs=2)
    for method in METHODS:
        cfg = method_config(shared, method)
        assert (cfg.learning_rate, cfg.train_batch_size, cfg.lora_r, cfg.seed, cfg.epochs) == (1e-4, 4, 16, 3, 2)
    assert method_config(shared, "rlcd").gamma == 0 and not method_config(shared, "rlcd").weighting
    assert method_config(shared, "dlma").gamma == 0.2 and method_config(shared, "dlma").margin_clip == (-40, 40)
    assert method_config(shared, "dlma_weighting").weighting
    with pytest.raises(DLMAError, match="needs an SFT trainer"):
        method_config(shared, "context_distillation")
    with pytest.raises(DLMAError, match="unknown method 'ppo'"):
        method_config(shared, "ppo")


def test_relabel_swaps_where_the_judge_prefers_o2():
    rows = [{"id": str(i), "turns": ["q"], "o1": f"a{i}", "o2": f"b{i}", "self_reward": float(i + 1)}
            for i in range(3)]
    out, swapped = relabel(rows, ["win", "lose", "tie"])
    assert swapped == 1
    got = [(r["o1"], r["o2"], r["self_reward"]) for r in out]
    assert got == [("a0", "b0", 1.0), ("b1", "a1", -2.0), ("a2", "b2", 3.0)]
    assert rows[1]["o1"] == "a1"  # the input is not changed
    with pytest.raises(DLMAError, match="2 pairs but 1 verdicts"):
        relabel(rows[:2], ["win"])


def test_human_rows_must_be_disjoint_from_the_evaluation():
    examples = [Example("h1", ["q"], "good", "bad"), Example("h2", ["r"], "fine", "rude")]
    rows = human_rows(examples, evaluated_ids=["h3"])
    assert [(r["o1"], r["o2"]) for r in rows] == [("good", "bad"), ("fine", "rude")]
    with pytest.raises(DLMAError, match="1 human pair\\(s\\) are also evaluation pairs \\(the first: h2\\)"):
        human_rows(examples, evaluated_ids=["h2"])
