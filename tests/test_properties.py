"""Property tests (hypothesis) over every reader and parser a user feeds: data rows of each format, generated and
scored pairs, prompt-pairs files, presets and --set values, judge answers. Whatever the input, it parses to what
its format says or is refused with our one-line error (DLMAError), never another exception. Bounded (a few
hundred inputs each, no deadline) to add well under a minute to `make test`."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from dlma.data import load_examples, read_pairs
from dlma.errors import DLMAError
from dlma.judge import BadAnswer, HttpJudge
from dlma.presets import resolve_params
from dlma.prompts import BUILT_IN, PAIRS, RENDERINGS, load_pairs_file

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "dlma-hypothesis")  # not .hypothesis/ in the checkout
# derandomize: the same examples on every machine, so that CI is as reproducible as the runs it checks
BOUNDED = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

FIELDS = ("id", "prompt", "query", "chosen", "rejected", "response_0", "response_1", "safer_response_id",
          "better_response_id", "pair", "turns", "o1", "o2", "self_reward", "rendering", "test_index", "role",
          "content", "pos", "neg", "pos_attributes", "neg_attributes", "pos_system", "neg_system")
# any character, lone surrogates and NUL included (JSON carries them escaped)
TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=12)
WORDS = st.sampled_from(["", " ", "Hi", "How do I bake bread?", "No.", "a\nb", "{}", "x {} y", "\0", "\ud800"]) | TEXT
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | WORDS
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.sampled_from(FIELDS) | TEXT, inner, max_size=4), max_leaves=8)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                           "content": SCALARS}), max_size=3)
DIALOGUE = st.lists(WORDS, min_size=1, max_size=4).map(
    lambda turns: "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns)))
OPTIONAL = {"id": SCALARS, "pair": st.sampled_from(["harmless", "kind"]) | JSON}
ROWS = st.one_of(
    JSON,
    st.fixed_dictionaries({"chosen": DIALOGUE | WORDS, "rejected": DIALOGUE | WORDS}, optional=OPTIONAL),  # HH-RLHF
    st.fixed_dictionaries({"prompt": WORDS | MESSAGES, "chosen": WORDS | MESSAGES | JSON,
                           "rejected": WORDS | MESSAGES}, optional=OPTIONAL),  # TRL preference
    st.fixed_dictionaries({"prompt": WORDS | JSON, "response_0": WORDS | JSON, "response_1": WORDS,
                           "safer_response_id": st.sampled_from([0, 1, 2, True, None, "0", 1.0])},
                          optional={**OPTIONAL, "better_response_id": JSON}),  # PKU-SafeRLHF
    st.fixed_dictionaries({"prompt": WORDS | MESSAGES | JSON}, optional={**OPTIONAL, "query": WORDS}),  # queries
)
LINE = ROWS.map(lambda r: json.dumps(r).encode()) | st.binary(max_size=20) | \
    st.sampled_from([b"{oops", b"[" * 3000, b"1" * 5000, b'{"prompt": "\\ud800"}', b"", b"\xff\xfe"])


def one_line(error: DLMAError) -> None:
    assert str(error) and "\n" not in str(error), repr(str(error))


def text_a_model_reads(value) -> bool:
    return isinstance(value, str) and value.strip() == value and value and "\0" not in value and \
        not any("\ud800" <= c <= "\udfff" for c in value)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@BOUNDED
@given(lines=st.lists(LINE, max_size=5), suffix=st.sampled_from([".jsonl", ".json"]),
       require=st.sampled_from([None, "labelled"]), on_invalid=st.sampled_from(["error", "skip"]),
       label_field=st.sampled_from(["safer_response_id", "better_response_id"]))
@example(lines=[b'{"prompt": "q", "pair": []}'], suffix=".jsonl", require=None, on_invalid="error",
         label_field="safer_response_id")
@example(lines=[b"[" + b"1" * 5000 + b"]"], suffix=".json", require=None, on_invalid="error",
         label_field="safer_response_id")
@example(lines=[json.dumps({"chosen": "\n\nHuman: \n\nAssistant: Sure.", "rejected": "\n\nHuman: \n\nAssistant: No."}
                           ).encode()], suffix=".jsonl", require="labelled", on_invalid="skip",
         label_field="safer_response_id")
def test_data_rows_parse_to_their_format_or_one_line(scratch, lines, suffix, require, on_invalid, label_field):
    path = scratch / f"rows{suffix}"
    if suffix == ".json":  # a list of the rows that are JSON, or a line's bytes as the whole file
        rows = [json.loads(x) for x in lines if _is_json(x)]
        path.write_bytes(json.dumps(rows).encode() if len(rows) == len(lines) and lines else b"\n".join(lines))
    else:
        path.write_bytes(b"\n".join(lines))
    try:
        examples = load_examples(path, require=require, on_invalid=on_invalid, label_field=label_field)
    except DLMAError as e:
        return one_line(e)
    for ex in examples:
        assert isinstance(ex.id, str) and ex.turns and all(text_a_model_reads(t) for t in ex.turns), ex
        assert ex.pair is None or ex.pair in PAIRS
        assert (ex.chosen is None) == (ex.rejected is None) and (require != "labelled" or ex.labelled)
        assert ex.chosen is None or text_a_model_reads(ex.chosen) and text_a_model_reads(ex.rejected), ex
    assert len({ex.id for ex in examples}) == len(examples)


@settings(BOUNDED, max_examples=20)
@given(rows=st.lists(st.fixed_dictionaries({"prompt": WORDS, "chosen": WORDS, "rejected": WORDS},
                                           optional={"id": st.text(max_size=5)}), max_size=4))
def test_parquet_rows_parse_to_their_format_or_one_line(scratch, rows):
    import pyarrow
    import pyarrow.parquet as pq

    path = scratch / "rows.parquet"
    try:
        pq.write_table(pyarrow.Table.from_pylist(rows), path)
    except (pyarrow.ArrowException, UnicodeEncodeError):  # rows arrow cannot store (a lone surrogate)
        path.write_bytes(b"PAR1 not parquet")
    try:
        examples = load_examples(path, require="labelled", on_invalid="skip")
    except DLMAError as e:
        return one_line(e)
    assert all(text_a_model_reads(ex.chosen) and ex.turns for ex in examples)


PAIR_ROWS = st.fixed_dictionaries(
    {"id": st.sampled_from(["p1", "p2", 3, True, None, [1]]) | SCALARS,
     "turns": st.lists(WORDS, max_size=3) | JSON, "o1": WORDS | JSON, "o2": WORDS | JSON},
    optional={"pair": st.sampled_from(["harmless", "kind"]) | JSON, "rendering": st.sampled_from(RENDERINGS) | JSON,
              "self_reward": st.floats() | JSON})
PAIR_LINE = PAIR_ROWS.map(lambda r: json.dumps(r).encode()) | LINE


@BOUNDED
@given(lines=st.lists(PAIR_LINE, max_size=4), need_self_reward=st.booleans())
@example(lines=[b'{"id": "p", "turns": ["q"], "o1": "a", "o2": "b", "pair": []}'], need_self_reward=False)
@example(lines=[b'{"id": "p", "turns": ["q"], "o1": "a\\u0000", "o2": "b"}'], need_self_reward=False)
def test_generated_and_scored_pairs_parse_to_their_schema_or_one_line(scratch, lines, need_self_reward):
    path = scratch / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        rows = read_pairs(path, need_self_reward=need_self_reward, dropped=[])
    except DLMAError as e:
        return one_line(e)
    for r in rows:
        assert isinstance(r["id"], (str, int)) and not isinstance(r["id"], bool)
        assert r["turns"] and all(text_a_model_reads(t.strip()) for t in r["turns"]), r
        assert text_a_model_reads(r["o1"].strip()) and text_a_model_reads(r["o2"].strip()), r
        assert r.get("pair", "harmless") in PAIRS and r.get("rendering", "affix") in RENDERINGS
        assert not need_self_reward or math.isfinite(r["self_reward"])


PAIR_DEFINITIONS = st.dictionaries(
    st.sampled_from(["mine", "harmless", "x"]) | TEXT | st.integers(),
    st.dictionaries(st.sampled_from(FIELDS[-6:]) | TEXT, WORDS | JSON, max_size=4) | JSON, max_size=3)


@BOUNDED
@given(text=PAIR_DEFINITIONS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)) | TEXT |
       st.sampled_from(["a: [1", "{a: b}: c", "&x a: *x", "k:\n  pos: a {}\n  neg: b {}\nk: 1\n", "!!python/name:os"]))
@example(text="k:\n  pos: a {}\n  neg: b {}\n")
def test_prompt_pairs_files_give_their_pairs_or_one_line(scratch, text):
    path = scratch / "pairs.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        pairs = load_pairs_file(path)
    except DLMAError as e:
        return one_line(e)
    assert set(PAIRS) == BUILT_IN  # read, not registered
    for name, pair in pairs.items():
        assert pair.name == name and pair.name not in BUILT_IN
        assert pair.pos.count("{}") == 1 and pair.neg.count("{}") == 1


PRESET_VALUES = st.dictionaries(
    st.sampled_from(["seed", "n_queries", "beta", "pref_limit", "rendering", "scorers", "learning_rate", "qlora",
                     "max_new_tokens", "description", "out", "n_querys"]) | TEXT | st.integers(),
    SCALARS | JSON, max_size=3)
SET_ITEMS = st.lists(st.tuples(st.sampled_from(["seed", "n_queries", "beta", "qlora", "rendering", "x"]), TEXT).map(
    lambda kv: f"{kv[0]}={kv[1]}") | st.sampled_from(["beta=[0.1", "n_queries", "=3", "seed=!!python/name:os",
                                                      "beta=1e400", "qlora=yes"]), max_size=2)


@settings(BOUNDED, max_examples=25)
@given(preset=PRESET_VALUES.map(lambda d: yaml.safe_dump(d, allow_unicode=True)) | st.sampled_from(
    ["seed: [0", "- 1\n- 2\n", "1: 2\n", "a: 1\n---\nb: 2\n"]), overrides=SET_ITEMS)
@example(preset="seed: 1\n", overrides=["beta=[0.1"])
@example(preset="1: 2\n", overrides=[])
def test_presets_and_set_values_resolve_or_one_line(scratch, preset, overrides):
    path = scratch / "preset.yaml"
    path.write_text(preset, encoding="utf-8", errors="surrogatepass")
    try:
        params = resolve_params(str(path), overrides)
    except DLMAError as e:
        return one_line(e)
    assert all(isinstance(k, str) for k in params)


ANSWERS = st.one_of(
    st.builds(lambda c: json.dumps({"choices": [{"message": {"content": c}}]}).encode(), SCALARS | JSON),
    JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=30),
    st.sampled_from([b"[" * 5000, b'{"choices": []}', b'{"choices": [{"message": null}]}', b"(A)"]))


@BOUNDED
@given(raw=ANSWERS)
@example(raw=b"[" * 5000)
def test_judge_answers_parse_to_an_option_or_a_bad_answer(raw):
    try:
        answer = HttpJudge.parse(raw)
    except BadAnswer as e:  # asked again, then one line (HttpJudge._request)
        assert "\n" not in str(e)
        return
    assert HttpJudge.choice(answer) in (True, False)


@BOUNDED
@given(lines=st.lists(ANSWERS | st.builds(lambda k, a: json.dumps({"key": k, "answer": a}).encode(), TEXT | JSON,
                                          WORDS | JSON), max_size=4), torn=st.binary(max_size=8))
def test_a_judge_cache_keeps_its_valid_answers_and_drops_the_rest(scratch, lines, torn):
    path = scratch / "judge.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n" + torn)
    judge = HttpJudge("http://localhost:1", "m", path)  # reads the cache, asks nothing
    assert all(isinstance(k, str) and HttpJudge.valid(a) for k, a in judge.answers.items())
    assert HttpJudge("http://localhost:1", "m", path).answers == judge.answers  # rewritten clean: read the same


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True
