"""The notebooks' tables, built from a stage's written rows alone: reachable by a test, so a notebook holds
no logic of its own."""

from __future__ import annotations

import numpy as np

from dlma import readings, report


def test_end_reasons_counts_each_side():
    rows = [{"o1_end": "eos", "o2_end": "length"}, {"o1_end": "eos", "o2_end": "turn"},
            {"o1_end": "turn", "o2_end": "length"}]
    table = report.end_reasons(rows)
    assert table.loc["eos", "o1 (p+)"] == 2 and table.loc["length", "o2 (p-)"] == 2
    assert table.loc["length", "o1 (p+)"] == 0 and table.values.sum() == 6


def test_agreement_crosstab_counts_pairs():
    from dlma.stats import paired_comparison

    dlma, rlaif = [True, True, False, True, False], [True, False, True, False, False]
    paired = [{"a": "dlma", "b": "rlaif", **paired_comparison(dlma, rlaif, n_boot=20)}]
    table = report.agreement(paired)
    assert table.loc[True, True] == 1 and table.loc[True, False] == 2 and table.loc[False, True] == 1
    assert table.loc[False, False] == 1 and table.index.name == "dlma correct"
    assert report.agreement(paired, "rlaif", "dlma").loc[True, False] == 1  # either order


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
    strata = {"h0": "chosen shorter", "h1": "chosen longer", "h2": "chosen longer"}
    result = summarize_baselines(["base", "dlma", "rlcd"], responses, human, judged,
                                 {"rlcd": {"n_pairs": 8, "n_steps": 2, "final_loss": 0.69, "wall_time_s": 3.0}},
                                 n_boot=100, strata=strata, same=dict.fromkeys(strata, False))
    table = report.baselines_frame(result)
    assert table.loc["dlma", "length-balanced"] == "0.750 [0.500, 1.000]"  # right on h0, and on one of h1, h2
    assert table.loc["rlcd", "length-balanced"] == "1.000 [1.000, 1.000]"
    assert result["rlcd"]["implicit_vs_dlma"]["balanced_difference"] == 0.25
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


# ----------------------------------------------------------------------------------------------------------
# Claim 1 in words: stage 3's metrics of synthetic judges, read raw and length-balanced


def _stage3(dlma=(0.55, 0.41), rlaif=(0.134, 0.795), n=(714, 575, 18), seed=0, lengths=False):
    """metrics.json of judges right on the given shares of the pairs whose chosen response is the shorter and of
    the others (the published run's RLAIF, by default; each on its own seeded draw of pairs), on half of the pairs
    of equal length, and of the length judge."""
    from dataclasses import replace

    import numpy as np

    from dlma.data import load_examples
    from dlma.preference import judge_metrics
    from dlma.stats import LONGER, SAME_LENGTH, SHORTER

    strata = [SHORTER] * n[0] + [LONGER] * n[1] + [SAME_LENGTH] * n[2]
    examples = [replace(load_examples("sample:pairs", limit=1)[0], id=f"p{k}") for k in range(len(strata))]
    rng = np.random.default_rng(seed)

    def judge(right):
        score = -np.ones(len(strata))
        for group, share in zip((SHORTER, LONGER, SAME_LENGTH), (*right, 0.5), strict=True):
            where = np.array([k for k, g in enumerate(strata) if g == group], dtype=int)
            score[rng.permutation(where)[: round(share * len(where))]] = 1.0
        return score

    scores = {"dlma": judge(dlma), "rlaif": judge(rlaif), "length": judge((1.0, 0.0))}
    predictions = [{"scorer": s, "id": e.id, "score": float(v)} for s, vs in scores.items()
                   for e, v in zip(examples, vs, strict=True)]
    sign = {SHORTER: -1, LONGER: 1, SAME_LENGTH: 0}
    diffs = [sign[g] * int(rng.integers(1, 80)) for g in strata] if lengths else None
    return judge_metrics(predictions, examples, list(scores), strata, n_boot=200, length_difference=diffs)


def test_claim1_reading_when_the_raw_difference_is_length():
    read = readings.claim1_reading(_stage3())
    assert set(read) == {"claim1_raw", "claim1_length", "claim1_balanced", "claim1_verdict", "claim1_chance",
                         "claim1_controlled"}
    assert read["claim1_controlled"].startswith("This run did not compute the logistic length control")
    # the published run's raw reading: +0.058, McNemar p = 0.005
    assert read["claim1_raw"].startswith("On the 1,307 pairs, the self-rewarding score is right on 0.488 [")
    assert "the difference is +0.058 [" in read["claim1_raw"] and "exact McNemar p = 0.005" in read["claim1_raw"]
    assert read["claim1_length"].startswith(
        "The human chose the shorter response (in tokens) in 714 of the 1,307 pairs and the longer in 575; 18 are of "
        "equal length and counted apart. RLAIF is right on 13.4% of the first and 79.5% of the second; the "
        "self-rewarding score is right on 55.0% of the first and 41.0% of the second; the length judge is right on "
        "100.0% of the first and 0.0% of the second")
    assert "RLAIF 0.465 [" in read["claim1_balanced"] and "the difference is +0.016 [" in read["claim1_balanced"]
    assert read["claim1_verdict"] == (  # led by what holds beyond length, then the raw result, then the floors
        "Beyond length (each length stratum weighed equally), the self-rewarding score and RLAIF are not told apart "
        "(p = 0.364): this run neither supports nor refutes claim 1. On the raw pairs the self-rewarding score is "
        "ahead (p = 0.005), a difference in the two judges' preferences for length rather than in judging. Against "
        "the floors any judge of these pairs must beat, the self-rewarding score (0.488 [0.460, 0.516] on the raw "
        "pairs) is not distinguishable from chance and below the length judge (0.553 [0.526, 0.578], McNemar "
        "p < 0.001).")
    assert read["claim1_chance"] == ("Once length is balanced, the self-rewarding score is indistinguishable from "
                                     "chance (its interval contains 0.5) and RLAIF is below chance (its interval lies "
                                     "below 0.5).")


def test_claim1_reading_chooses_its_words_by_the_outcome():
    better = readings.claim1_reading(_stage3(dlma=(0.75, 0.70)))  # better in both strata
    assert better["claim1_verdict"].startswith("Beyond length (each length stratum weighed equally), the "
                                               "self-rewarding score judges better than RLAIF (p < 0.001): claim 1 "
                                               "holds beyond length in this run. The raw pairs agree")
    assert better["claim1_verdict"].endswith("is above chance and above the length judge (0.553 [0.526, 0.578], "
                                             "McNemar p < 0.001).")
    assert better["claim1_chance"] == ("Once length is balanced, the self-rewarding score is above chance (its "
                                       "interval lies above 0.5) and RLAIF is below chance (its interval lies below "
                                       "0.5).")
    same = readings.claim1_reading(_stage3(dlma=(0.5, 0.5), rlaif=(0.5, 0.5)))
    assert "are not told apart (p = 1.000): this run neither supports nor refutes claim 1. Nor are they on the raw " \
           "pairs (p = 1.000)." in same["claim1_verdict"]
    assert "is not distinguishable from chance and below the length judge" in same["claim1_verdict"]
    one_sided = readings.claim1_reading(_stage3(n=(0, 40, 2)))  # 'sample:pairs': the longer always chosen
    assert one_sided["claim1_balanced"] == ("The length-balanced figures are undefined in this run (no pair in one of "
                                            "the length strata).")
    assert one_sided["claim1_verdict"].startswith("Claim 1 cannot be read beyond length in this run")
    metrics = _stage3(n=(10, 10, 0))
    metrics["accuracy"].pop("rlaif")
    assert readings.claim1_reading(metrics)["claim1_verdict"] == ("This run did not score rlaif: it does not compare "
                                                                "the judges of claim 1.")


def test_stage3_tables_show_the_balanced_figures():
    metrics = _stage3(n=(60, 40, 3))
    table = report.metrics_frame(metrics["accuracy"])
    assert table.loc["length", "length-balanced [95% CI]"] == "0.500 [0.500, 0.500]"
    assert table.loc["length", "same length"] == 3
    paired = report.paired_frame(metrics["paired"])
    assert {"length-balanced difference [paired 95% CI]", "stratified p"} <= set(paired.columns)
    strata = report.strata_frame(metrics["paired"])
    assert strata.loc[("dlma - rlaif", "chosen shorter"), "n"] == 60 and len(strata) == 9  # 3 pairs x 3 strata
    fig = report.plot_pref_acc(metrics["accuracy"])
    assert len(fig.axes[0].patches) == 6  # raw and balanced, three judges


# ----------------------------------------------------------------------------------------------------------
# Stage 6 in words: each sentence the results page glues, on results of known outcome


def _verdict(win, tie, lose, ci=(0.40, 0.60), lc=None, consistency=None):
    """One verdict of baselines.json, as `baselines.verdict_summary` writes it, with a chosen interval."""
    from scipy.stats import binomtest

    rate = (win + tie / 2) / (win + tie + lose)
    out = {"win": win, "tie": tie, "lose": lose,
           "sign_test_p": float(binomtest(win, win + lose).pvalue) if win + lose else 1.0,
           "win_rate": {"value": rate, "ci95": list(ci), "n": win + tie + lose},
           "lc_win_rate": {"value": rate if lc is None else lc, "ci95": list(ci), "n": win + tie + lose}}
    if consistency is not None:
        out["position_consistency"] = consistency
    return out


def _answers(length=(39.1, 38.5, 39.6)):
    flat = {"value": 0.5, "ci95": [0.4, 0.6], "n": 64}
    return {"refusal_rate": {"value": 0.02, "ci95": [0.0, 0.05], "n": 64}, "contrastive_score": flat,
            "perplexity_median": flat, "distinct_2": flat,
            "length_tokens": {"value": length[0], "ci95": list(length[1:]), "n": 64}}


def _stage6(dlma_rlaif=(14, 46, 4), others=(10, 44, 10), contrast=(32, 0, 32), dlma_ci=(0.516, 0.633)):
    """base, dlma and rlcd (3 pairs of methods, 2 judges: 6 comparisons); dlma against base by the RLAIF judge
    as given, every other RLAIF verdict `others`, every contrast verdict `contrast`."""
    acc = {"accuracy": 0.539, "ci95": [0.453, 0.625], "n": 128, "ties": 0}
    paired = {"difference": -0.008, "ci95": [-0.055, 0.039], "a_only": 4, "b_only": 5, "mcnemar_p": 1.0, "n": 128}
    return {
        "base": {"training": None, **_answers()},
        "dlma": {"training": {"n_pairs": 56, "n_steps": 7}, **_answers((38.7, 37.7, 39.3)),
                 "rlaif_vs_base": _verdict(*dlma_rlaif, ci=dlma_ci, consistency=0.281),
                 "contrast_vs_base": _verdict(*contrast), "implicit_accuracy": acc},
        "rlcd": {"training": {"n_pairs": 56, "n_steps": 7}, **_answers((38.5, 37.4, 39.4)),
                 "rlaif_vs_base": _verdict(*others, consistency=0.094), "contrast_vs_base": _verdict(*contrast),
                 "rlaif_vs_dlma": _verdict(*others, consistency=0.2), "contrast_vs_dlma": _verdict(*contrast),
                 "implicit_accuracy": {**acc, "accuracy": 0.531, "ci95": [0.453, 0.617]},
                 "implicit_vs_dlma": paired},
    }


def test_holm_rejects_step_down():
    assert readings.holm_rejected([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]  # 0.03 > 0.05 / 2
    assert readings.holm_rejected([0.2, 0.5]) == [False, False] and readings.holm_rejected([]) == []


def test_one_lopsided_comparison_is_about_chance_and_separates_nothing():
    result = _stage6()
    assert len(readings.baseline_comparisons(result)) == 6
    read = readings.baselines_reading(result)
    assert read["baselines_methods"] == "rlcd"
    assert read["baselines_sign_tests"] == (
        "No method separates from another. Of the 6 comparisons (3 pairs of methods, two judges), one has a sign "
        "test of wins against losses below 0.05, about what 6 tests give by chance alone (at most 0.3 expected at "
        "the 0.05 level), and it does not survive Holm's correction for the 6 tests: dlma against the base model "
        "by the RLAIF judge, 14 wins to 4, 46 ties (p = 0.031, win rate 0.578 [0.516, 0.633]). Its win-rate "
        "interval is the only one of the 6 that excludes 0.5.")
    assert read["baselines_dlma_vs_base"] == ("DLMA itself, against the base model: by the RLAIF judge it wins 14 to "
                                              "4, 46 ties (p = 0.031); by the contrast judge it ties, 32 wins to 32 "
                                              "(p = 1.000).")
    assert read["baselines_vs_dlma"] == ("Against DLMA, no method wins or loses with a sign test below 0.05 (the "
                                         "smallest p of the 2 comparisons is 1.000).")
    assert read["baselines_near_misses"] == "No other sign test has p below 0.10."
    assert read["baselines_separation"].startswith("no method separates from another (none of the 6 sign tests")
    assert read["baselines_claim2"] == ("The paper's claim 2 is neither supported nor refuted here: with 56 training "
                                        "pairs and 64 prompts, no method is distinguishable from another by a "
                                        "base-model judge. At this budget the RLAIF judge ties 44 to 46 of the 64 "
                                        "prompts against the base model, leaving few verdicts for a sign test: a "
                                        "difference not found here is no evidence against one at the paper's "
                                        "scale.")
    result["rlcd"]["implicit_vs_dlma"].update(a_only=0, b_only=0)  # the same pairs right as DLMA: counted
    assert "rlcd is right and wrong on exactly the 128 human pairs DLMA is, so no implicit-reward comparison of " \
           "them with DLMA could differ; the RLAIF judge ties" in readings.baselines_reading(result)["baselines_claim2"]
    assert all(isinstance(v, str) for v in read.values())  # glue values, already formatted


def test_nothing_significant_and_near_misses_grouped():
    result = _stage6(dlma_rlaif=(10, 44, 10), contrast=(40, 0, 24), dlma_ci=(0.4, 0.6))  # 40 to 24: p = 0.060
    read = readings.sign_test_reading(result)
    assert "none has a sign test of wins against losses below 0.05." in read["baselines_sign_tests"]
    assert read["baselines_sign_tests"].endswith("None of the 6 win-rate intervals excludes 0.5.")
    assert read["baselines_near_misses"] == (
        "Between 0.05 and 0.10: dlma and rlcd against the base model by the contrast judge, 40 wins to 24 each "
        "(p = 0.060); rlcd against DLMA by the contrast judge, 40 wins to 24 (p = 0.060).")


def test_a_separating_comparison_changes_the_wording():
    result = _stage6(dlma_rlaif=(40, 20, 0))  # p = 2 * 0.5 ** 40
    read = readings.baselines_reading(result)
    assert read["baselines_sign_tests"].startswith(
        "1 of the 6 comparisons separates after Holm's correction for 6 tests: dlma against the base model by the "
        "RLAIF judge, 40 wins to 0, 20 ties (p < 0.001, win rate")
    assert "more than the 0.3 that 6 tests give by chance alone" not in read["baselines_sign_tests"]  # one of 6
    assert "No method separates" not in read["baselines_sign_tests"]
    assert read["baselines_separation"] == "1 of the 6 comparisons separates after Holm's correction for 6 tests"
    assert read["baselines_claim2"].startswith("1 of the 6 comparisons separates after Holm's correction, but only "
                                               "by judges made of the base model")
    many = readings.sign_test_reading(_stage6(dlma_rlaif=(40, 20, 0), others=(30, 34, 0)))
    assert "more than the 0.3 that 6 tests give by chance alone at the 0.05 level" in many["baselines_sign_tests"]
    assert many["baselines_vs_dlma"].startswith("Against DLMA, 1 of the 2 comparisons has a sign test below 0.05: "
                                                "rlcd against DLMA by the RLAIF judge, 30 wins to 0")


def test_judges_reading_position_consistency_ties_and_length():
    read = readings.judges_reading(_stage6())
    assert read["baselines_rlaif_consistency"] == "9% to 28%"
    ties = (46 + 44 + 44) / (64 * 3)
    assert read["baselines_rlaif_reading"] == (
        f"The RLAIF judge barely judges here: its two orders agree on only 9% to 28% of the prompts, so {ties:.0%} "
        "of its verdicts are ties; the model answers by the option's position more than by its content.")
    assert read["baselines_contrast_reading"] == ("The contrast judge always decides (no tie in its 192 verdicts), "
                                                  "and none of its 3 win-rate intervals excludes 0.5.")
    assert read["baselines_length_reading"] == ("The length-controlled win rates (of either judge) differ from the raw "
                                                "ones by at most 0.000; the methods' answers are 38.5 to 39.1 tokens "
                                                "long on average.")
    assert read["baselines_http_judge"] == "none judged this run, which ran offline"
    result = _stage6()
    result["dlma"]["rlaif_vs_base"]["position_consistency"] = 0.8
    result["dlma"]["rlaif_vs_base"]["lc_win_rate"]["value"] += 0.07
    result["rlcd"]["http_vs_base"] = _verdict(20, 24, 20)
    read = readings.judges_reading(result)
    assert read["baselines_rlaif_reading"].startswith("The RLAIF judge's two orders agree on 9% to 80% of the prompts")
    assert "by at most 0.070" in read["baselines_length_reading"] and "(of every judge)" in \
        read["baselines_length_reading"]
    assert read["baselines_http_judge"] == "one judged this run beside the base model's two"


def test_implicit_reading_chance_best_and_paired():
    result = _stage6()
    assert readings.implicit_reading(result) == (
        "Implicit-reward accuracy is indistinguishable from chance for every method: 0.531 to 0.539 on 128 human "
        "pairs, every 95% interval containing 0.5. Every paired difference from DLMA's has an interval containing 0 "
        "(the smallest McNemar p is 1.000). The highest is DLMA's own, 0.539 [0.453, 0.625].")
    result["rlhf"] = result.pop("rlcd")
    result["rlhf"]["implicit_accuracy"] = {"accuracy": 0.586, "ci95": [0.503, 0.664], "n": 128, "ties": 0}
    result["rlhf"]["implicit_vs_dlma"] = {"difference": 0.047, "ci95": [0.008, 0.148], "a_only": 28, "b_only": 22,
                                          "mcnemar_p": 0.48, "n": 128}
    text = readings.implicit_reading(result)
    assert text.startswith("Implicit-reward accuracy is 0.539 to 0.586 over the methods on 128 human pairs; the 95% "
                           "intervals of rlhf exclude 0.5.")
    assert "interval excluding 0 for rlhf (+0.047 [+0.008, +0.148], McNemar p = 0.480)" in text
    assert text.endswith("The highest is rlhf, the RLHF stand-in trained on human pairs of the same distribution: "
                         "0.586 [0.503, 0.664], not significantly different from DLMA's (McNemar p = 0.480).")
    result["dlma"]["implicit_accuracy"] |= {"balanced_accuracy": 0.52, "balanced_ci95": [0.44, 0.60]}
    result["rlhf"]["implicit_accuracy"] |= {"balanced_accuracy": 0.61, "balanced_ci95": [0.52, 0.69]}
    result["rlhf"]["implicit_vs_dlma"] |= {"balanced_difference": 0.09, "balanced_ci95": [0.01, 0.17],
                                           "stratified_p": 0.03}
    assert ("Length-balanced, it is 0.520 to 0.610, the intervals of rlhf excluding 0.5; the length-stratified test "
            "against DLMA's has p below 0.05 for rlhf (+0.090 [+0.010, +0.170], p = 0.030).") in \
        readings.implicit_reading(result)


def test_training_reading_lists_what_moved():
    result = _stage6()
    assert readings.training_reading(result) == (
        "Training moved the answers little: with 7 steps of LoRA training on 56 pairs, every method's interval of "
        "refusal rate, contrastive score, median perplexity, distinct-2 and length in tokens overlaps the base "
        "model's.")
    result["context_distillation"] = {"training": {"n_pairs": 56, "n_steps": 7}, **_answers((32.4, 29.4, 35.1))}
    result["rlaif_dpo"] = {"training": {"n_pairs": 56, "n_steps": 7, "swapped": 5, "ties": 41}, **_answers()}
    assert readings.training_reading(result) == (
        "With 7 steps of LoRA training on 56 pairs, every method's interval of refusal rate, contrastive score, "
        "median perplexity, distinct-2 and length in tokens overlaps the base model's, except "
        "context_distillation's length in tokens, 32.4 [29.4, 35.1] against the base model's 39.1 [38.5, 39.6]. "
        "rlaif_dpo's judge swapped the prompt label of 5 of its 56 training pairs and tied on 41, which keep it.")


def test_reading_of_a_summarized_stage6():
    """The reading takes what `summarize_baselines` writes (the schema of baselines.json)."""
    from dlma.baselines import summarize_baselines

    ids = [f"p{k}" for k in range(8)]
    responses = [{"model": m, "id": i, "response": f"{m} answer {i} here", "refusal": False, "contrastive_score": 1.0,
                  "perplexity": 5.0, "n_tokens": 4} for m in ("base", "dlma", "rlcd") for i in ids]
    human = [{"model": m, "id": f"h{k}", "implicit": 1.0} for m in ("dlma", "rlcd") for k in range(4)]
    judged = [{"judge": j, "model": m, "opponent": o, "id": i, "verdict": "win" if k < 7 else "lose",
               **({"a_first": True, "a_second": k < 4} if j == "rlaif" else {})}
              for j in ("rlaif", "contrast") for m, o in (("dlma", "base"), ("rlcd", "base"), ("rlcd", "dlma"))
              for k, i in enumerate(ids)]
    result = summarize_baselines(["base", "dlma", "rlcd"], responses, human, judged,
                                 {"dlma": {"n_pairs": 8, "n_steps": 2}}, n_boot=50)
    read = readings.baselines_reading(result)
    assert "Of the 6 comparisons (3 pairs of methods, two judges), none has a sign test" in \
        read["baselines_sign_tests"]  # 7 wins to 1: p = 0.070
    assert read["baselines_near_misses"].startswith("Between 0.05 and 0.10: dlma and rlcd against the base model by "
                                                    "the RLAIF judge, 7 wins to 1 each (p = 0.070)")
    assert read["baselines_rlaif_consistency"] == "50%"
    assert ("with 8 training pairs and 8 prompts, no method is distinguishable from another by a base-model judge. "
            "At this budget rlcd is right and wrong on exactly the 4 human pairs DLMA is") in read["baselines_claim2"]


def test_figures_carry_their_labels_counts_and_the_right_reference():
    """What a reader needs on the figure itself: the step-0 loss the run expects (ln 2 only at gamma = 0), axis
    labels rather than TRL's keys, n per confidence decile, whole-number counts, a colour key in a legend."""
    log = [{"step": s, "loss": 0.78 - 0.01 * s, "rewards/margins": 0.01 * s, "rewards/accuracies": 0.5} for s in (1, 2)]
    fig = report.plot_train_curves(log, 0.7838)
    loss_ax = fig.axes[0]
    assert loss_ax.get_title() == "DLMA loss" and loss_ax.get_ylabel() and loss_ax.get_xlabel() == "optimizer step"
    assert [line.get_ydata()[0] for line in loss_ax.lines[1:]] == [0.7838]  # the reference is the run's step-0 loss
    assert "rewards/" not in " ".join(ax.get_title() for ax in fig.axes)
    metrics = _stage3(n=(60, 40, 0))
    from dlma.preference import accuracy_by_confidence

    calibration = {s: accuracy_by_confidence(np.random.default_rng(0).normal(size=100)) for s in metrics["accuracy"]}
    fig = report.plot_splits(metrics, calibration)
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()][0] == "1\n(n=10)"
    responses = [{"model": m, "contrastive_score": c, "perplexity": p} for m in ("base", "dlma")
                 for c, p in ((0.1, 10.0), (-0.3, 12.0), (0.5, 9.0))]
    fig = report.plot_alignment(responses)
    assert all(ax.get_ylabel() == "answers" for ax in fig.axes)
    assert all(float(t).is_integer() for ax in fig.axes for t in ax.get_yticks())
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["base (n=3)", "dlma (n=3)"]
    study = {"selection": {"harmless": {"accuracy": 0.5, "ci95": [0.4, 0.6]}, "hhh": {"accuracy": 0.55,
                                                                                     "ci95": [0.45, 0.65]}},
             "selected": "hhh", "reference": "harmless", "split": {"n_select": 40}}
    legend = report.plot_study(study).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["the paper's pair", "selected", "other candidates"]


# ----------------------------------------------------------------------------------------------------------
# stage 3b's verdict and stage 5's reading


def study(selected="long_system/norm", difference=0.046, ci=(0.003, 0.092), p=0.054, balanced=0.04,
          balanced_ci=(-0.01, 0.09), stratified_p=0.088):
    return {"selected": selected, "reference": "harmless", "split": {"n_select": 397, "n_rest": 905, "seed": 0},
            "confirmation": {"paired": {"difference": difference, "ci95": list(ci), "mcnemar_p": p,
                                        "balanced_difference": balanced,
                                        "balanced_ci95": list(balanced_ci) if balanced_ci else None,
                                        "stratified_p": stratified_p}}}


def test_study_reading_applies_the_pages_rule():
    # the published run's figures: the interval just excludes 0 but the exact test does not agree
    text = readings.study_reading(study())
    assert text.startswith("No candidate is shown to judge better than the paper's pair `harmless`")
    assert "+0.046 [+0.003, +0.092] raw (exact McNemar p = 0.054)" in text and "905 pairs" in text
    assert "the raw and length-balanced ones are not" in text
    # only the balanced comparison fails
    text = readings.study_reading(study(p=0.01))
    assert text.startswith("No candidate") and "the length-balanced one is not" in text
    # both established, either way
    better = readings.study_reading(study(p=0.01, balanced_ci=(0.01, 0.08), stratified_p=0.02))
    assert better.startswith("The selected candidate `long_system/norm` judges better")
    worse = readings.study_reading(study(difference=-0.05, ci=(-0.09, -0.01), p=0.01, balanced=-0.05,
                                       balanced_ci=(-0.09, -0.02), stratified_p=0.01))
    assert worse.startswith("The selected candidate `long_system/norm` judges worse")
    assert readings.study_reading(study(selected="harmless")).startswith("The selection kept the paper's pair")
    undefined = readings.study_reading(study(p=0.01, balanced=None, balanced_ci=None, stratified_p=None))
    assert "undefined length-balanced (stratified test undefined)" in undefined and undefined.startswith("No ")


def answers(base_c, dlma_c, same=()):
    rows = []
    for k, (b, d) in enumerate(zip(base_c, dlma_c, strict=True)):
        rows.append({"id": f"q{k}", "model": "base", "response": f"base {k}", "contrastive_score": b,
                     "perplexity": 10.0})
        rows.append({"id": f"q{k}", "model": "dlma", "response": f"base {k}" if k in same else f"dlma {k}",
                     "contrastive_score": d, "perplexity": 10.0 if k in same else 12.0})
    return rows


def test_alignment_reading_pairs_the_answers_and_reads_chance():
    summary = {"implicit": {"accuracy": 0.565, "ci95": [0.484, 0.661], "n": 124, "ties": 0}}
    # nothing changed: said so, and no interval is read into it
    text = readings.alignment_reading(summary, answers([-1.0, -2.0], [-1.0, -2.0], same=(0, 1)))
    assert text.startswith("The adapter changed 0 of the 2 held-out answers")
    assert "left the sampled answers as they were" in text
    assert "0.565 [0.484, 0.661] of the 124 held-out human pairs: not distinguishable from chance" in text
    # every answer changed, C(o) up on each prompt by 1, perplexity 10 -> 12: both moved beyond noise
    text = readings.alignment_reading(summary, answers([-1.0, -2.0, -3.0, -1.5], [0.0, -1.0, -2.0, -0.5]))
    assert "changed 4 of the 4 held-out answers;" in text
    assert "contrastive score C(o) moved by +1.000 [+1.000, +1.000] (up)" in text
    assert f"log perplexity moved by {np.log(1.2):+.3f}" in text and "(up)" in text.split("log perplexity")[1]
    # a change of both signs: within noise; an accuracy whose interval lies above 0.5
    mixed = readings.alignment_reading({"implicit": {"accuracy": 0.8, "ci95": [0.6, 0.95], "n": 40, "ties": 0}},
                                     answers([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0], same=(1,)))
    assert "changed 3 of the 4 held-out answers (every other one is the base model's, word for word)" in mixed
    assert "(within noise)" in mixed and "above chance" in mixed


def test_claim1_reading_with_the_logistic_length_control():
    metrics = _stage3(lengths=True)
    acc = metrics["accuracy"]
    assert all(0 <= acc[s]["length_controlled"] <= 1 for s in acc)
    text = readings.claim1_reading(metrics)["claim1_controlled"]
    assert text.startswith("Read at equal length by the logistic length control (AlpacaEval 2's")
    assert f"the self-rewarding score is right on {readings.fmt_controlled(acc['dlma'])}" in text
    assert f"the one-line length judge reads {readings.fmt_controlled(acc['length'])} there" in text
    assert "length-controlled [95% CI]" in report.metrics_frame(acc).columns
