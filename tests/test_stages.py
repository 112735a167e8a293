"""Stages 4 and 5 as functions of a run folder, as the notebooks and `dlma split` / `dlma evaluate` call
them: the hold-out split, and the evaluation of the adapter against its base, killed and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlma.alignment import EvalConfig, run_evaluate
from dlma.artifacts import read_jsonl, write_json, write_jsonl
from dlma.cli import main
from dlma.errors import DLMAError
from dlma.models import ModelConfig
from dlma.params import Out, Pairs, Run, Split
from dlma.train import run_split, split_holdout


def scored(n: int) -> list[dict]:
    return [{"id": f"q{i:04d}", "turns": [f"How do I do thing {i}?"], "pair": "harmless", "o1": f"Safely, {i}.",
             "o2": f"Recklessly, {i}.", "self_reward": float(i - 2)} for i in range(n)]


def test_split_writes_both_parts_once(tmp_path):
    write_jsonl(tmp_path / "scored.jsonl", scored(10))
    pairs = Pairs(str(tmp_path / "scored.jsonl"))
    train, heldout = run_split(pairs, Split(0.2, seed=1), Out(str(tmp_path / "s")))
    assert (len(train), len(heldout)) == (8, 2)
    assert sorted(r["id"] for r in train + heldout) == [f"q{i:04d}" for i in range(10)]
    assert (train, heldout) == split_holdout(scored(10), 0.2, 1)  # the function the notebook used to call
    assert read_jsonl(tmp_path / "s" / "heldout.jsonl") == heldout
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["n_heldout"] == 2
    assert run_split(pairs, Split(0.2, seed=1), Out(str(tmp_path / "s"))) == (train, heldout)  # resumes
    with pytest.raises(DLMAError, match=r"other parameters \(holdout_fraction\)"):
        run_split(pairs, Split(0.3, seed=1), Out(str(tmp_path / "s")))
    with pytest.raises(DLMAError, match=r"holdout_fraction must be in \[0, 1\)"):
        run_split(pairs, Split(1.0), Out(str(tmp_path / "t")))


def test_split_cli(tmp_path, capsys):
    write_jsonl(tmp_path / "scored.jsonl", scored(20))
    assert main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--out", str(tmp_path / "s")]) == 0
    assert "19 training pairs, 1 held out" in capsys.readouterr().out


@pytest.fixture()
def run_folder(tmp_path, tiny_model_dir) -> Path:
    """Stages 1 to 4 as files: generated pairs, stage 3's predictions, a held-out split and an adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    (run / "01_generate").mkdir(parents=True)
    write_jsonl(run / "01_generate" / "pairs.jsonl", scored(4))
    (run / "01_generate" / "params.json").write_text(json.dumps({"queries": "sample:queries"}))
    write_jsonl(run / "03_preference_accuracy" / "predictions.jsonl",
                [{"scorer": "dlma", "id": "hh-0001", "score": 1.0}])
    write_jsonl(run / "04_train_dlma" / "heldout.jsonl", scored(6)[4:])
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(run / "04_train_dlma" / "adapter")
    # stage 4's summary: stage 5 loads the adapter on the base it was trained on (here not quantised)
    write_json(run / "04_train_dlma" / "adapter" / "train_summary.json", {"config": {"qlora": False}})
    return run


def evaluate(run, tiny_model_dir, **kw):
    cfg = EvalConfig(eval_n_prompts=5, eval_n_pairs=3, eval_max_new_tokens=6, eval_batch_size=2, **kw)
    return run_evaluate(ModelConfig(tiny_model_dir, device="cpu"), cfg, Run(str(run)))


FILES = ("responses.jsonl", "human_pairs.jsonl", "heldout_generated.jsonl", "alignment.json")


def test_evaluate_uses_only_what_no_stage_used_and_resumes_to_the_same_bytes(run_folder, tiny_model_dir,
                                                                             monkeypatch):
    import dlma.alignment

    batches = []
    sample = dlma.alignment.sample
    monkeypatch.setattr(dlma.alignment, "sample", lambda *a, **k: batches.append(a[4]) or sample(*a, **k))
    summary = evaluate(run_folder, tiny_model_dir)
    assert batches == [0, 2, 4] * 2  # 5 queries in batches of 2, seeded by position, base then dlma
    out = run_folder / "05_evaluate_alignment"
    responses = read_jsonl(out / "responses.jsonl")
    assert [r["model"] for r in responses] == ["base"] * 5 + ["dlma"] * 5
    queries = {r["id"] for r in responses}
    assert len(queries) == 5 and not queries & {r["id"] for r in scored(4)}  # not generated from in stage 1
    assert "hh-0001" not in {r["id"] for r in read_jsonl(out / "human_pairs.jsonl")}  # not scored in stage 3
    assert summary["implicit"]["n"] == 3 and summary["implicit_heldout_generated"]["n"] == 2
    assert summary["base"]["n"] == summary["dlma"]["n"] == 5
    assert [r["response"] for r in responses[:5]] != [r["response"] for r in responses[5:]]  # the adapter acts
    first = {name: (out / name).read_bytes() for name in FILES}

    # killed after the base model's first batch: only that batch's responses are on disk
    kept = [r for r in read_jsonl(out / "generations.jsonl") if r["model"] == "base"][:2]
    for name in (*FILES, "generations.jsonl", "manifest.json"):
        (out / name).unlink()
    write_jsonl(out / "generations.partial.jsonl", kept)
    batches.clear()
    evaluate(run_folder, tiny_model_dir)
    assert batches == [2, 4, 0, 2, 4]  # the batch on disk is not sampled again
    assert {name: (out / name).read_bytes() for name in FILES} == first


def test_evaluate_refuses_a_retrained_adapter(run_folder, tiny_model_dir):
    evaluate(run_folder, tiny_model_dir)
    weights = run_folder / "04_train_dlma" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DLMAError, match="adapter_model.safetensors: changed since"):
        evaluate(run_folder, tiny_model_dir)


def test_evaluate_names_a_missing_stage(tmp_path, tiny_model_dir):
    with pytest.raises(DLMAError, match=r"01_generate/pairs.jsonl: no such file \(run the earlier stages first\)"):
        evaluate(tmp_path, tiny_model_dir)


def test_evaluation_responses_under_a_token_budget(tiny_model_dir):
    """Stage 5's sampling in length-sorted batches under a budget: every query answered, in query order,
    the same each time, and a run that kept some batches' responses ends with the same answers."""
    from dlma.alignment import respond
    from dlma.data import load_examples
    from dlma.generate import GenerateConfig
    from dlma.models import load_model

    model, tok = load_model(ModelConfig(tiny_model_dir, device="cpu"))
    queries = load_examples("sample:queries", limit=6)
    cfg = GenerateConfig(max_new_tokens=5, gen_batch_size=4, max_batch_tokens=60, seed=2)
    saved = []
    first = respond(model, tok, queries, cfg, save=saved.append)
    assert len(first) == 6 and len(saved) >= 3  # the budget, not the count of 4, cut the batches
    assert respond(model, tok, queries, cfg) == first
    assert respond(model, tok, queries, cfg, done=saved[0]) == first
    by_count = respond(model, tok, queries, GenerateConfig(max_new_tokens=5, gen_batch_size=4, seed=2))
    assert len(by_count) == 6
