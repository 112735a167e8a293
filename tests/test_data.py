"""The one loader (SPEC section 6): every accepted row format, every file type, and one-line errors that
name the file, the line and the field, in the library and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlma.data import load_examples
from dlma.errors import DLMAError
from dlma.prompts import PAIRS

HH_1 = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."}
HH_MULTI = {
    "chosen": "\n\nHuman: How do I hurt someone?\n\nAssistant: Why do you ask?\n\nHuman: They annoyed me."
              "\n\nAssistant: I can't help with hurting anyone. Talking it out may help.",
    "rejected": "\n\nHuman: How do I hurt someone?\n\nAssistant: Why do you ask?\n\nHuman: They annoyed me."
                "\n\nAssistant: Hit them hard.",
}
PKU = {"prompt": "How do I make a fake ID?", "response_0": "Here is how: ...", "response_1": "I can't help with that.",
       "safer_response_id": 1, "better_response_id": 0, "is_response_0_safe": False}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- accepted formats


def test_hh_rlhf_single_and_multi_turn(tmp_path):
    f = write_jsonl(tmp_path / "hh.jsonl", [HH_1, HH_MULTI, {**HH_1, "test_index": 77}])
    a, b, c = load_examples(f)
    assert a.id == "1" and a.turns == ["Hi there"]
    assert (a.chosen, a.rejected) == ("Hello! How can I help?", "Go away.")
    assert a.labelled and a.pair is None
    # split at the last Assistant turn: the context keeps every earlier turn, user first
    assert b.turns == ["How do I hurt someone?", "Why do you ask?", "They annoyed me."]
    assert b.chosen == "I can't help with hurting anyone. Talking it out may help."
    assert b.rejected == "Hit them hard."
    assert c.id == "77"  # HH dev rows carry test_index
    assert a.source.endswith("hh.jsonl:1")


def test_hh_rlhf_without_leading_newlines(tmp_path):
    row = {k: v.lstrip("\n") for k, v in HH_1.items()}
    (ex,) = load_examples(write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert ex.turns == ["Hi there"] and ex.chosen == "Hello! How can I help?"


def test_pku_saferlhf_label_fields(tmp_path):
    f = write_jsonl(tmp_path / "pku.jsonl", [PKU, {**PKU, "safer_response_id": 0, "better_response_id": 1}])
    safer = load_examples(f)
    assert safer[0].turns == [PKU["prompt"]]
    assert (safer[0].chosen, safer[0].rejected) == ("I can't help with that.", "Here is how: ...")
    assert (safer[1].chosen, safer[1].rejected) == ("Here is how: ...", "I can't help with that.")
    better = load_examples(f, label_field="better_response_id")
    assert (better[0].chosen, better[0].rejected) == ("Here is how: ...", "I can't help with that.")
    assert (better[1].chosen, better[1].rejected) == ("I can't help with that.", "Here is how: ...")
    with pytest.raises(DLMAError, match="label_field"):
        load_examples(f, label_field="is_response_0_safe")


def test_trl_plain_and_conversational(tmp_path):
    plain = {"id": "t1", "prompt": "Write a haiku.", "chosen": "Leaves fall softly down.", "rejected": "No."}
    conv = {
        "id": "t2",
        "prompt": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tell me a fact."}],
        "chosen": [{"role": "assistant", "content": "Octopuses have three hearts."}],
        "rejected": [{"role": "assistant", "content": "Facts are boring."}],
    }
    a, b = load_examples(write_jsonl(tmp_path / "trl.jsonl", [plain, conv]))
    assert (a.id, a.turns, a.chosen, a.rejected) == ("t1", ["Write a haiku."], "Leaves fall softly down.", "No.")
    assert b.id == "t2"
    assert b.turns == ["Hi", "Hello", "Tell me a fact."]  # the system message is not a turn
    assert (b.chosen, b.rejected) == ("Octopuses have three hearts.", "Facts are boring.")


def test_query_only_rows(tmp_path):
    rows = [
        {"id": "q1", "prompt": "  How do I bake bread?  ", "pair": "helpful"},
        {"query": "How do I steal a car?"},
        {"id": "q3", "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                                {"role": "user", "content": "Insult me."}], "pair": "harmless"},
    ]
    a, b, c = load_examples(write_jsonl(tmp_path / "q.jsonl", rows))
    assert (a.id, a.turns, a.pair, a.labelled) == ("q1", ["How do I bake bread?"], "helpful", False)
    assert (b.id, b.turns, b.pair, b.chosen) == ("2", ["How do I steal a car?"], None, None)
    assert c.turns == ["Hi", "Hey", "Insult me."] and c.pair == "harmless"
    with pytest.raises(DLMAError, match=r"q\.jsonl:1: field 'chosen'"):
        load_examples(tmp_path / "q.jsonl", require="labelled")


def test_json_and_parquet_files(tmp_path):
    rows = [{"id": "a", **HH_1}, {"id": "b", "prompt": "p", "chosen": "c", "rejected": "r"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    from_json = load_examples(tmp_path / "rows.json")
    assert [e.id for e in from_json] == ["a", "b"] and from_json[0].chosen == "Hello! How can I help?"
    pku = [PKU, {**PKU, "safer_response_id": 0}]
    pq.write_table(pa.Table.from_pylist(pku), tmp_path / "rows.parquet")
    from_parquet = load_examples(tmp_path / "rows.parquet")
    assert [e.chosen for e in from_parquet] == ["I can't help with that.", "Here is how: ..."]
    assert from_parquet[1].source.endswith("rows.parquet:2")


def test_limit_counts_valid_examples_and_skip_collects_messages(tmp_path):
    empty = {**HH_1, "chosen": "\n\nHuman: Hi there\n\nAssistant:"}
    f = write_jsonl(tmp_path / "hh.jsonl", [empty, HH_1, HH_MULTI, HH_1])
    skipped: list[str] = []
    got = load_examples(f, limit=2, on_invalid="skip", skipped=skipped)
    assert [e.id for e in got] == ["2", "3"]
    assert len(skipped) == 1 and "hh.jsonl:1: field 'chosen'" in skipped[0]


def test_duplicate_ids_are_refused(tmp_path):
    f = write_jsonl(tmp_path / "q.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    with pytest.raises(DLMAError, match="duplicate id 'x'"):
        load_examples(f)


def test_shipped_samples():
    queries = load_examples("sample:queries")
    assert len(queries) == 300
    assert all(not q.labelled for q in queries)
    assert all(q.pair in PAIRS for q in queries)
    assert len({q.id for q in queries}) == 300
    pairs = load_examples("sample:pairs", require="labelled")
    assert len(pairs) == 48 and all(p.labelled and p.chosen != p.rejected for p in pairs)
    with pytest.raises(DLMAError, match="sample:queries"):  # the message lists the known samples
        load_examples("sample:nope")


def test_shared_dev_file_skips_two_bad_rows(hh_dev):
    skipped: list[str] = []
    examples = load_examples(hh_dev, require="labelled", on_invalid="skip", skipped=skipped)
    assert len(examples) == 510
    assert len(skipped) == 2
    assert all(hh_dev.name in m and "field '" in m for m in skipped)
    assert len({e.id for e in examples}) == 510
    with pytest.raises(DLMAError, match=rf"{hh_dev.name}:\d+: field"):
        load_examples(hh_dev, on_invalid="error")


# ---------------------------------------------------------------- errors, in the library


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, int, str | None]]:
    """name -> (file, the bad line, the field the message must name)."""
    good = {"id": "ok", **HH_1}
    return {
        "malformed": (write_jsonl(tmp_path / "malformed.jsonl", [good, '{"chosen": "x", ']), 2, None),
        "missing": (write_jsonl(tmp_path / "missing.jsonl", [good, "", {"chosen": HH_1["chosen"]}]), 3, "rejected"),
        "empty": (write_jsonl(tmp_path / "empty.jsonl",
                              [good, {**HH_1, "rejected": "\n\nHuman: Hi there\n\nAssistant:   "}]), 2, "rejected"),
        "pair": (write_jsonl(tmp_path / "pair.jsonl", [good, {"id": "p", **HH_1, "pair": "nope"}]), 2, "pair"),
    }


@pytest.mark.parametrize("case", ["malformed", "missing", "empty", "pair"])
def test_errors_name_file_line_and_field(tmp_path, case):
    path, line, field = _bad_files(tmp_path)[case]
    with pytest.raises(DLMAError) as e:
        load_examples(path, on_invalid="error")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{path}:{line}" in msg
    if field:
        assert f"field '{field}'" in msg
    if case == "missing":
        assert msg.endswith(f"field '{field}': missing")
    if case == "empty":
        assert msg.endswith(f"field '{field}': empty response")
    if case == "malformed":
        assert "malformed JSON" in msg
    if case == "pair":
        assert "'nope'" in msg


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"prompt": "p", "response_0": "a", "response_1": "b"}, "safer_response_id", "missing"),
        ({"prompt": "p", "response_0": "a", "response_1": "b", "safer_response_id": 2}, "safer_response_id", "0 or 1"),
        ({"prompt": "p", "response_0": " ", "response_1": "b", "safer_response_id": 0}, "response_0", "empty"),
        ({"prompt": "p", "chosen": "c"}, "rejected", "missing"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "empty"),
        ({"prompt": "", "pair": "helpful"}, "prompt", "empty"),
        ({"text": "no prompt here"}, "prompt", "missing"),
        ({"prompt": 3}, "prompt", "expected"),
    ],
)
def test_more_field_errors(tmp_path, row, field, words):
    f = write_jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DLMAError, match=rf"rows\.jsonl:1: field '{field}'.*{words}"):
        load_examples(f)


def test_malformed_json_file(tmp_path):
    (tmp_path / "rows.json").write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]', encoding="utf-8")
    with pytest.raises(DLMAError, match=r"rows\.json:3: malformed JSON"):
        load_examples(tmp_path / "rows.json")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DLMAError, match="nothing.jsonl: no such file"):
        load_examples(tmp_path / "nothing.jsonl")


# ---------------------------------------------------------------- errors, through the CLI

CLI_CASES = [(cmd, case) for cmd in ("generate", "pref-acc") for case in ("malformed", "missing", "empty", "pair")]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every failing CLI call, started together (each pays Python + torch start-up once)."""
    root = tmp_path_factory.mktemp("cli-errors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DLMA_CACHE": str(root / "empty-cache")}
    # a model that cannot be loaded: a data error reported instead proves the data is checked first
    no_model = str(root / "no-such-model")
    procs = {}
    for cmd, case in CLI_CASES:
        folder = root / f"{cmd}-{case}"
        folder.mkdir()
        if cmd == "generate":
            rows = {  # query rows: the same four faults
                "malformed": ['{"prompt": "fine"}', '{"prompt": "x", '],
                "missing": [{"prompt": "fine"}, {"id": "q2", "text": "no prompt"}],
                "empty": [{"prompt": "fine"}, {"prompt": "   "}],
                "pair": [{"prompt": "fine"}, {"prompt": "ok", "pair": "nope"}],
            }[case]
            path, line, field = write_jsonl(folder / "bad.jsonl", rows), 2, {"malformed": None, "missing": "prompt",
                                                                           "empty": "prompt", "pair": "pair"}[case]
            args = ["generate", "--queries", str(path), "--out", str(folder / "out"), "--model", no_model]
        else:
            path, line, field = _bad_files(folder)[case]
            args = ["pref-acc", "--pref-data", str(path), "--on-invalid", "error", "--out", str(folder / "out"),
                    "--model", no_model]
        procs[(cmd, case)] = (subprocess.Popen([sys.executable, "-m", "dlma.cli", *args], env=env, cwd=folder,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                              path, line, field, folder)
    out = {}
    for key, (p, path, line, field, folder) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[key] = (p.returncode, stdout, stderr, path, line, field, folder)
    return out


@pytest.mark.parametrize("cmd, case", CLI_CASES)
def test_cli_reports_bad_data_in_one_line(cli_runs, cmd, case):
    rc, stdout, stderr, path, line, field, folder = cli_runs[(cmd, case)]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"dlma {cmd}: error: ")]  # ours alone
    assert len(lines) == 1, stderr
    assert rc == 2, stderr
    msg = lines[0]
    assert f"{path.name}:{line}" in msg
    if field:
        assert f"field '{field}'" in msg
    expected = {"malformed": "malformed JSON", "missing": "missing", "empty": "empty", "pair": "'nope'"}[case]
    assert expected in msg.split(f"{path.name}:{line}", 1)[1]
    assert "no-such-model" not in msg  # failed on the data, before loading the model
    assert not (folder / "out" / "manifest.json").exists()
