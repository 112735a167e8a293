"""The self-rewarding score (SPEC section 3).

S(o | p, q) = sum over the response tokens of log pi(o_t | p(q), o_<t), summed (not length-normalised),
no EOS, accumulated in float64. For a generated pair (o1 under p+, o2 under p-):

    R(q, o1, o2) = [S(o1|p+,q) - S(o1|p-,q)] - [S(o2|p+,q) - S(o2|p-,q)]

R > 0: the model's own contrast agrees that o1 is the better response. All four S terms are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .errors import check_fields
from .prompts import RENDERINGS, PromptPair, get_pair, prompt_ids, render
from .quiet import progress

SCORE_KEYS = ("s_o1_pos", "s_o1_neg", "s_o2_pos", "s_o2_neg")


@dataclass
class ScoreConfig:
    pair: str = "harmless"  # contrastive prompt pair used to score
    rendering: str = "affix"  # affix (paper) or chat
    batch_size: int = 8  # sequences per forward pass; results do not depend on it
    max_length: int = 1024  # prompt + response tokens; longer prompts are cut from the left

    def __post_init__(self):
        check_score_settings(self)


def check_score_settings(cfg) -> None:
    """The settings every log-probability scorer shares (ScoreConfig, PrefAccConfig)."""
    check_fields(cfg, [
        (cfg.batch_size >= 1, ("batch_size",), "must be >= 1"),
        (cfg.max_length >= 2, ("max_length",), "must be >= 2 (a prompt token and a response token)"),
        (cfg.rendering in RENDERINGS, ("rendering",), f"must be one of {', '.join(RENDERINGS)}"),
    ])
    get_pair(cfg.pair, f"{type(cfg).__name__}: pair")


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Length-sorted buckets (longest first) so padding, and the first batch's memory peak, is bounded."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def forward(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with position ids from the attention mask, so left padding does not shift positions."""
    device = next(model.parameters()).device
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device))
    return out.logits


@torch.no_grad()
def sequence_logprobs(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = None,
    desc: str | None = None,
) -> list[float]:
    """S for each (prompt ids, response ids): the summed float64 log-probability of the response."""
    seqs, starts = [], []
    for p, r in zip(prompts, responses, strict=True):
        if max_length is not None and len(p) + len(r) > max_length:
            p = p[-max(1, max_length - len(r)) :]  # keep the end of the context, next to the response
        seqs.append(p + r)
        starts.append(len(p))
    out = [0.0] * len(seqs)
    batches = _batches([len(s) for s in seqs], batch_size)
    for batch in tqdm(batches, desc=desc or "log-probs", disable=desc is False or not progress(),
                      leave=False):
        ids, mask = _pad([seqs[i] for i in batch], pad_id, padding_side)
        logits = forward(model, ids, mask)
        for row, i in enumerate(batch):
            offset = ids.shape[1] - len(seqs[i]) if padding_side == "left" else 0
            s, e = offset + starts[i], offset + len(seqs[i])
            if e == s:
                continue  # an empty response has S = 0
            # float64 from the logits on: a float32 log-softmax is off by ~1e-5 per token (SPEC section 3)
            logp = torch.log_softmax(logits[row, s - 1 : e - 1].double(), dim=-1)
            target = ids[row, s:e].to(logp.device)
            out[i] = logp.gather(-1, target[:, None]).squeeze(-1).sum().item()
    return out


def response_ids(text: str, tokenizer) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def self_reward_terms(
    model,
    tokenizer,
    items: list[tuple[list[str], str, str]],
    pair: PromptPair,
    rendering: str = "affix",
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = 1024,
    desc: str | None = "self-reward",
) -> list[dict]:
    """For (turns, o1, o2) items: the four S terms and R, as plain dicts (one forward per S)."""
    prompts, responses = [], []
    for turns, o1, o2 in items:
        p_pos = prompt_ids(render(turns, pair, "pos", rendering, tokenizer), tokenizer, rendering)
        p_neg = prompt_ids(render(turns, pair, "neg", rendering, tokenizer), tokenizer, rendering)
        r1, r2 = response_ids(o1, tokenizer), response_ids(o2, tokenizer)
        prompts += [p_pos, p_neg, p_pos, p_neg]  # order of SCORE_KEYS
        responses += [r1, r1, r2, r2]
    s = sequence_logprobs(
        model, prompts, responses, tokenizer.pad_token_id, batch_size, padding_side, max_length, desc
    )
    rows = []
    for k in range(len(items)):
        terms = dict(zip(SCORE_KEYS, s[4 * k : 4 * k + 4], strict=True))
        terms["self_reward"] = self_reward(**terms)
        rows.append(terms)
    return rows


def self_reward(s_o1_pos: float, s_o1_neg: float, s_o2_pos: float, s_o2_neg: float) -> float:
    """R = [S(o1|p+) - S(o1|p-)] - [S(o2|p+) - S(o2|p-)]."""
    return (s_o1_pos - s_o1_neg) - (s_o2_pos - s_o2_neg)
