"""Tables and figures for the notebooks, built from a stage's written results alone (no model)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .score import SCORE_KEYS


def end_reasons(rows: list[dict]) -> pd.DataFrame:
    """How generated responses ended (eos, a new turn, or max_new_tokens), counted for o1 and o2."""
    return pd.DataFrame({"o1 (p+)": pd.Series([r["o1_end"] for r in rows]).value_counts(),
                         "o2 (p-)": pd.Series([r["o2_end"] for r in rows]).value_counts()}).fillna(0).astype(int)


def r_summary(rows: list[dict]) -> dict:
    r = np.array([x["self_reward"] for x in rows], dtype=float)
    return {"n_pairs": len(r), "mean": float(r.mean()), "median": float(np.median(r)),
            "share_negative": float((r < 0).mean()), "share_zero": float((r == 0).mean())}


def extreme_pairs(rows: list[dict], k: int = 3) -> pd.DataFrame:
    """The k most confident (largest R) and k least confident (most negative R) pairs."""
    df = pd.DataFrame([{"id": r["id"], "query": r["turns"][-1], "o1 (p+)": r["o1"], "o2 (p-)": r["o2"],
                        "R": r["self_reward"]} for r in rows]).sort_values("R", ascending=False)
    return pd.concat([df.head(k).assign(which="most confident"), df.tail(k).assign(which="least confident")])


def side_by_side(rows: list[dict], k: int = 5, width: int = 300) -> pd.DataFrame:
    return pd.DataFrame([{"query": r["turns"][-1], "pair": r.get("pair"), "o1 under p+": r["o1"][:width],
                          "o2 under p-": r["o2"][:width]} for r in rows[:k]])


def plot_r_distribution(rows: list[dict]):
    r = np.array([x["self_reward"] for x in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].hist(r, bins=min(30, max(5, len(r) // 3)), color="tab:blue", alpha=0.8)
    axes[0].axvline(0, color="black", lw=1)
    axes[0].set(title=f"Self-reward R ({(r < 0).mean():.0%} of pairs below 0)", xlabel="R", ylabel="pairs")
    terms = np.array([[x[k] for k in SCORE_KEYS] for x in rows], dtype=float)
    axes[1].boxplot(terms, tick_labels=["S(o1|p+)", "S(o1|p-)", "S(o2|p+)", "S(o2|p-)"])
    axes[1].set(title="The four log-probabilities", ylabel="summed log-prob")
    fig.tight_layout()
    return fig


def metrics_frame(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame([{"scorer": k, "accuracy": round(m["accuracy"], 3),
                          "95% CI": f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]", "n": m["n"], "ties": m["ties"]}
                         for k, m in metrics.items()]).set_index("scorer")


def fmt_acc(m: dict) -> str:
    return f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def plot_pref_acc(metrics: dict):
    names = list(metrics)
    acc = np.array([metrics[n]["accuracy"] for n in names])
    lo = acc - np.array([metrics[n]["ci95"][0] for n in names])
    hi = np.array([metrics[n]["ci95"][1] for n in names]) - acc
    fig, ax = plt.subplots()
    ax.bar(names, acc, yerr=[lo, hi], capsize=6, color=["tab:green" if n == "dlma" else "tab:gray" for n in names])
    ax.axhline(0.5, color="black", lw=1, ls="--", label="chance")
    ax.set(ylim=(0, 1), ylabel="agreement with human labels", title="Preference accuracy (95% bootstrap CI)")
    ax.legend()
    return fig


def paired_frame(paired: list[dict]) -> pd.DataFrame:
    """Each pair of judges on the same pairs: accuracy difference, paired bootstrap interval, the pairs only
    one of them gets right, and the exact McNemar p-value."""
    return pd.DataFrame([{"a - b": f"{p['a']} - {p['b']}", "difference": round(p["difference"], 3),
                          "paired 95% CI": f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]", "a only": p["a_only"],
                          "b only": p["b_only"], "McNemar p": round(p["mcnemar_p"], 3)}
                         for p in paired]).set_index("a - b")


def plot_splits(metrics: dict, calibration: dict):
    """One figure, three panels: accuracy by which response the human chose by length, by number of turns,
    and by |score| decile, each point with its 95% interval (n under each group label)."""
    scorers = [s for s in metrics["accuracy"] if s != "random"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, by, title in ((axes[0], "length", "by which response the human chose"),
                          (axes[1], "turns", "by number of human turns")):
        groups = [g["group"] for g in metrics["splits"][by][scorers[0]]]
        width = 0.8 / len(scorers)
        for k, s in enumerate(scorers):
            rows = metrics["splits"][by][s]
            acc = np.array([r["accuracy"] for r in rows])
            err = [acc - [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows] - acc]
            ax.bar(np.arange(len(rows)) + (k - (len(scorers) - 1) / 2) * width, acc, width, yerr=err, capsize=3,
                   label=s)
        counts = [r["n"] for r in metrics["splits"][by][scorers[0]]]
        ax.set_xticks(range(len(groups)), [f"{g}\n(n={n})" for g, n in zip(groups, counts, strict=True)])
        ax.axhline(0.5, color="black", lw=1, ls="--")
        ax.set(ylim=(0, 1), ylabel="accuracy", title=title)
    for s in scorers:
        bins = calibration[s]
        acc = np.array([b["accuracy"] for b in bins])
        axes[2].errorbar([b["bin"] for b in bins], acc, capsize=3, marker="o", label=s,
                         yerr=[acc - [b["ci95"][0] for b in bins], [b["ci95"][1] for b in bins] - acc])
    axes[2].axhline(0.5, color="black", lw=1, ls="--")
    axes[2].set(ylim=(0, 1), xlabel="|score| decile (1 = least confident)", title="by confidence")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def agreement(predictions: list[dict], a: str = "dlma", b: str = "rlaif") -> pd.DataFrame:
    """2x2 counts of pairs each scorer got right or wrong: where two judges disagree."""
    pred = pd.DataFrame(predictions).pivot(index="id", columns="scorer", values="correct")
    return pd.crosstab(pred.get(a), pred.get(b), rownames=[f"{a} correct"], colnames=[f"{b} correct"])


def plot_calibration(calibration: dict):
    fig, ax = plt.subplots()
    for name, bins in calibration.items():
        if name == "random":
            continue
        ax.plot([b["bin"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
    ax.axhline(0.5, color="black", lw=1, ls="--")
    ax.set(xlabel="|score| decile (1 = least confident)", ylabel="accuracy", ylim=(0, 1),
           title="Accuracy by confidence")
    ax.legend()
    return fig


TIMING_KEYS = ("wall_time_s", "train_runtime_s", "s_per_step")


def train_summary(summary: dict) -> pd.Series:
    """The training summary without its timings, which differ on every rerun (the manifest keeps them)."""
    return pd.Series({k: v for k, v in summary.items() if k not in TIMING_KEYS})


def plot_train_curves(log: list[dict]):
    df = pd.DataFrame(log)
    cols = [c for c in ("loss", "rewards/margins", "rewards/accuracies") if c in df]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4))
    for ax, c in zip(np.atleast_1d(axes), cols, strict=True):
        ax.plot(df["step"], df[c], marker="o")
        ax.set(title=c, xlabel="step")
        if c == "loss":
            ax.axhline(np.log(2), color="black", lw=1, ls="--", label="ln 2")
            ax.legend()
    fig.tight_layout()
    return fig


def alignment_frame(summary: dict) -> pd.DataFrame:
    rows = []
    for name in ("base", "dlma"):
        s = summary[name]
        rows.append({"model": name, "refusal rate": round(s["refusal_rate"], 3),
                     "contrastive score C(o) (mean)": round(s["contrastive_score_mean"], 2),
                     "perplexity under base (median)": round(s["perplexity_median"], 2), "n": s["n"]})
    return pd.DataFrame(rows).set_index("model")


def responses_side_by_side(responses: list[dict]) -> pd.DataFrame:
    """One row per held-out query, one column per model."""
    return pd.DataFrame(responses).pivot(index="query", columns="model", values="response")


def plot_alignment(responses: list[dict]):
    df = pd.DataFrame(responses)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, color in (("base", "tab:gray"), ("dlma", "tab:green")):
        part = df[df["model"] == name]
        axes[0].hist(part["contrastive_score"], bins=15, alpha=0.6, color=color, label=name)
        axes[1].hist(np.log(part["perplexity"]), bins=15, alpha=0.6, color=color, label=name)
    axes[0].set(title="Base model's contrastive score C(o)", xlabel="S(o|p+) - S(o|p-)")
    axes[1].set(title="log perplexity under the base", xlabel="log ppl")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    return fig


def study_frame(study: dict) -> pd.DataFrame:
    """The selection step: every candidate's accuracy on the selection slice, the selected one marked."""
    frame = metrics_frame(study["selection"]).rename_axis("variant")
    frame["selected"] = ["yes" if v == study["selected"] else "" for v in frame.index]
    return frame


def plot_study(study: dict):
    """Accuracy of each candidate on the selection slice with its 95% interval; the reference (the paper's
    pair) and the selected candidate coloured."""
    sel = study["selection"]
    names = list(sel)[::-1]  # the reference on top
    acc = np.array([sel[n]["accuracy"] for n in names])
    err = [acc - [sel[n]["ci95"][0] for n in names], [sel[n]["ci95"][1] for n in names] - acc]
    colours = ["tab:green" if n == study["selected"] else "tab:blue" if n == study["reference"] else "tab:gray"
               for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    ax.barh(names, acc, xerr=err, capsize=3, color=colours)
    ax.axvline(0.5, color="black", lw=1, ls="--")
    ax.set(xlim=(0.3, 0.7), xlabel=f"accuracy on the selection slice (n={study['split']['n_select']}, 95% CI)",
           title="Prompt-pair study: blue = the paper's pair, green = selected")
    fig.tight_layout()
    return fig


def confirmation_frame(study: dict) -> pd.DataFrame:
    """The confirmation step: the selected candidate and the reference on the rest, then their paired test."""
    c = study["confirmation"]
    frame = metrics_frame({f"selected: {study['selected']}": c["selected"],
                           f"reference: {study['reference']}": c["reference"]})
    p = c["paired"]
    frame["selected - reference"] = [f"{p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]", ""]
    frame["McNemar p"] = [round(p["mcnemar_p"], 3), ""]
    return frame


def pairs_frame(variants: list[str]) -> pd.DataFrame:
    """The prompt pairs of a study: each variant's rendering and its p+ and p- (affix text, or the system
    messages of the chat rendering)."""
    from .prompts import PAIRS

    rows = []
    for v in variants:
        pair, _, rendering = v.partition("@")
        p = PAIRS[pair]
        pos, neg = (p.pos_system, p.neg_system) if rendering == "chat" else (p.pos, p.neg)
        rows.append({"variant": v, "rendering": rendering or "affix", "p+": pos.replace("\n", "\\n"),
                     "p-": neg.replace("\n", "\\n")})
    return pd.DataFrame(rows).set_index("variant")


def run_label(run_dir) -> str:
    """Which run a notebook shows: the run folder's name and its preset's description (from the params.json
    that `dlma run` writes), or the folder's name alone for a notebook run by hand or by nbval."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "params.json"
    described = json.loads(path.read_text(encoding="utf-8")).get("description") if path.is_file() else None
    name = Path(run_dir).resolve().name
    return f"`{name}`: {described}" if described else f"`{name}`"


def _ci(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"


def baselines_frame(result: dict, opponent: str = "base") -> pd.DataFrame:
    """The paper's table at the embedded scale: each method's win rate against `opponent` by each judge (the
    RLAIF judge's also length-controlled, with its counts) and implicit-reward accuracy, with 95% intervals."""
    rows = []
    for m, e in result.items():
        rlaif, contrast, implicit = e.get(f"rlaif_vs_{opponent}"), e.get(f"contrast_vs_{opponent}"), \
            e.get("implicit_accuracy")
        rows.append({
            "method": m,
            f"RLAIF judge: win rate vs {opponent}": _ci(rlaif["win_rate"]) if rlaif else "",
            "length-controlled": _ci(rlaif["lc_win_rate"]) if rlaif else "",
            "win/tie/lose": f"{rlaif['win']}/{rlaif['tie']}/{rlaif['lose']}" if rlaif else "",
            f"contrast judge: win rate vs {opponent}": _ci(contrast["win_rate"]) if contrast else "",
            "implicit-reward acc.": fmt_acc(implicit) if implicit else "",
        })
    return pd.DataFrame(rows).set_index("method")


def answers_frame(result: dict) -> pd.DataFrame:
    """Each method's answers to the held-out prompts: refusal rate, the base's contrastive score C(o), median
    perplexity under the base, distinct-2 and length in tokens, with 95% intervals."""
    rows = [{"method": m, "refusal rate": _ci(e["refusal_rate"], 2), "C(o)": _ci(e["contrastive_score"], 2),
             "perplexity (median)": _ci(e["perplexity_median"], 1), "distinct-2": _ci(e["distinct_2"], 2),
             "length (tokens)": _ci(e["length_tokens"], 1)} for m, e in result.items()]
    return pd.DataFrame(rows).set_index("method")


def judge_frame(result: dict) -> pd.DataFrame:
    """Every (judge, opponent) verdict of every method: win/tie/lose, win rate, length-controlled win rate,
    the sign test of wins against losses on the same prompts, and position consistency (a two-order judge's
    orders agreeing)."""
    rows = []
    for m, e in result.items():
        for key, v in e.items():
            if "_vs_" in key and key != "implicit_vs_dlma":
                judge, _, opponent = key.partition("_vs_")
                rows.append({"method": m, "judge": judge, "against": opponent, "win": v["win"], "tie": v["tie"],
                             "lose": v["lose"], "win rate": _ci(v["win_rate"]),
                             "length-controlled": _ci(v["lc_win_rate"]), "sign test p": round(v["sign_test_p"], 3),
                             "position consistency": round(v.get("position_consistency", float("nan")), 3)})
    return pd.DataFrame(rows).set_index(["method", "judge", "against"])


def implicit_paired_frame(result: dict) -> pd.DataFrame:
    """Each method's implicit-reward accuracy against DLMA's on the same human pairs (paired)."""
    return paired_frame([{"a": m, "b": "dlma", **e["implicit_vs_dlma"]} for m, e in result.items()
                         if "implicit_vs_dlma" in e])


def plot_win_tie_lose(result: dict):
    """Win / tie / lose bars per method, one panel per (judge, opponent), as the paper's Figure 3."""
    panels = [(j, o) for o in ("base", "dlma") for j in ("rlaif", "contrast", "http")
              if any(f"{j}_vs_{o}" in e for e in result.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(result) + 1.4), squeeze=False)
    for ax, (judge, opponent) in zip(axes[0], panels, strict=True):
        names = [m for m, e in result.items() if f"{judge}_vs_{opponent}" in e][::-1]
        left = np.zeros(len(names))
        for verdict, color in (("win", "tab:green"), ("tie", "tab:gray"), ("lose", "tab:red")):
            share = np.array([result[m][f"{judge}_vs_{opponent}"][verdict] for m in names], dtype=float)
            share /= np.array([sum(result[m][f"{judge}_vs_{opponent}"][v] for v in ("win", "tie", "lose"))
                               for m in names])
            ax.barh(names, share, left=left, color=color, label=verdict)
            left += share
        ax.axvline(0.5, color="black", lw=0.6, ls=":")
        ax.set(title=f"{judge} judge, against {opponent}", xlim=(0, 1), xlabel="share of prompts")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False)  # above the panels, on no bar
    return fig


def training_frame(result: dict) -> pd.DataFrame:
    """Each method's training on the shared budget: pairs, steps, final loss and its notes (the wall times are
    in baselines.json, not here: a published notebook holds only what the seed fixes)."""
    rows = []
    for m, e in result.items():
        t = e.get("training") or {}
        notes = {k: v for k, v in t.items() if k in ("swapped", "ties", "study_selected")}
        rows.append({"method": m, "pairs": t.get("n_pairs", ""), "steps": t.get("n_steps", ""),
                     "final loss": round(t["final_loss"], 4) if t.get("final_loss") is not None else "",
                     "notes": ", ".join(f"{k} {v}" for k, v in notes.items())})
    return pd.DataFrame(rows).set_index("method")
