"""The one loader (SPEC section 6): every accepted row format, every file type, and one-line errors that
name the file, the line and the field, in the library and through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hub_layout  # the tests' folder is on sys.path (pytest's prepend mode)
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlma.artifacts import sha256_file
from dlma.data import Source, load_examples, read_pairs, source_record
from dlma.errors import DLMAError
from dlma.prompts import PAIRS
from dlma.selection import selected_rows

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
    read = "Anthropic/hh-rlhf/harmless-base/test.jsonl.gz"  # the rows named as the dataset names its file, by line,
    assert all(m.startswith(f"{read}:") and "field '" in m for m in skipped)  # wherever the copy read lies
    assert str(selected_rows(hh_dev)[0].parent) not in " ".join(skipped)
    assert len({e.id for e in examples}) == 510 and examples[0].id == "5"  # ids are the rows' test_index
    with pytest.raises(DLMAError, match=rf"{re.escape(read)}:\d+: field"):
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


# ---------------------------------------------------------------- hub datasets, offline


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Empty hub and datasets caches of this test's own: (hub cache, datasets cache)."""
    hub, ds = tmp_path / "hub-cache", tmp_path / "datasets-cache"
    hub.mkdir(), ds.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(ds))
    return hub, ds


def test_a_hub_layout_folder_is_read_at_the_split_asked(tmp_path, hub_env):
    folder = hub_layout.pku_folder(tmp_path / "PKU-SafeRLHF", n_train=5, n_test=3)
    test = load_examples(Source(str(folder), "test", param="pref"), require="labelled")
    assert [e.turns[0].split(":")[0] for e in test] == ["test question 0", "test question 1", "test question 2"]
    assert test[0].chosen.startswith("I can't help") and test[0].id == "1"  # safer_response_id 1, the row number
    assert len(load_examples(str(folder))) == 5  # the train split by default
    record = source_record(Source(str(folder), "test"))
    assert record == {"path": str(folder), "split": "test", "read_from": "folder",
                      "files": {"data/test-00000-of-00001.parquet": sha256_file(folder / "data" /
                                                                                "test-00000-of-00001.parquet")}}
    with pytest.raises(DLMAError, match=r"PKU-SafeRLHF \[validation\]: no split 'validation' \(its splits: train, "
                                        r"test\); set pref_split"):
        load_examples(Source(str(folder), "validation", param="pref"))
    with pytest.raises(DLMAError, match=r"a local folder has no revision \(queries_revision is 'v0'\)"):
        load_examples(Source(str(folder), "train", "v0", "queries"))


def test_processed_hh_rlhf_rows_and_a_folder_of_the_repository(tmp_path, hub_env):
    folder = hub_layout.hh_folder(tmp_path / "processed-hh-rlhf")
    (ex, *_) = load_examples(Source(str(folder / "harmless-base"), "test"), require="labelled")
    assert ex.turns == ["harmless-base test question 0: what should I do about my neighbour?", "What happened?",
                        "He is loud at night."]
    assert (ex.chosen, ex.rejected) == ("Talk to him calmly first (0).", "Slash his tyres.")
    query = {"context": [{"role": "human", "text": "Hi"}]}  # a context alone is a query
    bad = {"context": [{"role": "assistant", "text": "Hi"}], "chosen": {"role": "assistant", "text": "x"},
           "rejected": {"role": "assistant", "text": "y"}}
    (q,) = load_examples(write_jsonl(tmp_path / "q.jsonl", [query]))
    assert q.turns == ["Hi"] and not q.labelled
    with pytest.raises(DLMAError, match=r"b\.jsonl:1: field 'context': expected a list of \{role, text\} turns"):
        load_examples(write_jsonl(tmp_path / "b.jsonl", [bad]))


def test_a_hub_id_is_read_from_the_hub_cache_at_its_revision(tmp_path, hub_env):
    hub, _ = hub_env
    hub_layout.hub_snapshot(hub, hub_layout.PKU, hub_layout.pku_folder(tmp_path / "pku", 4, 3), refs=("v0",))
    hub_layout.hub_snapshot(hub, hub_layout.HH, hub_layout.hh_folder(tmp_path / "hh"), "f" * 40, refs=("main",))
    source = Source(hub_layout.PKU, "test", "v0", "pref")
    examples = load_examples(source, require="labelled")
    assert len(examples) == 3 and examples[0].turns[0].startswith("test question 0")
    assert examples[0].source == f"{hub_layout.PKU} [test]:1"
    record = source_record(source)
    assert record["read_from"] == "hub cache" and record["resolved_revision"] == hub_layout.COMMIT
    assert record["revision"] == "v0" and list(record["files"]) == ["data/test-00000-of-00001.parquet"]
    assert source_record(Source(hub_layout.PKU, "test", hub_layout.COMMIT))["files"] == record["files"]
    # a folder of the repository after the id, as the released code's data_dir: main when no revision is given
    hh = load_examples(Source(f"{hub_layout.HH}/helpful-base", "train"), require="labelled")
    assert hh[0].turns[0].startswith("helpful-base train question 0")
    assert source_record(Source(f"{hub_layout.HH}/helpful-base", "train"))["resolved_revision"] == "f" * 40


def test_a_hub_id_is_read_from_datasets_cache_checked_against_its_revision(tmp_path, hub_env):
    hub, ds = hub_env
    hub_layout.datasets_cache_entry(ds, hub_layout.PKU, hub_layout.pku_folder(tmp_path / "pku", 4, 3))
    pinned = Source(hub_layout.PKU, "test", hub_layout.COMMIT, "pref")
    assert [e.turns[0][:15] for e in load_examples(pinned)] == ["test question 0", "test question 1",
                                                                 "test question 2"]
    record = source_record(pinned)
    assert record["read_from"] == "datasets cache" and record["resolved_revision"] == hub_layout.COMMIT
    assert list(record["files"]) == ["pku-safe_rlhf-test.arrow"]
    assert source_record(Source(hub_layout.PKU, "test"))["resolved_revision"] == hub_layout.COMMIT  # unpinned
    with pytest.raises(DLMAError, match=rf"holds revision {hub_layout.COMMIT}, not {'e' * 40}"):
        load_examples(Source(hub_layout.PKU, "test", "e" * 40, "pref"))
    with pytest.raises(DLMAError, match=r"nothing says which commit 'v0' is .*set pref_revision to the commit hash"):
        load_examples(Source(hub_layout.PKU, "test", "v0", "pref"))
    (hub / "datasets--PKU-Alignment--PKU-SafeRLHF" / "refs").mkdir(parents=True)
    (hub / "datasets--PKU-Alignment--PKU-SafeRLHF" / "refs" / "v0").write_text(hub_layout.COMMIT)
    assert len(load_examples(Source(hub_layout.PKU, "test", "v0"))) == 3  # the name resolved by the hub cache
    with pytest.raises(DLMAError, match=r"Unknown split \"validation\".*set pref_split"):
        load_examples(Source(hub_layout.PKU, "validation", param="pref"))


def test_a_hub_id_neither_cached_nor_a_folder_is_one_line_naming_it_and_the_split(tmp_path, hub_env):
    with pytest.raises(DLMAError) as e:
        load_examples(Source("PKU-Alignment/PKU-SafeRLHF", "test", "v0", "pref"))
    msg = str(e.value)
    assert msg.startswith("PKU-Alignment/PKU-SafeRLHF: split 'test' at revision 'v0': not a local file or folder, "
                          "and not in the hub cache") and "\n" not in msg
    folder = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "dlma.cli", "generate", "--queries", "someone/nothing-here",
                          "--queries-split", "validation", "--out", str(folder), "--model", str(tmp_path / "no-model")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    ours = [line for line in res.stderr.splitlines() if line.startswith("dlma generate: error: ")]
    assert res.returncode == 2 and len(ours) == 1, res.stderr
    assert "someone/nothing-here: split 'validation': not a local file or folder" in ours[0]
    assert not folder.exists()


def test_compressed_json_lines_are_read(tmp_path):
    import gzip

    with gzip.open(tmp_path / "q.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "Hello?"}) + "\n")
    (ex,) = load_examples(tmp_path / "q.jsonl.gz")
    assert ex.turns == ["Hello?"] and ex.source.endswith("q.jsonl.gz:1")
    (tmp_path / "bad.jsonl.xz").write_bytes(b"not xz")
    with pytest.raises(DLMAError, match=r"bad\.jsonl\.xz: not a readable \.xz file"):
        load_examples(tmp_path / "bad.jsonl.xz")


def test_generated_pairs_name_a_pair_the_reader_knows_only_when_it_needs_the_pair(tmp_path):
    """Stage 2 scores each row under the pair it names, so the name must be one it was handed; training and the
    later stages do not read the pair: a row generated under a pairs file's pair is theirs to read (issue 29)."""
    row = {"id": "a", "turns": ["Hi?"], "o1": "Hello.", "o2": "Go away.", "pair": "kind", "self_reward": 1.0}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert [r["pair"] for r in read_pairs(path, need_self_reward=True)] == ["kind"]
    with pytest.raises(DLMAError, match=r"pairs.jsonl:1: field 'pair': unknown prompt pair 'kind'"):
        read_pairs(path, pairs=PAIRS)
    path.write_text(json.dumps({**row, "pair": ""}) + "\n")
    with pytest.raises(DLMAError, match=r"pairs.jsonl:1: field 'pair': expected the name of a prompt pair"):
        read_pairs(path)
