"""Generation, scoring and preference accuracy shared among the processes of one launch: each process takes
every world-th batch, and the merged file is the one a single process writes (bytes for generation and
scoring; scores within float tolerance for preference accuracy, whose batches differ). The processes are
started by torchrun (what `accelerate launch` runs), on CPUs (gloo). `dlma run` under a launcher, every stage:
tests/test_paper_rehearsal.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_train_ddp import free_port  # the tests' folder is on sys.path (pytest's prepend mode)

from dlma.artifacts import read_jsonl
from dlma.distributed import Launch, ShardedJSONL
from dlma.errors import DLMAError
from dlma.pipeline import run_pipeline, stage_commands
from dlma.presets import ROOT


def test_parts_merge_in_the_single_process_order_and_resume_with_another_size(tmp_path):
    final = tmp_path / "rows.jsonl"
    order = [f"r{i}" for i in range(6)]
    # a launch of 2 processes killed after each wrote one batch (batch k goes to process k % 2)
    for rank, ids in ((0, ["r0", "r1"]), (1, ["r2", "r3"])):
        ShardedJSONL(final, at=Launch(rank, 2)).append([{"id": i} for i in ids])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.rank0.partial.jsonl", "rows.rank1.partial.jsonl"]
    with open(tmp_path / "rows.rank1.partial.jsonl", "a") as f:
        f.write('{"id": "r4"')  # a row cut short by the kill
    # resumed by one process: it sees every part's rows, writes its own, and merges all in order
    store = ShardedJSONL(final, at=Launch(0, 3))
    assert store.done == {"r0", "r1", "r2", "r3"}
    store.append([{"id": "r5"}, {"id": "r4"}])
    store.finish(order=order)
    assert read_jsonl(final) == [{"id": i} for i in order]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    # a single process is PartialJSONL itself: one plain part file
    single = ShardedJSONL(tmp_path / "one.jsonl")
    single.append([{"id": "a"}])
    assert (tmp_path / "one.partial.jsonl").exists()
    assert Launch(1, 3).mine(list("abcdefg")) == [(1, "b"), (4, "e")]


def test_a_process_reopening_its_torn_part_appends_on_a_new_line(tmp_path):
    final = tmp_path / "rows.jsonl"
    ShardedJSONL(final, at=Launch(1, 2)).append([{"id": "r1"}])
    with open(tmp_path / "rows.rank1.partial.jsonl", "a") as f:
        f.write('{"id": "r3"')  # cut short by a kill
    store = ShardedJSONL(final, at=Launch(1, 2))
    assert store.done == {"r1"}
    store.append([{"id": "r3"}])
    assert read_jsonl(tmp_path / "rows.rank1.partial.jsonl") == [{"id": "r1"}, {"id": "r3"}]


def dlma(args, env, processes=1, timeout=600):
    launch = [sys.executable, "-m", "dlma"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
        str(free_port()), "-m", "dlma"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tmp_path, tiny_model_dir, hh_dev):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DLMA_PROGRESS": "0"}
    model = ["--model", tiny_model_dir, "--device", "cpu"]
    for n, name in ((1, "one"), (2, "two")):
        out = tmp_path / name
        # 40 queries in 5 batches of 8 (process 0: batches 0, 2, 4; process 1: 1, 3)
        dlma(["generate", *model, "--n-queries", "40", "--gen-batch-size", "8", "--max-new-tokens", "6",
              "--out", str(out / "gen")], env, n)
        # 40 pairs in chunks of 32: one chunk for each process
        dlma(["score", *model, "--pairs", str(tmp_path / "one" / "gen"), "--out", str(out / "score")], env, n)
        # 150 human pairs (those that fit) in chunks of 64, each scorer
        dlma(["pref-acc", *model, "--pref-data", str(hh_dev), "--pref-limit", "150", "--pref-max-length", "96",
              "--scorers", "dlma,rlaif,loglik,length,random", "--out", str(out / "pref")], env, n)
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "gen" / "pairs.jsonl").read_bytes() == (two / "gen" / "pairs.jsonl").read_bytes()
    assert len(read_jsonl(one / "gen" / "pairs.jsonl")) == 40
    assert (one / "score" / "scored.jsonl").read_bytes() == (two / "score" / "scored.jsonl").read_bytes()
    for stage in ("gen", "score", "pref"):
        assert json.loads((two / stage / "manifest.json").read_text())["processes"] == 2
        assert not list((two / stage).glob("*.partial.jsonl"))
    a, b = read_jsonl(one / "pref" / "predictions.jsonl"), read_jsonl(two / "pref" / "predictions.jsonl")
    # the pairs with no room for the instruction within 96 tokens are left out by every process alike
    kept, left_out = ([json.loads((d / "pref" / "manifest.json").read_text())[k] for d in (one, two)]
                      for k in ("n_examples", "over_pref_max_length"))
    assert kept[0] == kept[1] > 64 and left_out[0] == left_out[1] and kept[0] + len(left_out[0]) == 150
    assert [(r["scorer"], r["id"]) for r in a] == [(r["scorer"], r["id"]) for r in b] and len(a) == 5 * kept[0]
    for x, y in zip(a, b, strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-4), (x["scorer"], x["id"])
    metrics = [json.loads((d / "pref" / "metrics.json").read_text()) for d in (one, two)]
    assert {s: m["accuracy"] for s, m in metrics[0]["accuracy"].items()} == \
        {s: m["accuracy"] for s, m in metrics[1]["accuracy"].items()}


def test_a_launched_stage_runs_the_command_of_its_notebook_parameters():
    from dlma.presets import stage_params

    nb = stage_params("01_generate", {"gen_batch_size": 16, "static_cache": True}, ROOT / "runs" / "x")
    [(launched, args)] = stage_commands("01_generate", nb)
    options = dict(a.split("=", 1) for a in args[1:])  # --name=value: a value may begin with "-"
    assert launched and args[0] == "generate" and options["--out"] == "runs/x/01_generate"
    assert options["--gen-batch-size"] == "16" and options["--static-cache"] == "true"
    assert options["--max-new-tokens"] == "200"  # the option's default, which dlma run gives the notebook too
    assert "--run-dir" not in options and "--beta" not in options  # not an option of `dlma generate`
    split, train = stage_commands("04_train_dlma", {"run_dir": "r", "holdout_fraction": 0.05})
    assert split[0] is False and split[1][0] == "split" and train[0] and train[1][0] == "train"
    split_opts, train_opts = (dict(o.split("=", 1) for o in a[1:]) for _, a in (split, train))
    assert split_opts == {"--holdout-fraction": "0.05", "--pairs": "r/02_self_reward/scored.jsonl",
                          "--out": "r/04_train_dlma"}
    assert train_opts == {"--pairs": "r/04_train_dlma/train.jsonl", "--out": "r/04_train_dlma/adapter"}
    assert stage_commands("03b_pair_study", {"run_dir": "r"}) == []  # works in its notebook alone
    [(launched, args)] = stage_commands("06_baselines", {"run_dir": "r", "baseline_methods": "rlcd"})
    assert launched and args[:2] == ["baselines-train", "--run-dir=r"] and "--baseline-methods=rlcd" in args
    assert not [a for a in args if a.startswith("--seed")]


def test_a_launcher_not_found_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DLMAError, match="no-such-launcher.*not found on PATH"):
        run_pipeline("smoke", [], "r", publish=False, runs_root=tmp_path, launcher="no-such-launcher --x 2")
    assert not list(tmp_path.iterdir())


def test_print_commands_lists_the_launched_stages_and_writes_nothing(tmp_path, capsys):
    run_pipeline("smoke", ["n_queries=6"], "r", runs_root=tmp_path, launcher="accelerate launch --num_machines 2",
                 print_commands=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cd ") and len(lines) == 7  # generate, score, pref-acc, split, train, baselines
    assert lines[1].startswith("accelerate launch --num_machines 2 -m dlma generate --out=")
    assert "--n-queries=6" in lines[1] and lines[4].endswith("# on the main machine only") and " split " in lines[4]
    assert not list(tmp_path.iterdir())
