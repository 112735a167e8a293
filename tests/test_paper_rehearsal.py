"""`dlma run --preset paper`, rehearsed on a CPU: every setting of params/paper.yaml kept but the sizes (counts,
token lengths, batch sizes), the 7B model replaced by a tiny random-weight LLaMA model built here (whose tokenizer,
like Llama-2-7b-hf's, has no chat template), and PKU-SafeRLHF by a stand-in in its real columns, laid out as the hub
lays it out (data/train-00000-of-00001.parquet, data/test-...) in a hub cache of the test's own at the preset's
pinned revision. So every stage, every baseline method, the 4-bit base, the token budget, the static cache and
gradient accumulation run as the preset runs them. Beside it, every stage but the pair study runs again under
`dlma run --launcher "torchrun --nproc_per_node 2"` (gloo), checking what a launch promises (the bytes of the
pairs and their scores, preference scores within float tolerance, the same training steps, stage 6's adapters
trained by the launch); stage 6 with two of its methods (all nine under a launch took 20 min on a loaded
machine, too long for `make test`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import hub_layout  # the tests' folder is on sys.path (pytest's prepend mode)
import pytest
from test_train_ddp import free_port
from tiny_llama import save_tiny_llama

from dlma.artifacts import read_json, read_jsonl
from dlma.baselines import METHODS
from dlma.commands import STAGES
from dlma.pipeline import run_pipeline
from dlma.presets import resolve_params

PRESET = resolve_params("paper", [])  # each value as its option reads it
# the sizes, and nothing else: each a count, a token length or a batch size
SIZES = {"n_queries": 12, "max_new_tokens": 8, "gen_batch_size": 4, "max_batch_tokens": 512, "score_batch_size": 8,
         "pref_limit": 8, "pref_max_length": 128, "study_select": 4, "per_device_train_batch_size": 2,
         "gradient_accumulation_steps": 2, "max_length": 96, "max_prompt_length": 48, "eval_n_prompts": 4,
         "eval_n_pairs": 4, "eval_max_new_tokens": 8, "eval_batch_size": 4}
N_TRAIN, N_TEST = 24, 12  # rows of the stand-in's splits


def overrides(model: str, **sizes) -> list[str]:
    return [f"model={model}", *(f"{k}={v}" for k, v in {**SIZES, **sizes}.items())]


def test_the_rehearsal_changes_only_sizes():
    assert set(SIZES) <= {"n_queries", "max_new_tokens", "gen_batch_size", "max_batch_tokens", "score_batch_size",
                          "pref_limit", "pref_max_length", "study_select", "per_device_train_batch_size",
                          "gradient_accumulation_steps", "max_length", "max_prompt_length", "eval_n_prompts",
                          "eval_n_pairs", "eval_max_new_tokens", "eval_batch_size"}
    # what the rehearsal is for: the preset's paths, each still taken at a smaller size
    assert PRESET["qlora"] and PRESET["static_cache"] and PRESET["max_batch_tokens"] > 0 < SIZES["max_batch_tokens"]
    assert PRESET["gradient_accumulation_steps"] > 1 < SIZES["gradient_accumulation_steps"]
    assert {PRESET[k] for k in ("queries", "pref_data", "rlhf_data")} == {hub_layout.PKU}


@pytest.fixture(scope="module")
def paper_env(tmp_path_factory):
    """A folder: the tiny model (tiny-llama/) and a hub cache with the stand-in at the preset's revision (hub/)."""
    root = tmp_path_factory.mktemp("paper")
    save_tiny_llama(root / "tiny-llama", chat_template=False)
    revisions = {PRESET[k] for k in ("queries_revision", "pref_revision", "rlhf_revision")}
    assert len(revisions) == 1
    hub_layout.hub_snapshot(root / "hub", hub_layout.PKU, hub_layout.pku_folder(root / "pku", N_TRAIN, N_TEST),
                            revisions.pop(), refs=())
    return root


def caches(root: Path, datasets: str) -> dict[str, str]:
    """The environment of a rehearsal: the test's hub cache, a datasets cache of its own, one thread a process."""
    return {"HF_HUB_CACHE": str(root / "hub"), "HF_DATASETS_CACHE": str(root / datasets), "OMP_NUM_THREADS": "1"}


# every stage but the pair study, which works in its notebook alone; stage 6 with two methods, one of them
# rlaif_dpo, whose rows the main process alone relabels
LAUNCHED = tuple(s for s in STAGES if s != "03b_pair_study")
TWO_METHODS = "rlcd,rlaif_dpo"


@pytest.fixture(scope="module")
def rehearsals(paper_env):
    """(one process's run folder, torchrun's). Both run at once, torchrun's in a subprocess: the one-process run
    keeps one core busy and torchrun's two processes spend much of their time starting, so together they take
    about 5 minutes on 2 cores where one after the other took 7."""
    runner = Path(sys.executable).with_name("torchrun")  # the venv's, beside its python
    if not runner.exists():
        runner = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
    launcher = f"{runner} --nproc_per_node 2 --master_port {free_port()}"
    # the same global batch: 2 processes x 1 pair x 2 accumulated = 1 x 2 x 2
    two = ["paper", overrides(str(paper_env / "tiny-llama"), per_device_train_batch_size=1,
                              baseline_methods=TWO_METHODS), "two",
           str(paper_env / "runs"), launcher, LAUNCHED]
    code = ("import json, sys; from pathlib import Path; from dlma.pipeline import run_pipeline; "
            "p, o, r, root, launcher, stages = json.loads(sys.argv[1]); "
            "run_pipeline(p, o, r, runs_root=Path(root), launcher=launcher, stages=tuple(stages))")
    log = paper_env / "two.log"
    with open(log, "wb") as out:
        launched = subprocess.Popen([sys.executable, "-c", code, json.dumps(two)], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **caches(paper_env, "datasets-two")})
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in caches(paper_env, "datasets").items():
                mp.setenv(key, value)
            one = run_pipeline("paper", overrides(str(paper_env / "tiny-llama")), "one", runs_root=paper_env / "runs")
    finally:
        rc = launched.wait()
    assert rc == 0, log.read_text()[-3000:]
    return one, paper_env / "runs" / "two"


def manifest(run: Path, stage: str) -> dict:
    return read_json(run / stage / "manifest.json")


@pytest.mark.slow
def test_paper_preset_runs_every_stage_on_the_splits_it_names(rehearsals):
    run, revision = rehearsals[0], PRESET["queries_revision"]
    assert all((run / f"{s}.ipynb").exists() and (run / s / ".done").exists() for s in STAGES)
    # 1: the train split at the pinned revision, under the token budget and the static cache
    gen = manifest(run, "01_generate")
    assert gen["inputs"]["queries"] == {
        "path": hub_layout.PKU, "split": "train", "revision": revision, "resolved_revision": revision,
        "read_from": "hub cache", "files": {"data/train-00000-of-00001.parquet": gen["inputs"]["queries"]["files"][
            "data/train-00000-of-00001.parquet"]}}
    assert gen["params"]["static_cache"] and gen["params"]["max_batch_tokens"] == SIZES["max_batch_tokens"]
    assert gen["params"]["temperature"] == 1.0 and gen["params"]["top_k"] == 50 and gen["params"]["top_p"] == 1.0
    pairs = read_jsonl(run / "01_generate" / "pairs.jsonl")
    assert len(pairs) == SIZES["n_queries"] and all(p["turns"][0].startswith("train question") for p in pairs)
    # 2: R of every pair
    scored = read_jsonl(run / "02_self_reward" / "scored.jsonl")
    assert [r["id"] for r in scored] == [p["id"] for p in pairs]
    assert all(math.isfinite(r["self_reward"]) for r in scored)
    # 3 and 3b: the test split's human pairs, every scorer
    for stage in ("03_preference_accuracy", "03b_pair_study"):
        record = manifest(run, stage)["inputs"]["pref_data"]
        assert (record["split"], record["resolved_revision"], list(record["files"])) == \
            ("test", revision, ["data/test-00000-of-00001.parquet"]), stage
    predictions = read_jsonl(run / "03_preference_accuracy" / "predictions.jsonl")
    assert sorted({r["scorer"] for r in predictions}) == sorted(PRESET["scorers"].split(","))
    assert len(predictions) == SIZES["pref_limit"] * len(PRESET["scorers"].split(","))
    study = read_json(run / "03b_pair_study" / "study.json")
    assert study["split"]["n_select"] == SIZES["study_select"] and study["selected"]
    # 4: QLoRA with gradient accumulation: one update per 2 x 2 pairs
    summary = read_json(run / "04_train_dlma" / "adapter" / "train_summary.json")
    n_train = len(read_jsonl(run / "04_train_dlma" / "train.jsonl"))
    assert summary["config"]["qlora"] and summary["config"]["gradient_accumulation_steps"] == 2
    assert n_train == SIZES["n_queries"] - 1 and summary["n_steps"] == math.ceil(n_train / 4)
    # 5: the test split's queries and human pairs, against the 4-bit base
    evaluate = manifest(run, "05_evaluate_alignment")
    assert evaluate["inputs"]["queries"]["split"] == evaluate["inputs"]["pref_data"]["split"] == "test"
    responses = read_jsonl(run / "05_evaluate_alignment" / "responses.jsonl")
    assert len(responses) == 2 * SIZES["eval_n_prompts"] and all(r["query"].startswith("test question")
                                                                 for r in responses)
    assert len(read_jsonl(run / "05_evaluate_alignment" / "human_pairs.jsonl")) == SIZES["eval_n_pairs"]
    assert evaluate["params"]["model"]["load_in_4bit"]  # the adapter on the 4-bit base it was trained on
    # 6: every baseline method; the rlhf stand-in on the train split's human labels
    result = read_json(run / "06_baselines" / "baselines.json")
    assert set(result) == set(METHODS) == {"base", "dlma", *PRESET["baseline_methods"].split(",")}
    note = read_json(run / "06_baselines" / "rlhf" / "rows_note.json")
    assert (note["source"], note["split"], note["revision"]) == (hub_layout.PKU, "train", revision)
    rlhf_rows = read_jsonl(run / "06_baselines" / "rlhf" / "train.jsonl")
    assert len(rlhf_rows) == n_train and all(r["turns"][0].startswith("train question") for r in rlhf_rows)
    assert manifest(run, "06_baselines")["inputs"]["rlhf_data"]["split"] == "train"


@pytest.mark.slow
def test_paper_preset_under_torchrun_writes_what_one_process_writes(rehearsals):
    one, run = rehearsals
    assert all((run / f"{s}.ipynb").exists() and (run / s / ".done").exists() for s in LAUNCHED)
    for folder in ("01_generate", "02_self_reward", "03_preference_accuracy", "04_train_dlma/adapter",
                   "06_baselines/rlcd/adapter", "06_baselines/rlaif_dpo/adapter"):
        # the launch did the work; the notebook found it done and kept its manifest
        assert read_json(run / folder / "manifest.json")["processes"] == 2, folder
    # stage 6's notebook answered and judged with the adapters the launch trained
    assert set(read_json(run / "06_baselines" / "baselines.json")) == {"base", "dlma", *TWO_METHODS.split(",")}
    # generation and scoring: the same bytes; preference accuracy: the same scores within float tolerance
    for path in ("01_generate/pairs.jsonl", "02_self_reward/scored.jsonl"):
        assert (run / path).read_bytes() == (one / path).read_bytes(), path
    a, b = (read_jsonl(r / "03_preference_accuracy" / "predictions.jsonl") for r in (one, run))
    assert [(r["scorer"], r["id"]) for r in a] == [(r["scorer"], r["id"]) for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-4), (x["scorer"], x["id"])
    # training: the same split, the same global batch, so the same number of updates (the weights differ by
    # LoRA dropout, which draws per process)
    assert (run / "04_train_dlma" / "train.jsonl").read_bytes() == (one / "04_train_dlma" / "train.jsonl").read_bytes()
    steps = [read_json(r / "04_train_dlma" / "adapter" / "train_summary.json")["n_steps"] for r in (one, run)]
    assert steps[0] == steps[1]
