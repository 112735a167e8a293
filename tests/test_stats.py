"""Paired comparisons of judges on the same pairs, ties, and the length-balanced figures (dlma.stats), on
synthetic judges of known behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from dlma.stats import (
    TIE_TOLERANCE,
    accuracy_by_group,
    balanced_comparison,
    balanced_mean,
    outcomes,
    paired_comparison,
    stratified_test,
)

SHORT, LONG, SAME = "chosen shorter", "chosen longer", "same length"
KEEP = (SHORT, LONG)


def two_judges(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return a, b


def test_mcnemar_matches_the_exact_binomial_test():
    # the 300 pairs: dlma right and rlaif wrong on 72, the reverse on 57 -> p = 0.22
    a, b = two_judges(72, 72, 57, 99)
    got = paired_comparison(a, b, n_boot=500)
    assert (got["a_only"], got["b_only"], got["n"]) == (72, 57, 300)
    assert got["mcnemar_p"] == pytest.approx(0.2176, abs=1e-4)
    assert got["difference"] == pytest.approx((72 - 57) / 300)
    lo, hi = got["ci95"]
    assert lo < got["difference"] < hi and lo < 0 < hi  # not separated at 300 pairs


def test_a_clear_difference_is_separated_and_identical_judges_are_not():
    a, b = two_judges(100, 60, 10, 30)
    got = paired_comparison(a, b, n_boot=500)
    assert got["mcnemar_p"] < 1e-6 and got["ci95"][0] > 0
    same = paired_comparison(a, a)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same pairs"):
        paired_comparison(a, b[:-1])


def test_accuracy_by_group_counts_and_intervals():
    correct = [1, 1, 0, 1, 0, 0]
    rows = accuracy_by_group(correct, ["short", "short", "long", "short", "long", "long"], n_boot=200)
    assert [(r["group"], r["n"], r["accuracy"]) for r in rows] == [("long", 3, 0.0), ("short", 3, 1.0)]
    assert rows[0]["ci95"] == [0.0, 0.0] and rows[1]["ci95"] == [1.0, 1.0]


def test_scores_within_the_tolerance_and_equal_responses_are_ties():
    # float noise on identical responses (R = -1.5e-5, a log-likelihood difference of -1.7e-6) is a tie, not a
    # wrong answer; a real margin is right or wrong; a pair of one text is a tie whatever its score
    scores = [-1.5e-5, -1.7e-6, 1e-4, 0.0, 0.5, -0.5, 3.0]
    correct, tie = outcomes(scores, same=[False] * 6 + [True])
    assert tie.tolist() == [True, True, True, True, False, False, True]
    assert correct.tolist() == [False, False, False, False, True, False, False]
    assert outcomes([TIE_TOLERANCE, -TIE_TOLERANCE, 2 * TIE_TOLERANCE])[1].tolist() == [True, True, False]


def strata_of(n: int, share_shorter: float, n_same: int = 0) -> np.ndarray:
    k = round(n * share_shorter)
    return np.array([SHORT] * k + [LONG] * (n - k) + [SAME] * n_same, dtype=object)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.555, 0.9])
def test_a_pure_length_judge_is_at_chance_once_length_is_balanced(share):
    strata = strata_of(400, share, n_same=7)
    shorter = strata == SHORT  # prefers the shorter response: right exactly where the human chose it
    assert shorter.mean() == pytest.approx(round(400 * share) / 407)  # its raw accuracy is the share
    for judge in (shorter, strata == LONG):  # and the judge that prefers the longer one
        value, ci = balanced_mean(judge, strata, KEEP, n_boot=200)
        assert value == 0.5 and ci == [0.5, 0.5]


def test_a_judge_right_on_every_pair_has_balanced_accuracy_one():
    strata = strata_of(300, 0.7, n_same=3)
    assert balanced_mean(np.ones(303), strata, KEEP, n_boot=200) == (1.0, [1.0, 1.0])
    assert balanced_mean(np.ones(10), [SHORT] * 10, KEEP) == (None, None)  # no pair where the chosen is longer


def test_the_balanced_interval_resamples_within_each_stratum():
    rng = np.random.default_rng(0)
    strata = strata_of(600, 0.8)
    judge = np.where(strata == SHORT, rng.random(600) < 0.9, rng.random(600) < 0.3)
    value, (lo, hi) = balanced_mean(judge, strata, KEEP, n_boot=1000, seed=1)
    within = [judge[strata == k].mean() for k in KEEP]
    assert value == pytest.approx(np.mean(within)) and lo < value < hi
    assert hi - lo < 0.15 and (lo, hi) == tuple(balanced_mean(judge, strata, KEEP, n_boot=1000, seed=1)[1])


def test_judges_that_differ_only_through_length_are_not_separated_once_stratified():
    strata = strata_of(1307, 726 / 1307)  # the published run's share of pairs whose chosen response is shorter
    shorter, longer = strata == SHORT, strata == LONG
    raw = paired_comparison(shorter, longer, n_boot=200)
    assert raw["mcnemar_p"] < 1e-4  # the raw test separates them: 726 pairs against 581
    got = balanced_comparison(shorter, longer, strata, KEEP, n_boot=200)
    assert got["balanced_difference"] == 0 and got["balanced_ci95"] == [0.0, 0.0]
    assert got["stratified_p"] == pytest.approx(1.0)
    assert [(r["stratum"], r["a_only"], r["b_only"]) for r in got["by_stratum"]] == [(SHORT, 726, 0), (LONG, 0, 581)]
    assert all(r["mcnemar_p"] < 1e-100 for r in got["by_stratum"])  # within a stratum they differ completely

    # the same content reading, then a different length preference where the content does not decide
    rng = np.random.default_rng(0)
    decides = rng.random(1307) < 0.3
    content = rng.random(1307) < 0.7
    a, b = np.where(decides, content, shorter), np.where(decides, content, longer)
    assert paired_comparison(a, b, n_boot=200)["mcnemar_p"] < 0.01
    assert balanced_comparison(a, b, strata, KEEP, n_boot=200)["stratified_p"] > 0.05


def test_the_stratified_test_separates_a_judge_better_in_every_stratum():
    rng = np.random.default_rng(5)
    strata = strata_of(800, 0.6)
    b = rng.random(800) < 0.55
    a = b | (rng.random(800) < 0.15)  # right wherever b is, and on some more pairs of both strata
    got = balanced_comparison(a, b, strata, KEEP, n_boot=200)
    assert got["stratified_p"] < 1e-6 and got["balanced_ci95"][0] > 0


def test_the_stratified_test_weighs_the_balanced_difference_against_its_standard_error():
    a = np.array([1] * 9 + [0] * 3 + [1] * 20, dtype=bool)  # 12 pairs chosen shorter, 20 chosen longer
    b = np.array([0] * 9 + [1] * 3 + [1] * 20, dtype=bool)
    strata = [SHORT] * 12 + [LONG] * 20
    got = stratified_test(a, b, strata, KEEP)
    # d = 6/12 and 0; variances (12/12 - 0.25)/12 and 0; D = 0.25 over (0.0625 ** 0.5) / 2: z = 2
    assert got["stratified_p"] == pytest.approx(2 * norm.sf(2.0))
    assert got["by_stratum"][0]["mcnemar_p"] == pytest.approx(binomtest(9, 12).pvalue)
    assert got["by_stratum"][1] == {"stratum": LONG, "n": 20, "a_only": 0, "b_only": 0, "mcnemar_p": 1.0}
    assert stratified_test(a[:12], b[:12], strata[:12], KEEP)["stratified_p"] is None  # no pair chosen longer
    assert stratified_test(a, a, strata, KEEP)["stratified_p"] == 1.0


def test_the_stratified_test_agrees_with_the_balanced_interval():
    # judges that lean to opposite lengths and differ once balanced: the interval excludes 0, and p is small
    rng = np.random.default_rng(2)
    strata = strata_of(1300, 0.55)
    shorter = strata == SHORT
    a = np.where(shorter, rng.random(1300) < 0.12, rng.random(1300) < 0.80)  # right mostly on chosen-longer pairs
    b = shorter  # the length judge
    got = balanced_comparison(a, b, strata, KEEP, n_boot=1000)
    assert got["balanced_ci95"][1] < 0 and got["stratified_p"] < 0.01


# ----------------------------------------------------------------------------------------------------------
# the logistic length control (AlpacaEval 2's, for agreement with the human label)


def test_length_controlled_on_synthetic_judges():
    from dlma.stats import length_controlled

    rng = np.random.default_rng(0)
    spread = rng.integers(1, 61, size=650)
    diff = np.concatenate([spread, -spread])  # chosen minus rejected, in tokens: spread alike on both sides
    longer = diff > 0
    # a judge that follows length alone (right exactly where the chosen response is the longer)
    lc = length_controlled(longer, diff, n_boot=200)
    assert abs(lc["accuracy"] - 0.5) < 0.03 and lc["ci95"][0] < 0.5 < lc["ci95"][1]
    # where length alone separates the outcomes and the strata are unequal, the reading leaves 0.5 (documented)
    skewed = np.concatenate([spread, -spread[:200]])
    assert 0.55 < length_controlled(skewed > 0, skewed, n_boot=50)["accuracy"] < (skewed > 0).mean()
    # a judge right on every pair
    assert length_controlled(np.ones(1300, bool), diff, n_boot=50)["accuracy"] > 0.999
    # a judge blind to length, right on 70%: the control leaves it where it is
    blind = rng.random(1300) < 0.7
    lc = length_controlled(blind, diff, n_boot=200)
    assert abs(lc["accuracy"] - blind.mean()) < 0.02 and lc["ci95"][0] < blind.mean() < lc["ci95"][1]
    # right on 90% where the chosen response is the longer, 50% where it is the shorter: at equal length the
    # line through the two logits reads their midpoint, expit((logit 0.9 + logit 0.5) / 2) = 0.75
    mixed = np.where(longer, rng.random(1300) < 0.9, rng.random(1300) < 0.5)
    lc = length_controlled(mixed, diff, n_boot=200)
    assert abs(lc["accuracy"] - 0.75) < 0.04 and lc["ci95"][0] < 0.75 < lc["ci95"][1]
    assert length_controlled([True], [3]) == {"accuracy": None, "ci95": None}
