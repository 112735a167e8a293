"""The readings: each claim and comparison said in words, generated from a stage's written results alone by one
tested function, so that what a page says is true of the run it shows (a sentence whose wording depends on the
outcome is chosen here). Numbers are formatted here too, for the sentences and the tables alike."""

from __future__ import annotations

import numpy as np

from .layout import FOLDERS
from .stats import LONGER, SAME_LENGTH, SHORTER, bootstrap_ci


def fmt_acc(m: dict) -> str:
    return f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


UNBALANCED = "undefined (no pair in one of the length strata)"


def fmt_balanced(m: dict) -> str:
    """A length-balanced accuracy with its interval, or why there is none."""
    if m.get("balanced_accuracy") is None:
        return UNBALANCED
    return f"{m['balanced_accuracy']:.3f} [{m['balanced_ci95'][0]:.3f}, {m['balanced_ci95'][1]:.3f}]"


def fmt_controlled(m: dict) -> str:
    """A length-controlled accuracy (`stats.length_controlled`) with its interval."""
    if m.get("length_controlled") is None:
        return "undefined (fewer than two pairs)"
    lo, hi = m["length_controlled_ci95"]
    return f"{m['length_controlled']:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_difference(value: float | None, ci: list | None) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if value is not None else "undefined"


def fmt_ci(m: dict, digits: int = 3) -> str:
    if m["value"] is None:  # undefined on this run (e.g. distinct-2 when no answer has two words)
        return f"undefined ({m.get('undefined', 'no item')})"
    return f"{m['value']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"


# ----------------------------------------------------------------------------------------------------------
# Stage 6 in words: the values the results page glues, each computed from baselines.json alone, so that what
# the page says is true of the run it shows (a sentence whose wording depends on the outcome is chosen here).

ALPHA = 0.05
JUDGE_NAMES = {"rlaif": "the RLAIF judge", "contrast": "the contrast judge", "http": "the HTTP judge"}
ANSWER_METRICS = (("refusal_rate", "refusal rate", 2), ("contrastive_score", "contrastive score", 2),
                  ("perplexity_median", "median perplexity", 1), ("distinct_2", "distinct-2", 2),
                  ("length_tokens", "length in tokens", 1))


def baseline_comparisons(result: dict) -> list[dict]:
    """Every judge verdict of stage 6, one dict per (method, judge, opponent), in the order of baselines.json:
    `method`, `judge`, `opponent` and the verdict's summary (win, tie, lose, sign_test_p, win_rate, ...)."""
    out = []
    for m, e in result.items():
        for key, v in e.items():
            if "_vs_" in key and key != "implicit_vs_dlma":
                judge, _, opponent = key.partition("_vs_")
                out.append({"method": m, "judge": judge, "opponent": opponent, **v})
    return out


def holm_rejected(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level `alpha` (p below
    alpha / (m - k) for the k-th smallest, k from 0, until the first that is not)."""
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(sorted(range(len(pvalues)), key=lambda k: pvalues[k])):
        if not pvalues[i] < alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def _join(words) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _opponent(name: str) -> str:
    return {"base": "the base model", "dlma": "DLMA"}.get(name, name)


def _where(c: dict) -> str:
    """'dlma_gamma0.1 against the base model by the RLAIF judge'."""
    return f"{c['method']} against {_opponent(c['opponent'])} by {JUDGE_NAMES.get(c['judge'], c['judge'])}"


def _tally(c: dict) -> str:
    return f"{c['win']} wins to {c['lose']}" + (f", {c['tie']} ties" if c["tie"] else "")


def _excludes(ci, value: float) -> bool:
    return ci[0] > value or ci[1] < value


def _range(lo: str, hi: str) -> str:
    return lo if lo == hi else f"{lo} to {hi}"


def _listed(items: list[str], limit: int = 6) -> str:
    """The first `limit` items, separated by semicolons (each may hold commas); the rest counted."""
    more = f"; and {len(items) - limit} more (the notebook's verdicts table lists them)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _small(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")[n] if 0 <= n <= 10 \
        else str(n)


def _separate(k: int, n: int) -> str:
    return f"{k} of the {n} comparisons separate{'s' if k == 1 else ''}"


def _count_sentence(n: int, singular: str, plural: str) -> str:
    return f"none {singular}" if n == 0 else f"one {singular}" if n == 1 else f"{n} {plural}"


def sign_test_reading(result: dict, alpha: float = ALPHA) -> dict:
    """The sign tests of wins against losses over every comparison of stage 6 (method x opponent x judge), as
    glue values: `baselines_sign_tests` (how many comparisons separate after Holm's correction, which have
    p < alpha and whether that is more than chance gives, which win-rate intervals exclude 0.5),
    `baselines_near_misses` (alpha <= p < 0.10), `baselines_vs_dlma` (every method against DLMA),
    `baselines_dlma_vs_base` (DLMA against the base model, by each judge) and `baselines_separation` (the
    verdict in a clause, for another page)."""
    comps = baseline_comparisons(result)
    text, separation = _sign_tests(comps, alpha)
    own = [c for c in comps if c["method"] == "dlma" and c["opponent"] == "base"]
    dlma_vs_base = f"DLMA itself, against the base model: {'; '.join(_outcome(c) for c in own)}." if own else ""
    return {"baselines_sign_tests": text, "baselines_near_misses": _near_misses(comps, alpha),
            "baselines_vs_dlma": _vs_dlma(comps, alpha), "baselines_dlma_vs_base": dlma_vs_base,
            "baselines_separation": separation}


def _detail(c: dict) -> str:
    return f"{_where(c)}, {_tally(c)} ({_p(c['sign_test_p'])}, win rate {fmt_ci(c['win_rate'])})"


def _sign_tests(comps: list[dict], alpha: float) -> tuple[str, str]:
    """(the sign tests' reading: Holm, those below alpha against chance, the win-rate intervals; the verdict in
    a clause)."""
    from scipy.stats import binom

    n = len(comps)
    n_pairs = len({frozenset((c["method"], c["opponent"])) for c in comps})
    n_judges = len({c["judge"] for c in comps})
    holm = [c for c, r in zip(comps, holm_rejected([c["sign_test_p"] for c in comps], alpha), strict=True) if r]
    sig = sorted((c for c in comps if c["sign_test_p"] < alpha), key=lambda c: c["sign_test_p"])
    excluding = [c for c in comps if _excludes(c["win_rate"]["ci95"], 0.5)]
    if holm:
        head = (f"{_separate(len(holm), n)} after Holm's correction for {n} tests: "
                f"{_listed([_detail(c) for c in holm])}.")
        separation = f"{_separate(len(holm), n)} after Holm's correction for {n} tests"
    else:
        head = "No method separates from another."
        separation = f"no method separates from another (none of the {n} sign tests survives Holm's correction)"
    body = (f"Of the {n} comparisons ({n_pairs} pairs of methods, {_small(n_judges)} judges), "
            f"{_count_sentence(len(sig), 'has', 'have')} a sign test of wins against losses below {alpha:g}")
    if sig:
        expected = alpha * n
        body += (f", about what {n} tests give by chance alone (at most {expected:.1f} expected at the {alpha:g} level)"
                 if binom.sf(len(sig) - 1, n, alpha) >= alpha else
                 f", more than the {expected:.1f} that {n} tests give by chance alone at the {alpha:g} level")
        if not holm:
            body += f", and {'it does not' if len(sig) == 1 else 'none'} survive{'' if len(sig) == 1 else 's'} " \
                    f"Holm's correction for the {n} tests"
        body += f": {_listed([_detail(c) for c in sig])}"
    body += "."
    if excluding and len(sig) == 1 and excluding == sig:
        intervals = f"Its win-rate interval is the only one of the {n} that excludes 0.5."
    elif excluding:
        intervals = (f"{'One' if len(excluding) == 1 else len(excluding)} of the {n} win-rate intervals "
                     f"exclude{'s' if len(excluding) == 1 else ''} 0.5: {_listed([_where(c) for c in excluding])}.")
    else:
        intervals = f"None of the {n} win-rate intervals excludes 0.5."
    return f"{head} {body} {intervals}", separation


def _near_misses(comps: list[dict], alpha: float) -> str:
    """The comparisons with alpha <= p < 0.10, those with the same judge, opponent and tally together."""
    groups: dict = {}
    for c in sorted((c for c in comps if alpha <= c["sign_test_p"] < 0.10), key=lambda c: c["sign_test_p"]):
        key = (c["judge"], c["opponent"], c["win"], c["tie"], c["lose"], round(c["sign_test_p"], 3))
        groups.setdefault(key, []).append(c)
    if not groups:
        return "No other sign test has p below 0.10."
    parts = []
    for (judge, opponent, *_), cs in groups.items():
        c = cs[0]
        parts.append(f"{_join(x['method'] for x in cs)} against {_opponent(opponent)} by "
                     f"{JUDGE_NAMES.get(judge, judge)}, {_tally(c)}{' each' if len(cs) > 1 else ''} "
                     f"({_p(c['sign_test_p'])})")
    return f"Between {alpha:g} and 0.10: {_listed(parts)}."


def _vs_dlma(comps: list[dict], alpha: float) -> str:
    against = [c for c in comps if c["opponent"] == "dlma"]
    against_sig = [c for c in against if c["sign_test_p"] < alpha]
    if not against:
        return "No method was compared with DLMA in this run."
    if against_sig:
        return (f"Against DLMA, {len(against_sig)} of the {len(against)} comparisons "
                f"{'has' if len(against_sig) == 1 else 'have'} a sign test below "
                f"{alpha:g}: {_listed([_detail(c) for c in against_sig])}.")
    return (f"Against DLMA, no method wins or loses with a sign test below {alpha:g} (the smallest p of "
            f"the {len(against)} comparisons is {min(c['sign_test_p'] for c in against):.3f}).")


def _outcome(c: dict) -> str:
    w, t, lose = c["win"], c["tie"], c["lose"]
    said = f"wins {w} to {lose}" if w > lose else f"loses {w} to {lose}" if w < lose else f"ties, {w} wins to {lose}"
    ties = f", {t} ties" if t else ""
    return f"by {JUDGE_NAMES.get(c['judge'], c['judge'])} it {said}{ties} ({_p(c['sign_test_p'])})"


def judges_reading(result: dict) -> dict:
    """What the judges did, as glue values: `baselines_rlaif_consistency` (the range of the RLAIF judge's
    position consistency, '9% to 31%'), `baselines_rlaif_reading` (that range, the share of its verdicts that
    are ties, and, when its orders agree on fewer than half of the prompts of every comparison, that it
    answers by position more than by content), `baselines_length_reading` (how far the length-controlled win
    rates are from the raw ones, the range of mean answer lengths), `baselines_contrast_reading` (the contrast
    judge's ties and its win-rate intervals that exclude 0.5) and `baselines_http_judge` (whether an
    OpenAI-compatible judge judged this run)."""
    comps = baseline_comparisons(result)
    rlaif = [c for c in comps if c["judge"] == "rlaif"]
    consistency = [c["position_consistency"] for c in rlaif if np.isfinite(c.get("position_consistency", np.nan))]
    if consistency:
        agree = _range(f"{min(consistency):.0%}", f"{max(consistency):.0%}")
        ties = sum(c["tie"] for c in rlaif) / sum(c["win"] + c["tie"] + c["lose"] for c in rlaif)
        if max(consistency) < 0.5:
            rlaif_text = (f"The RLAIF judge barely judges here: its two orders agree on only {agree} of the prompts, "
                          f"so {ties:.0%} of its verdicts are ties; the model answers by the option's position more "
                          "than by its content.")
        else:
            rlaif_text = (f"The RLAIF judge's two orders agree on {agree} of the prompts, and {ties:.0%} of its "
                          "verdicts are ties (a tie where the orders disagree).")
    else:
        agree, rlaif_text = "no measured share", "The RLAIF judge gave no verdict in this run."

    lengths = [e["length_tokens"]["value"] for e in result.values() if "length_tokens" in e]
    lc_gap = max((abs(c["lc_win_rate"]["value"] - c["win_rate"]["value"]) for c in comps), default=0.0)
    either = "either" if len({c["judge"] for c in comps}) == 2 else "every"
    length_text = (f"The length-controlled win rates (of {either} judge) differ from the raw ones by at most "
                   f"{lc_gap:.3f}")
    if lengths:
        length_text += (f"; the methods' answers are {_range(f'{min(lengths):.1f}', f'{max(lengths):.1f}')} tokens "
                        "long on average")
    length_text += "."

    contrast = [c for c in comps if c["judge"] == "contrast"]
    if contrast:
        n_verdicts = sum(c["win"] + c["tie"] + c["lose"] for c in contrast)
        n_ties = sum(c["tie"] for c in contrast)
        decides = (f"The contrast judge always decides (no tie in its {n_verdicts:,} verdicts)" if not n_ties else
                   f"The contrast judge ties on {n_ties:,} of its {n_verdicts:,} verdicts")
        excluding = [c for c in contrast if _excludes(c["win_rate"]["ci95"], 0.5)]
        contrast_text = decides + (
            f", and none of its {len(contrast)} win-rate intervals excludes 0.5." if not excluding else
            f"; {len(excluding)} of its {len(contrast)} win-rate intervals exclude 0.5: "
            f"{_listed([_where(c) for c in excluding])}.")
    else:
        contrast_text = "The contrast judge gave no verdict in this run."

    http = any(c["judge"] == "http" for c in comps)
    return {"baselines_rlaif_consistency": agree, "baselines_rlaif_reading": rlaif_text,
            "baselines_length_reading": length_text, "baselines_contrast_reading": contrast_text,
            "baselines_http_judge": "one judged this run beside the base model's two" if http else
            "none judged this run, which ran offline"}


def implicit_reading(result: dict, alpha: float = ALPHA) -> str:
    """Implicit-reward accuracy of every method in words: its range and whether every interval contains 0.5,
    whether every paired difference from DLMA's has an interval containing 0 (with the smallest McNemar p),
    the same length-balanced (where computed: the range, the intervals excluding 0.5, the stratified tests
    against DLMA's below `alpha`), and which method is highest and whether it differs significantly from
    DLMA."""
    acc = {m: e["implicit_accuracy"] for m, e in result.items() if "implicit_accuracy" in e}
    if not acc:
        return "No method has an implicit-reward accuracy in this run."
    values = [a["accuracy"] for a in acc.values()]
    span = _range(f"{min(values):.3f}", f"{max(values):.3f}")
    n = next(iter(acc.values()))["n"]
    off = [m for m, a in acc.items() if _excludes(a["ci95"], 0.5)]
    text = (f"Implicit-reward accuracy is indistinguishable from chance for every method: {span} on {n} human pairs, "
            "every 95% interval containing 0.5." if not off else
            f"Implicit-reward accuracy is {span} over the methods on {n} human pairs; the 95% intervals of "
            f"{_join(off)} exclude 0.5.")
    paired = {m: e["implicit_vs_dlma"] for m, e in result.items() if "implicit_vs_dlma" in e}
    if paired:
        apart = [m for m, p in paired.items() if _excludes(p["ci95"], 0.0)]
        if apart:
            text += " The paired difference from DLMA's has an interval excluding 0 for " + _join(
                f"{m} ({p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], McNemar "
                f"{_p(p['mcnemar_p'])})" for m, p in paired.items() if m in apart) + "."
        else:
            text += (" Every paired difference from DLMA's has an interval containing 0 (the smallest McNemar p is "
                     f"{min(p['mcnemar_p'] for p in paired.values()):.3f}).")
    text += _balanced_implicit(acc, paired, alpha)
    best = [m for m, a in acc.items() if a["accuracy"] == max(values)]
    if len(best) > 1:
        return text + f" The highest, {max(values):.3f}, is shared by {_join(best)}."
    m = best[0]
    if m == "dlma":
        return text + f" The highest is DLMA's own, {fmt_acc(acc[m])}."
    who = "rlhf, the RLHF stand-in trained on human pairs of the same distribution" if m == "rlhf" else m
    text += f" The highest is {who}: {fmt_acc(acc[m])}"
    if m in paired:
        p = paired[m]["mcnemar_p"]
        text += (f", significantly different from DLMA's (McNemar {_p(p)})" if p < alpha else
                 f", not significantly different from DLMA's (McNemar {_p(p)})")
    return text + "."


def _balanced_implicit(acc: dict, paired: dict, alpha: float) -> str:
    """The length-balanced sentence of `implicit_reading` ('' where no accuracy was balanced)."""
    bal = {m: a for m, a in acc.items() if a.get("balanced_accuracy") is not None}
    if not bal:
        return ""
    values = [a["balanced_accuracy"] for a in bal.values()]
    off = [m for m, a in bal.items() if _excludes(a["balanced_ci95"], 0.5)]
    text = f" Length-balanced, it is {_range(f'{min(values):.3f}', f'{max(values):.3f}')}" + (
        ", every interval containing 0.5" if not off else f", the intervals of {_join(off)} excluding 0.5")
    tests = {m: p["stratified_p"] for m, p in paired.items() if p.get("stratified_p") is not None}
    apart = [m for m, p in tests.items() if p < alpha]
    if apart:
        text += "; the length-stratified test against DLMA's has p below " + f"{alpha:g} for " + _join(
            f"{m} ({fmt_difference(paired[m]['balanced_difference'], paired[m]['balanced_ci95'])}, "
            f"{_p(tests[m])})" for m in apart)
    elif tests:
        text += (f"; no length-stratified test against DLMA's has p below {alpha:g} (the smallest is "
                 f"{min(tests.values()):.3f})")
    return text + "."


def training_reading(result: dict) -> str:
    """How far training moved the answers: every method's interval of each answer measure against the base
    model's (the non-overlapping ones listed), with the shared budget; and how many training pairs the RLAIF
    judge relabelled for rlaif_dpo."""
    base = result.get("base", {})
    budget = (result.get("dlma") or {}).get("training") or {}
    lead = f"with {budget['n_steps']} steps of LoRA training on {budget['n_pairs']} pairs, " \
        if "n_steps" in budget and "n_pairs" in budget else ""
    measures = _join(label for _, label, _ in ANSWER_METRICS)
    apart = []
    for m, e in result.items():
        if m == "base":
            continue
        for key, label, digits in ANSWER_METRICS:
            if key in e and key in base and e[key]["ci95"] and base[key]["ci95"] and not (
                    e[key]["ci95"][1] >= base[key]["ci95"][0]
                                                 and e[key]["ci95"][0] <= base[key]["ci95"][1]):
                apart.append(f"{m}'s {label}, {fmt_ci(e[key], digits)} against the base model's "
                             f"{fmt_ci(base[key], digits)}")
    if apart:
        text = (f"{lead[:1].upper()}{lead[1:]}{'every' if lead else 'Every'} method's interval of {measures} "
                f"overlaps the base model's, except {_listed(apart)}.")
    else:
        text = (f"Training moved the answers little: {lead}every method's interval of {measures} overlaps the base "
                "model's.")
    t = (result.get("rlaif_dpo") or {}).get("training") or {}
    if "swapped" in t:
        text += (f" rlaif_dpo's judge swapped the prompt label of {t['swapped']} of its {t['n_pairs']} training pairs "
                 f"and tied on {t.get('ties', 0)}, which keep it.")
    return text


def budget_reading(result: dict) -> str:
    """What this run's budget could separate at all: the methods right and wrong on exactly the human pairs
    DLMA is (no implicit-reward comparison with DLMA can differ), and how many prompts each judge tied."""
    same = [m for m, e in result.items()
            if "implicit_vs_dlma" in e and e["implicit_vs_dlma"]["a_only"] == 0 == e["implicit_vs_dlma"]["b_only"]]
    parts = []
    if same:
        n = result[same[0]]["implicit_vs_dlma"]["n"]
        parts.append(f"{_join(same)} {'is' if len(same) == 1 else 'are'} right and wrong on exactly the {n} human "
                     "pairs DLMA is, so no implicit-reward comparison of them with DLMA could differ")
    for judge in ("rlaif", "contrast", "http"):
        ties = [(v["tie"], v["win"] + v["tie"] + v["lose"]) for e in result.values()
                for v in [e.get(f"{judge}_vs_base")] if v]
        if ties and max(t for t, _ in ties) >= 0.5 * ties[0][1]:
            lo, hi = min(t for t, _ in ties), max(t for t, _ in ties)
            name = {"rlaif": "RLAIF", "http": "HTTP"}.get(judge, judge)
            parts.append(f"the {name} judge ties {_range(str(lo), str(hi))} of the {ties[0][1]} prompts against the "
                         "base model, leaving few verdicts for a sign test")
    if not parts:
        return ""
    return ("At this budget " + "; ".join(parts) + ": a difference not found here is no evidence against one "
            "at the paper's scale.")


def claim2_reading(result: dict, alpha: float = ALPHA) -> str:
    """The conclusion on the paper's claim 2 that this run supports, chosen by whether any comparison
    separates after Holm's correction and by which judges, then what the budget could separate."""
    return " ".join(filter(None, (_claim2_verdict(result, alpha), budget_reading(result))))


def _claim2_verdict(result: dict, alpha: float) -> str:
    comps = baseline_comparisons(result)
    holm = [c for c, r in zip(comps, holm_rejected([c["sign_test_p"] for c in comps], alpha), strict=True) if r]
    budget = (result.get("dlma") or {}).get("training") or {}
    n_prompts = (result.get("base") or {}).get("refusal_rate", {}).get("n")
    scale = [f"{budget['n_pairs']} training pairs"] if "n_pairs" in budget else []
    scale += [f"{n_prompts} prompts"] if n_prompts else []
    at = f"with {_join(scale)}, " if scale else ""
    if not holm:
        judges = "any of this run's judges" if any(c["judge"] == "http" for c in comps) else "a base-model judge"
        return f"The paper's claim 2 is neither supported nor refuted here: {at}no method is distinguishable from " \
               f"another by {judges}."
    if all(c["judge"] in ("rlaif", "contrast") for c in holm):
        return (f"{_separate(len(holm), len(comps))} after Holm's correction, but only by judges "
                "made of the base model the methods were trained from, not by an independent judge such as the "
                "paper's GPT-4: the paper's claim 2 is neither supported nor refuted here.")
    return (f"{_separate(len(holm), len(comps))} after Holm's correction, the HTTP judge's among "
            "them (listed above): read them at this run's scale, not the paper's.")


def baselines_reading(result: dict) -> dict:
    """Every glue value of stage 6's reading on the results page, by name (all strings): the methods
    trained, the sign tests, the judges, implicit-reward accuracy, the answers and the conclusion."""
    trained = [m for m in result if m not in ("base", "dlma")]
    return {"baselines_methods": _join(trained) if trained else "none", **sign_test_reading(result),
            **judges_reading(result), "baselines_implicit_reading": implicit_reading(result),
            "baselines_training_reading": training_reading(result), "baselines_claim2": claim2_reading(result)}


# ----------------------------------------------------------------------------------------------------------
# Claim 1 in words: stage 3's comparison of the self-rewarding score with RLAIF, raw and length-balanced, each
# sentence computed from metrics.json alone and chosen by the outcome, so that the page is true of its run.

CLAIM1_NAMES = {"dlma": "the self-rewarding score", "rlaif": "RLAIF", "loglik": "the log-likelihood judge",
                "length": "the length judge", "random": "the random judge"}


def _name(scorer: str, capital: bool = False) -> str:
    name = CLAIM1_NAMES.get(scorer, scorer)
    return name[:1].upper() + name[1:] if capital else name


def _by_length(metrics: dict, scorer: str) -> dict[str, dict]:
    """{stratum: {"accuracy", "n", ...}} of one scorer, from the length split."""
    return {g["group"]: g for g in metrics["splits"]["length"][scorer]}


def _paired(metrics: dict, a: str, b: str) -> dict | None:
    """The paired comparison of judges a and b as `a - b`, whichever order stage 3 ran them in."""
    for p in metrics["paired"]:
        if (p["a"], p["b"]) == (a, b):
            return p
        if (p["a"], p["b"]) == (b, a):
            lo, hi = p["ci95"]
            return {**p, "a": a, "b": b, "difference": -p["difference"], "ci95": [-hi, -lo],
                    "a_only": p["b_only"], "b_only": p["a_only"]}
    return None


def _beyond_length(p: dict, A: str, B: str, alpha: float) -> str:
    """Claim 1's verdict, led by the length-balanced comparison, then what the raw one adds."""
    raw_apart, bal_apart = p["mcnemar_p"] < alpha, p["stratified_p"] < alpha
    raw_better = A if p["difference"] > 0 else B
    bal_better = A if p["balanced_difference"] > 0 else B
    raw_p, bal_p = _p(p["mcnemar_p"]), _p(p["stratified_p"])
    if bal_apart:
        holds = "claim 1 holds beyond length in this run" if bal_better == A else \
            "this run goes against claim 1 beyond length"
        lead = (f"Beyond length (each length stratum weighed equally), {bal_better} judges better than "
                f"{B if bal_better == A else A} ({bal_p}): {holds}.")
    else:
        lead = (f"Beyond length (each length stratum weighed equally), {A} and {B} are not told apart ({bal_p}): "
                "this run neither supports nor refutes claim 1.")
    if not raw_apart:
        return lead + f" Nor are they on the raw pairs ({raw_p})."
    if bal_apart and raw_better == bal_better:
        return lead + f" The raw pairs agree ({raw_better} ahead, {raw_p})."
    return (lead + f" On the raw pairs {raw_better} is ahead ({raw_p}), a difference in the two judges' "
            "preferences for length rather than in judging.")


def _floors(metrics: dict, a: str, alpha: float) -> str:
    """Where judge `a` stands against the floors any judge of these pairs must beat: chance, and the one-line
    judges that need no model of preference (`length`: the shorter response; `loglik`: the likelier one)."""
    acc = metrics["accuracy"]
    lo, hi = acc[a]["ci95"]
    parts = ["above chance" if lo > 0.5 else "below chance" if hi < 0.5 else "not distinguishable from chance"]
    for floor in ("length", "loglik"):
        p = _paired(metrics, a, floor) if floor in acc and floor != a else None
        if p is not None:
            rel = ("below" if p["difference"] < 0 else "above") if p["mcnemar_p"] < alpha else "not told apart from"
            parts.append(f"{rel} {_name(floor)} ({fmt_acc(acc[floor])}, McNemar {_p(p['mcnemar_p'])})")
    return (f"Against the floors any judge of these pairs must beat, {_name(a)} ({fmt_acc(acc[a])} on the raw "
            f"pairs) is {_join(parts)}.")


def _chance(m: dict) -> str:
    lo, hi = m["balanced_ci95"]
    return ("above chance (its interval lies above 0.5)" if lo > 0.5 else
            "below chance (its interval lies below 0.5)" if hi < 0.5 else
            "indistinguishable from chance (its interval contains 0.5)")


def claim1_reading(metrics: dict, a: str = "dlma", b: str = "rlaif", alpha: float = ALPHA) -> dict:
    """Stage 3's reading of claim 1 (judge `a`, the self-rewarding score, against `b`, RLAIF) as glue values,
    all strings: `claim1_raw` (both accuracies, their paired difference and McNemar p), `claim1_length` (how
    many chosen responses are the shorter, each judge's accuracy on those and on the others), `claim1_balanced`
    (the balanced accuracies, their paired difference, the stratified test and McNemar within each stratum),
    `claim1_verdict` (what the two comparisons together say of the claim), `claim1_chance` (whether each
    balanced accuracy is distinguishable from 0.5) and `claim1_controlled` (the logistic length control)."""

    acc = metrics["accuracy"]
    if a not in acc or b not in acc:
        missing = _join([s for s in (a, b) if s not in acc])
        return dict.fromkeys(("claim1_raw", "claim1_length", "claim1_balanced", "claim1_verdict", "claim1_chance",
                              "claim1_controlled"),
                             f"This run did not score {missing}: it does not compare the judges of claim 1.")
    p = next(p for p in metrics["paired"] if (p["a"], p["b"]) == (a, b))
    A, B = _name(a), _name(b)
    raw = (f"On the {p['n']:,} pairs, {A} is right on {fmt_acc(acc[a])} and {B} on {fmt_acc(acc[b])}: the "
           f"difference is {fmt_difference(p['difference'], p['ci95'])} (paired bootstrap), exact McNemar "
           f"{_p(p['mcnemar_p'])} ({p['a_only']} pairs only the first gets right, {p['b_only']} only the second).")

    strata = {s: _by_length(metrics, s) for s in acc}
    n = {k: strata[a].get(k, {}).get("n", 0) for k in (SHORTER, LONGER, SAME_LENGTH)}
    same = f"; {n[SAME_LENGTH]:,} are of equal length and counted apart" if n[SAME_LENGTH] else ""
    length = (f"The human chose the shorter response (in tokens) in {n[SHORTER]:,} of the {p['n']:,} pairs and the "
              f"longer in {n[LONGER]:,}{same}.")
    if not (n[SHORTER] and n[LONGER]):
        verdict = (f"Claim 1 cannot be read beyond length in this run: on the raw pairs {A} and {B} differ by "
                   f"{p['difference']:+.3f} ({_p(p['mcnemar_p'])}), and every pair's chosen response has the same "
                   "length relation.")
        return {"claim1_raw": raw, "claim1_length": length, "claim1_verdict": verdict,
                "claim1_balanced": "The length-balanced figures are undefined in this run (no pair in one of the "
                                   "length strata).",
                "claim1_chance": "Nor can either judge be held against chance once length is balanced.",
                "claim1_controlled": _controlled(acc, a, b)}
    shown = [s for s in (b, a, "length") if s in acc]
    length += (" " + "; ".join(f"{_name(s, k == 0)} is right on {strata[s][SHORTER]['accuracy']:.1%} of the first "
                               f"and {strata[s][LONGER]['accuracy']:.1%} of the second" for k, s in enumerate(shown))
               + " (a judge that always preferred the longer response would be right on none of the first and all "
               "of the second).")

    shorter, longer = (next(r for r in p["by_stratum"] if r["stratum"] == k) for k in (SHORTER, LONGER))
    balanced = (f"Length-balanced, each stratum weighed equally so that a judge following length alone scores 0.5: "
                f"{A} {fmt_balanced(acc[a])}, {B} {fmt_balanced(acc[b])}; the difference is "
                f"{fmt_difference(p['balanced_difference'], p['balanced_ci95'])} (paired bootstrap within the "
                f"strata), length-stratified test {_p(p['stratified_p'])}. Within the strata, exact McNemar gives "
                f"{_p(shorter['mcnemar_p'])} where the chosen response is the shorter ({shorter['a_only']} pairs "
                f"only {A} gets right, {shorter['b_only']} only {B}) and {_p(longer['mcnemar_p'])} where it is "
                f"the longer ({longer['a_only']} to {longer['b_only']}).")

    verdict = " ".join([_beyond_length(p, A, B, alpha), _floors(metrics, a, alpha)]).strip()
    if _chance(acc[a]) == _chance(acc[b]):
        both = _chance(acc[a]).replace("its interval", "each interval")
        chance = f"Once length is balanced, {A} and {B} are both {both}."
    else:
        chance = f"Once length is balanced, {A} is {_chance(acc[a])} and {B} is {_chance(acc[b])}."
    return {"claim1_raw": raw, "claim1_length": length, "claim1_balanced": balanced, "claim1_verdict": verdict,
            "claim1_chance": chance, "claim1_controlled": _controlled(acc, a, b)}


def _controlled(acc: dict, a: str, b: str) -> str:
    """The second length control, read beside the floor it leaves a pure length judge at on these pairs."""
    if "length_controlled" not in acc[a]:
        return "This run did not compute the logistic length control (stage 3 of an earlier version)."
    floor = (f"; the one-line length judge reads {fmt_controlled(acc['length'])} there, which is how far this "
             "control leaves a judge that follows length alone from 0.5 on these pairs") if "length" in acc else ""
    return (f"Read at equal length by the logistic length control (AlpacaEval 2's: the outcome modelled on the "
            f"length difference, read at 0), {_name(a)} is right on {fmt_controlled(acc[a])} and {_name(b)} on "
            f"{fmt_controlled(acc[b])}{floor}.")


# ----------------------------------------------------------------------------------------------------------
# Stage 3b's and stage 5's readings: each generated from the numbers, by the rule its page states


def _apart(ci: list | None, p: float | None, alpha: float) -> int:
    """+1 or -1 where a paired difference is established (its interval excludes 0 and the exact test agrees,
    p below alpha), else 0."""
    if ci is None or p is None or p >= alpha:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def study_reading(study: dict, alpha: float = ALPHA) -> str:
    """Stage 3b's verdict by the rule its page states: the selected candidate judges better than the paper's
    pair only where, on the pairs the selection never saw, the paired interval excludes 0 and the exact test
    agrees (p below alpha), both raw and length-balanced."""
    sel, ref, n = study["selected"], study["reference"], study["split"]["n_rest"]
    if sel == ref:
        return (f"The selection kept the paper's pair (`{ref}`): no other candidate was more accurate on the "
                f"{study['split']['n_select']:,} selection pairs, so there is nothing to confirm.")
    p = study["confirmation"]["paired"]
    raw = _apart(p["ci95"], p["mcnemar_p"], alpha)
    balanced = _apart(p["balanced_ci95"], p["stratified_p"], alpha)
    figures = (f"on the {n:,} pairs the selection never saw, `{sel}` minus `{ref}` is "
               f"{fmt_difference(p['difference'], p['ci95'])} raw (exact McNemar {_p(p['mcnemar_p'])}) and "
               f"{fmt_difference(p['balanced_difference'], p['balanced_ci95'])} length-balanced (stratified test "
               + (_p(p["stratified_p"]) if p["stratified_p"] is not None else "undefined") + ")")
    if raw == balanced == 1:
        return (f"The selected candidate `{sel}` judges better than the paper's pair: {figures}. Both conditions "
                "of the rule hold, raw and length-balanced; at this scale, on this data.")
    if raw == balanced == -1:
        return f"The selected candidate `{sel}` judges worse than the paper's pair: {figures}."
    failed = [what for what, d in (("raw", raw), ("length-balanced", balanced)) if d != 1]
    return (f"No candidate is shown to judge better than the paper's pair `{ref}`: {figures}. The rule needs "
            f"both comparisons established, and the {_join(failed)} one{'s are' if len(failed) > 1 else ' is'} "
            "not (its interval contains 0 or its p-value is not below "
            f"{alpha:g}); the selection points at most to a pair worth testing on other data.")


def alignment_reading(summary: dict, responses: list[dict], seed: int = 0, alpha: float = ALPHA) -> str:
    """Stage 5's reading: what the adapter changed on the held-out prompts, paired on the same prompts (the
    adapter's answer against the base's: how many differ, and the mean change of the base model's contrastive
    score C(o) and of the log perplexity, with paired bootstrap intervals), then the implicit-reward accuracy
    against chance (0.5)."""
    by_id = {(r["id"], r["model"]): r for r in responses}
    ids = [i for i, m in by_id if m == "base" and (i, "dlma") in by_id]
    imp = summary["implicit"]
    lo, hi = imp["ci95"]
    chance = "above chance" if lo > 0.5 else "below chance" if hi < 0.5 else "not distinguishable from chance"
    implicit = (f"The adapter's implicit reward agrees with the human label on {fmt_acc(imp)} of the {imp['n']:,} "
                f"held-out human pairs: {chance} (0.5).")
    if not ids:
        return f"No held-out prompt was answered by both models. {implicit}"
    changed = sum(by_id[i, "dlma"]["response"] != by_id[i, "base"]["response"] for i in ids)
    parts = []
    for key, label, transform in (("contrastive_score", "the base model's contrastive score C(o)", float),
                                  ("perplexity", "the log perplexity", np.log)):
        d = np.array([transform(by_id[i, "dlma"][key]) - transform(by_id[i, "base"][key]) for i in ids])
        ci = bootstrap_ci(d, seed=seed)
        moved = ("up" if ci[0] > 0 else "down") if (ci[0] > 0 or ci[1] < 0) else "within noise"
        parts.append(f"{label} moved by {fmt_difference(float(d.mean()), ci)} ({moved})")
    answers = (f"The adapter changed {changed} of the {len(ids)} held-out answers"
               + (" (every other one is the base model's, word for word)" if changed < len(ids) else ""))
    if changed == 0:
        return f"{answers}: at this training budget it left the sampled answers as they were. {implicit}"
    return (f"{answers}; on the same prompts, paired (adapter minus base, 95% paired bootstrap), "
            f"{_join(parts)}. Higher C(o) is more harmless by the base model's own judgement, lower perplexity "
            f"more fluent; a change within noise is not a change this run can show. {implicit}")


# ----------------------------------------------------------------------------------------------------------
# `dlma compare`: a run beside another, paired on the same items


def _verdict(ci: list | None, p: float | None, alpha: float = ALPHA) -> str:
    d = _apart(ci, p, alpha)
    return "beyond noise" if d else "within noise"


def _changed(params: list[dict], limit: int = 6) -> str:
    if not params:
        return "the same parameters and inputs"
    def value(v) -> str:  # a content hash by its first 12 digits, as git shows a commit
        return v[:12] if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) \
            else repr(v)

    shown = [f"{p['name']} {value(p['a'])} -> {value(p['b'])}" for p in params[:limit]]
    return "changed: " + "; ".join(shown) + (f" and {len(params) - limit} more" if len(params) > limit else "")


def _loss(value: float | None) -> str:
    return "none logged" if value is None else f"{value:.4f}"


def compare_readings(comparison: dict, alpha: float = ALPHA) -> dict[str, str]:
    """One sentence per stage compared: what changed between the runs, then the paired result and whether it is
    beyond noise (its interval excludes 0 and, for accuracies, exact McNemar p is below alpha too)."""
    out = {}
    for stage, r in comparison["stages"].items():
        head = f"{_changed(r['parameters'])}."
        if stage == FOLDERS["score"]:
            body = (f"R on the {r['n']} generated pairs both runs share: b - a = "
                    f"{fmt_difference(r['difference'], r['ci95'])} ({_verdict(r['ci95'], 0.0)}), the sign the same "
                    f"on {r['sign_agrees']}" if r["n"] else "No generated pair is the same in both runs")
            if r["other_responses"]:
                body += f"; {r['other_responses']} pairs share an id but not their responses and are left out"
        elif stage == FOLDERS["pref"]:
            parts = []
            for scorer, s in r["scorers"].items():
                raw = _verdict(s["ci95"], s["mcnemar_p"], alpha)
                bal = _verdict(s["balanced_ci95"], s["stratified_p"], alpha)
                parts.append(f"{_name(scorer)} {fmt_difference(s['difference'], s['ci95'])} "
                             f"({_p(s['mcnemar_p'])}, {raw}; length-balanced {bal})")
            n = max((s["n"] for s in r["scorers"].values()), default=0)
            body = f"Preference accuracy b - a on the {n:,} pairs both scored: {'; '.join(parts)}" if parts else \
                "No scorer is in both runs"
        elif stage == FOLDERS["train"]:
            body = (f"final training loss {_loss(r['final_loss_a'])} in a, {_loss(r['final_loss_b'])} in b (the "
                    "curves are drawn)")
        elif stage == FOLDERS["baselines"]:
            moved = [v for v in r["verdicts"] if v["difference"] and _verdict(v["ci95"], 0.0) == "beyond noise"]
            changed = sum(v["changed"] for v in r["verdicts"])
            body = (f"{len(r['verdicts'])} judge x method x opponent comparisons on the same prompts; the verdict "
                    f"changed on {changed} of {sum(v['n'] for v in r['verdicts'])} judgements; win rate b - a beyond "
                    "noise in " + ("; ".join(f"{v['model']} against {_opponent(v['opponent'])} by "
                                              f"{JUDGE_NAMES.get(v['judge'], v['judge'])} "
                                              f"{fmt_difference(v['difference'], v['ci95'])}" for v in moved)
                                   if moved else "none"))
        else:
            parts = []
            if "implicit" in r:
                i = r["implicit"]
                parts.append(f"implicit-reward accuracy b - a {fmt_difference(i['difference'], i['ci95'])} on "
                             f"{i['n']} held-out human pairs ({_p(i['mcnemar_p'])}, "
                             f"{_verdict(i['ci95'], i['mcnemar_p'], alpha)})")
            c = r["contrastive_score"]
            if c["n"]:
                parts.append(f"the adapter's answers' C(o) b - a {fmt_difference(c['difference'], c['ci95'])} on "
                             f"{c['n']} prompts ({_verdict(c['ci95'], 0.0)})")
            other = [f"{n} {what}" for n, what in ((r.get("implicit", {}).get("n_other_pairs", 0), "human pairs"),
                                                   (c.get("n_other_queries", 0), "prompts")) if n]
            if other:
                parts.append(f"left out: {' and '.join(other)} of one id but other content")
            body = "; ".join(parts) if parts else "No held-out item is in both runs"
        out[stage] = f"Stage {stage[:3].strip('_')}: {head} {body}."
    return out


