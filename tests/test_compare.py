"""`dlma compare`: two runs' stored outputs paired on the items they share, on run folders written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlma import readings, report
from dlma.compare import compare_runs
from dlma.errors import DLMAError


def write(folder: Path, name: str, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))


def make_run(root: Path, right: int, n: int = 100, extra: int = 0, gamma: float = 0.2, data_sha: str = "aa",
             r_shift: float = 0.0, losses=(0.69, 0.6), implicit_right: int = 30, c_shift: float = 0.0,
             content=lambda k: f"pair {k}", query=lambda k: f"query {k}") -> Path:
    """A run whose stage 3 `dlma` scorer is right on its first `right` pairs of `n` (+ `extra` pairs only it
    has; every second pair's chosen response the longer), stage 2 R = 1 + r_shift on 20 pairs, stage 4's loss
    curve, stage 5's implicit reward right on the first `implicit_right` of 40 pairs and C(o) = c_shift."""
    params = {"beta": 0.1, "gamma": gamma, "inputs": {"pref_data": {"path": "d.jsonl", "sha256": data_sha}}}
    s2 = root / "02_self_reward"
    write(s2, "scored.jsonl", [{"id": f"q{k}", "o1": "a", "o2": "b" if k < 18 else f"other {r_shift}",
                                "self_reward": 1.0 + r_shift} for k in range(20)])
    s3 = root / "03_preference_accuracy"
    ids = [f"p{k}" for k in range(n + extra)]
    write(s3, "predictions.jsonl", [{"scorer": "dlma", "id": i, "score": 1.0 if k < right else -1.0}
                                    for k, i in enumerate(ids)])
    write(s3, "pair_lengths.json", [{"id": i, "length_difference": 5 if k % 2 else -5, "same": False,
                                     "pair_sha256": content(k)} for k, i in enumerate(ids)])
    s4 = root / "04_train_dlma"
    write(s4 / "adapter", "train_log.jsonl", [{"step": k + 1, "loss": v} for k, v in enumerate(losses)])
    write(s4 / "adapter", "params.json", {"gamma": gamma, "pairs": f"{root}/04_train_dlma/train.jsonl"})
    s5 = root / "05_evaluate_alignment"
    write(s5, "human_pairs.jsonl", [{"id": f"h{k}", "implicit": 0.5 if k < implicit_right else -0.5,
                                     "pair_sha256": content(k)} for k in range(40)])
    write(s5, "responses.jsonl", [{"id": f"e{k}", "model": m, "query": query(k),
                                   "contrastive_score": c_shift + 0.01 * k}
                                  for k in range(10) for m in ("base", "dlma")])
    s6 = root / "06_baselines"  # the RLAIF judge: rlcd against base wins on the first `right // 10` of 10 prompts
    write(s6, "judgements.jsonl", [{"judge": "rlaif", "model": "rlcd", "opponent": "base", "id": f"e{k}",
                                    "verdict": "win" if k < right // 10 else "tie"} for k in range(10)])
    for stage in (s2, s3, s4, s5, s6):
        write(stage, "params.json", {**params, "stage": stage.name})
        write(stage, "manifest.json", {"stage": stage.name})
    return root


def test_compare_pairs_two_runs_on_the_items_they_share(tmp_path):
    a = make_run(tmp_path / "a", right=60, extra=5)
    b = make_run(tmp_path / "b", right=80, gamma=0.0, data_sha="bb", r_shift=0.5, losses=(0.69, 0.5),
                 implicit_right=30, c_shift=1.0)
    (c,) = compare_runs([a, b], n_boot=200)["comparisons"]
    assert c["not_compared"] == []
    s3 = c["stages"]["03_preference_accuracy"]
    names = {p["name"]: (p["a"], p["b"]) for p in s3["parameters"]}
    assert names == {"gamma": (0.2, 0.0), "inputs.pref_data.sha256": ("aa", "bb")}  # what changed, hashes too
    d = s3["scorers"]["dlma"]
    assert (d["n"], d["n_only_a"], d["n_only_b"]) == (100, 5, 0)  # the 5 pairs only a has are left out
    assert (d["accuracy_a"], d["accuracy_b"], d["difference"]) == (0.6, 0.8, pytest.approx(0.2))
    assert (d["right_only_a"], d["right_only_b"], d["both_right"]) == (0, 20, 60)
    assert d["ci95"][0] > 0 and d["mcnemar_p"] < 1e-5  # 20 to 0 discordant: 2 * 0.5**20
    assert d["balanced_difference"] == pytest.approx(0.2) and d["stratified_p"] < 0.05
    assert 0 <= d["length_controlled_a"] <= 1 and 0 <= d["length_controlled_b"] <= 1
    s2 = c["stages"]["02_self_reward"]
    assert (s2["n"], s2["other_responses"], s2["sign_agrees"]) == (18, 2, 18)  # two pairs' responses differ
    assert s2["difference"] == pytest.approx(0.5) and s2["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    s4 = c["stages"]["04_train_dlma"]
    # stage 4's training parameters are its adapter folder's; a path into each run's own folder is no difference
    assert [p["name"] for p in s4["parameters"]] == ["adapter.gamma", "gamma", "inputs.pref_data.sha256"]
    assert (s4["final_loss_a"], s4["final_loss_b"]) == (0.6, 0.5)
    s5 = c["stages"]["05_evaluate_alignment"]
    assert s5["implicit"]["difference"] == 0 and s5["implicit"]["mcnemar_p"] == 1.0
    assert s5["contrastive_score"]["difference"] == pytest.approx(1.0)
    (v,) = c["stages"]["06_baselines"]["verdicts"]  # 6 wins then 8 wins of 10: 2 verdicts changed, +0.1
    assert (v["n"], v["changed"], v["win_rate_a"], v["win_rate_b"]) == (10, 2, 0.8, 0.9)
    assert v["difference"] == pytest.approx(0.1)

    read = readings.compare_readings(c)
    assert read["03_preference_accuracy"].startswith(
        "Stage 03: changed: gamma 0.2 -> 0.0; inputs.pref_data.sha256 'aa' -> 'bb'. Preference accuracy b - a on "
        "the 100 pairs both scored: the self-rewarding score +0.200 [")
    assert "beyond noise; length-balanced beyond noise" in read["03_preference_accuracy"]
    assert "implicit-reward accuracy b - a +0.000 [+0.000, +0.000] on 40 held-out human pairs (p = 1.000, within " \
           "noise)" in read["05_evaluate_alignment"]
    assert "C(o) b - a +1.000 [+1.000, +1.000] on 10 prompts (beyond noise)" in read["05_evaluate_alignment"]
    assert read["06_baselines"].startswith("Stage 06: changed: gamma 0.2 -> 0.0; inputs.pref_data.sha256 'aa' -> "
                                           "'bb'. 1 judge x method x opponent comparisons on the same prompts; the "
                                           "verdict changed on 2 of 10 judgements; win rate b - a beyond noise in ")
    table = report.compare_frame(c)
    assert list(table.index) == ["stage 3: dlma", "stage 5: implicit reward"] and table.loc["stage 3: dlma", "b"] == 0.8
    fig = report.plot_compare(c)
    assert len(fig.axes) == 2 and fig.axes[1].get_lines()


def test_compare_itself_is_all_zero_and_stage_folders_compare_alone(tmp_path):
    a = make_run(tmp_path / "a", right=55)
    (c,) = compare_runs([a, a], n_boot=50)["comparisons"]
    d = c["stages"]["03_preference_accuracy"]["scorers"]["dlma"]
    assert d["difference"] == 0 and d["mcnemar_p"] == 1.0 and c["stages"]["03_preference_accuracy"]["parameters"] == []
    assert "the same parameters and inputs" in readings.compare_readings(c)["03_preference_accuracy"]
    (c,) = compare_runs([a / "03_preference_accuracy", a / "03_preference_accuracy"], n_boot=50)["comparisons"]
    assert list(c["stages"]) == ["03_preference_accuracy"]


def test_compare_refuses_what_it_cannot_pair(tmp_path):
    a = make_run(tmp_path / "a", right=50)
    with pytest.raises(DLMAError, match="give two runs or more"):
        compare_runs([a])
    with pytest.raises(DLMAError, match=r"not a run folder \(no finished stage folder"):
        compare_runs([a, tmp_path])
    with pytest.raises(DLMAError, match="no finished stage in common"):
        compare_runs([a / "02_self_reward", a / "03_preference_accuracy"])
    (a / "05_evaluate_alignment" / "manifest.json").unlink()
    with pytest.raises(DLMAError, match="this stage did not finish"):
        compare_runs([a / "05_evaluate_alignment", a / "05_evaluate_alignment"])
    (c,) = compare_runs([a, make_run(tmp_path / "b", right=50)], n_boot=20)["comparisons"]
    assert c["not_compared"] == ["05_evaluate_alignment"]  # finished in one run only: counted, not compared
    assert set(c["stages"]) == {"02_self_reward", "03_preference_accuracy", "04_train_dlma", "06_baselines"}
    (a / "03_preference_accuracy" / "pair_lengths.json").unlink()
    with pytest.raises(DLMAError, match=r"has no pair_lengths.json .* rerun stage 3 there"):
        compare_runs([a, a])


def test_compare_cli(tmp_path):
    a, b = make_run(tmp_path / "a", right=60), make_run(tmp_path / "b", right=70)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dlma", "compare", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    res = cli(str(a), str(b), "--n-bootstrap", "100", "--json", str(tmp_path / "c.json"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"a: {a}\nb: {b}\n") and "stage 3: dlma" in res.stdout
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["comparisons"][0]["stages"]["03_preference_accuracy"]["scorers"]["dlma"]["difference"] == \
        pytest.approx(0.1)
    assert cli("--help").returncode == 0
    bad = cli(str(a), str(tmp_path / "missing"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == \
        f"dlma compare: error: {tmp_path / 'missing'}: not a folder; give a run folder (runs/NAME) or one of its " \
        "stage folders"
    assert cli(str(a), str(b), "--n-bootstrp", "5").returncode == 2  # a misspelt option
    nowhere = cli(str(a), str(b), "--json", str(tmp_path / "no" / "c.json"))
    assert nowhere.returncode == 2 and nowhere.stdout == "" and "give a file in an existing folder" in nowhere.stderr
    assert np.isfinite(saved["comparisons"][0]["stages"]["02_self_reward"]["difference"])


def test_dlma_run_compare_with_adds_the_page_to_the_runs_book(tmp_path):
    from dlma.book import COMPARE, book_sources
    from dlma.pipeline import run_compare, run_pipeline

    a, b = make_run(tmp_path / "a", right=60), make_run(tmp_path / "b", right=75)
    with pytest.raises(DLMAError, match="x: not a folder; give a run folder"):  # checked before any stage runs
        run_pipeline("smoke", [], run_id="c", runs_root=tmp_path / "runs", stages=(), compare_with=tmp_path / "x")
    assert not (tmp_path / "runs").exists()
    page = run_compare(b, a)
    assert page == b / f"{COMPARE}.ipynb" and (b / f"{COMPARE}.png").is_file()
    nb = json.loads(page.read_text())
    shown = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"a: {a}\nb: {b}" in shown and "Preference accuracy b - a on the 100 pairs both scored" in shown
    dest = book_sources(b, tmp_path / "book")
    assert (dest / "book" / "results" / f"{COMPARE}.ipynb").is_file()
    assert "      - file: book/results/06_baselines\n      - file: book/results/07_compare\n" in \
        (dest / "_toc.yml").read_text()


def test_pairs_of_one_id_but_other_content_are_not_the_same_item(tmp_path):
    a = make_run(tmp_path / "a", right=60)
    half = make_run(tmp_path / "half", right=60, content=lambda k: f"pair {k}" if k < 50 else f"other {k}")
    (c,) = compare_runs([a, half], n_boot=20)["comparisons"]
    d = c["stages"]["03_preference_accuracy"]["scorers"]["dlma"]
    assert (d["n"], d["n_other_pairs"], d["difference"]) == (50, 50, 0)
    # stage 5 likewise: its human pairs by id and content, the answers' C(o) by id and query
    quarter = make_run(tmp_path / "quarter", right=60, content=lambda k: f"pair {k}" if k < 10 else f"other {k}",
                       query=lambda k: f"query {k}" if k < 4 else f"another {k}")
    s5 = compare_runs([a, quarter], n_boot=20)["comparisons"][0]["stages"]["05_evaluate_alignment"]
    assert (s5["implicit"]["n"], s5["implicit"]["n_other_pairs"]) == (10, 30)
    assert (s5["contrastive_score"]["n"], s5["contrastive_score"]["n_other_queries"]) == (4, 6)
    assert readings.compare_readings(compare_runs([a, quarter], n_boot=20)["comparisons"][0])[
        "05_evaluate_alignment"].endswith("left out: 30 human pairs and 6 prompts of one id but other content.")
    other = make_run(tmp_path / "other", right=60, content=lambda k: f"other {k}")
    with pytest.raises(DLMAError, match=r"runs of different data \(no labelled pair with the same id and content "
                                        r"in both; 100 ids name other pairs\)"):
        compare_runs([a, other], n_boot=20)


def test_a_changed_content_hash_reads_by_its_first_12_digits():
    from dlma.readings import _changed

    a, b = "0c062483cec1" + "4" * 52, "b830c681c358" + "d" * 52
    assert _changed([{"name": "inputs.adapter.sha256", "a": a, "b": b}, {"name": "gamma", "a": 0.2, "b": 0.0}]) == \
        "changed: inputs.adapter.sha256 0c062483cec1 -> b830c681c358; gamma 0.2 -> 0.0"
