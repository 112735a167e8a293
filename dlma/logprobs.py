"""The log-probability engine every stage reads the model through: padding, length bucketing, a forward
pass with position ids, summed float64 log-probabilities of a response, and next-token logits.

Scoring (R), preference accuracy (dlma, rlaif, loglik, implicit), the alignment judgements and generation
all use these few functions, so a change of batching (prefix sharing, a token budget) is made once.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import DLMAError
from .quiet import progress


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the sequences padded to the longest, on the left or on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def buckets(lengths: list[int], batch_size: int, max_tokens: int = 0) -> list[list[int]]:
    """Indices in length-sorted batches, longest first: padding stays small and the memory peak comes first.

    Each batch holds at most `batch_size` items and, when `max_tokens` > 0, at most `max_tokens` padded
    tokens (items x the longest): memory is bounded by tokens, not by a count. An item longer than the
    budget is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        last = out[-1] if out else None
        if last and len(last) < batch_size and (not max_tokens or (len(last) + 1) * lengths[last[0]] <= max_tokens):
            last.append(i)
        else:
            out.append([i])
    return out


def token_budget(model, max_batch_tokens: int = 0, bytes_per_token: int | None = None, share: float = 0.5) -> int:
    """Tokens per batch: `max_batch_tokens` when given (> 0); else none on a CPU (batches by count, as memory is
    plentiful and results stay as they were); else, on a GPU, `share` of its free memory over the bytes one
    token costs: the KV cache of every layer for generation, or a forward pass's logits and activations."""
    if max_batch_tokens > 0:
        return max_batch_tokens
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 0
    cfg = model.config
    if bytes_per_token is None:  # a forward pass: float32 logits over the vocabulary and a few hidden states
        bytes_per_token = 4 * cfg.vocab_size * 2 + 2 * cfg.hidden_size * 16
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(share * free / bytes_per_token))


def kv_bytes_per_token(model) -> int:
    """Bytes the KV cache takes per token: keys and values of every layer (about 0.5 MiB for LLaMA2-7B in bf16)."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()


def forward(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with position ids from the attention mask, so left padding does not shift positions."""
    device = next(model.parameters()).device
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device))
    return out.logits


def response_ids(text: str, tokenizer) -> list[int]:
    return responses_ids([text], tokenizer)[0]


def responses_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """`response_ids` of many responses in one call of the tokenizer (the same ids, in a fraction of the time)."""
    return tokenizer(texts, add_special_tokens=False).input_ids if texts else []


def contrast_spans(p_pos: list[int], p_neg: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(start, end) in p+ and in p- of what tells them apart: the tokens between the prefix and the suffix they
    share (the instruction). Two equal prompts have an empty span at their end."""
    n = min(len(p_pos), len(p_neg))
    head = next((i for i in range(n) if p_pos[i] != p_neg[i]), n)
    tail = next((i for i in range(n - head) if p_pos[-1 - i] != p_neg[-1 - i]), n - head)
    return (head, len(p_pos) - tail), (head, len(p_neg) - tail)


def fit_prompt(prompt: list[int], room: int, keep: tuple[int, int] | None = None) -> list[int] | None:
    """The prompt in at most `room` tokens (what its response leaves of the length limit), keeping the span `keep`
    (what tells p+ from p-, `contrast_spans`); None when it cannot, and the pair must be left out.

    Cut from the left, keeping the end next to the response, while that keeps the span (the affix pairs'
    instruction is at the end); else cut in its middle, keeping the head through the span (a chat template's
    system message) and as much of the end as fits."""
    if len(prompt) <= room:
        return prompt
    start, end = keep or (len(prompt), len(prompt))
    if room < 1:  # the response alone fills the limit
        return None
    if len(prompt) - room <= start:
        return prompt[-room:]
    if end < room:
        return prompt[:end] + prompt[len(prompt) - (room - end) :]
    return None


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
    max_tokens: int = 0,
    keep: list[tuple[int, int] | None] | None = None,
) -> list[float]:
    """S for each (prompt ids, response ids): the summed float64 log-probability of the response, in
    length-sorted batches of at most `batch_size` sequences and `max_tokens` padded tokens (0: no cap).
    A prompt and response over `max_length` are cut by `fit_prompt` (keeping the span `keep[i]` of prompt i); one
    that cannot be is refused, never allocated: the stages leave such pairs out before scoring."""
    seqs, starts = [], []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if max_length is not None:
            cut = fit_prompt(p, max_length - len(r), keep[i] if keep else None)
            if cut is None:
                raise DLMAError(f"a response of {len(r)} tokens leaves its prompt too little of max_length="
                                f"{max_length} to keep what tells its prompts apart: leave the pair out")
            p = cut
        seqs.append(p + r)
        starts.append(len(p))
    out = [0.0] * len(seqs)
    max_tokens = token_budget(model, max_tokens)
    for batch in tqdm(buckets([len(s) for s in seqs], batch_size, max_tokens), desc=desc or "log-probs",
                      disable=desc is False or not progress(), leave=False):
        ids, mask = pad([seqs[i] for i in batch], pad_id, padding_side)
        logits = forward(model, ids, mask)
        for row, i in enumerate(batch):
            offset = ids.shape[1] - len(seqs[i]) if padding_side == "left" else 0
            s, e = offset + starts[i], offset + len(seqs[i])
            if e == s:
                continue  # an empty response has S = 0
            # float64 from the logits on: a float32 log-softmax is off by ~1e-5 per token (the Method page, section 3)
            logp = torch.log_softmax(logits[row, s - 1 : e - 1].double(), dim=-1)
            target = ids[row, s:e].to(logp.device)
            out[i] = logp.gather(-1, target[:, None]).squeeze(-1).sum().item()
    return out


def packed_inputs(prompt: list[int], responses: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """One sequence holding a prompt once and its responses one after another: (ids, position ids, segment),
    where segment 0 is the prompt and k the k-th response. Each response's positions restart after the
    prompt, so with `packed_mask` it is read exactly as if it followed the prompt alone."""
    ids, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    for k, r in enumerate(responses, start=1):
        ids += r
        pos += range(len(prompt), len(prompt) + len(r))
        seg += [k] * len(r)
    return ids, pos, seg


def packed_mask(segments: torch.Tensor, real: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, L, L] additive mask: a token sees the prompt and the earlier tokens of its own response,
    never another response or padding (a padding row sees itself, so no row is empty)."""
    i = torch.arange(segments.shape[1])
    causal = i[None, :] <= i[:, None]
    same = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    real = real.bool()
    allowed = causal[None] & same & real[:, None, :] & real[:, :, None] | torch.eye(len(i), dtype=torch.bool)[None]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


@torch.no_grad()
def shared_prompt_logprobs(model, prompts: list[list[int]], responses: list[list[list[int]]], pad_id: int,
                           batch_size: int = 8, max_length: int | None = None, desc: str | None = None,
                           max_tokens: int = 0, keep: list[tuple[int, int] | None] | None = None) -> list[list[float]]:
    """S of every response behind its prompt, reading each prompt once: [[S(r) for r in group] per prompt].

    The same numbers as `sequence_logprobs` on (prompt, response) pairs, for less work: the prompt's tokens
    are read once per group instead of once per response. A group where some response needs its prompt cut
    to `max_length` is scored as separate sequences, exactly as `sequence_logprobs` cuts them (`keep`: as there,
    per prompt)."""
    out: list[list[float]] = [[0.0] * len(group) for group in responses]
    max_tokens = token_budget(model, max_tokens)
    fits = [max_length is None or all(len(p) + len(r) <= max_length for r in group)
            for p, group in zip(prompts, responses, strict=True)]
    cut = [i for i, ok in enumerate(fits) if not ok]
    if cut:  # per response, cut as sequence_logprobs cuts
        flat = [(i, k) for i in cut for k in range(len(responses[i]))]
        s = sequence_logprobs(model, [prompts[i] for i, _ in flat], [responses[i][k] for i, k in flat], pad_id,
                              batch_size, max_length=max_length, desc=False, max_tokens=max_tokens,
                              keep=[keep[i] for i, _ in flat] if keep else None)
        for (i, k), v in zip(flat, s, strict=True):
            out[i][k] = v
    packed = {i: packed_inputs(prompts[i], responses[i]) for i, ok in enumerate(fits) if ok}
    order = [i for i in range(len(prompts)) if fits[i]]
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    batches = [[order[j] for j in b] for b in buckets([len(packed[i][0]) for i in order], batch_size, max_tokens)]
    for batch in tqdm(batches, desc=desc or "log-probs", disable=desc is False or not progress(), leave=False):
        ids, real = pad([packed[i][0] for i in batch], pad_id, "right")
        pos, _ = pad([packed[i][1] for i in batch], 0, "right")
        seg, _ = pad([packed[i][2] for i in batch], -1, "right")
        mask = packed_mask(seg, real, dtype)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits
        for row, i in enumerate(batch):
            start = len(prompts[i])
            for k, r in enumerate(responses[i]):
                if not r:
                    continue  # an empty response has S = 0
                # the first token is predicted at the prompt's last position, the others inside the response
                at = torch.tensor([len(prompts[i]) - 1] + list(range(start, start + len(r) - 1)))
                logp = torch.log_softmax(logits[row, at.to(logits.device)].double(), dim=-1)
                target = torch.tensor(r, device=logp.device)
                out[i][k] = logp.gather(-1, target[:, None]).squeeze(-1).sum().item()
                start += len(r)
    return out


@torch.no_grad()
def next_token_logits(model, prompts: list[list[int]], token_ids: list[int], pad_id: int,
                      batch_size: int = 8, desc: str | None = None, max_tokens: int = 0):
    """[n, len(token_ids)] float64 logits of `token_ids` at the position after each prompt (left-padded)."""
    out = np.zeros((len(prompts), len(token_ids)))
    max_tokens = token_budget(model, max_tokens)
    for batch in tqdm(buckets([len(p) for p in prompts], batch_size, max_tokens), desc=desc or "next-token",
                      leave=False, disable=not progress()):
        ids, mask = pad([prompts[i] for i in batch], pad_id, "left")
        out[batch] = forward(model, ids, mask)[:, -1, token_ids].double().cpu().numpy()
    return out
