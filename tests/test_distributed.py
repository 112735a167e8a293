"""Generation, scoring and preference accuracy shared among the processes of one launch: each process takes
every world-th batch, and the merged file is the one a single process writes (bytes for generation and
scoring; scores within float tolerance for preference accuracy, whose batches differ). The processes are
started by torchrun (what `accelerate launch` runs), on CPUs (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_train_ddp import free_port  # the tests' folder is on sys.path (pytest's prepend mode)

from dlma.artifacts import read_jsonl
from dlma.distributed import Launch, ShardedJSONL


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
        # 150 human pairs in chunks of 64, each scorer
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
    assert [(r["scorer"], r["id"]) for r in a] == [(r["scorer"], r["id"]) for r in b] and len(a) == 5 * 150
    for x, y in zip(a, b, strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-4), (x["scorer"], x["id"])
    metrics = [json.loads((d / "pref" / "metrics.json").read_text()) for d in (one, two)]
    assert {s: m["accuracy"] for s, m in metrics[0]["accuracy"].items()} == \
        {s: m["accuracy"] for s, m in metrics[1]["accuracy"].items()}
