"""DLMA's loss and trainer (the Method page, section 4): TRL's DPO with the self-rewarding score as a per-pair margin.

Liu et al. (ACL 2024, arXiv 2402.11907) train the unprompted policy on its own contrastive pairs
(o1 from p+, o2 from p-) with

    L = -log sigmoid( beta * [ (log pi(o1|q) - log pi(o2|q)) - (log ref(o1|q) - log ref(o2|q))
                               - gamma * clamp(R, L, U) ] )

where R is the self-rewarding score of the Method page, section 3. A pair the model itself judges clearly in favour of
o1 (large R) must be separated by a larger implicit-reward margin before its loss flattens out; gamma = 0
is plain DPO on the prompt-labelled pairs (RLCD).

Top to bottom: the loss (a pure function), its config (TRL's DPOConfig plus DLMA's fields), and the
trainer (TRL's DPOTrainer with the loss swapped and a step-0 guard). `dlma.train` runs it with QLoRA.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer

from .params import documented, param

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


@documented
@dataclass(kw_only=True)
class DLMALoss:
    """DLMA's two settings of the loss, declared once: `dlma train` takes them (TrainConfig) and hands them to the
    trainer (DLMAConfig) under the same names."""

    gamma: float = param(0.2, "weight of the self-rewarding score R as a per-pair margin in the DPO logits (the "
                              "released code: 0.2); 0 gives plain DPO on the prompt-labelled pairs (the RLCD-style "
                              "baseline)")
    weighting: bool = param(False, "DLMA's variant: the DPO loss times clamp(R) (R below 0 weighs 0) instead of a "
                                   "margin; needs gamma 0")


@dataclass
class DLMAConfig(DPOConfig, DLMALoss):
    """`DPOConfig` plus DLMA's margin. Only TRL's `sigmoid` loss (DPO) is supported: DLMA shifts its logits."""

    margin_clip: tuple[float, float] = field(
        default=(-40.0, 40.0),
        metadata={"help": "[L, U]: R is clamped into this range before use, so a few extreme scores cannot "
                          "dominate (DLMA, released run: [-40, 40]; its config default is [-20, 20])."},
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


COMPUTE_LOSS_ARGS = ("self", "model", "inputs", "return_outputs", "num_items_in_batch")  # TRL 1.16, transformers 5


def check_compute_loss_signature(trainer_cls) -> None:
    """DLMATrainer.compute_loss replaces TRL's, so it must be called as TRL's is: a TRL that changed its
    arguments is one clear error, not a loss computed on misread arguments."""
    import trl

    got = tuple(inspect.signature(trainer_cls.compute_loss).parameters)
    if got != COMPUTE_LOSS_ARGS:
        raise TypeError(f"DLMATrainer replaces {trainer_cls.__name__}.compute_loss{COMPUTE_LOSS_ARGS[1:]}, but TRL "
                        f"{trl.__version__} defines compute_loss{got[1:]}: install the TRL that pyproject.toml pins "
                        "(or update dlma/trainer.py to the new signature)")


class DLMATrainer(DPOTrainer):
    """TRL's DPOTrainer with the DLMA loss. The training dataset needs a numeric `self_reward` column.

    The loss is replaced through `compute_loss`, the extension point transformers' and TRL's documentation
    name (TRL's own `_compute_loss` is private: TRL 0.29 rewrote it and 1.9 changed its signature): the
    policy forward is TRL's (fused LM head, summed completion log-probs), the reference log-probs come from
    TRL's `compute_ref_log_probs` (adapter disabled under PEFT) or from the precomputed columns, and the loss
    is `dlma_loss`. A TRL whose `compute_loss` takes other arguments is refused when the trainer is made.
    TRL's reward metrics are kept; `dlma/self_reward_clamped` is the mean clamp(R, L, U) and
    `dlma/clipped_fraction` the share of pairs the clamp changed.
    """

    _tag_names = ["trl", "dpo", "dlma"]
    _name = "DLMA"

    def __init__(self, *args, **kwargs):
        check_compute_loss_signature(DPOTrainer)
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
                raise ValueError(f"the {name} dataset has no 'self_reward' column (R of the Method page, section 3, "
                                 "one per pair)")
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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
