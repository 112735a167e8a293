"""Intervals and paired tests for judges scored on the same pairs, from scipy.stats.

A judge's outcome on a pair is correct (a score above the tie tolerance) or not; a tie (a score within
`TIE_TOLERANCE` of 0, or a pair whose two responses are the same text) is counted as a tie and is not correct.
Two judges are compared on the same pairs: the difference of their accuracies with a paired bootstrap interval
(the pairs are resampled together), and the exact McNemar test on the pairs where exactly one of them is right.

Length-balanced figures weigh the length strata equally (the pairs whose chosen response is the shorter, and
the others): the mean of a judge's accuracy within each, so that a judge that only follows length scores 0.5
whatever the share of each stratum. Their intervals resample the pairs within each stratum; two judges are
compared by exact McNemar within each stratum and by a test of their balanced difference (`stratified_test`).
"""

from __future__ import annotations

import numpy as np

# A score is a difference of log-probabilities (or of logits) computed in float32 and summed in float64. With
# share_prompts, the same text read at two places behind one prompt differs by rounding alone: on the embedded
# model, 32 identical chosen and rejected responses of up to 259 tokens gave |R| up to 1.0e-4 nats (median 1.3e-5)
# and log-likelihood differences up to 8e-5 (read one sequence each: exactly 0). The error grows with length
# (up to 1,024 tokens here); 1e-3 nats is ten times the largest seen, and a likelihood ratio of 1.001 is no
# preference a judge means. A score that is beta times such a difference (an implicit reward) ties within beta
# times it.
TIE_TOLERANCE = 1e-3

SHORTER, LONGER, SAME_LENGTH = "chosen shorter", "chosen longer", "same length"
BALANCED = (SHORTER, LONGER)  # the strata a length-balanced figure weighs equally; equal lengths are apart


def length_stratum(n_chosen: int, n_rejected: int) -> str:
    """Which response the human chose, by length."""
    return SHORTER if n_chosen < n_rejected else LONGER if n_chosen > n_rejected else SAME_LENGTH


def outcomes(scores, same=None, tolerance=TIE_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """(correct, tie) of each score (score > 0 picks the human-chosen response): a tie is a score within
    `tolerance` (one, or one per score) of 0 or, where `same` is given, a pair whose two responses are the
    same text."""
    s = np.asarray(scores, dtype=float)
    tie = np.abs(s) <= tolerance
    if same is not None:
        tie |= np.asarray(same, dtype=bool)
    return (s > 0) & ~tie, tie


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
    interval, the pairs both get right, the discordant counts, and the exact (binomial) McNemar p-value,
    two-sided."""
    from scipy.stats import binomtest, bootstrap

    a, b = _paired(a_correct, b_correct)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    diff = float(a.mean() - b.mean())
    if len(a) < 2:
        lo = hi = diff
    else:
        res = bootstrap((a.astype(float), b.astype(float)), _mean_difference, paired=True, n_resamples=n_boot,
                        method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed), vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"difference": diff, "ci95": [lo, hi], "both": int((a & b).sum()), "a_only": a_only, "b_only": b_only,
            "mcnemar_p": float(p), "n": int(len(a))}


def _paired(a_correct, b_correct) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes need the same pairs: got shapes {a.shape} and {b.shape}")
    return a, b


def accuracy_by_group(correct, groups, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Accuracy, count and interval within each group, groups in sorted order."""
    correct, groups = np.asarray(correct, dtype=bool), np.asarray(groups, dtype=object)
    out = []
    for g in sorted(set(groups.tolist())):
        sel = correct[groups == g]
        lo, hi = bootstrap_ci(sel, n_boot, seed)
        out.append({"group": g, "accuracy": float(sel.mean()), "ci95": [lo, hi], "n": int(len(sel))})
    return out


# ----------------------------------------------------------------------------------------------------------
# Length-balanced figures: the strata weighed equally


def _strata(values, strata, keep) -> list[np.ndarray] | None:
    """The values within each stratum of `keep`, in that order; None when one of them has no pair."""
    values, strata = np.asarray(values, dtype=float), np.asarray(strata, dtype=object)
    if values.shape != strata.shape:
        raise ValueError(f"one stratum per pair: got {values.shape} values and {strata.shape} strata")
    parts = [values[strata == k] for k in keep]
    return None if any(len(p) == 0 for p in parts) else parts


def balanced_mean(values, strata, keep, n_boot: int = 1000, seed: int = 0) -> tuple[float | None, list | None]:
    """(value, 95% interval) of the mean over the strata `keep` of the mean of `values` within each: of 0/1
    outcomes, a balanced accuracy; of differences of two judges' outcomes, the paired balanced difference. Each
    bootstrap resample draws the pairs within each stratum, keeping its size (the strata are what is weighed,
    not what is estimated). (None, None) when a stratum of `keep` has no pair."""
    parts = _strata(values, strata, keep)
    if parts is None:
        return None, None
    rng = np.random.default_rng(seed)
    boot = np.mean([p[rng.integers(0, len(p), size=(n_boot, len(p)))].mean(axis=1) for p in parts], axis=0)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.mean([p.mean() for p in parts])), [float(lo), float(hi)]


def stratified_test(a_correct, b_correct, strata, keep) -> dict:
    """Judge A against judge B within each stratum, and over the strata `keep` weighed equally.

    `by_stratum`: in each stratum (those of `keep` first), its pairs, the discordant counts and the exact McNemar
    p-value. `stratified_p`: the test that the balanced difference D, the mean over `keep` of the accuracy
    difference d = (a_only - b_only) / n within each, is 0: D over its standard error, each stratum's variance
    that of a paired difference of proportions, (a_only + b_only) / n - d^2, over n; two-sided, normal (None when
    a stratum of `keep` has no pair). It is asymptotic: with few discordant pairs in a stratum, read that
    stratum's exact McNemar p. Not Cochran-Mantel-Haenszel, which weighs the strata by their size as the raw
    comparison does (it separates two judges that differ only in which length they prefer, whenever the strata
    differ in size); nor an exact test conditional on the discordant pairs, whose null (no difference within any
    stratum) is far stricter than D = 0 and which is very conservative exactly where two judges lean to
    opposite lengths."""
    from scipy.stats import binomtest, norm

    a, b = _paired(a_correct, b_correct)
    strata = np.asarray(strata, dtype=object)
    rows = []
    for k in [*keep, *sorted(set(strata.tolist()) - set(keep))]:
        sel = strata == k
        a_only, b_only = int((a[sel] & ~b[sel]).sum()), int((~a[sel] & b[sel]).sum())
        rows.append({"stratum": k, "n": int(sel.sum()), "a_only": a_only, "b_only": b_only,
                     "mcnemar_p": float(binomtest(a_only, a_only + b_only).pvalue) if a_only + b_only else 1.0})
    kept = rows[: len(keep)]
    if any(r["n"] == 0 for r in kept):
        return {"by_stratum": rows, "stratified_p": None}
    d = np.array([(r["a_only"] - r["b_only"]) / r["n"] for r in kept])
    var = np.array([((r["a_only"] + r["b_only"]) / r["n"] - dk**2) / r["n"] for r, dk in zip(kept, d, strict=True)])
    diff, se = d.mean(), np.sqrt(var.sum()) / len(kept)
    if se == 0:  # every stratum decided alike on every pair: no sampling error to weigh D against
        return {"by_stratum": rows, "stratified_p": 1.0 if abs(diff) < 1e-12 else 0.0}
    return {"by_stratum": rows, "stratified_p": float(2 * norm.sf(abs(diff) / se))}


def balanced_comparison(a_correct, b_correct, strata, keep, n_boot: int = 1000, seed: int = 0) -> dict:
    """Judge A against judge B, length-balanced: the difference of their balanced accuracies with its paired
    interval (pairs resampled within each stratum, both judges together) and `stratified_test`."""
    a, b = _paired(a_correct, b_correct)
    diff, ci = balanced_mean(a.astype(float) - b.astype(float), strata, keep, n_boot, seed)
    return {"balanced_difference": diff, "balanced_ci95": ci, **stratified_test(a, b, strata, keep)}


# ----------------------------------------------------------------------------------------------------------
# A second length control: a judge's accuracy read at equal lengths from a logistic model (AlpacaEval 2's)


def _logistic_at_zero(correct, x, l2: float = 1.0, steps: int = 50) -> float:
    """P(correct) at x = 0 under the logistic model correct ~ a + b x, fitted by Newton's method with an L2
    penalty `l2` on the slope alone (the intercept is the quantity read, so it is not pulled anywhere)."""
    from scipy.special import expit

    y, x = np.asarray(correct, dtype=float), np.asarray(x, dtype=float)
    a = b = 0.0
    for _ in range(steps):
        p = expit(a + b * x)
        w = p * (1.0 - p) + 1e-12
        g = np.array([np.sum(p - y), np.sum((p - y) * x) + l2 * b])
        h = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum() + l2]])
        step = np.clip(np.linalg.solve(h, g), -5.0, 5.0)  # a judge right (or wrong) on every pair: a runs away
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(expit(a))


def length_controlled(correct, length_difference, n_boot: int = 1000, seed: int = 0) -> dict:
    """A judge's accuracy on pairs whose two responses are of equal length, read from a logistic model of its
    outcome (correct or not) on the length difference of the two responses (chosen minus rejected, in tokens,
    scaled by its standard deviation), at a difference of 0: the length control AlpacaEval 2 made standard for
    win rates (Dubois et al. 2024), here for agreement with the human label. A judge right on every pair reads
    1.0, one that follows length alone about 0.5 where the differences are spread alike on both sides of 0.
    The slope's L2 penalty (1 on the scaled difference) keeps the fit finite when length alone separates the
    outcomes; there the reading rests on it, and moves with how the differences are spread (on unequal
    strata, away from 0.5): the length-balanced accuracy, which needs no model, is the one to lead with, and
    the `length` judge's own reading shows how far the control leaves a pure length judge from 0.5 on the data
    at hand. Interval: percentile bootstrap over the pairs.
    {"accuracy", "ci95"}; None for both on fewer than two pairs."""
    y = np.asarray(correct, dtype=float)
    d = np.asarray(length_difference, dtype=float)
    if len(y) < 2:
        return {"accuracy": None, "ci95": None}
    scale = d.std() if d.std() > 0 else 1.0
    x = d / scale
    value = _logistic_at_zero(y, x)
    lo, hi = bootstrap_items_ci((y, x), _logistic_at_zero, n_boot, seed)
    return {"accuracy": value, "ci95": [lo, hi]}
