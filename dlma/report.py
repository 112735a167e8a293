"""Tables and figures for the notebooks, built from a stage's written results alone (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .layout import FOLDERS
from .prompts import pairs_from_definitions
from .readings import compare_readings, fmt_acc, fmt_balanced, fmt_ci, fmt_controlled, fmt_difference
from .score import SCORE_KEYS
from .study import StudyConfig


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


def show(name: str, fig, path) -> None:
    """A figure saved beside the stage's results and glued for the book, shown once: `glue` displays it, and
    closing it keeps the inline backend from showing it a second time at the end of the cell."""
    from myst_nb import glue

    fig.savefig(path, bbox_inches="tight")
    glue(name, fig)
    plt.close(fig)


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
    """Each scorer's accuracy with its interval, its length-balanced accuracy (where computed) and the pairs of
    equal length that one leaves out, its length-controlled accuracy (the logistic reading at equal length, where
    computed), n and ties."""
    rows = []
    for k, m in metrics.items():
        row = {"scorer": k, "accuracy": round(m["accuracy"], 3), "95% CI": f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"}
        if "balanced_accuracy" in m:
            row |= {"length-balanced [95% CI]": fmt_balanced(m), "same length": m["same_length"]}
        if "length_controlled" in m:
            row["length-controlled [95% CI]"] = fmt_controlled(m)
        rows.append({**row, "n": m["n"], "ties": m["ties"]})
    return pd.DataFrame(rows).set_index("scorer")


def plot_pref_acc(metrics: dict):
    """Each scorer's accuracy and, beside it, its length-balanced accuracy (where defined), with 95% intervals."""
    names = list(metrics)
    x = np.arange(len(names))
    kinds = [("accuracy", "ci95", "raw")]
    if any(metrics[n].get("balanced_accuracy") is not None for n in names):
        kinds.append(("balanced_accuracy", "balanced_ci95", "length-balanced"))
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots()
    for k, (key, ci, label) in enumerate(kinds):
        acc = np.array([metrics[n].get(key) if metrics[n].get(key) is not None else np.nan for n in names])
        err = [[acc[i] - metrics[n][ci][0] if metrics[n].get(ci) else 0 for i, n in enumerate(names)],
               [metrics[n][ci][1] - acc[i] if metrics[n].get(ci) else 0 for i, n in enumerate(names)]]
        ax.bar(x + (k - (len(kinds) - 1) / 2) * width, acc, width, yerr=err, capsize=4, label=label,
               color=["tab:green" if n == "dlma" else "tab:gray" for n in names], alpha=1.0 if k == 0 else 0.5,
               hatch=None if k == 0 else "//")
    ax.set_xticks(x, names)
    ax.axhline(0.5, color="black", lw=1, ls="--", label="chance")
    ax.set(ylim=(0, 1), ylabel="agreement with human labels", title="Preference accuracy (95% bootstrap CI)")
    ax.legend()
    return fig


def paired_frame(paired: list[dict]) -> pd.DataFrame:
    """Each pair of judges on the same pairs: accuracy difference, paired bootstrap interval, the pairs only
    one of them gets right, and the exact McNemar p-value; where computed, the same length-balanced: the
    difference of balanced accuracies with its paired interval and the exact stratified p-value."""
    rows = []
    for p in paired:
        row = {"a - b": f"{p['a']} - {p['b']}", "difference": round(p["difference"], 3),
               "paired 95% CI": f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]", "a only": p["a_only"],
               "b only": p["b_only"], "McNemar p": round(p["mcnemar_p"], 3)}
        if "balanced_difference" in p:
            row |= {"length-balanced difference [paired 95% CI]": fmt_difference(p["balanced_difference"],
                                                                                   p["balanced_ci95"]),
                    "stratified p": round(p["stratified_p"], 3) if p["stratified_p"] is not None else "undefined"}
        rows.append(row)
    return pd.DataFrame(rows).set_index("a - b")


def strata_frame(paired: list[dict]) -> pd.DataFrame:
    """Each pair of judges within each length stratum: its pairs, the pairs only one of them gets right, and the
    exact McNemar p-value (the strata a stratified test combines, and the pairs of equal length apart)."""
    return pd.DataFrame([{"a - b": f"{p['a']} - {p['b']}", "stratum": r["stratum"], "n": r["n"], "a only": r["a_only"],
                          "b only": r["b_only"], "McNemar p": round(r["mcnemar_p"], 3)}
                         for p in paired for r in p.get("by_stratum", [])]).set_index(["a - b", "stratum"])


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
    deciles = calibration[scorers[0]]  # every scorer's deciles hold as many pairs (ties aside)
    axes[2].set_xticks([b["bin"] for b in deciles], [f"{b['bin']}\n(n={b['n']})" for b in deciles], fontsize=7)
    axes[2].axhline(0.5, color="black", lw=1, ls="--")
    axes[2].set(ylim=(0, 1), ylabel="accuracy", xlabel="|score| decile (1 = least confident)", title="by confidence")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def agreement(paired: list[dict], a: str = "dlma", b: str = "rlaif") -> pd.DataFrame:
    """2x2 counts of pairs each of two judges got right or not, from their paired comparison: where they
    disagree."""
    p = next((p for p in paired if {p["a"], p["b"]} == {a, b}), None)
    if p is None:  # a run whose scorers leave out one of the two: nothing to cross
        return pd.DataFrame({"note": [f"this run did not score both {a} and {b}"]})
    a_only, b_only = (p["a_only"], p["b_only"]) if p["a"] == a else (p["b_only"], p["a_only"])
    return pd.DataFrame([[p["n"] - p["both"] - a_only - b_only, b_only], [a_only, p["both"]]],
                        index=pd.Index([False, True], name=f"{a} correct"),
                        columns=pd.Index([False, True], name=f"{b} correct"))


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


TRAIN_PANELS = {  # TRL's logged key: (panel title, y-axis label)
    "loss": ("DLMA loss", "loss (mean over the step's pairs)"),
    "rewards/margins": ("implicit reward margin", "beta x log-ratio, chosen - rejected"),
    "rewards/accuracies": ("implicit reward accuracy", "share of pairs, chosen > rejected"),
}


def plot_train_curves(log: list[dict], step0_loss: float | None = None):
    """The logged training curves; `step0_loss`, the loss expected at step 0 (step0_guard.json's `expected`:
    ln 2 only where gamma = 0, the margin shifts it), drawn on the loss panel."""
    df = pd.DataFrame(log)
    cols = [c for c in TRAIN_PANELS if c in df]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4))
    for ax, c in zip(np.atleast_1d(axes), cols, strict=True):
        ax.plot(df["step"], df[c], marker="o")
        title, ylabel = TRAIN_PANELS[c]
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        if c == "loss" and step0_loss is not None:
            ax.axhline(step0_loss, color="black", lw=1, ls="--", label=f"step-0 loss {step0_loss:.4f}")
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
    from matplotlib.ticker import MaxNLocator

    df = pd.DataFrame(responses)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, values in enumerate((df["contrastive_score"], np.log(df["perplexity"]))):
        edges = np.histogram_bin_edges(values, bins=15)  # one set of bins for both models: bars comparable
        for name, color in (("base", "tab:gray"), ("dlma", "tab:green")):
            part = values[df["model"] == name]
            axes[k].hist(part, bins=edges, alpha=0.6, color=color, label=f"{name} (n={len(part)})")
    axes[0].set(title="Base model's contrastive score C(o)", xlabel="S(o|p+) - S(o|p-)")
    axes[1].set(title="log perplexity under the base", xlabel="log ppl")
    for ax in axes:
        ax.set_ylabel("answers")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: whole numbers
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
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    ax.barh(names, acc, xerr=err, capsize=3, color=colours)
    ax.axvline(0.5, color="black", lw=1, ls="--")
    ax.set(xlim=(0.3, 0.7), xlabel=f"accuracy on the selection slice (n={study['split']['n_select']}, 95% CI)",
           title="Prompt-pair study: each candidate on the selection slice")
    ax.legend(handles=[Patch(color="tab:blue", label="the paper's pair"), Patch(color="tab:green", label="selected"),
                       Patch(color="tab:gray", label="other candidates")], fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def confirmation_frame(study: dict) -> pd.DataFrame:
    """The confirmation step: the selected candidate and the reference on the rest, then their paired test."""
    c = study["confirmation"]
    frame = metrics_frame({f"selected: {study['selected']}": c["selected"],
                           f"reference: {study['reference']}": c["reference"]})
    p = c["paired"]
    frame["selected - reference"] = [fmt_difference(p["difference"], p["ci95"]), ""]
    frame["McNemar p"] = [round(p["mcnemar_p"], 3), ""]
    if "balanced_difference" in p:
        frame["length-balanced: selected - reference"] = [fmt_difference(p["balanced_difference"],
                                                                         p["balanced_ci95"]), ""]
        frame["stratified p"] = [round(p["stratified_p"], 3) if p["stratified_p"] is not None else "undefined", ""]
    return frame


def study_summary(result: dict, run) -> str:
    """What `dlma pair-study` prints: the candidates on the selection slice, then the selected one confirmed."""
    return f"{study_frame(result).to_string()}\n\n{confirmation_frame(result).to_string()}"


def pairs_frame(study_params: dict) -> pd.DataFrame:
    """The prompt pairs a study compared, as it read them (its params.json: `study_variants` and the definitions
    of pairs from a pairs file): each variant's rendering and its p+ and p- (affix text, or the system messages of
    the chat rendering)."""
    pairs = pairs_from_definitions(study_params.get("pair_definitions", {}))
    rows = []
    for v, pair, rendering in StudyConfig(study_variants=study_params["study_variants"]).variant_list():
        p = pairs[pair]
        pos, neg = (p.pos_system, p.neg_system) if rendering == "chat" else (p.pos, p.neg)
        rows.append({"variant": v, "rendering": rendering or "affix", "p+": pos.replace("\n", "\\n"),
                     "p-": neg.replace("\n", "\\n")})
    return pd.DataFrame(rows).set_index("variant")


def run_label(run_dir) -> str:
    """Which run a notebook shows: the run folder's name and its preset's description (from the params.json
    that `dlma run` writes), or the folder's name alone for a notebook run by hand or by nbval."""
    path = Path(run_dir) / "params.json"
    described = json.loads(path.read_text(encoding="utf-8")).get("description") if path.is_file() else None
    name = Path(run_dir).resolve().name
    return f"`{name}`: {described}" if described else f"`{name}`"


def baselines_frame(result: dict, opponent: str = "base") -> pd.DataFrame:
    """The paper's table at the embedded scale: each method's win rate against `opponent` by each judge (the
    RLAIF judge's also length-controlled, with its counts) and implicit-reward accuracy (also length-balanced),
    with 95% intervals."""
    rows = []
    for m, e in result.items():
        rlaif, contrast, implicit = e.get(f"rlaif_vs_{opponent}"), e.get(f"contrast_vs_{opponent}"), \
            e.get("implicit_accuracy")
        rows.append({
            "method": m,
            f"RLAIF judge: win rate vs {opponent}": fmt_ci(rlaif["win_rate"]) if rlaif else "",
            "length-controlled": fmt_ci(rlaif["lc_win_rate"]) if rlaif else "",
            "win/tie/lose": f"{rlaif['win']}/{rlaif['tie']}/{rlaif['lose']}" if rlaif else "",
            f"contrast judge: win rate vs {opponent}": fmt_ci(contrast["win_rate"]) if contrast else "",
            "implicit-reward acc.": fmt_acc(implicit) if implicit else "",
            "length-balanced": fmt_balanced(implicit) if implicit and "balanced_accuracy" in implicit else "",
        })
    return pd.DataFrame(rows).set_index("method")


def answers_frame(result: dict) -> pd.DataFrame:
    """Each method's answers to the held-out prompts: refusal rate, the base's contrastive score C(o), median
    perplexity under the base, distinct-2 and length in tokens, with 95% intervals."""
    rows = [{"method": m, "refusal rate": fmt_ci(e["refusal_rate"], 2), "C(o)": fmt_ci(e["contrastive_score"], 2),
             "perplexity (median)": fmt_ci(e["perplexity_median"], 1), "distinct-2": fmt_ci(e["distinct_2"], 2),
             "length (tokens)": fmt_ci(e["length_tokens"], 1)} for m, e in result.items()]
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
                             "lose": v["lose"], "win rate": fmt_ci(v["win_rate"]),
                             "length-controlled": fmt_ci(v["lc_win_rate"]), "sign test p": round(v["sign_test_p"], 3),
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
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 0.45 * len(result) + 1.4), squeeze=False)
    for ax, (judge, opponent) in zip(axes[0], panels, strict=True):
        names = [m for m, e in result.items() if f"{judge}_vs_{opponent}" in e][::-1]
        left = np.zeros(len(names))
        for verdict, color in (("win", "tab:green"), ("tie", "tab:gray"), ("lose", "tab:red")):
            share = np.array([result[m][f"{judge}_vs_{opponent}"][verdict] for m in names], dtype=float)
            share /= np.array([sum(result[m][f"{judge}_vs_{opponent}"][v] for v in ("win", "tie", "lose"))
                               for m in names])
            ax.barh(names, share, left=left, color=color, label=verdict)
            left += share
        for y, m in enumerate(names):  # the counts and the win rate's interval (ties count half), at the right
            v = result[m][f"{judge}_vs_{opponent}"]
            lo, hi = v["win_rate"]["ci95"]
            ax.text(1.02, y, f"{v['win']}/{v['tie']}/{v['lose']}  {v['win_rate']['value']:.2f} [{lo:.2f}, {hi:.2f}]",
                    va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.axvline(0.5, color="black", lw=0.6, ls=":")
        ax.set(title=f"{judge} judge, against {opponent}", xlim=(0, 1),
               xlabel="share of prompts (right: win/tie/lose, win rate [95% CI])")
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


def compare_frame(comparison: dict) -> pd.DataFrame:
    """Stage 3's scorers and stage 5's implicit reward, run b against run a on the same items: both accuracies,
    the paired difference b - a with its interval and exact McNemar p, the length-balanced difference and the
    stratified test (stage 3), and each run's length-controlled accuracy."""
    rows = []
    for scorer, r in comparison["stages"].get(FOLDERS["pref"], {}).get("scorers", {}).items():
        rows.append({"what": f"stage 3: {scorer}", "n": r["n"], "a": round(r["accuracy_a"], 3),
                     "b": round(r["accuracy_b"], 3), "b - a [95% CI]": fmt_difference(r["difference"], r["ci95"]),
                     "McNemar p": round(r["mcnemar_p"], 3),
                     "balanced b - a": fmt_difference(r["balanced_difference"], r["balanced_ci95"]),
                     "stratified p": round(r["stratified_p"], 3) if r["stratified_p"] is not None else "undefined",
                     "length-controlled a / b": " / ".join(
                         f"{r[f'length_controlled_{s}']:.3f}" if r[f"length_controlled_{s}"] is not None else "-"
                         for s in "ab")})
    implicit = comparison["stages"].get(FOLDERS["evaluate"], {}).get("implicit")
    if implicit:
        rows.append({"what": "stage 5: implicit reward", "n": implicit["n"], "a": round(implicit["accuracy_a"], 3),
                     "b": round(implicit["accuracy_b"], 3),
                     "b - a [95% CI]": fmt_difference(implicit["difference"], implicit["ci95"]),
                     "McNemar p": round(implicit["mcnemar_p"], 3)})
    return pd.DataFrame(rows).set_index("what") if rows else pd.DataFrame()


def plot_compare(comparison: dict):
    """Left: stage 3's paired differences b - a per scorer, raw and length-balanced, with their intervals.
    Right: both runs' training loss by step (stage 4)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    scorers = comparison["stages"].get(FOLDERS["pref"], {}).get("scorers", {})
    for k, (key, ci_key, label, color) in enumerate((("difference", "ci95", "raw", "tab:blue"),
                                                     ("balanced_difference", "balanced_ci95", "length-balanced",
                                                      "tab:orange"))):
        names = [s for s, r in scorers.items() if r[key] is not None]
        y = np.arange(len(names)) + (0.15 if k else -0.15)
        values = np.array([scorers[s][key] for s in names])
        err = np.array([[v - scorers[s][ci_key][0], scorers[s][ci_key][1] - v] for s, v in zip(names, values,
                                                                                               strict=True)]).T
        if names:
            axes[0].errorbar(values, y, xerr=err, fmt="o", color=color, label=label, capsize=3)
    axes[0].set_yticks(range(len(scorers)), list(scorers))
    axes[0].axvline(0, color="gray", lw=0.8)
    axes[0].set(title="Preference accuracy, run b - run a (95% CI)", xlabel="difference in accuracy")
    if scorers:
        axes[0].legend()
    training = comparison["stages"].get(FOLDERS["train"])
    if training:
        for side, style in (("a", "-"), ("b", "--")):
            log = training[f"log_{side}"]
            axes[1].plot([r["step"] for r in log], [r["loss"] for r in log], style, marker="o", label=f"run {side}")
        axes[1].legend()
    axes[1].set(title="Training loss (stage 4)", xlabel="step", ylabel="loss")
    fig.tight_layout()
    return fig


def compare_summary(result: dict) -> str:
    """What `dlma compare` prints: per comparison, the runs, the table and one line per stage."""
    blocks = []
    for c in result["comparisons"]:
        lines = [f"a: {c['a']}", f"b: {c['b']}"]
        table = compare_frame(c)
        if not table.empty:
            lines += ["", table.to_string()]
        lines += ["", *compare_readings(c).values()]
        if c["not_compared"]:
            lines.append(f"Not compared (finished in one run only): {', '.join(c['not_compared'])}.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
