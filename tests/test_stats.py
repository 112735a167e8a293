"""Paired comparisons of judges on the same pairs (dlma.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from dlma.stats import accuracy_by_group, paired_comparison


def outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return a, b


def test_mcnemar_matches_the_exact_binomial_test():
    # the 300 pairs: dlma right and rlaif wrong on 72, the reverse on 57 -> p = 0.22
    a, b = outcomes(72, 72, 57, 99)
    got = paired_comparison(a, b, n_boot=500)
    assert (got["a_only"], got["b_only"], got["n"]) == (72, 57, 300)
    assert got["mcnemar_p"] == pytest.approx(0.2176, abs=1e-4)
    assert got["difference"] == pytest.approx((72 - 57) / 300)
    lo, hi = got["ci95"]
    assert lo < got["difference"] < hi and lo < 0 < hi  # not separated at 300 pairs


def test_a_clear_difference_is_separated_and_identical_judges_are_not():
    a, b = outcomes(100, 60, 10, 30)
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
