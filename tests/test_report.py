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


def test_baselines_tables_and_bars_from_a_summary():
    from dlma.baselines import summarize_baselines

    ids = ["p1", "p2", "p3", "p4"]
    responses = [{"model": m, "id": i, "response": f"{m} answer {i} here", "refusal": m == "rlcd" and i == "p1",
                  "contrastive_score": 1.0, "perplexity": 5.0, "n_tokens": 4} for m in ("base", "dlma", "rlcd")
                 for i in ids]
    human = [{"model": m, "id": f"h{k}", "implicit": s} for m, scores in (("dlma", [1, -1, 1]), ("rlcd", [1, 1, 1]))
             for k, s in enumerate(scores)]
    judged = [{"judge": j, "model": m, "opponent": o, "id": i, "verdict": v}
              for j in ("rlaif", "contrast") for m, o in (("dlma", "base"), ("rlcd", "base"), ("rlcd", "dlma"))
              for i, v in zip(ids, ["win", "win", "tie", "lose"], strict=True)]
    result = summarize_baselines(["base", "dlma", "rlcd"], responses, human, judged,
                                 {"rlcd": {"n_pairs": 8, "n_steps": 2, "final_loss": 0.69, "wall_time_s": 3.0}},
                                 n_boot=100)
    table = report.baselines_frame(result)
    assert table.loc["rlcd", "win/tie/lose"] == "2/1/1" and table.loc["base", "win/tie/lose"] == ""
    assert table.loc["rlcd", "contrast judge: win rate vs base"].startswith("0.625 [")
    assert table.loc["rlcd", "implicit-reward acc."].startswith("1.000 [")
    assert table.loc["dlma", "implicit-reward acc."].startswith("0.667 [")
    assert report.answers_frame(result).loc["rlcd", "refusal rate"].startswith("0.25 [")
    verdicts = report.judge_frame(result)
    assert verdicts.loc[("rlcd", "contrast", "dlma"), "win"] == 2 and len(verdicts) == 6
    paired = report.implicit_paired_frame(result)
    assert paired.loc["rlcd - dlma", "a only"] == 1 and paired.loc["rlcd - dlma", "b only"] == 0
    assert report.training_frame(result).loc["rlcd", "steps"] == 2
    fig = report.plot_win_tie_lose(result)
    assert len(fig.axes) == 4  # two judges, against base and against dlma
