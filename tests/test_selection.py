"""The data from its source (issue 27): a committed row list selects rows of an upstream file by test_index and
checks them against a hash; the rows come from a local copy (DLMA_DATA_DIR: the upstream file in its layout, or
the selected rows), the download cache, or a download; offline and without a copy, one line says how to get
them, and `dlma run` says it before its first stage. Offline throughout, with invented rows."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dlma
from dlma import selection
from dlma.data import load_examples, source_record
from dlma.errors import DLMAError
from dlma.selection import canonical, make_selection, selected_rows

ROOT = Path(__file__).resolve().parents[1]
FILE = "harmless-base/test.jsonl.gz"


def dialogue(k: int, answer: str) -> str:
    return f"\n\nHuman: invented question {k}?\n\nAssistant: {answer} {k}."


def upstream_rows(n: int = 12) -> list[dict]:
    return [{"chosen": dialogue(k, "A kind answer"), "rejected": dialogue(k, "A rude answer")} for k in range(n)]


def write_upstream(folder: Path, rows: list[dict]) -> Path:
    path = folder / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """An upstream file of 12 invented rows in its layout, and a selection of rows 7, 2 and 9 (in that order)."""
    from dlma.artifacts import sha256_file

    monkeypatch.setenv("DLMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(selection.ENV, raising=False)
    monkeypatch.setattr(dlma, "OFFLINE_BY_SETUP", False)
    selection._ROWS.clear()
    rows = upstream_rows()
    upstream = write_upstream(tmp_path / "served", rows)  # what the selection's URL serves (a file:// URL)
    write_upstream(tmp_path / "copy", rows)  # a local copy in the upstream layout
    chosen = [{**rows[i], "test_index": i} for i in (7, 2, 9)]
    spec = make_selection(chosen, "Invented/hh", FILE, upstream.resolve().as_uri(), sha256_file(upstream))
    sel = tmp_path / "invented.rows.json"
    sel.write_text(json.dumps(spec))
    return tmp_path, sel, chosen


def test_rows_from_a_copy_of_the_upstream_file_in_its_layout(setup, monkeypatch):
    tmp_path, sel, chosen = setup
    monkeypatch.setenv(selection.ENV, str(tmp_path / "copy"))
    examples = load_examples(sel, require="labelled")
    assert [e.id for e in examples] == ["7", "2", "9"]  # the selection's order; ids are the test_index
    assert examples[0].turns == ["invented question 7?"] and examples[0].chosen == "A kind answer 7."
    # named by the dataset's file and the row's line there (test_index + 1), not by where the copy lies
    assert examples[1].source == f"Invented/hh/{FILE}:3"
    record = source_record(str(sel))
    assert record["rows_sha256"] == json.loads(sel.read_text())["sha256"]
    assert str(tmp_path / "copy") not in json.dumps(record)  # the same rows from another copy: the same input


def test_rows_from_a_copy_of_the_selected_rows(setup, monkeypatch):
    tmp_path, sel, chosen = setup
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "invented.jsonl").write_bytes(canonical(chosen))
    monkeypatch.setenv(selection.ENV, str(folder))
    examples = load_examples(sel)
    assert [e.id for e in examples] == ["7", "2", "9"]
    assert [e.source for e in examples] == [f"Invented/hh/{FILE}:{i + 1}" for i in (7, 2, 9)]  # as from the upstream
    (folder / "invented.jsonl").write_bytes(canonical([chosen[1], chosen[0], chosen[2]]))  # another order
    selection._ROWS.clear()
    with pytest.raises(DLMAError, match=r"invented\.jsonl: field 'test_index': its rows are not the ones"):
        load_examples(sel)


def test_a_changed_upstream_file_is_one_line_naming_the_hashes(setup, monkeypatch):
    tmp_path, sel, _ = setup
    rows = upstream_rows()
    rows[2]["rejected"] = dialogue(2, "An edited answer")
    write_upstream(tmp_path / "edited", rows)
    monkeypatch.setenv(selection.ENV, str(tmp_path / "edited"))
    with pytest.raises(DLMAError) as e:
        load_examples(sel)
    expected = json.loads(sel.read_text())["sha256"]
    assert str(e.value).startswith(str(tmp_path / "edited" / FILE)) and f"not the committed {expected}" in str(e.value)
    write_upstream(tmp_path / "short", upstream_rows(5))  # a file without row 9
    monkeypatch.setenv(selection.ENV, str(tmp_path / "short"))
    with pytest.raises(DLMAError, match=r"lists row 9, but the upstream file has 5 rows"):
        load_examples(sel)


def test_offline_without_a_copy_one_line_says_how_to_get_the_rows(setup):
    _, sel, _ = setup
    with pytest.raises(DLMAError) as e:
        load_examples(sel)
    message = str(e.value)
    assert message.startswith(f"{sel}: the rows of Invented/hh {FILE} are not on this machine")
    assert "DLMA_DATA_DIR" in message and "HF_HUB_OFFLINE" in message and "\n" not in message


def test_online_the_pinned_file_is_downloaded_once_and_checked(setup, monkeypatch, capsys):
    tmp_path, sel, _ = setup
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert [e.id for e in load_examples(sel)] == ["7", "2", "9"]  # the selection's url: a file:// URL here
    assert "downloading" in capsys.readouterr().out
    cached = selection.cache_path(selection.read_selection(sel))
    assert cached.is_file() and cached.is_relative_to(tmp_path / "cache")
    (tmp_path / "served" / FILE).unlink()  # the source gone: the cache serves
    selection._ROWS.clear()
    assert len(load_examples(sel)) == 3 and "downloading" not in capsys.readouterr().out
    cached.unlink()
    spec = json.loads(sel.read_text())
    write_upstream(tmp_path / "served", upstream_rows(13))  # the URL now serves another file
    with pytest.raises(DLMAError, match=rf"has SHA-256 [0-9a-f]{{64}}, not the pinned {spec['file_sha256']}"):
        load_examples(sel)
    assert not cached.exists()  # nothing unchecked is kept


def test_a_malformed_selection_file_names_its_field(tmp_path):
    spec = make_selection([{"chosen": "a", "rejected": "b", "test_index": 1}], "X/y", FILE, "file:///x", "0" * 64)
    for field, value, words in (("test_index", [1, 1], "listed twice"), ("test_index", [-1], "row numbers"),
                                ("sha256", None, "missing")):
        path = tmp_path / "bad.rows.json"
        path.write_text(json.dumps({**spec, field: value}))
        with pytest.raises(DLMAError, match=rf"bad\.rows\.json: field '{field}': .*{words}"):
            selected_rows(path)


def test_the_committed_row_lists_are_the_presets_and_hold_no_text():
    for n, preset in ((512, "default"), (1312, "full")):
        path = ROOT / "params" / "data" / f"hh-rlhf-harmless-base-test-dev{n}.rows.json"
        spec = json.loads(path.read_text())
        assert len(spec["test_index"]) == n and spec["file"] == FILE and "354e5c3c" in spec["url"]
        assert not {"chosen", "rejected"} & set(json.dumps(spec).split('"'))
        assert f"pref_data: params/data/{path.name}" in (ROOT / "params" / f"{preset}.yaml").read_text()


def test_nothing_names_a_folder_outside_the_repository():
    """Presets, notebooks, the package, the README and the book's own pages read and cite what a clone has."""
    files = [*ROOT.glob("params/**/*.yaml"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("dlma/**/*.py"),
             ROOT / "README.md", *ROOT.glob("book/*.md")]
    named = [f.relative_to(ROOT) for f in files for word in ("../shared", "SPEC section", "SPEC.md")
             if word in f.read_text(encoding="utf-8")]
    assert not named


def test_dlma_run_stops_before_its_first_stage_without_the_rows(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != selection.ENV}
    env.update(HF_HUB_OFFLINE="1", DLMA_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "dlma", "run", "--preset", "default", "--run-id", "no-data-test"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("dlma run: error:")]
    assert len(line) == 1 and "hh-rlhf-harmless-base-test-dev512.rows.json: the rows of" in line[0]
    assert "DLMA_DATA_DIR" in line[0]
    assert not (ROOT / "runs" / "no-data-test").exists() and "[dlma run] 01_generate" not in res.stdout


OUTSIDE = ("../shared", "SPEC", "/work/", "/tmp/", "/root/", "/home/")  # what a reader's clone does not have


@pytest.mark.parametrize("stage", sorted(p.stem for p in (ROOT / "book" / "results").glob("*.ipynb")))
def test_a_published_notebook_names_no_path_outside_the_repository(stage):
    """Anywhere in the file, hidden cells and recorded parameters included: a reader's rerun reads the same."""
    cells = json.loads((ROOT / "book" / "results" / f"{stage}.ipynb").read_text(encoding="utf-8"))["cells"]
    text = json.dumps([{k: v for k, v in c.items() if k != "outputs"} for c in cells]) + json.dumps(
        [{k: v for k, v in o.items() if k != "data"} | {"data": {t: v for t, v in o.get("data", {}).items()
                                                               if t.startswith(("text/", "application/"))}}
         for c in cells for o in c.get("outputs", [])])
    assert not [w for w in OUTSIDE if w in text]
