"""Stage 4: DLMA training (SPEC section 4): TRL's DPO with the self-rewarding score as a per-pair margin.

Liu et al. (ACL 2024, arXiv 2402.11907) train the unprompted policy on its own contrastive pairs
(o1 from p+, o2 from p-) with

    L = -log sigmoid( beta * [ (log pi(o1|q) - log pi(o2|q)) - (log ref(o1|q) - log ref(o2|q))
                               - gamma * clamp(R, L, U) ] )

where R is the self-rewarding score of SPEC section 3. A pair the model itself judges clearly in favour of
o1 (large R) must be separated by a larger implicit-reward margin before its loss flattens out; gamma = 0
is plain DPO on the prompt-labelled pairs (RLCD).

Layout, top to bottom: the loss (a pure function), its config, the trainer (TRL's DPOTrainer with the
loss swapped and a step-0 guard), and `train_dlma`, which runs QLoRA on rows from `dlma score`. The
released code is a full fine-tune; here the base is 4-bit NF4 and only LoRA adapters train, and the
reference is the same model with the adapter disabled (no second copy in memory).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from .artifacts import json_text, write_json, write_jsonl
from .errors import DLMAError, check_fields
from .models import ModelConfig, load_model, resolve_device, resolve_dtype
from .params import documented
from .prompts import policy_prompt
from .quiet import progress

PAPER = "Liu et al. 2024, Direct Large Language Model Alignment Through Self-Rewarding Contrastive Prompt Distillation"


# ----------------------------------------------------------------------------------------------------------
# The loss


def dlma_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    self_reward: torch.Tensor,
    beta: float,
    gamma: float,
    margin_clip: tuple[float, float],
    weighting: bool = False,
) -> torch.Tensor:
    """Per-pair DLMA loss, shape (batch,). Chosen = o1 (the p+ response), rejected = o2; logps are summed
    over the response tokens.

    `weighting` is the paper's variant for gamma = 0: the per-pair DPO loss multiplied by R. R is clamped
    into `margin_clip` first, and a pair with R <= 0 gets weight 0: the self-reward disagrees with the
    construction label, and a negative weight would turn the pair's loss into -|R| * (-log sigmoid(.)),
    unbounded below (minimised by driving the margin to -inf). The released code multiplies by the raw R.
    """
    problem = margin_problem(beta, gamma, margin_clip, weighting)
    if problem:
        raise ValueError(problem)
    lower, upper = margin_clip
    r = self_reward.to(policy_chosen_logps.dtype).clamp(lower, upper)
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    logits = pi_logratios - ref_logratios - gamma * r  # h(o1, o2) minus the self-rewarded margin
    losses = -F.logsigmoid(beta * logits)
    if weighting:
        losses = losses * r.clamp(min=0)
    return losses


def margin_problem(beta: float, gamma: float, margin_clip, weighting: bool) -> str | None:
    """What is wrong with DLMA's loss settings, or None: the rules stated once, for DLMAConfig, TrainConfig
    and dlma_loss alike."""
    if not (isinstance(margin_clip, (list, tuple)) and len(margin_clip) == 2):
        return f"margin_clip must be a pair (L, U), got {margin_clip!r}"
    if not margin_clip[0] < margin_clip[1]:
        return f"the clamp of R needs L < U (margin_low < margin_high), got {tuple(margin_clip)}"
    if not gamma >= 0:
        return f"gamma must be >= 0 (0 is plain DPO), got {gamma}"
    if weighting and gamma != 0:
        return f"weighting multiplies the DPO loss by R instead of using it as a margin: set gamma = 0 (got {gamma})"
    if not beta > 0:
        return f"beta must be > 0, got {beta}"
    return None


def step0_loss(self_reward: torch.Tensor, beta: float, gamma: float, margin_clip: tuple[float, float],
               weighting: bool = False) -> float:
    """The batch loss when the policy equals the reference (every log-ratio is 0), written out in closed
    form: mean(-log sigmoid(-beta * gamma * clamp(R))), ln 2 at gamma = 0; ln 2 * mean(max(clamp(R), 0))
    with weighting."""
    r = self_reward.double().clamp(*margin_clip)
    if weighting:
        return math.log(2) * r.clamp(min=0).mean().item()
    return (-F.logsigmoid(-beta * gamma * r)).mean().item()


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class DLMAConfig(DPOConfig):
    """`DPOConfig` plus DLMA's margin. Only TRL's `sigmoid` loss (DPO) is supported: DLMA shifts its logits."""

    gamma: float = field(
        default=0.2,
        metadata={"help": "Weight of the self-rewarding score R as a per-pair margin in the DPO logits (DLMA, "
                          f"{PAPER}; the released code used 0.2). 0 gives plain DPO on the prompt-labelled pairs."},
    )
    margin_clip: tuple[float, float] = field(
        default=(-40.0, 40.0),
        metadata={"help": "[L, U]: R is clamped into this range before use, so a few extreme scores cannot "
                          "dominate (DLMA, released run: [-40, 40]; its config default is [-20, 20])."},
    )
    weighting: bool = field(
        default=False,
        metadata={"help": "DLMA's variant: multiply each pair's DPO loss by clamp(R) (R <= 0 weighs 0) instead of "
                          "using R as a margin. Requires gamma = 0."},
    )
    step0_atol: float = field(
        default=1e-4,
        metadata={"help": "Tolerance of the step-0 guard: at the first step the policy equals the reference, so "
                          "the loss must equal its closed form (ln 2 for DPO) within this."},
    )

    def __post_init__(self):
        problem = margin_problem(self.beta, self.gamma, self.margin_clip, self.weighting)
        if problem:
            raise ValueError(problem)
        self.margin_clip = (float(self.margin_clip[0]), float(self.margin_clip[1]))
        loss_type = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if loss_type != ["sigmoid"]:
            raise ValueError(f"DLMATrainer implements DLMA on the sigmoid (DPO) loss only; got loss_type={loss_type}")
        # the loss override below computes plain summed log-probs with the reverse-KL (standard DPO) scores
        unsupported = {"ld_alpha": (self.ld_alpha, None), "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
                       "use_weighting": (self.use_weighting, False), "label_smoothing": (self.label_smoothing, 0.0)}
        for name, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(f"DLMATrainer does not support {name}={value!r} (only {default!r})")
        if not self.step0_atol > 0:
            raise ValueError(f"step0_atol must be > 0, got {self.step0_atol}")
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False  # TRL defaults to bf16, which transformers refuses on a CPU-only machine
        super().__post_init__()


# ----------------------------------------------------------------------------------------------------------
# Trainer


class _WithSelfReward:
    """Wraps TRL's preference collator (which keeps only the token columns) to carry `self_reward` along."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        batch["self_reward"] = torch.tensor([float(e["self_reward"]) for e in examples], dtype=torch.float32)
        return batch


class DLMATrainer(DPOTrainer):
    """TRL's DPOTrainer with the DLMA loss. The training dataset needs a numeric `self_reward` column.

    TRL 1.16 computes the DPO loss inline in `_compute_loss`, so that method is replaced: the policy
    forward is TRL's (fused LM head, summed completion log-probs), the reference log-probs come from TRL's
    `compute_ref_log_probs` (adapter disabled under PEFT) or from the precomputed columns, and the loss is
    `dlma_loss`. TRL's reward metrics are kept; `dlma/self_reward_clamped` is the mean clamp(R, L, U) and
    `dlma/clipped_fraction` the share of pairs the clamp changed.
    """

    _tag_names = ["trl", "dpo", "dlma"]
    _name = "DLMA"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DLMAConfig):
            raise TypeError(f"DLMATrainer needs a DLMAConfig, got {type(self.args).__name__}")
        if self.aux_loss_enabled:
            raise NotImplementedError("DLMATrainer does not add the MoE router loss; set router_aux_loss_coef=0.0")
        datasets = {"train": self.train_dataset}
        if isinstance(self.eval_dataset, dict):
            datasets.update(self.eval_dataset)
        elif self.eval_dataset is not None:
            datasets["eval"] = self.eval_dataset
        for name, dataset in datasets.items():
            if "self_reward" not in (dataset.column_names or []):
                raise ValueError(f"the {name} dataset has no 'self_reward' column (R of SPEC section 3, one per pair)")
        # After TRL has built its collator (and, if asked, precomputed the reference log-probs with it).
        self.data_collator = _WithSelfReward(self.data_collator)
        self.step0_guard: dict | None = None  # filled at the first training step

    def _set_signature_columns_if_needed(self):
        # Trainer drops every dataset column not in this list before batching.
        super()._set_signature_columns_if_needed()
        if "self_reward" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "self_reward"]

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "self_reward"})

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs:
            raise NotImplementedError("DLMATrainer returns no logits (TRL 1.16 deprecates return_outputs)")
        mode = "train" if self.model.training else "eval"
        cfg: DLMAConfig = self.args
        self_reward = inputs["self_reward"]

        # Policy: TRL's forward. The batch is [chosen; rejected] stacked on dim 0 (DataCollatorForPreference).
        completion_mask = inputs["completion_mask"]
        model_kwargs = {k: v for k, v in inputs.items()
                        if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "self_reward"}}
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)  # score the response tokens only
        outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1  # log-probs are of the next token: one fewer position
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)

        # Reference: the adapter-disabled policy (PEFT), a ref_model, or the precomputed columns.
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(self.ref_model or self.model, inputs)

        losses = dlma_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, self_reward,
                           self.beta, cfg.gamma, cfg.margin_clip, cfg.weighting)
        loss = losses.mean()

        if mode == "train" and self.step0_guard is None and self.state.global_step == 0:
            self._check_step0(loss, self_reward, chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps)

        # TRL's reward metrics: beta * log(pi/ref) of each response, their accuracy and margin.
        chosen_rewards = self.beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = self.beta * (rejected_logps - ref_rejected_logps).detach()
        clamped = self_reward.clamp(*cfg.margin_clip)
        gather = self.accelerator.gather
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        metrics["dlma/self_reward_clamped"].append(gather(clamped).mean().item())
        metrics["dlma/clipped_fraction"].append(gather((clamped != self_reward).float()).mean().item())
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]
        return loss

    def _check_step0(self, loss, self_reward, chosen_logratios, rejected_logratios):
        """Free correctness check (TRL's tests use it): a fresh LoRA adapter has B = 0, so at the first step
        the policy is the reference, every log-ratio is 0 and the loss has a closed form."""
        cfg: DLMAConfig = self.args
        expected = step0_loss(self_reward.detach().cpu(), self.beta, cfg.gamma, cfg.margin_clip, cfg.weighting)
        observed = loss.item()
        max_logratio = torch.cat([chosen_logratios, rejected_logratios]).detach().abs().max().item()
        self.step0_guard = {"observed": observed, "expected": expected, "abs_diff": abs(observed - expected),
                            "atol": cfg.step0_atol, "max_abs_logratio": max_logratio, "n_pairs": len(self_reward)}
        if not abs(observed - expected) <= cfg.step0_atol:
            raise RuntimeError(
                f"DLMA step-0 guard: the first loss is {observed:.6f}, but with the policy equal to the reference "
                f"it must be mean(-log sigmoid(-beta*gamma*clamp(R))) = {expected:.6f} (ln 2 = 0.693147 for DPO); "
                f"max |log pi - log ref| = {max_logratio:.3g}. The reference is not the adapter-disabled policy: "
                "e.g. the adapter was not freshly initialised (LoRA B != 0), the reference is another or differently "
                "quantised model, the precomputed reference log-probs come from another model, or dropout differs "
                "between the two forwards."
            )


# ----------------------------------------------------------------------------------------------------------
# QLoRA training on scored pairs


@documented
@dataclass
class TrainConfig:
    """QLoRA DLMA training. Paper values where they carry over; the released run was a full fine-tune with
    RMSprop at lr 5e-7, 150 warm-up steps, global batch 64, 1 epoch. LoRA adapters start at B = 0 and need a
    far larger step than a full fine-tune (QLoRA used 1e-4..2e-4); AdamW, not RMSprop, because Adam's
    momentum and bias correction are what LoRA recipes are tuned for (`optim rmsprop` is still accepted)."""

    beta: float = 0.1
    gamma: float = 0.2
    margin_low: float = -40.0
    margin_high: float = 40.0
    weighting: bool = False
    learning_rate: float = 5e-5
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: float = 0.1
    epochs: int = 1
    train_batch_size: int = 8
    grad_accum: int = 1
    train_max_length: int = 512
    max_prompt_length: int = 256
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    load_in_4bit: bool = True
    gradient_checkpointing: bool = True
    seed: int = 0
    logging_steps: int = 1
    report_to: str = "none"

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
            (self.epochs >= 1, ("epochs",), "must be >= 1"),
            (self.train_batch_size >= 1, ("train_batch_size",), "must be >= 1"),
            (self.grad_accum >= 1, ("grad_accum",), "must be >= 1"),
            (self.max_prompt_length >= 1, ("max_prompt_length",), "must be >= 1"),
            (self.train_max_length > self.max_prompt_length, ("train_max_length", "max_prompt_length"),
             "train_max_length must exceed max_prompt_length, to leave room for the response"),
            (self.lora_r >= 1, ("lora_r",), "must be >= 1"),
            (self.lora_alpha > 0, ("lora_alpha",), "must be > 0"),
            (0 <= self.lora_dropout < 1, ("lora_dropout",), "must be in [0, 1)"),
            (self.logging_steps >= 1, ("logging_steps",), "must be >= 1"),
            (self.report_to in ("none", "tensorboard"), ("report_to",), "must be none or tensorboard"),
        ]
        check_fields(self, checks)
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise DLMAError("TrainConfig: report_to='tensorboard' needs the tensorboard package "
                            "(pip install tensorboard)")


def build_dataset(rows: list[dict], tokenizer, max_prompt_length: int):
    """TRL's preference format: prompt = the plain query (no contrastive prompt), chosen = o1, rejected = o2,
    plus `self_reward`, from rows that `stages.read_pairs` checked. Returns (dataset, number of prompts cut to
    max_prompt_length)."""
    from datasets import Dataset

    # policy_prompt writes the BOS token as text; a tokenizer that also adds one itself would double it
    bos = tokenizer.bos_token
    auto_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    records, n_cut = [], 0
    for row in rows:  # rows as `stages.read_pairs` checked them
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
    (the same parameters and inputs, or --force) is `stages.run_train`'s question, as for every stage.

    `sft`: context distillation instead, on the same budget: TRL's SFTTrainer on the plain prompt completed
    by o1 (o2 and R unused; no step-0 guard, which is DPO's)."""
    from peft import LoraConfig, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import disable_dropout_in_model

    out_dir = Path(out_dir)
    if not rows:
        raise DLMAError("train_dlma: no training rows")

    started = time.time()
    device = resolve_device(model_cfg.device)
    compute_dtype = resolve_dtype(model_cfg.dtype, device)
    model, tokenizer = load_model(ModelConfig(**{**model_cfg.to_dict(), "load_in_4bit": cfg.load_in_4bit,
                                                 "adapter": None}))
    # The base runs without dropout, as in the released DPO code; only the LoRA path drops (QLoRA's recipe).
    # Both matter for the step-0 guard: the policy and reference forwards must differ only by the adapter.
    disable_dropout_in_model(model)
    if cfg.load_in_4bit:
        # peft's QLoRA preparation: freeze the base, keep its non-quantised weights in float32, and let
        # gradients reach the adapters through checkpointed blocks. On CPU it is a no-op for the dtypes.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)

    dataset, n_cut = build_dataset(rows, tokenizer, cfg.max_prompt_length)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory(prefix="dlma-trl-") as trl_dir:  # TRL's output_dir: nothing kept
        loss_args = ({"completion_only_loss": True} if sft else
                     {"beta": cfg.beta, "gamma": cfg.gamma, "margin_clip": cfg.margin_clip, "weighting": cfg.weighting,
                      "disable_dropout": False})
        args = (SFTConfig if sft else DLMAConfig)(
            output_dir=trl_dir, **loss_args, learning_rate=cfg.learning_rate, optim=cfg.optim,
            lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps, num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.train_batch_size, gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.train_max_length, gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed,
            logging_steps=cfg.logging_steps, save_strategy="no", report_to=cfg.report_to, disable_tqdm=not progress(),
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
        # TRL 1.16 casts QLoRA adapters to bf16. There an Adam step of ~lr (5e-5) is below bf16's spacing for
        # most entries of A (~5e-4 near |a| = 0.1) and is lost; peft's default keeps adapters in float32.
        trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        for p in trainable.values():
            p.data = p.data.float()
        before = {n: p.detach().clone() for n, p in trainable.items()}
        n_trainable = sum(p.numel() for p in trainable.values())
        if progress():  # console lines; a notebook shows the summary, the same whether it trained or resumed
            print(f"train{' (SFT on o1)' if sft else ''}: {len(dataset)} pairs, {n_trainable:,} LoRA parameters, "
                  f"{device}, {'4-bit NF4' if cfg.load_in_4bit else str(compute_dtype)} base")
        result = trainer.train()
        changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainable.items())
        events = _read_events(Path(trl_dir) / "runs")  # TensorBoard's, when asked for; the folder goes now

    wall = time.time() - started
    log_rows = [{"step": h["step"], **{k: v for k, v in h.items() if k != "step"}}
                for h in trainer.state.log_history if "loss" in h]
    n_steps = trainer.state.global_step
    summary = {
        "config": asdict(cfg),
        "step0": getattr(trainer, "step0_guard", None),
        "objective": "sft" if sft else "dlma",
        "final_loss": log_rows[-1]["loss"] if log_rows else None,
        "train_loss": result.training_loss,
        "n_steps": n_steps,
        "n_pairs": len(dataset),
        "n_prompts_truncated": n_cut,
        "trainable_params": n_trainable,
        "trainable_tensors": len(trainable),
        "trainable_tensors_changed": changed,
        "train_runtime_s": round(result.metrics.get("train_runtime", float("nan")), 2),
        "s_per_step": round(result.metrics.get("train_runtime", float("nan")) / max(n_steps, 1), 3),
        "wall_time_s": round(wall, 2),
        "device": device,
    }
    summary = json.loads(json_text(summary))  # the object a rerun reads back from disk: tuples as lists, keys sorted
    if progress():
        print(f"train: {n_steps} steps, {summary['s_per_step']} s/step, final loss {summary['final_loss']}, "
              f"{changed}/{len(trainable)} adapter tensors changed")

    # Everything is written in a sibling temp folder first and moved in when whole; the stage's manifest,
    # written after, is what marks the folder finished. Under `accelerate launch` the main process writes.
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_jsonl(tmp / "train_log.jsonl", log_rows)
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
                os.replace(path, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    return summary


def _read_events(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of the files under `folder` (TensorBoard event files are small)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
