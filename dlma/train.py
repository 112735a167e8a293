"""Stage 4 (the Method page, section 4): the QLoRA driver. The hold-out split of the scored pairs, then DLMA training of
LoRA adapters on a 4-bit NF4 base with `dlma.trainer.DLMATrainer` (TRL's DPO with the clamped R as a per-pair
margin), the reference being the same model with the adapter disabled (no second copy in memory). The
released code is a full fine-tune; `TrainConfig` says what carries over.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from .artifacts import UMASK, json_text, read_json, read_jsonl, write_json, write_jsonl
from .data import pairs_file, read_pairs
from .distributed import rank
from .errors import DLMAError, check_fields
from .folder import StageFolder
from .models import ModelConfig, load_model, resolve_device, resolve_dtype
from .params import Beta, Seed, documented, param
from .prompts import policy_prompt
from .quiet import progress
from .trainer import DLMAConfig, DLMALoss, DLMATrainer, margin_problem

MAPPED = ("save_steps",)  # declared by TRL too, but TrainConfig's 0 means no checkpoints: make_trainer maps it


@documented
@dataclass
class TrainConfig(DLMALoss, Beta, Seed):
    """QLoRA DLMA training. Paper values where they carry over; the released run was a full fine-tune with
    RMSprop at lr 5e-7, 150 warm-up steps, global batch 64, 1 epoch. LoRA adapters start at B = 0 and need a
    far larger step than a full fine-tune (QLoRA used 1e-4..2e-4); AdamW, not RMSprop, because Adam's
    momentum and bias correction are what LoRA recipes are tuned for (`optim rmsprop` is still accepted)."""

    margin_low: float = param(-40.0, "clamp of R, lower bound L (paper: -40)")
    margin_high: float = param(40.0, "clamp of R, upper bound U (paper: 40)")
    learning_rate: float = param(5e-5, "LoRA learning rate (the released code full-fine-tunes at 5e-7; the paper "
                                       "names none)")
    optim: str = param("adamw_torch", "a transformers optimizer name (AdamW: LoRA recipes are tuned for it; the "
                                      "released code uses RMSprop)")
    lr_scheduler_type: str = param("constant_with_warmup", "a transformers scheduler (the released DPO code: linear "
                                                           "warm-up, then constant)")
    warmup_steps: float = param(0.1, "below 1: a fraction of the steps, from 1: a count (the released code: 150)")
    num_train_epochs: int = param(1, "passes over the training pairs (the released code: 1)")
    per_device_train_batch_size: int = param(8, "pairs per step on each process (the released code: a global batch "
                                                "of 64)")
    gradient_accumulation_steps: int = param(1, "steps whose gradients are summed before an update (the global "
                                                "batch: processes x per_device_train_batch_size x this)")
    max_length: int = param(512, "prompt + response tokens in training (the released code: 512)")
    max_prompt_length: int = param(256, "prompt tokens in training; longer prompts keep their end (the question and "
                                        "the cue)")
    lora_r: int = param(8, "LoRA rank")
    lora_alpha: int = param(16, "LoRA scaling alpha")
    lora_dropout: float = param(0.05, "dropout on the LoRA path (the base runs without dropout)")
    qlora: bool = param(True, "train LoRA adapters on a 4-bit NF4 base (QLoRA, through bitsandbytes); false: on the "
                              "base in its own dtype")
    gradient_checkpointing: bool = param(True, "recompute activations in the backward pass (TRL's default; what "
                                               "fits 7B)")
    logging_steps: int = param(1, "log the loss and reward metrics every N steps")
    report_to: str = param("none", "none, or tensorboard (offline event files in the adapter's runs/ folder)")
    save_steps: int = param(50, "save a checkpoint every N steps in the adapter folder's checkpoints/ (removed once "
                                "the adapter is written): a training killed or stopped resumes from it, to the same "
                                "adapter; 0: none", added_in="2026-12-02")

    @property
    def margin_clip(self) -> tuple[float, float]:
        return (self.margin_low, self.margin_high)

    def __post_init__(self):
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        self.margin_low, self.margin_high = float(self.margin_low), float(self.margin_high)
        problem = margin_problem(self.beta, self.gamma, self.margin_clip, self.weighting)
        if problem:
            raise DLMAError(f"TrainConfig: {problem}")
        checks = [  # (holds, the fields it is about, what must hold)
            (self.learning_rate > 0, ("learning_rate",), "must be > 0"),
            (self.optim in {o.value for o in OptimizerNames}, ("optim",), "must be a transformers optimizer name"),
            (self.lr_scheduler_type in {s.value for s in SchedulerType}, ("lr_scheduler_type",),
             "must be a transformers scheduler name"),
            (self.warmup_steps >= 0, ("warmup_steps",), "must be >= 0"),
            (self.num_train_epochs >= 1, ("num_train_epochs",), "must be >= 1"),
            (self.per_device_train_batch_size >= 1, ("per_device_train_batch_size",), "must be >= 1"),
            (self.gradient_accumulation_steps >= 1, ("gradient_accumulation_steps",), "must be >= 1"),
            (self.max_prompt_length >= 1, ("max_prompt_length",), "must be >= 1"),
            (self.max_length > self.max_prompt_length, ("max_length", "max_prompt_length"),
             "max_length must exceed max_prompt_length, to leave room for the response"),
            (self.lora_r >= 1, ("lora_r",), "must be >= 1"),
            (self.lora_alpha > 0, ("lora_alpha",), "must be > 0"),
            (0 <= self.lora_dropout < 1, ("lora_dropout",), "must be in [0, 1)"),
            (self.logging_steps >= 1, ("logging_steps",), "must be >= 1"),
            (self.save_steps >= 0, ("save_steps",), "must be >= 0 (0: no checkpoints)"),
            (self.report_to in ("none", "tensorboard"), ("report_to",), "must be none or tensorboard"),
        ]
        check_fields(self, checks)
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise DLMAError("TrainConfig: report_to='tensorboard' needs the tensorboard package "
                            "(pip install tensorboard)")


def build_dataset(rows: list[dict], tokenizer, max_prompt_length: int):
    """TRL's preference format: prompt = the plain query (no contrastive prompt), chosen = o1, rejected = o2,
    plus `self_reward`, from rows that `data.read_pairs` checked. Returns (dataset, number of prompts cut to
    max_prompt_length)."""
    from datasets import Dataset

    # policy_prompt writes the BOS token as text; a tokenizer that also adds one itself would double it
    bos = tokenizer.bos_token
    auto_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    records, n_cut = [], 0
    for row in rows:  # rows as `data.read_pairs` checked them
        rendering = row.get("rendering", "affix")
        prompt = policy_prompt(row["turns"], rendering, tokenizer)
        if auto_bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        prompt, cut = _keep_prompt_end(prompt, tokenizer, max_prompt_length, bos if not auto_bos else None)
        n_cut += cut
        records.append({"prompt": prompt, "chosen": row["o1"], "rejected": row["o2"],
                        "self_reward": float(row["self_reward"])})
    return Dataset.from_list(records), n_cut


def sft_dataset(preference):
    """Context distillation's data from the preference dataset: the plain prompt completed by o1 (the
    response sampled under p+), TRL's prompt-completion format, so the loss is on o1's tokens only."""
    return preference.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")


def _keep_prompt_end(prompt: str, tokenizer, max_tokens: int, bos: str | None) -> tuple[str, bool]:
    """TRL 1.16 has no max_prompt_length; cut long prompts here, keeping the end the policy answers after."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return prompt, False
    has_bos = bos is not None and prompt.startswith(bos)
    tail = tokenizer.decode(ids[len(ids) - max_tokens + has_bos:])
    return (bos + tail if has_bos else tail), True


def train_dlma(rows: list[dict], model_cfg: ModelConfig, cfg: TrainConfig, out_dir, sft: bool = False) -> dict:
    """QLoRA DLMA on rows {turns, o1, o2, self_reward, rendering?}. Writes into `out_dir` the adapter
    (`adapter_model.safetensors`, `adapter_config.json`), the tokenizer, `train_log.jsonl`,
    `step0_guard.json` and `train_summary.json`, and returns the summary. Whether `out_dir` may be written
    (the same parameters and inputs, or --force) is `run_train`'s question, as for every stage. A run killed
    or stopped resumes from its last checkpoint (`CHECKPOINTS`), to the same adapter.

    `sft`: context distillation instead, on the same budget: TRL's SFTTrainer on the plain prompt completed
    by o1 (o2 and R unused; no step-0 guard, which is DPO's)."""
    out_dir = Path(out_dir)
    if not rows:
        raise DLMAError("train_dlma: no training rows")
    started = time.time()
    device = resolve_device(model_cfg.device)
    model, tokenizer = load_base(model_cfg, cfg)
    dataset, n_cut = build_dataset(rows, tokenizer, cfg.max_prompt_length)
    # transformers' output_dir: its checkpoints (and TensorBoard's event files), kept until the adapter is written
    checkpoints = out_dir / CHECKPOINTS
    resume = last_checkpoint(checkpoints)
    if resume is None and rank() == 0:  # what a run killed before its first checkpoint left
        shutil.rmtree(checkpoints, ignore_errors=True)
    for old in out_dir.glob(".trl-rank*"):  # TRL's scratch folders of earlier versions, as a killed run left them
        shutil.rmtree(old, ignore_errors=True)
    compute_dtype = resolve_dtype(model_cfg.dtype, device)
    trainer = make_trainer(model, tokenizer, dataset, cfg, checkpoints, device, compute_dtype, sft)
    # TRL 1.16 casts QLoRA adapters to bf16. There an Adam step of ~lr (5e-5) is below bf16's spacing for
    # most entries of A (~5e-4 near |a| = 0.1) and is lost; peft's default keeps adapters in float32.
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    for p in trainable.values():
        p.data = p.data.float()
    before = {n: p.detach().clone() for n, p in trainable.items()}
    n_trainable = sum(p.numel() for p in trainable.values())
    if progress():  # console lines; a notebook shows the summary, the same whether it trained or resumed
        print(f"train{' (SFT on o1)' if sft else ''}: {len(dataset)} pairs, {n_trainable:,} LoRA parameters, {device}, "
              f"{'4-bit NF4' if cfg.qlora else str(compute_dtype)} base")
    if resume is not None:  # the step-0 guard ran before the kill: a resumed run cannot see step 0 again
        trainer.step0_guard = read_json(resume / RESUME_STATE)["step0_guard"]
        print(f"train: resuming from step {checkpoint_step(resume)} ({resume})", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainable.items())
    summary = train_summary(trainer, result, cfg, sft, resume, started, device,
                            n_pairs=len(dataset), n_prompts_truncated=n_cut,
                            trainable_params=n_trainable,
                            trainable_tensors=len(trainable), trainable_tensors_changed=changed)
    if progress():
        print(f"train: {summary['n_steps']} steps, {summary['s_per_step']} s/step, final loss "
              f"{summary['final_loss']}, {changed}/{len(trainable)} adapter tensors changed")
    if trainer.accelerator.is_main_process:  # under `accelerate launch` the main process writes
        save_training(trainer, tokenizer, out_dir, summary, sft)
    trainer.accelerator.wait_for_everyone()
    return summary


def load_base(model_cfg: ModelConfig, cfg: TrainConfig):
    """The base model to put LoRA adapters on (4-bit NF4 with `qlora`) and its tokenizer, dropout off."""
    from peft import prepare_model_for_kbit_training
    from trl.trainer.utils import disable_dropout_in_model

    model, tokenizer = load_model(ModelConfig(**{**model_cfg.to_dict(), "load_in_4bit": cfg.qlora,
                                                 "adapter": None}))
    # The base runs without dropout, as in the released DPO code; only the LoRA path drops (QLoRA's recipe).
    # Both matter for the step-0 guard: the policy and reference forwards must differ only by the adapter.
    disable_dropout_in_model(model)
    if cfg.qlora:
        # peft's QLoRA preparation: freeze the base, keep its non-quantised weights in float32, and let
        # gradients reach the adapters through checkpointed blocks. On CPU it is a no-op for the dtypes.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model, tokenizer


def trl_fields() -> list[str]:
    """TrainConfig's fields that both TRL configs declare (DPOConfig's, through DLMAConfig, and SFTConfig's: one
    budget for either objective), handed to TRL under their names; a parameter added under a TRL name is passed
    with no other change. The loss's fields (beta, gamma, ...) are DPO's alone: make_trainer passes them."""
    from trl import SFTConfig  # where make_trainer takes it from

    both = {f.name for f in fields(DLMAConfig)} & {f.name for f in fields(SFTConfig)}
    return [f.name for f in fields(TrainConfig) if f.name in both and f.name not in MAPPED]


def make_trainer(model, tokenizer, dataset, cfg: TrainConfig, checkpoints: Path, device: str, compute_dtype,
                 sft: bool):
    """TRL's trainer for the objective: DLMATrainer (DPO with the DLMA margin) or SFTTrainer (context
    distillation), checkpointing every `save_steps` into `checkpoints`."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    loss_args = ({"completion_only_loss": True} if sft else
                 {"beta": cfg.beta, "gamma": cfg.gamma, "margin_clip": cfg.margin_clip, "weighting": cfg.weighting,
                  "disable_dropout": False})
    args = (SFTConfig if sft else DLMAConfig)(
        output_dir=str(checkpoints), **loss_args,
        **{f: getattr(cfg, f) for f in trl_fields()}, disable_tqdm=not progress(),
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 1,
        bf16=compute_dtype == torch.bfloat16, fp16=False,
        # under DDP: only LoRA weights train, and every one of them gets a gradient at every step
        ddp_find_unused_parameters=False, gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=device == "cpu",  # also what lets `accelerate launch` run processes on CPUs (gloo)
    )
    trainer = (SFTTrainer if sft else DLMATrainer)(model=model, args=args, processing_class=tokenizer,
                                                   train_dataset=sft_dataset(dataset) if sft else dataset,
                                                   peft_config=peft_config)
    if not progress():  # without bars, transformers prints every log dict instead (timings included)
        trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Checkpoints(lambda: getattr(trainer, "step0_guard", None)))
    return trainer


def train_summary(trainer, result, cfg: TrainConfig, sft: bool, resume: Path | None, started: float, device: str,
                  **counts) -> dict:
    """train_summary.json: the configuration, the step-0 guard, losses, steps and times (per step: of the steps
    this call ran, resumed or not), as a rerun reads it back from disk."""
    log_rows = train_log(trainer)
    n_steps = trainer.state.global_step
    n_run = n_steps - (checkpoint_step(resume) if resume is not None else 0)  # the steps of this call
    runtime = result.metrics.get("train_runtime", float("nan"))
    summary = {
        "config": asdict(cfg),
        "step0": getattr(trainer, "step0_guard", None),
        "objective": "sft" if sft else "dlma",
        "final_loss": log_rows[-1]["loss"] if log_rows else None,
        "train_loss": mean_logged_loss(log_rows),
        "n_steps": n_steps,
        **counts,
        "train_runtime_s": round(runtime, 2),
        "s_per_step": round(runtime / max(n_run, 1), 3),
        "wall_time_s": round(time.time() - started, 2),
        **({"resumed_from_step": n_steps - n_run} if resume is not None else {}),
        "device": device,
    }
    return json.loads(json_text(summary))  # tuples as lists, keys sorted


def train_log(trainer) -> list[dict]:
    """The logged training steps (loss and TRL's reward metrics), step first."""
    return [{"step": h["step"], **{k: v for k, v in h.items() if k != "step"}}
            for h in trainer.state.log_history if "loss" in h]


def save_training(trainer, tokenizer, out_dir: Path, summary: dict, sft: bool) -> None:
    """The adapter, the tokenizer, the log, the step-0 guard, the summary and TensorBoard's files, written in a
    scratch folder and moved in when whole (the stage's manifest, written after, marks the folder finished);
    then the checkpoints go."""
    events = _read_events(out_dir / CHECKPOINTS / "runs")  # TensorBoard's, when asked for, resumed runs' included
    with scratch(out_dir / ".saving") as tmp:
        save_adapter(trainer.accelerator.unwrap_model(trainer.model), tokenizer, tmp)
        write_jsonl(tmp / "train_log.jsonl", train_log(trainer))
        if not sft:
            write_json(tmp / "step0_guard.json", trainer.step0_guard)
        write_json(tmp / "train_summary.json", summary)
        for rel, data in events.items():
            (tmp / "runs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "runs" / rel).write_bytes(data)
        for path in sorted(tmp.rglob("*")):
            target = out_dir / path.relative_to(tmp)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.chmod(path, 0o666 & ~UMASK)  # as the rest of the folder (safetensors writes 0600)
                os.replace(path, target)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # the adapter is whole: optimizer states go


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: a killed or stopped training resumes from the last one, to the same adapter

CHECKPOINTS = "checkpoints"  # in the stage's folder, beside the adapter it becomes; removed once that is written
RESUME_STATE = "dlma_resume.json"  # what resuming needs besides transformers' own files; marks a whole checkpoint


class Checkpoints(TrainerCallback):
    """transformers writes `checkpoint-N/` (adapter, optimizer, scheduler, RNG states, trainer state) and then
    calls `on_save`: only then is the checkpoint marked whole (with the step-0 guard, which a resumed run cannot
    recompute) and the earlier ones removed, so a run killed at any moment leaves a whole checkpoint or none.
    No checkpoint at the last step: the adapter is saved right after."""

    def __init__(self, step0_guard):
        self.step0_guard = step0_guard

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(folder / RESUME_STATE, {"step": state.global_step, "step0_guard": self.step0_guard()})
            for old in Path(args.output_dir).glob("checkpoint-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        return control


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix("checkpoint-"))


def last_checkpoint(root: Path) -> Path | None:
    """The newest whole checkpoint under `root` (one marked by `Checkpoints.on_save`), or None."""
    whole = [p for p in root.glob("checkpoint-*")
             if p.name.removeprefix("checkpoint-").isdigit() and (p / RESUME_STATE).is_file()]
    return max(whole, key=checkpoint_step, default=None)


def mean_logged_loss(log_rows: list[dict]) -> float | None:
    """The mean training loss over all steps, from the logged losses (each the mean since the previous log):
    the same whether the run was resumed or not (transformers' own figure covers only the steps of its call)."""
    total, last = 0.0, 0
    for row in log_rows:
        total, last = total + row["loss"] * (row["step"] - last), row["step"]
    return total / last if last else None


def save_adapter(model, tokenizer, folder: Path) -> None:
    """The adapter and the tokenizer into `folder`. A full disk is one error: the tokenizers library reports
    it as a bare Exception, not an OSError."""
    try:
        model.save_pretrained(folder, safe_serialization=True)
        sort_target_modules(folder / "adapter_config.json")
        tokenizer.save_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any library's failure to write is the same to the user
        if isinstance(e, DLMAError):
            raise
        raise DLMAError(f"{folder.parent}: the trained adapter could not be saved ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); free some space and rerun: "
                        "the training is redone") from None


@contextmanager
def scratch(folder: Path) -> Iterator[Path]:
    """A work folder inside the stage's folder, removed when done; one a killed run left (its name is fixed,
    hidden from the stage's files) is removed by the next run."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sort_target_modules(config: Path) -> None:
    """peft lists an adapter's target_modules from a set, in an order that changes from run to run: sorted, two
    identical trainings save the same bytes (in peft's own layout)."""
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _read_events(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of the files under `folder` (TensorBoard event files are small)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------
# The stage: split, then train


def split_holdout(rows: list[dict], fraction: float = 0.05, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle and hold out a fraction of pairs for evaluation (the Method page, section 2): (train, held out)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    k = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    return rows[k:], rows[:k]


def run_split(pairs, split, out) -> tuple[list[dict], list[dict]]:
    """Stage 4's hold-out (`dlma split`): `train.jsonl` and `heldout.jsonl` in `out.out`, from scored pairs."""
    folder = StageFolder(out.out, "split")
    if not 0 <= split.holdout_fraction < 1:
        raise DLMAError(f"holdout_fraction must be in [0, 1), got {split.holdout_fraction!r}")
    empty: list[str] = []
    rows = read_pairs(pairs.pairs, need_self_reward=True, dropped=empty)
    if split.holdout_fraction > 0 and len(rows) < 2:
        raise DLMAError(f"{pairs.pairs}: {len(rows)} pair(s) cannot be split into training and held-out pairs")
    params = {"pairs": str(pairs.pairs), "holdout_fraction": split.holdout_fraction, "seed": split.seed}
    folder.begin(params, {"pairs": pairs_file(pairs.pairs)}, out.force)
    if folder.done:  # done earlier, from the same pairs and parameters
        folder.release()
        return read_jsonl(folder.path / "train.jsonl"), read_jsonl(folder.path / "heldout.jsonl")
    folder.note_dropped(empty, "an empty response")
    train, heldout = split_holdout(rows, split.holdout_fraction, split.seed)
    write_jsonl(folder.path / "train.jsonl", train)
    write_jsonl(folder.path / "heldout.jsonl", heldout)
    folder.finish(n_train=len(train), n_heldout=len(heldout), dropped={"empty_response": empty})
    return train, heldout


def run_train(model_cfg: ModelConfig, pairs, cfg: TrainConfig, out, sft: bool = False) -> dict:
    """Stage 4 (`dlma train`): a QLoRA DLMA adapter in `out.out` from the scored pairs `pairs.pairs`; `sft`:
    context distillation instead (stage 6)."""
    model_cfg = ModelConfig(model_cfg.model, model_cfg.dtype, model_cfg.device)  # train quantises per cfg
    folder = StageFolder(out.out, "train", model_cfg)
    empty: list[str] = []
    rows = read_pairs(pairs.pairs, need_self_reward=True, dropped=empty)
    params = {"pairs": str(pairs.pairs), **asdict(cfg), **({"objective": "sft"} if sft else {})}
    # under `accelerate launch`, the main process checks and writes; the others train beside it
    at = folder.begin(params, {"pairs": pairs_file(pairs.pairs)}, out.force, launched=True, outputs=(CHECKPOINTS,))
    if folder.done:
        if progress():  # console only: a notebook shows the same whether it trained or found the adapter
            print(f"train: {folder.path} already holds this run; not retraining")
        folder.release()
        return read_json(folder.path / "train_summary.json")
    folder.note_dropped(empty, "an empty response")
    try:
        summary = train_dlma(rows, model_cfg, cfg, folder.path, sft=sft)
    except BaseException:  # nothing is written before the adapter, whole: a model that fails to load leaves nothing
        folder.abandon()
        last = last_checkpoint(folder.path / CHECKPOINTS)
        if last is not None and at.main:
            print(f"dlma train: stopped; the same command resumes from step {checkpoint_step(last)} ({last})",
                  file=sys.stderr)
        raise
    folder.finish(summary=summary, dropped={"empty_response": empty}, processes=at.world)
    return summary


def split_summary(result, out) -> str:
    train, heldout = result
    return f"{len(train)} training pairs, {len(heldout)} held out -> {out.out}"


def summary(result: dict, out) -> str:
    return f"adapter -> {out.out}  ({result['n_steps']} steps, final loss {result['final_loss']})"

