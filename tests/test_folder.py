"""A stage's output folder, as a careless or hostile user meets it: two writers at once, --force beside the
user's own files, an --out that holds the stage's input, an empty --out; and the undefined metric that used to
end stage 6 at its last line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dlma.artifacts import json_text, write_jsonl
from dlma.cli import main

ROWS = [{"id": f"p{i}", "turns": ["How?"], "o1": "Safely.", "o2": "Badly.", "self_reward": float(i)} for i in range(8)]


def split(tmp_path, out, *extra) -> int:
    return main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--out", str(out), *extra])


def test_force_removes_only_what_the_stage_wrote(tmp_path, capsys):
    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    out = tmp_path / "s"
    assert split(tmp_path, out) == 0
    (out / "mynotes.txt").write_text("mine")
    assert split(tmp_path, out, "--holdout-fraction", "0.5", "--force") == 2
    err = capsys.readouterr().err
    assert "holds mynotes.txt, which this stage did not write: --force removes nothing" in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "mynotes.txt").read_text() == "mine"  # the user's file is never deleted
    assert (out / "manifest.json").exists()  # nor the stage's own: the folder is as it was
    (out / "mynotes.txt").unlink()
    assert split(tmp_path, out, "--holdout-fraction", "0.5", "--force") == 0
    assert json.loads((out / "manifest.json").read_text())["n_heldout"] == 4


def test_an_out_that_holds_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    out = tmp_path / "eqin"
    write_jsonl(out / "scored.jsonl", ROWS)
    before = (out / "scored.jsonl").read_bytes()
    assert main(["split", "--pairs", str(out), "--out", str(out), "--force"]) == 2
    assert "holds the stage's input pairs" in capsys.readouterr().err
    assert (out / "scored.jsonl").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["scored.jsonl"]


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused(tmp_path, out, capsys, monkeypatch):
    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    assert main(["split", "--pairs", "scored.jsonl", "--out", out]) == 2
    assert "an output folder must be named" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.jsonl"]


HOLDER = """
import sys, time
from pathlib import Path
from dlma.folder import StageFolder
folder = StageFolder(sys.argv[1], "split")
folder.begin({"x": 1})
Path(sys.argv[2]).write_text("ready")
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys):
    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    out, ready = tmp_path / "busy", tmp_path / "ready"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready)])
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        assert split(tmp_path, out) == 2
        err = capsys.readouterr().err.strip()
        assert f"(pid {first.pid}) is writing here" in err and str(out.resolve()) in err
        assert len(err.splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    assert split(tmp_path, tmp_path / "free") == 0  # another folder was never blocked


def test_undefined_distinct_2_is_null_with_its_reason_and_the_summary_is_written():
    from dlma.baselines import response_metrics
    from dlma.readings import fmt_ci

    rows = [{"refusal": False, "contrastive_score": 0.1, "perplexity": 3.0, "response": "Yes.", "n_tokens": 2}] * 3
    metrics = response_metrics(rows, n_boot=50)
    assert metrics["distinct_2"] == {"value": None, "ci95": None, "n": 0, "undefined": "no answer has two words"}
    json_text(metrics)  # strict JSON: no NaN reaches baselines.json
    assert fmt_ci(metrics["distinct_2"]) == "undefined (no answer has two words)"


def test_a_finished_folder_edited_by_hand_is_refused_and_force_redoes_it(tmp_path, capsys):
    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    out = tmp_path / "s"
    assert split(tmp_path, out) == 0
    capsys.readouterr()
    assert split(tmp_path, out) == 0  # a rerun over untouched results reports them
    with open(out / "train.jsonl", "a") as f:
        f.write(json.dumps(ROWS[0]) + "\n")
    assert split(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert "train.jsonl: edited since it was written" in err and "--force" in err
    assert split(tmp_path, out, "--force") == 0
    assert split(tmp_path, out) == 0


def test_a_resumed_stage_records_every_process_up_to_its_last_result_and_force_starts_over(tmp_path):
    import os

    from dlma.folder import TIMES_FILE, StageFolder

    out = tmp_path / "s"
    first = StageFolder(out, "score")
    first.begin({"x": 1})
    assert json.loads((out / TIMES_FILE).read_text()) == {"spans": [], "started": first.started}
    (out / "scores.partial.jsonl").write_text("{}\n")  # its last result, then it is killed (no finish)
    now = time.time()  # as if it had started 100 s ago and written its last result 40 s ago
    (out / TIMES_FILE).write_text(json.dumps({"spans": [], "started": now - 100}))
    for name in ("params.json", "scores.partial.jsonl"):
        os.utime(out / name, (now - 100 if name == "params.json" else now - 40,) * 2)
    first.release()

    second = StageFolder(out, "score")
    second.begin({"x": 1})
    second.finish()
    m = json.loads((out / "manifest.json").read_text())
    assert m["spans"][0] == [round(now - 100, 2), round(now - 40, 2)] and len(m["spans"]) == 2
    assert 60 <= m["wall_time_s"] < 70  # the killed process's 60 s and this one's moment, not the 40 s between
    assert not (out / TIMES_FILE).exists() and TIMES_FILE not in m["files"]
    third = StageFolder(out, "score")
    third.begin({"x": 1}, force=True)
    third.finish()
    assert len(json.loads((out / "manifest.json").read_text())["spans"]) == 1


def test_written_files_take_the_umask_like_any_other_file(tmp_path):
    import os

    from dlma.artifacts import UMASK

    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    assert split(tmp_path, tmp_path / "s") == 0
    want = 0o666 & ~UMASK
    for name in ("params.json", "manifest.json", "train.jsonl"):
        assert os.stat(tmp_path / "s" / name).st_mode & 0o777 == want, name  # not mkstemp's 0600


def snapshot(folder) -> dict:
    """Every file under `folder` (hidden ones included) with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def read_only(monkeypatch, folder) -> None:
    """`folder` as on a read-only disk, as far as dlma asks (os.access); that nothing is written is checked by
    the caller, file by file. (Root may write anywhere, so a chmod would not do.)"""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == str(folder) and
                        mode & os.W_OK else real(p, mode, **kw))


def test_a_finished_stage_on_a_read_only_disk_is_reported_not_refused(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A rerun over a finished stage only reads it: no lock, no params.json, no manifest written; --force, which
    would write, is one line; so is an unfinished stage there."""
    write_jsonl(tmp_path / "scored.jsonl", ROWS)
    pairs = [{k: v for k, v in r.items() if k != "self_reward"} for r in ROWS[:2]]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    score = ["score", "--model", tiny_model_dir, "--pairs", str(tmp_path / "pairs.jsonl"), "--out"]
    assert split(tmp_path, tmp_path / "s") == 0 and main([*score, str(tmp_path / "r")]) == 0
    (tmp_path / "u").mkdir()
    for name in ("s", "r", "u"):
        read_only(monkeypatch, tmp_path / name)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert split(tmp_path, tmp_path / "s") == 0 and main([*score, str(tmp_path / "r")]) == 0
    assert "2 pairs scored" in capsys.readouterr().out
    assert snapshot(tmp_path) == before
    assert split(tmp_path, tmp_path / "s", "--force") == 2
    assert capsys.readouterr().err.strip() == f"dlma split: error: {tmp_path / 's'}: not writable, so --force cannot " \
                                              "redo the stage there"
    assert split(tmp_path, tmp_path / "u") == 2
    assert "not writable" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
