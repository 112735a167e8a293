"""Run-folder artifacts: atomic writes, resumable JSONL, manifests."""

from __future__ import annotations

import hashlib
import json

import pytest

from dlma.artifacts import (
    PartialJSONL,
    atomic_write,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
    write_manifest,
)
from dlma.data import input_record


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one\n")
    atomic_write(target, "two\n")
    assert target.read_text() == "two\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, "old\n")
    with pytest.raises(TypeError):
        atomic_write(target, 123)  # fails inside the write
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_json_and_jsonl_round_trip(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": "é"})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    rows = [{"id": "1", "x": [1, 2]}, {"id": "2", "x": "ü"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "r.jsonl"]


def test_partial_jsonl_appends_resumes_and_drops_a_torn_line(tmp_path):
    final = tmp_path / "out.jsonl"
    store = PartialJSONL(final)
    assert store.rows == [] and not store.finished
    store.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    partial = tmp_path / "out.partial.jsonl"
    assert partial.exists() and not final.exists()
    with open(partial, "a", encoding="utf-8") as f:  # a kill in the middle of the next write
        f.write('{"id": "c", "v"')

    store = PartialJSONL(final)
    assert [r["id"] for r in store.rows] == ["a", "b"]
    assert store.done == {"a", "b"}
    assert partial.read_text().endswith("}\n")  # the torn line is gone from disk, too
    store.append([{"id": "c", "v": 3}])
    assert [json.loads(line)["id"] for line in partial.read_text().splitlines()] == ["a", "b", "c"]

    path = store.finish()
    assert path == final and final.exists() and not partial.exists()
    assert [r["id"] for r in read_jsonl(final)] == ["a", "b", "c"]
    again = PartialJSONL(final)
    assert again.finished and again.done == {"a", "b", "c"}
    assert again.finish() == final  # finishing twice is harmless


def test_a_corrupt_line_inside_a_partial_file_is_named_and_dropped_as_a_torn_one(tmp_path, capsys):
    final, partial = tmp_path / "out.jsonl", tmp_path / "out.partial.jsonl"
    partial.write_bytes(b'{"id": "a"}\n{"id": "b", \x00 garbage\n[1, 2]\n{"v": 1}\n\xff\xfe\n\n{"id": "c"}\n{"id": "d"')
    store = PartialJSONL(final)
    assert [r["id"] for r in store.rows] == ["a", "c"] and store.done == {"a", "c"}
    assert capsys.readouterr().err.splitlines() == [
        f"dlma: {partial}:{n}: a corrupt line (not a JSON row), dropped; its item will be done again"
        for n in (2, 3, 4, 5)]
    assert partial.read_bytes() == b'{"id": "a"}\n\n{"id": "c"}\n'  # repaired: the next append starts on its own line
    store.append([{"id": "b"}])
    assert [r["id"] for r in read_jsonl(store.finish())] == ["a", "c", "b"]


def test_partial_jsonl_tuple_key_and_empty_finish(tmp_path):
    store = PartialJSONL(tmp_path / "p.jsonl", key=("scorer", "id"))
    store.append([{"scorer": "dlma", "id": "1"}, {"scorer": "rlaif", "id": "1"}])
    assert PartialJSONL(tmp_path / "p.jsonl", key=("scorer", "id")).done == {("dlma", "1"), ("rlaif", "1")}
    empty = PartialJSONL(tmp_path / "e.jsonl")
    empty.finish()
    assert (tmp_path / "e.jsonl").read_text() == ""


def test_write_manifest_lists_file_hashes(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "metrics.json").write_text("{}\n")
    (tmp_path / ".hidden.tmp").write_text("x")
    (tmp_path / "sub").mkdir()
    write_manifest(tmp_path, "generate", {"seed": 3}, [[100.0, 160.5], [200.0, 230.25]], extra_field=7)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["files"] == {
        "metrics.json": hashlib.sha256(b"{}\n").hexdigest(),
        "pairs.jsonl": sha256_file(tmp_path / "pairs.jsonl"),
    }
    assert m["stage"] == "generate" and m["params"] == {"seed": 3} and m["extra_field"] == 7
    assert {"python", "torch", "transformers", "dlma"} <= set(m["versions"])
    # the processor: 4-bit results depended on it before models.portable_4bit, and its speed always does
    assert m["machine"]["arch"] and m["machine"]["processor"] not in ("", "unknown") and m["machine"]["cores"] >= 1
    assert isinstance(m["machine"]["avx512_bf16"], bool)
    # a resumed stage's time is every process's: the sum of their spans, which are kept
    assert m["wall_time_s"] == 90.75 and m["spans"] == [[100.0, 160.5], [200.0, 230.25]]
    assert m["finished_at"].endswith("Z")
    # a rewrite does not hash the manifest itself
    write_manifest(tmp_path, "generate", {"seed": 3}, [[0.0, 1.0]])
    assert "manifest.json" not in json.loads((tmp_path / "manifest.json").read_text())["files"]


def test_record_params_names_what_changed(tmp_path):
    from dlma.artifacts import record_params
    from dlma.errors import DLMAError

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("one\n")
    b.write_text("one\n")
    out = tmp_path / "out"
    record_params(out, {"k": 1}, "hint", {"data": input_record(a)})
    (out / "result.jsonl").write_text("{}\n")  # a result: from now on the folder keeps its parameters
    record_params(out, {"k": 1}, "hint", {"data": input_record(a)})  # the same: accepted
    with pytest.raises(DLMAError, match=r"other parameters \(data\)"):  # another file, even with the same bytes
        record_params(out, {"k": 1}, "hint", {"data": input_record(b)})
    a.write_text("two\n")
    with pytest.raises(DLMAError, match=r"a.jsonl: changed since .* --force"):  # the same file, other bytes
        record_params(out, {"k": 1}, "hint", {"data": input_record(a)})
    with pytest.raises(DLMAError, match=r"other parameters \(k\)"):
        record_params(out, {"k": 2}, "hint")
