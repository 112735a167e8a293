"""Intervals and paired tests for judges scored on the same pairs, from scipy.stats.

A judge's outcome on a pair is correct (score > 0) or not; a tie (score == 0) counts as wrong. Two judges
are compared on the same pairs: the difference of their accuracies with a paired bootstrap interval (the
pairs are resampled together), and the exact McNemar test on the pairs where exactly one of them is right.
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(correct, n_boot: int = 1000, seed: int = 0, statistic=np.mean) -> tuple[float, float]:
    """95% percentile bootstrap interval of a statistic (the mean: of 0/1 outcomes, an accuracy) of one
    sample (scipy.stats.bootstrap, seeded). `statistic` takes the values and `axis`."""
    from scipy.stats import bootstrap

    correct = np.asarray(correct, dtype=float)
    if len(correct) < 2:  # one outcome: every resample is that outcome
        return float(statistic(correct, axis=-1)), float(statistic(correct, axis=-1))
    res = bootstrap((correct,), statistic, n_resamples=n_boot, method="percentile", confidence_level=0.95,
                    rng=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_items_ci(columns: tuple, statistic, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `statistic(*columns)`, resampling items (rows across the columns together):
    for statistics that are not vectorised, such as a fitted regression's intercept."""
    columns = tuple(np.asarray(c) for c in columns)
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    values = [statistic(*(c[idx] for c in columns)) for idx in rng.integers(0, n, size=(n_boot, n))] if n > 1 \
        else [statistic(*columns)] * 2
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _mean_difference(a, b, axis=-1):
    return a.mean(axis=axis) - b.mean(axis=axis)


def paired_comparison(a_correct, b_correct, n_boot: int = 1000, seed: int = 0) -> dict:
    """Judge A against judge B on the same pairs: accuracy difference A - B with a paired bootstrap 95%
    interval, the discordant counts, and the exact (binomial) McNemar p-value, two-sided."""
    from scipy.stats import binomtest, bootstrap

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes need the same pairs: got shapes {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    diff = float(a.mean() - b.mean())
    if len(a) < 2:
        lo = hi = diff
    else:
        res = bootstrap((a.astype(float), b.astype(float)), _mean_difference, paired=True, n_resamples=n_boot,
                        method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed), vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"difference": diff, "ci95": [lo, hi], "a_only": a_only, "b_only": b_only, "mcnemar_p": float(p),
            "n": int(len(a))}


def accuracy_by_group(correct, groups, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Accuracy, count and interval within each group, groups in sorted order."""
    correct, groups = np.asarray(correct, dtype=bool), np.asarray(groups, dtype=object)
    out = []
    for g in sorted(set(groups.tolist())):
        sel = correct[groups == g]
        lo, hi = bootstrap_ci(sel, n_boot, seed)
        out.append({"group": g, "accuracy": float(sel.mean()), "ci95": [lo, hi], "n": int(len(sel))})
    return out
