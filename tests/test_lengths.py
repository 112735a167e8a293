"""The length limit of a scored sequence (issue 18, point 6): `score_max_length` and `pref_max_length` bound the
prompt and the response together; a cut never removes what tells p+ from p-; a pair that leaves no room for
it is left out and counted, never scored as right or wrong; rows that fit are scored as they always were."""

from __future__ import annotations

import pytest

from dlma.errors import DLMAError
from dlma.logprobs import contrast_spans, fit_prompt, response_ids, sequence_logprobs
from dlma.models import ModelConfig, load_model
from dlma.prompts import PAIRS
from dlma.score import contrast_prompts, self_reward_terms, unreadable

LONG_CONTEXT = ["How do I bake bread? " + "I have flour, water and salt, and an old oven. " * 12]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(ModelConfig(tiny_model_dir, dtype="float32", device="cpu"))


def test_contrast_spans_are_where_the_prompts_differ():
    assert contrast_spans([1, 2, 3, 9, 5], [1, 2, 7, 8, 5]) == ((2, 4), (2, 4))
    assert contrast_spans([1, 2, 3, 4], [1, 2, 4]) == ((2, 3), (2, 2))  # p- is p+ less a token
    assert contrast_spans([1, 2, 3], [1, 2, 3]) == ((3, 3), (3, 3))  # a neutral pair: nothing to keep


def test_fit_prompt_cuts_from_the_left_while_that_keeps_the_instruction():
    prompt = list(range(10))  # the instruction (span 6..8) near the end, as in the affix pairs
    assert fit_prompt(prompt, 10, (6, 8)) == prompt  # fits: untouched
    assert fit_prompt(prompt, 4, (6, 8)) == [6, 7, 8, 9]  # the end, next to the response
    assert fit_prompt(prompt, 4, None) == [6, 7, 8, 9]  # a plain prompt: the same cut
    assert fit_prompt(prompt, 3, (6, 8)) is None  # the cut would take the instruction's first token
    assert fit_prompt(prompt, 0, None) is None  # the response alone fills the limit


def test_fit_prompt_cuts_in_the_middle_to_keep_a_leading_instruction():
    prompt = list(range(20))  # the instruction (span 1..4) at the start, as a chat template's system message
    assert fit_prompt(prompt, 8, (1, 4)) == [0, 1, 2, 3, 16, 17, 18, 19]  # head through it, then the end
    assert fit_prompt(prompt, 4, (1, 4)) is None  # no room for the end as well


def test_a_sequence_over_the_limit_is_refused_not_allocated(tiny):
    model, tok = tiny
    with pytest.raises(DLMAError, match="leaves its prompt too little of max_length=64"):
        sequence_logprobs(model, [[tok.bos_token_id, 5]], [[7] * 1_000_000], tok.pad_token_id, max_length=64)


def test_a_chat_instruction_survives_the_cut_and_affix_cuts_are_as_before(tiny):
    """A long context under the chat rendering: cut from the left, p+ and p- would be the same prompt (the pair
    study's 70 exact ties); cut in its middle, S(o|p+) and S(o|p-) differ. Affix prompts keep their left cut."""
    model, tok = tiny
    o1, o2 = "Knead it, let it rise, bake it.", "Burn it."
    pair, limit = PAIRS["harmless"], 64
    p_pos, p_neg = contrast_prompts(LONG_CONTEXT, pair, "chat", tok)
    room = limit - len(response_ids(o1, tok))
    assert p_pos[-room:] == p_neg[-room:]  # what the old left cut scored: one prompt, twice
    for share in (False, True):
        (terms,) = self_reward_terms(model, tok, [(LONG_CONTEXT, o1, o2)], pair, "chat", max_length=limit,
                                     desc=False, share_prompts=share)
        assert terms["s_o1_pos"] != terms["s_o1_neg"] and terms["s_o2_pos"] != terms["s_o2_neg"]
    # the affix pairs' instruction is at the end: the left cut keeps it, and the numbers are the old cut's
    p_pos, p_neg = contrast_prompts(LONG_CONTEXT, pair, "affix", tok)
    r1, r2 = response_ids(o1, tok), response_ids(o2, tok)
    old = sequence_logprobs(model, [p_pos[-(limit - len(r1)):], p_neg[-(limit - len(r1)):],
                                    p_pos[-(limit - len(r2)):], p_neg[-(limit - len(r2)):]], [r1, r1, r2, r2],
                            tok.pad_token_id, desc=False)
    (terms,) = self_reward_terms(model, tok, [(LONG_CONTEXT, o1, o2)], pair, "affix", max_length=limit, desc=False)
    assert [terms[k] for k in ("s_o1_pos", "s_o1_neg", "s_o2_pos", "s_o2_neg")] == old


def test_unreadable_names_the_response_that_leaves_no_room(tiny):
    _, tok = tiny
    items = [(["Hi?"], "Hello.", "Hey."), (["Hi?"], "Hello.", " ".join(["word"] * 300))]
    found = unreadable(items, tok, 128, PAIRS["harmless"], names=("chosen", "rejected"))
    assert found[0] is None
    assert found[1].startswith("field 'rejected': 300 tokens leave 0 of max_length=128, too few to keep what tells "
                               "harmless's p+ from p-")
    assert unreadable(items, tok, 128, None)[1].endswith("too few for its prompt")  # the plain prompt
    assert unreadable(items, tok, 400, None) == [None, None]


def test_stage5_refuses_a_response_length_its_judge_could_not_read(tiny):
    """Stages 5 and 6 judge each sampled response within pref_max_length: a response of eval_max_new_tokens that
    would leave no room for what tells p+ from p- is refused before anything is sampled."""
    from dlma.alignment import unjudgeable
    from dlma.data import Example

    _, tok = tiny
    queries = [Example("q1", ["How do I bake bread?"]), Example("q2", LONG_CONTEXT)]
    assert unjudgeable(queries, "affix", tok, 24, 64) is None  # the long context is cut from the left
    why = unjudgeable(queries, "affix", tok, 60, 64)
    assert why.startswith("query 'q1': a response of eval_max_new_tokens=60 tokens leaves 4 of pref_max_length=64, "
                          "too few to keep what tells the harmless pair's p+ from p-")
    assert unjudgeable(queries, "chat", tok, 24, 64) is None  # cut in its middle, keeping the system message
