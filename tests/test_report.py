"""The notebooks' tables, built from a stage's written rows alone: reachable by a test, so a notebook holds
no logic of its own."""

from __future__ import annotations

from dlma import report


def test_end_reasons_counts_each_side():
    rows = [{"o1_end": "eos", "o2_end": "length"}, {"o1_end": "eos", "o2_end": "turn"},
            {"o1_end": "turn", "o2_end": "length"}]
    table = report.end_reasons(rows)
    assert table.loc["eos", "o1 (p+)"] == 2 and table.loc["length", "o2 (p-)"] == 2
    assert table.loc["length", "o1 (p+)"] == 0 and table.values.sum() == 6


def test_agreement_crosstab_counts_pairs():
    pred = [{"id": i, "scorer": s, "correct": c} for i, cs in enumerate([(1, 1), (1, 0), (0, 1), (1, 0)])
            for s, c in zip(("dlma", "rlaif"), map(bool, cs), strict=True)]
    table = report.agreement(pred)
    assert table.loc[True, True] == 1 and table.loc[True, False] == 2 and table.loc[False, True] == 1


def test_responses_side_by_side_and_train_summary():
    responses = [{"query": "q1", "model": "base", "response": "a"}, {"query": "q1", "model": "dlma", "response": "b"}]
    assert report.responses_side_by_side(responses).loc["q1"].to_dict() == {"base": "a", "dlma": "b"}
    shown = report.train_summary({"n_steps": 7, "wall_time_s": 12.5, "s_per_step": 1.2, "train_runtime_s": 9.0})
    assert shown.to_dict() == {"n_steps": 7}  # timings differ on every rerun: kept in the manifest only


def test_paired_frame_shows_each_comparison():
    paired = [{"a": "dlma", "b": "rlaif", "difference": 0.05, "ci95": [-0.02, 0.11], "a_only": 72, "b_only": 57,
               "mcnemar_p": 0.2176, "n": 300}]
    row = report.paired_frame(paired).loc["dlma - rlaif"]
    assert (row["difference"], row["paired 95% CI"], row["a only"], row["McNemar p"]) == (0.05, "[-0.020, +0.110]",
                                                                                        72, 0.218)
