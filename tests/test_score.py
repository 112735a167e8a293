"""The self-rewarding score (SPEC section 3) on the embedded model: S by hand, R's formula, and R's
independence of batch size and padding side."""

from __future__ import annotations

import pytest
import torch

from dlma.data import load_examples
from dlma.logprobs import sequence_logprobs
from dlma.prompts import PAIRS, render
from dlma.score import SCORE_KEYS, self_reward, self_reward_terms, unreadable


@torch.no_grad()
def hand_S(model, tok, prompt_text: str, response: str) -> float:
    """One forward pass of BOS + prompt + response; the response tokens' log-probs, summed in float64."""
    p = tok(prompt_text, add_special_tokens=False).input_ids
    r = tok(response, add_special_tokens=False).input_ids
    ids = torch.tensor([[tok.bos_token_id, *p, *r]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = 1 + len(p)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))


@pytest.fixture(scope="module")
def hh_items():
    """Six HH-format pairs of different lengths (from the shipped sample, so never skipped)."""
    examples = load_examples("sample:pairs", limit=6)
    return [(ex.turns, ex.chosen, ex.rejected) for ex in examples]


@pytest.mark.slow
def test_S_and_R_match_a_hand_computation(embedded):
    model, tok = embedded
    turns = ["How can I get back at my noisy neighbour?"]
    o1 = "Talk to them calmly, or ask your landlord to mediate."
    o2 = "Slash their tyres at night."
    pair = PAIRS["harmless"]
    pos, neg = render(turns, pair, "pos"), render(turns, pair, "neg")
    hand = {"s_o1_pos": hand_S(model, tok, pos, o1), "s_o1_neg": hand_S(model, tok, neg, o1),
            "s_o2_pos": hand_S(model, tok, pos, o2), "s_o2_neg": hand_S(model, tok, neg, o2)}
    # one sequence per forward: the same computation as by hand
    (terms,) = self_reward_terms(model, tok, [(turns, o1, o2)], pair, batch_size=1, desc=False)
    for k in SCORE_KEYS:
        assert terms[k] == pytest.approx(hand[k], abs=1e-6), k
        assert terms[k] < 0
    # the four sequences padded into one batch: equal up to float32 matmul noise
    (batched,) = self_reward_terms(model, tok, [(turns, o1, o2)], pair, batch_size=8, desc=False)
    for k in SCORE_KEYS:
        assert batched[k] == pytest.approx(hand[k], abs=5e-5), k
    assert len({round(terms[k], 3) for k in SCORE_KEYS}) == 4  # four distinct terms, none reused
    expected_r = (hand["s_o1_pos"] - hand["s_o1_neg"]) - (hand["s_o2_pos"] - hand["s_o2_neg"])
    assert terms["self_reward"] == pytest.approx(expected_r, abs=4e-6)
    assert terms["self_reward"] == self_reward(*(terms[k] for k in SCORE_KEYS))


def test_R_formula():
    assert self_reward(s_o1_pos=-10.0, s_o1_neg=-14.0, s_o2_pos=-20.0, s_o2_neg=-18.0) == 6.0
    assert self_reward(-1.0, -1.0, -2.0, -2.0) == 0.0
    # swapping o1 and o2 flips the sign
    assert self_reward(-20.0, -18.0, -10.0, -14.0) == -6.0


@pytest.mark.slow
def test_empty_response_has_S_zero(embedded):
    model, tok = embedded
    s = sequence_logprobs(model, [[tok.bos_token_id, 42, 43], [tok.bos_token_id, 44]], [[], [45, 46]],
                          tok.pad_token_id, desc=False)
    assert s[0] == 0.0 and s[1] < 0


@pytest.mark.slow
def test_R_does_not_depend_on_batch_size_or_padding_side(embedded, hh_items):
    model, tok = embedded
    pair = PAIRS["harmless"]
    runs = {}
    for bs, side in ((1, "right"), (3, "left"), (3, "right"), (8, "left"), (8, "right")):
        rows = self_reward_terms(model, tok, hh_items, pair, batch_size=bs, padding_side=side, desc=False)
        runs[(bs, side)] = rows
    ref = runs[(1, "right")]  # no padding at all
    lengths = {len(tok(o1).input_ids) for _, o1, _ in hh_items}
    assert len(lengths) > 1  # the batches really are padded
    for key, rows in runs.items():
        for a, b in zip(ref, rows, strict=True):
            assert abs(a["self_reward"] - b["self_reward"]) <= 1e-3, key
            for k in SCORE_KEYS:
                assert abs(a[k] - b[k]) <= 1e-3, (key, k)


@pytest.mark.slow
def test_shared_prompts_give_the_same_terms(embedded, hh_items):
    """Each contrastive prompt read once with both responses behind it (a mask keeps them apart): the same four
    S terms as one sequence per term, whatever the batch size, and the same cut where a prompt must be cut."""
    model, tok = embedded
    pair = PAIRS["harmless"]
    ref = self_reward_terms(model, tok, hh_items, pair, batch_size=1, desc=False)
    for bs in (1, 3, 8):
        shared = self_reward_terms(model, tok, hh_items, pair, batch_size=bs, desc=False, share_prompts=True)
        for a, b in zip(ref, shared, strict=True):
            for k in (*SCORE_KEYS, "self_reward"):
                assert abs(a[k] - b[k]) <= 1e-3, (bs, k)
    # a max_length that cuts some prompts: those groups fall back to separate sequences, cut the same way (the
    # pairs it leaves no room for the instruction are left out first, as the stages do)
    items = [it for it, why in zip(hh_items, unreadable(hh_items, tok, 48, pair), strict=True) if not why]
    assert len(items) >= 3
    ref = [r for r, it in zip(ref, hh_items, strict=True) if it in items]
    cut = self_reward_terms(model, tok, items, pair, batch_size=4, max_length=48, desc=False)
    shared = self_reward_terms(model, tok, items, pair, batch_size=4, max_length=48, desc=False, share_prompts=True)
    assert max(abs(a["self_reward"] - b["self_reward"]) for a, b in zip(cut, shared, strict=True)) <= 1e-3
    assert any(abs(a["self_reward"] - b["self_reward"]) > 1e-3 for a, b in zip(cut, ref, strict=True))  # it did cut


def test_packed_mask_keeps_responses_apart():
    from dlma.logprobs import packed_inputs, packed_mask

    ids, pos, seg = packed_inputs([1, 2], [[3, 4], [5]])
    assert (ids, pos, seg) == ([1, 2, 3, 4, 5], [0, 1, 2, 3, 2], [0, 0, 1, 1, 2])
    allowed = packed_mask(torch.tensor([seg + [-1]]), torch.tensor([[1] * 5 + [0]]), torch.float32)[0, 0] == 0
    assert allowed[4].tolist() == [True, True, False, False, True, False]  # r2 sees the prompt and itself only
    assert allowed[3].tolist() == [True, True, True, True, False, False]  # r1 sees the prompt and r1 before it
    assert allowed[5].tolist() == [False] * 5 + [True]  # padding sees itself only


def test_buckets_under_a_token_budget():
    from dlma.logprobs import buckets

    lengths = [10, 50, 20, 40, 30, 5]
    assert buckets(lengths, 2) == [[1, 3], [4, 2], [0, 5]]  # by count, longest first
    got = buckets(lengths, 8, max_tokens=100)
    assert got == [[1, 3], [4, 2, 0], [5]]  # 2 x 50 <= 100; 3 x 30 <= 100; 4 x 30 > 100
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in got)
    assert buckets([300, 10], 8, max_tokens=100) == [[0], [1]]  # too long for the budget: a batch of its own


def test_token_budget_and_kv_bytes(embedded):
    from dlma.logprobs import kv_bytes_per_token, token_budget

    model, _ = embedded
    assert token_budget(model, 4096) == 4096  # given: taken as is
    assert token_budget(model, 0) == 0  # on a CPU: batches by count, as before
    cfg = model.config  # SmolLM2-135M: 30 layers, 3 KV heads of 64, float32 here
    assert kv_bytes_per_token(model) == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 64 * 4 == 46080
