"""Stage 6: the baselines as what each trains on (the same budget, the method's own loss settings, relabelled or
human rows), the judges' summaries, and the stage on a tiny model, killed and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlma.artifacts import read_jsonl, write_json, write_jsonl
from dlma.baselines import (
    TRAINED,
    BaselineConfig,
    distinct_n,
    human_rows,
    method_config,
    method_list,
    relabel,
    run_baselines,
    verdict_summary,
)
from dlma.data import Example
from dlma.errors import DLMAError
from dlma.models import ModelConfig
from dlma.params import Run
from dlma.train import TrainConfig


def test_every_method_shares_the_budget_and_sets_only_its_loss():
    shared = TrainConfig(learning_rate=1e-4, per_device_train_batch_size=4, lora_r=16, seed=3, num_train_epochs=2)
    for method in TRAINED:
        cfg = method_config(shared, method)
        assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.lora_r, cfg.seed,
                cfg.num_train_epochs) == (1e-4, 4, 16, 3, 2)
    assert method_config(shared, "rlcd").gamma == 0 and not method_config(shared, "rlcd").weighting
    assert method_config(shared, "dlma_gamma0.5").gamma == 0.5
    assert method_config(shared, "dlma_clamp20").margin_clip == (-20, 20)
    assert method_config(shared, "dlma_clamp20").gamma == shared.gamma == 0.2  # the run's own DLMA otherwise
    assert method_config(shared, "dlma_weighting").weighting
    with pytest.raises(DLMAError, match="method 'dlma' is not trained here"):
        method_config(shared, "dlma")  # stage 4's adapter is the dlma method
    with pytest.raises(DLMAError, match="unknown method\\(s\\) ppo"):
        method_list("rlcd, ppo")
    assert method_list("rlhf,rlcd,rlcd") == ["base", "dlma", "rlhf", "rlcd"]


def test_distinct_2_counts_unique_word_bigrams():
    assert distinct_n(["a b c", "a b d"]) == 3 / 4  # (a b) twice, (b c), (b d)
    assert distinct_n(["same same same"]) == 1 / 2
    assert distinct_n(["one", ""]) is None  # no bigram: undefined, not 0 (no repetition would be 1)


def test_verdict_summary_counts_ties_half_and_controls_for_length():
    rows = [{"verdict": v} for v in ["win"] * 6 + ["tie"] * 2 + ["lose"] * 2]
    s = verdict_summary(rows, [10] * 10, [10] * 10, n_boot=200)
    assert (s["win"], s["tie"], s["lose"]) == (6, 2, 2)
    assert s["sign_test_p"] == pytest.approx(0.2890625)  # 6 wins of 8 decided, two-sided: 2 x 37/256
    assert s["win_rate"]["value"] == pytest.approx(0.7)
    assert s["win_rate"]["ci95"][0] < 0.7 < s["win_rate"]["ci95"][1]
    assert s["lc_win_rate"]["value"] == pytest.approx(0.7, abs=1e-6)  # no length difference: nothing to control
    assert "position_consistency" not in s
    # a judge that prefers the longer answer: A wins where it is longer; the length-controlled rate is near 0.5
    len_a = list(range(20, 40)) + list(range(0, 20))
    rows = [{"verdict": "win" if a > 20 else "lose", "a_first": 1.0, "a_second": 1.0 if a > 20 else -1.0}
            for a in len_a]
    s = verdict_summary(rows, len_a, [20] * 40, n_boot=200)
    assert s["win_rate"]["value"] == pytest.approx(19 / 40)
    assert abs(s["lc_win_rate"]["value"] - 0.5) < 0.1
    assert s["position_consistency"] == pytest.approx(19 / 40)


def test_relabel_swaps_where_the_judge_prefers_o2():
    rows = [{"id": str(i), "turns": ["q"], "o1": f"a{i}", "o2": f"b{i}", "self_reward": float(i + 1)}
            for i in range(3)]
    out, swapped = relabel(rows, ["win", "lose", "tie"])
    assert swapped == 1
    got = [(r["o1"], r["o2"], r["self_reward"]) for r in out]
    assert got == [("a0", "b0", 1.0), ("b1", "a1", -2.0), ("a2", "b2", 3.0)]
    assert rows[1]["o1"] == "a1"  # the input is not changed
    with pytest.raises(DLMAError, match="2 pairs but 1 verdicts"):
        relabel(rows[:2], ["win"])


def test_human_rows_must_be_disjoint_from_the_evaluation():
    examples = [Example("h1", ["q"], "good", "bad"), Example("h2", ["r"], "fine", "rude")]
    rows = human_rows(examples, evaluated_ids=["h3"])
    assert [(r["o1"], r["o2"]) for r in rows] == [("good", "bad"), ("fine", "rude")]
    with pytest.raises(DLMAError, match="1 human pair\\(s\\) are also evaluation pairs \\(the first: h2\\)"):
        human_rows(examples, evaluated_ids=["h2"])


PREF_MAX_LENGTH = 34  # small enough that the default of 1024, or no limit, would read longer sequences


@pytest.fixture()
def readings(monkeypatch) -> list[int]:
    """The length of every sequence the model reads to score text (prompt and response, as its positions say),
    appended as it is read; sampling (the model reading its cache) and training (in train mode) are not readings."""
    from transformers import LlamaForCausalLM

    seen, forward = [], LlamaForCausalLM.forward

    def recorded(self, *args, **kwargs):
        if not self.training and kwargs.get("past_key_values") is None and kwargs.get("position_ids") is not None:
            seen.append(int(kwargs["position_ids"].max()) + 1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", recorded)
    return seen


@pytest.fixture()
def run_to_stage5(tmp_path, tiny_model_dir, readings) -> Path:
    """Stages 1 to 5 on a tiny random model: real training (stage 4) and evaluation (stage 5)."""
    from dlma.alignment import EvalConfig, run_evaluate
    from dlma.commands import run_stage

    run = tmp_path / "run"
    pairs = [{"id": f"q{i:04d}", "turns": [f"How do I do thing {i}?"], "pair": "harmless", "o1": f"Safely, {i}.",
              "o2": f"Recklessly and loudly, {i}.", "self_reward": float(i - 3)} for i in range(10)]
    write_jsonl(run / "01_generate" / "pairs.jsonl", pairs)
    (run / "01_generate" / "params.json").write_text(json.dumps({"queries": "sample:queries"}))
    write_jsonl(run / "02_self_reward" / "scored.jsonl", pairs)
    write_jsonl(run / "03_preference_accuracy" / "predictions.jsonl",
                [{"scorer": "dlma", "id": "hh-0001", "score": 1.0}])
    model_cfg = ModelConfig(tiny_model_dir, device="cpu")
    # stage 4 as its notebook runs it: the split of 02's scored pairs, then training on the rest
    run_stage("04_train_dlma", {"run_dir": str(run), "model": tiny_model_dir, "device": "cpu", "holdout_fraction": 0.2,
                                "qlora": False, "per_device_train_batch_size": 4, "max_length": 48,
                                "max_prompt_length": 24,
                                "learning_rate": 1e-3, "warmup_steps": 0})
    # pref_max_length 34: the first of the 3 human pairs (34 tokens in its chosen response) leaves no room for its
    # prompt, so stage 5 leaves it out, as the published run's stage 5 did 4 of its 128; stage 6 must agree
    readings.clear()  # stage 4's
    run_evaluate(model_cfg, EvalConfig(eval_n_prompts=3, eval_n_pairs=3, eval_max_new_tokens=6, eval_batch_size=2,
                                       pref_max_length=PREF_MAX_LENGTH), Run(str(run)))
    assert [r["id"] for r in read_jsonl(run / "05_evaluate_alignment" / "human_pairs.jsonl")] == ["s002", "s003"]
    # every judge and scorer of stage 5 (the base's C(o) and perplexity, the implicit reward) read within it
    assert readings and max(readings) <= PREF_MAX_LENGTH, sorted(readings)[-5:]
    assert max(readings) > PREF_MAX_LENGTH - 8  # the limit was reached: the cut did something
    # a prompt-pair study that selected the length-normalised `helpful` pair
    write_json(run / "03b_pair_study" / "study.json", {"selected": "helpful/norm"})
    write_json(run / "03b_pair_study" / "params.json", {"study_variants": "harmless,helpful"})
    return run


def test_stage6_trains_every_method_on_the_same_budget_judges_and_resumes(run_to_stage5, tiny_model_dir, monkeypatch,
                                                                          readings):
    import dlma.train
    from dlma.logprobs import response_ids
    from dlma.models import load_model
    from dlma.prompts import PAIRS
    from dlma.score import self_reward_terms
    from dlma.study import normalised_reward

    run, out = run_to_stage5, run_to_stage5 / "06_baselines"
    methods = "rlcd,rlaif_dpo,context_distillation,rlhf,dlma_study"
    readings.clear()
    result = run_baselines(ModelConfig(tiny_model_dir, device="cpu"), BaselineConfig(methods), Run(str(run)))
    # every judge (RLAIF, the contrast judge, the base's C(o) and perplexity) and scorer (the implicit reward,
    # dlma_study's R) of stage 6 read within stage 5's pref_max_length
    assert readings and max(readings) <= PREF_MAX_LENGTH, sorted(readings)[-5:]
    assert list(result) == ["base", "dlma", "rlcd", "rlaif_dpo", "context_distillation", "rlhf", "dlma_study"]

    budget = json.loads((run / "04_train_dlma" / "adapter" / "train_summary.json").read_text())["config"]
    train = read_jsonl(run / "04_train_dlma" / "train.jsonl")
    for m in ("rlcd", "rlaif_dpo", "context_distillation", "rlhf", "dlma_study"):
        summary = json.loads((out / m / "adapter" / "train_summary.json").read_text())
        assert summary["config"] == {**budget, **TRAINED[m]}, m  # the same steps, lr, rank, seed
        assert summary["n_steps"] == 2 and summary["trainable_tensors_changed"] > 0, m
    assert json.loads((out / "context_distillation" / "adapter" / "train_summary.json").read_text())["objective"] \
        == "sft"
    assert not (out / "context_distillation" / "adapter" / "step0_guard.json").exists()

    # rlhf: as many human pairs as generated ones, none of those stage 5 (and so stage 6) evaluates
    human = read_jsonl(out / "rlhf" / "train.jsonl")
    evaluated = {r["id"] for r in read_jsonl(run / "05_evaluate_alignment" / "human_pairs.jsonl")}
    assert len(human) == len(train) and not {r["id"] for r in human} & evaluated
    # dlma_study: R is the selected candidate's, by the base model on the training pairs
    model, tok = load_model(ModelConfig(tiny_model_dir, device="cpu"))
    terms = self_reward_terms(model, tok, [(r["turns"], r["o1"], r["o2"]) for r in train], PAIRS["helpful"],
                              "affix", max_length=PREF_MAX_LENGTH)
    expected = [normalised_reward({**t, "n_o1": len(response_ids(r["o1"], tok)),
                                   "n_o2": len(response_ids(r["o2"], tok))}) for r, t in zip(train, terms, strict=True)]
    got = [r["self_reward"] for r in read_jsonl(out / "dlma_study" / "train.jsonl")]
    assert got == pytest.approx(expected, abs=1e-6) and got != [r["self_reward"] for r in train]

    # every method answers stage 5's prompts; base and dlma are stage 5's own responses
    stage5 = read_jsonl(run / "05_evaluate_alignment" / "responses.jsonl")
    responses = read_jsonl(out / "responses.jsonl")
    assert [r for r in responses if r["model"] in ("base", "dlma")] == stage5
    for m in result:
        assert [r["id"] for r in responses if r["model"] == m] == [r["id"] for r in stage5 if r["model"] == "base"]
    judged = read_jsonl(out / "judgements.jsonl")
    assert len(judged) == 3 * 2 * (2 * 5 + 1)  # 3 prompts, 2 judges, 5 methods against base and dlma, dlma against base
    assert result["rlcd"]["rlaif_vs_dlma"]["win"] + result["rlcd"]["rlaif_vs_dlma"]["tie"] + \
        result["rlcd"]["rlaif_vs_dlma"]["lose"] == 3
    assert result["rlhf"]["implicit_vs_dlma"]["n"] == 2 and "implicit_vs_dlma" not in result["dlma"]  # s001 left out
    first = (out / "baselines.json").read_bytes()

    # killed before its judgements were all written: a rerun trains nothing again and gives the same result
    (out / "baselines.json").unlink()
    (out / "manifest.json").unlink()
    (out / "judgements.jsonl").rename(out / "judgements.partial.jsonl")
    lines = (out / "judgements.partial.jsonl").read_text().splitlines(keepends=True)
    (out / "judgements.partial.jsonl").write_text("".join(lines[:10]))
    monkeypatch.setattr(dlma.train, "train_dlma", lambda *a, **k: pytest.fail("retrained"))
    run_baselines(ModelConfig(tiny_model_dir, device="cpu"), BaselineConfig(methods), Run(str(run)))
    assert (out / "baselines.json").read_bytes() == first
    # a rerun over the finished results (its notebook re-executed) keeps the manifest: its times, machine and commit
    manifest = (out / "manifest.json").read_bytes()
    run_baselines(ModelConfig(tiny_model_dir, device="cpu"), BaselineConfig(methods), Run(str(run)))
    assert (out / "manifest.json").read_bytes() == manifest


def test_stage6_refuses_what_it_cannot_compare(run_to_stage5, tiny_model_dir):
    with pytest.raises(DLMAError, match="unknown method\\(s\\) ppo"):
        BaselineConfig("rlcd,ppo")
    with pytest.raises(DLMAError, match="judge_url='localhost:8000': expected an http"):
        BaselineConfig("rlcd", judge_url="localhost:8000")
    (run_to_stage5 / "05_evaluate_alignment" / "responses.jsonl").unlink()
    with pytest.raises(DLMAError, match=r"05_evaluate_alignment/responses.jsonl: no such file \(run stages 1 to 5"):
        run_baselines(ModelConfig(tiny_model_dir, device="cpu"), BaselineConfig("rlcd"), Run(str(run_to_stage5)))
    assert not (run_to_stage5 / "06_baselines").exists()  # checked before anything is written


def test_stage6_with_an_http_judge_sends_the_key_and_never_writes_it(run_to_stage5, tiny_model_dir, monkeypatch):
    from test_judge import SECRET, Server  # the tests' folder is on sys.path (pytest's prepend mode)

    monkeypatch.setenv("STAGE6_JUDGE_KEY", SECRET)
    server = Server()
    try:
        study = BaselineConfig("rlcd", judge_url=server.url, judge_model="judge-7b", judge_key_env="STAGE6_JUDGE_KEY")
        result = run_baselines(ModelConfig(tiny_model_dir, device="cpu"), study, Run(str(run_to_stage5)))
        sent = len(server.requests)
        out = run_to_stage5 / "06_baselines"
        judged = [r for r in read_jsonl(out / "judgements.jsonl") if r["judge"] == "http"]
        assert len(judged) == 3 * 3  # three prompts: rlcd against base and dlma, dlma against base
        # two orders each, every distinct prompt asked once (the tiny model's answers repeat): one cached line each
        cached = (out / "http_judge_cache.jsonl").read_text().splitlines()
        assert 0 < sent == len(cached) <= 2 * 3 * 3
        assert set(server.auth) == {f"Bearer {SECRET}"} and server.requests[0]["model"] == "judge-7b"
        http = result["rlcd"]["http_vs_base"]
        assert http["win"] + http["tie"] + http["lose"] == 3 and 0 <= http["position_consistency"] <= 1
        for path in out.rglob("*"):
            assert not path.is_file() or SECRET not in path.read_text(errors="ignore"), path
        (out / "judgements.jsonl").unlink()  # judged again: every answer comes from the cache
        (out / "manifest.json").unlink()
        run_baselines(ModelConfig(tiny_model_dir, device="cpu"), study, Run(str(run_to_stage5)))
        assert len(server.requests) == sent
    finally:
        server.close()
