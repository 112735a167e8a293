"""DLMA training: the loss against the formula written out here, the trainer against TRL's DPO and against
log-probabilities computed by hand, the step-0 guard, and a QLoRA run of the tiny model end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file
from trl import DPOConfig, DPOTrainer

from dlma.errors import DLMAError
from dlma.models import ModelConfig, load_model, load_tokenizer
from dlma.prompts import policy_prompt
from dlma.train import TrainConfig, build_dataset, train_dlma
from dlma.trainer import DLMAConfig, DLMATrainer, dlma_loss, step0_loss

LN2 = math.log(2)
# Self-rewards on both sides of the default clip [-40, 40], at its bounds, and of both signs.
REWARDS = [-95.0, -40.0, -3.5, 0.0, 12.25, 40.0, 61.0, 2.0]


def formula(pc, pr, rc, rr, r, beta, gamma, lower, upper, weighting=False):
    """SPEC section 4 in numpy float64: -log sigmoid(z) = log(1 + exp(-z)), via logaddexp for stability."""
    r = np.clip(r, lower, upper)
    z = beta * ((pc - pr) - (rc - rr) - gamma * r)
    loss = np.logaddexp(0.0, -z)
    return loss * np.maximum(r, 0.0) if weighting else loss


def make_rows(rewards=REWARDS, seed=0) -> list[dict]:
    rng = random.Random(seed)
    return [{"turns": [f"Question {i}: how do I fix it?"],
             "o1": "A careful, lawful answer." + " Stay safe." * rng.randint(0, 2),
             "o2": "A reckless answer." + " Break it." * rng.randint(0, 2),
             "self_reward": r} for i, r in enumerate(rewards)]


def make_trainer(model_dir, tmp_path, rows, trainer_cls=DLMATrainer, **overrides):
    """A trainer on the tiny float32 model: one batch holds every row, one step, fresh LoRA adapter."""
    model, tokenizer = load_model(ModelConfig(model=model_dir))
    dataset, _ = build_dataset(rows, tokenizer, max_prompt_length=64)
    config_cls = DLMAConfig
    if trainer_cls is DPOTrainer:
        dataset, config_cls = dataset.remove_columns("self_reward"), DPOConfig
    args = config_cls(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), max_steps=1,
                      learning_rate=1e-3, report_to="none", save_strategy="no", bf16=False,
                      gradient_checkpointing=False, disable_tqdm=True, seed=0, logging_steps=1, **overrides)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    return trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def perturb_adapter(*models, seed=1):
    """Give LoRA B (zero at init) the same random values in each model: the policy leaves the reference."""
    gen = torch.Generator().manual_seed(seed)
    named = [dict(m.named_parameters()) for m in models]
    for name, param in named[0].items():
        if "lora_B" in name:
            noise = 0.5 * torch.randn(param.shape, generator=gen)
            for params in named:
                params[name].data.copy_(noise)


def completion_logps(model, batch) -> torch.Tensor:
    """Summed log-probabilities of the completion tokens, from full logits (not TRL's fused head)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


# ----------------------------------------------------------------------------------------------------------
# dlma_loss


def test_dlma_loss_matches_formula_with_clipping():
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-100 + 30 * torch.randn(len(REWARDS), generator=gen, dtype=torch.float64) for _ in range(4))
    r = torch.tensor(REWARDS, dtype=torch.float64)
    for beta, gamma, clip in [(0.1, 0.2, (-40.0, 40.0)), (0.5, 1.0, (-5.0, 20.0)), (0.1, 0.0, (-40.0, 40.0))]:
        got = dlma_loss(pc, pr, rc, rr, r, beta, gamma, clip)
        want = formula(*(t.numpy() for t in (pc, pr, rc, rr, r)), beta, gamma, *clip)
        assert got.shape == (len(REWARDS),)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # Beyond a bound R acts as the bound itself; inside, it moves the loss.
    at = dict(beta=0.1, gamma=0.2, margin_clip=(-40.0, 40.0))
    z = torch.zeros(3, dtype=torch.float64)
    loss = dlma_loss(z, z, z, z, torch.tensor([40.0, 61.0, 1e6], dtype=torch.float64), **at)
    assert loss[0] == loss[1] == loss[2]
    low = dlma_loss(z, z, z, z, torch.tensor([-40.0, -95.0, 39.0], dtype=torch.float64), **at)
    assert low[0] == low[1] and low[2] < loss[0] and low[0] < low[2]
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(0.1 * 0.2 * 40)), abs=1e-12)


def test_dlma_loss_weighting_variant():
    gen = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-50 + 10 * torch.randn(len(REWARDS), generator=gen, dtype=torch.float64) for _ in range(4))
    r = torch.tensor(REWARDS, dtype=torch.float64)
    got = dlma_loss(pc, pr, rc, rr, r, 0.1, 0.0, (-40.0, 40.0), weighting=True)
    want = formula(*(t.numpy() for t in (pc, pr, rc, rr, r)), 0.1, 0.0, -40.0, 40.0, weighting=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert (got[r <= 0] == 0).all()  # pairs the self-reward disagrees with weigh nothing
    assert got[REWARDS.index(61.0)] == pytest.approx(40.0 * formula(pc[6].item(), pr[6].item(), rc[6].item(),
                                                                      rr[6].item(), 0.0, 0.1, 0.0, -40, 40))
    with pytest.raises(ValueError, match="gamma = 0"):
        dlma_loss(pc, pr, rc, rr, r, 0.1, 0.2, (-40.0, 40.0), weighting=True)


def test_step0_closed_form():
    r = torch.tensor(REWARDS)
    clipped = np.clip(np.array(REWARDS), -40, 40)
    assert step0_loss(r, 0.1, 0.0, (-40, 40)) == pytest.approx(LN2, abs=1e-12)
    assert step0_loss(r, 0.1, 0.2, (-40, 40)) == pytest.approx(np.mean(np.logaddexp(0, 0.1 * 0.2 * clipped)))
    assert step0_loss(r, 0.1, 0.0, (-40, 40), weighting=True) == pytest.approx(LN2 * np.maximum(clipped, 0).mean())


# ----------------------------------------------------------------------------------------------------------
# DLMATrainer on the tiny model


@pytest.mark.slow
def test_trainer_matches_trl_dpo_at_gamma0_and_formula_at_gamma(tiny_model_dir, tmp_path):
    rows = make_rows()
    ours = make_trainer(tiny_model_dir, tmp_path / "dlma", rows, gamma=0.0)
    trl = make_trainer(tiny_model_dir, tmp_path / "trl", rows, trainer_cls=DPOTrainer)
    for (n1, p1), (n2, p2) in zip(ours.model.named_parameters(), trl.model.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)  # same seed, same LoRA init
    perturb_adapter(ours.model, trl.model)

    batch = next(iter(ours.get_train_dataloader()))
    # self_reward survived TRL's tokenization, column pruning and collation, and stayed with its pair
    assert batch["self_reward"].shape == (len(rows),)
    tokenizer = ours.processing_class
    for text, r in zip(tokenizer.batch_decode(batch["input_ids"][: len(rows)]), batch["self_reward"], strict=True):
        index = int(text.split("Question ")[1].split(":")[0])
        assert r.item() == rows[index]["self_reward"]

    for trainer in (ours, trl):
        trainer.model.eval()  # no step-0 guard outside training; dropout is off in both anyway
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch).item()
        trl_loss = trl.compute_loss(trl.model, {k: v for k, v in batch.items() if k != "self_reward"}).item()
    assert abs(loss - LN2) > 1e-2  # the policy really is away from the reference
    assert loss == pytest.approx(trl_loss, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert ours._metrics["eval"][key] == pytest.approx(trl._metrics["eval"][key], abs=1e-6)
    assert ours._metrics["eval"]["dlma/self_reward_clamped"][0] == pytest.approx(np.clip(REWARDS, -40, 40).mean())

    # gamma > 0 on the same batch: the trainer's loss is the formula on log-probs computed here by hand
    ours.args.gamma = 0.2
    with torch.no_grad():
        loss = ours.compute_loss(ours.model, batch).item()
        policy = completion_logps(ours.model, batch)
        with ours.model.disable_adapter():
            ref = completion_logps(ours.model, batch)
    pc, pr = policy.chunk(2)
    rc, rr = ref.chunk(2)
    want = formula(pc.numpy(), pr.numpy(), rc.numpy(), rr.numpy(), batch["self_reward"].double().numpy(),
                   0.1, 0.2, -40.0, 40.0).mean()
    assert loss == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("gamma, weighting", [(0.0, False), (0.2, False), (0.0, True)])
def test_step0_guard_records_closed_form(tiny_model_dir, tmp_path, gamma, weighting):
    rows = make_rows()
    trainer = make_trainer(tiny_model_dir, tmp_path, rows, gamma=gamma, weighting=weighting)
    trainer.train()
    guard = trainer.step0_guard
    clipped = np.clip(np.array(REWARDS), -40, 40)
    if weighting:
        want = LN2 * np.maximum(clipped, 0).mean()
    else:
        want = np.mean(np.logaddexp(0.0, 0.1 * gamma * clipped))  # mean(-log sigmoid(-beta*gamma*clamp(R)))
    assert guard["expected"] == pytest.approx(want, abs=1e-9)
    assert guard["observed"] == pytest.approx(want, abs=1e-5)
    assert guard["max_abs_logratio"] == 0.0 and guard["n_pairs"] == len(rows)
    if gamma == 0 and not weighting:
        assert guard["observed"] == pytest.approx(LN2, abs=1e-6)
    assert trainer.state.log_history[0]["loss"] == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
def test_step0_guard_raises_when_policy_is_not_reference(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, make_rows(), gamma=0.2)
    perturb_adapter(trainer.model)  # as if the adapter were not fresh while the reference is the bare base
    with pytest.raises(RuntimeError, match="step-0 guard.*reference is not the adapter-disabled policy"):
        trainer.train()
    assert trainer.step0_guard["abs_diff"] > 1e-4 and trainer.step0_guard["max_abs_logratio"] > 0


def test_the_loss_goes_through_trls_public_compute_loss_and_a_changed_signature_is_refused():
    import inspect

    from dlma.trainer import COMPUTE_LOSS_ARGS, check_compute_loss_signature

    assert "_compute_loss" not in DLMATrainer.__dict__ and "compute_loss" in DLMATrainer.__dict__
    assert tuple(inspect.signature(DLMATrainer.compute_loss).parameters) == COMPUTE_LOSS_ARGS
    check_compute_loss_signature(DPOTrainer)  # the pinned TRL's

    class Renamed(DPOTrainer):  # as a TRL release that changed the extension point would
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, *, mode="train"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    with pytest.raises(TypeError, match=r"DLMATrainer replaces Renamed.compute_loss\('model', 'inputs', "
                                        r"'return_outputs', 'num_items_in_batch'\), but TRL .* defines "
                                        r"compute_loss\(.*'mode'\): install the TRL that pyproject.toml pins"):
        check_compute_loss_signature(Renamed)


def test_trainer_needs_self_reward(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(ModelConfig(model=tiny_model_dir))
    dataset, _ = build_dataset(make_rows(), tokenizer, 64)
    args = DLMAConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="no 'self_reward' column"):
        DLMATrainer(model=model, args=args, train_dataset=dataset.remove_columns("self_reward"),
                    processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules="all-linear"))


# ----------------------------------------------------------------------------------------------------------
# train_dlma end to end: QLoRA (NF4 through bitsandbytes) on CPU


@pytest.mark.slow
def test_train_dlma_qlora_tiny(tiny_model_dir, tmp_path):
    rows = make_rows(REWARDS * 2)  # 16 pairs
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, per_device_train_batch_size=8, qlora=True)
    out = tmp_path / "adapter"
    (out / ".trl-rank0" / "runs").mkdir(parents=True)  # TRL's scratch folder, as a killed run left it
    summary = train_dlma(rows, ModelConfig(model=tiny_model_dir), cfg, out)

    assert summary["n_steps"] == 2 and summary["n_pairs"] == 16
    assert summary["step0"]["abs_diff"] <= 1e-4
    # every LoRA tensor moved (A only from step 2 on: its gradient is B^T(...), and B starts at 0)
    assert summary["trainable_tensors_changed"] == summary["trainable_tensors"] > 0
    assert math.isfinite(summary["final_loss"])

    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "train_log.jsonl",
            "step0_guard.json", "train_summary.json"} <= names
    assert not any(n.startswith("checkpoint") for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # the temp folder's files were moved in
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no scratch folder stays, nor the killed one
    from dlma.artifacts import UMASK

    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~UMASK}, modes  # the weights as readable as the rest (were 0600)

    weights = load_file(out / "adapter_model.safetensors")
    assert len(weights) == summary["trainable_tensors"]
    assert all(t.abs().sum() > 0 for n, t in weights.items() if "lora_B" in n)  # B started at exactly 0
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {t.rsplit(".", 1)[-1] for t in targets} == linear  # every linear projection, not lm_head
    assert targets == sorted(targets)  # not a set's order: two identical trainings save the same bytes

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]
    for key in ("loss", "rewards/margins", "rewards/accuracies", "dlma/self_reward_clamped"):
        assert all(key in row for row in log)
    assert log[0]["loss"] == pytest.approx(summary["step0"]["observed"], abs=1e-4)
    assert json.loads((out / "step0_guard.json").read_text()) == summary["step0"]

    # the saved adapter changes the model's predictions
    tokenizer = load_tokenizer(tiny_model_dir)
    ids = tokenizer(policy_prompt(["How do I fix it?"], "affix", tokenizer), return_tensors="pt").input_ids
    base, _ = load_model(ModelConfig(model=tiny_model_dir))
    tuned, _ = load_model(ModelConfig(model=tiny_model_dir, adapter=str(out)))
    with torch.no_grad():
        diff = (base(ids).logits - tuned(ids).logits).abs().max().item()
    assert diff > 1e-4
    # (a rerun of the same job, and one with other parameters: tests/test_train_cli.py)


def test_adapter_config_lists_its_target_modules_sorted_in_peft_layout(tmp_path):
    from dlma.train import sort_target_modules

    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"r": 8, "target_modules": ["v_proj", "q_proj", "k_proj"]}, indent=2, sort_keys=True))
    sort_target_modules(config)
    assert config.read_text() == json.dumps({"r": 8, "target_modules": ["k_proj", "q_proj", "v_proj"]}, indent=2,
                                            sort_keys=True)


# ----------------------------------------------------------------------------------------------------------
# Inputs and configs


def test_build_dataset_prompts(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = make_rows()
    rows[0]["turns"] = ["word " * 300]
    dataset, n_cut = build_dataset(rows, tokenizer, max_prompt_length=32)
    assert n_cut == 1 and dataset.column_names == ["prompt", "chosen", "rejected", "self_reward"]
    assert dataset[1]["prompt"] == policy_prompt(rows[1]["turns"], "affix", tokenizer)  # the plain query
    assert dataset[1]["chosen"] == rows[1]["o1"] and dataset[1]["rejected"] == rows[1]["o2"]
    cut = dataset[0]["prompt"]
    assert cut.startswith(tokenizer.bos_token) and cut.endswith("\nASSISTANT:\n")
    assert len(tokenizer(cut, add_special_tokens=False).input_ids) <= 33
    # bad rows never reach build_dataset: data.read_pairs refuses them (tests/test_bad_inputs.py)


@pytest.mark.parametrize("kwargs, match", [
    ({"margin_clip": (5.0, -5.0)}, "needs L < U"),
    ({"margin_clip": (1.0,)}, "pair"),
    ({"gamma": -0.1}, "gamma must be >= 0"),
    ({"weighting": True}, "set gamma = 0"),
    ({"loss_type": "ipo"}, "sigmoid"),
    ({"ld_alpha": 0.5}, "ld_alpha"),
    ({"beta": 0.0}, "beta"),
])
def test_dlma_config_rejects(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        DLMAConfig(output_dir=str(tmp_path), **kwargs)


def test_dlma_config_defaults(tmp_path):
    cfg = DLMAConfig(output_dir=str(tmp_path), margin_clip=[-20, 20])
    assert (cfg.beta, cfg.gamma, cfg.margin_clip, cfg.weighting, cfg.loss_type) == (
        0.1, 0.2, (-20.0, 20.0), False, ["sigmoid"])
    assert DLMAConfig(output_dir=str(tmp_path), gamma=0.0, weighting=True).weighting


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": -1.0}, "TrainConfig: beta must be > 0, got -1.0"),
    ({"margin_low": 40.0, "margin_high": -40.0}, r"margin_low < margin_high\), got \(40.0, -40.0\)"),
    ({"weighting": True}, r"set gamma = 0 \(got 0.2\)"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
    ({"max_prompt_length": 512}, "max_length must exceed max_prompt_length"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"optim": "sgd-ish"}, "optim='sgd-ish'"),
    ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type"),
    ({"report_to": "wandb"}, "report_to='wandb': must be none or tensorboard"),
])
def test_train_config_rejects(kwargs, match):
    with pytest.raises(DLMAError, match=match):
        TrainConfig(**kwargs)


def test_report_to_tensorboard_needs_the_package():
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        assert TrainConfig(report_to="tensorboard").report_to == "tensorboard"
    else:
        with pytest.raises(DLMAError, match="needs the tensorboard package"):
            TrainConfig(report_to="tensorboard")


def test_train_config_defaults():
    cfg = TrainConfig()
    assert (cfg.beta, cfg.gamma, cfg.margin_clip, cfg.weighting) == (0.1, 0.2, (-40.0, 40.0), False)
    assert cfg.qlora and cfg.optim == "adamw_torch" and (cfg.lora_r, cfg.lora_alpha) == (8, 16)
    assert TrainConfig(margin_low=-20, margin_high=20).margin_clip == (-20.0, 20.0)


def test_the_fields_handed_to_trl_are_those_both_its_configs_declare():
    """One budget for DPO and SFT, by TRL's names; the loss's fields go to DPO alone, save_steps is mapped."""
    from dlma.train import trl_fields

    assert trl_fields() == [
        "seed", "learning_rate", "optim", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
        "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing",
        "logging_steps", "report_to"]
