"""Publishing a run: its notebooks and its stages' records (book/results/run), which a rerun is compared with, and
which hold no row of the labelled data and no path of the machine that ran them."""

from __future__ import annotations

import json
from pathlib import Path

from test_compare import make_run
from test_selection import OUTSIDE

from dlma.book import RECORDS, publish_notebooks, stage_records
from dlma.compare import compare_runs
from dlma.selection import selected_rows

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "book" / "results" / RECORDS


def published_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder (test_compare's, with weights, a checkpoint and executed notebooks) and a book to publish to."""
    run = make_run(tmp_path / "run", right=60)
    (run / "04_train_dlma" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "04_train_dlma" / "adapter" / "tokenizer.json").write_text("{}")  # the model's, not the run's
    (run / "04_train_dlma" / "adapter" / "checkpoint-2").mkdir()
    (run / "04_train_dlma" / "adapter" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "04_train_dlma" / "manifest.json").write_text(json.dumps(
        {"stage": "04_train_dlma", "argv": ["/home/me/.venv/bin/dlma", "train"], "git_commit": "abc",
         "model": {"model": "m", "resolved": "/home/me/.cache/dlma/models/m", "weights_sha256": "ff"}}))
    for stage in ("02_self_reward", "03_preference_accuracy", "04_train_dlma"):
        (run / f"{stage}.ipynb").write_text(json.dumps({"cells": [], "stage": stage}))
    return run, tmp_path / "book"


def test_publishing_copies_each_stages_records_and_replaces_only_that_stages(tmp_path):
    run, book = published_run(tmp_path)
    stale = book / RECORDS / "04_train_dlma" / "stale.json"
    kept = book / RECORDS / "06_baselines" / "judgements.jsonl"
    for p in (stale, kept):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    publish_notebooks(run, ("02_self_reward", "03_preference_accuracy", "04_train_dlma"), book)
    assert sorted(str(p.relative_to(book / RECORDS / "04_train_dlma"))
                  for p in (book / RECORDS / "04_train_dlma").rglob("*") if p.is_file()) == \
        ["adapter/params.json", "adapter/train_log.jsonl", "manifest.json", "params.json"]  # no weights, checkpoint
    # or tokenizer
    assert not stale.exists() and kept.exists()  # a stage not published keeps the records of its notebook
    assert (book / RECORDS / "03_preference_accuracy" / "predictions.jsonl").read_bytes() == \
        (run / "03_preference_accuracy" / "predictions.jsonl").read_bytes()
    # the manifest, but for what names the machine's paths: listed as left out
    assert json.loads((book / RECORDS / "04_train_dlma" / "manifest.json").read_text()) == {
        "stage": "04_train_dlma", "git_commit": "abc", "model": {"model": "m", "weights_sha256": "ff"},
        "left_out": ["argv", "model.resolved"]}
    assert (book / "04_train_dlma.ipynb").read_bytes() == (run / "04_train_dlma.ipynb").read_bytes()


def test_the_rlhf_methods_labelled_rows_are_published_by_id_only(tmp_path):
    """Stage 6's `rlhf` trains on the labelled pairs themselves: its rows_note.json (their ids) is a record, its
    train.jsonl (their text) is not; another method's rows, the model's own answers, are."""
    stage = tmp_path / "06_baselines"
    for method, note in (("rlhf", {"human_pair_ids": ["179"], "source": "params/data/x.rows.json"}),
                         ("rlcd", {}), ("dlma_study", {"study_selected": "norm"})):
        (stage / method).mkdir(parents=True)
        (stage / method / "rows_note.json").write_text(json.dumps(note))
        (stage / method / "train.jsonl").write_text('{"id": "179", "o1": "a labelled answer"}\n')
    (stage / "manifest.json").write_text("{}")
    assert [str(p.relative_to(stage)) for p in stage_records(stage)] == [
        "dlma_study/rows_note.json", "dlma_study/train.jsonl", "manifest.json", "rlcd/rows_note.json",
        "rlcd/train.jsonl", "rlhf/rows_note.json"]


def test_the_published_run_holds_no_training_set_of_labelled_rows():
    """Read without the rows (a clone with no copy skips the text check below): where a published method trained on
    the labelled pairs, its note names them by id and their text is not published."""
    labelled = [p for p in PUBLISHED.rglob("rows_note.json") if json.loads(p.read_text()).get("human_pair_ids")]
    assert labelled and not [p for p in labelled if p.with_name("train.jsonl").exists()]


def test_a_rerun_compares_with_the_published_records_as_with_its_run(tmp_path):
    run, book = published_run(tmp_path)
    publish_notebooks(run, ("02_self_reward", "03_preference_accuracy", "04_train_dlma"), book)
    (c,) = compare_runs([book / RECORDS, run], n_boot=50)["comparisons"]
    assert list(c["stages"]) == ["02_self_reward", "03_preference_accuracy", "04_train_dlma"]
    stage3 = c["stages"]["03_preference_accuracy"]
    assert stage3["parameters"] == [] and stage3["scorers"]["dlma"]["difference"] == 0


def test_the_published_records_hold_no_path_of_the_machine_that_ran_them():
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(PUBLISHED.rglob("*")) if p.is_file())
    assert text and not [w for w in OUTSIDE if w in text]


def test_the_published_records_hold_no_row_of_the_labelled_data(hh_dev):
    """Stages 3, 3b and 5 store ids and numbers: no response of a labelled row (its last turns, where they are
    long enough to be a row's own words) is in any record."""
    answers = set()
    _, rows = selected_rows(hh_dev.with_name("hh-rlhf-harmless-base-test-dev1312.rows.json"))  # the full run's
    for row in rows:
        for side in ("chosen", "rejected"):
            last = row[side].rsplit("\n\nAssistant:", 1)[-1].strip()
            if len(last) >= 40:
                answers.add(last[:40])
    records = [p for stage in sorted(PUBLISHED.iterdir()) for p in stage_records(stage)]
    assert len(answers) > 1000 and records
    for p in records:
        text = p.read_text(encoding="utf-8")
        assert not [a for a in answers if a in text], p


def test_publishing_writes_the_stage_times_its_manifests_record_into_the_books_page(tmp_path):
    run, book = published_run(tmp_path)
    for k, stage in enumerate(("02_self_reward", "03_preference_accuracy")):
        (run / stage / "manifest.json").write_text(json.dumps(
            {"stage": stage, "wall_time_s": [61.4, 3725.0][k], "finished_at": "2026-12-02T11:00:00Z",
             "git_commit": "0123456789ab", "processes": 1, "machine": {"processor": "Some CPU", "cores": 2}}))
    page = book / "reproduce.md"
    page.parent.mkdir(parents=True)
    page.write_text("before\n<!-- STAGE TIMES -->\nstale\n<!-- END STAGE TIMES -->\nafter\n")
    publish_notebooks(run, ("02_self_reward", "03_preference_accuracy"), book / "results")
    text = page.read_text()
    assert text.startswith("before\n<!-- STAGE TIMES -->\n\n| stage |")
    assert text.endswith("<!-- END STAGE TIMES -->\nafter\n")
    assert "| 02_self_reward | 1 min 01 s | Some CPU, 2 cores, 1 process(es) | 2026-12-02 | `0123456` |" in text
    assert "| 03_preference_accuracy | 1 h 02 min |" in text and "| all 2 | 1 h 03 min |" in text
    assert "stale" not in text


def test_a_stages_time_counts_its_steps_once_and_every_process_of_a_resumed_one(tmp_path):
    """Stage 4's training runs after its split (their times add up); stage 6's methods train inside the stage's
    own time (counted once); a resumed stage's processes each count, the time between them not."""
    from dlma.book import stage_times

    def manifest(path: Path, spans: list) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "manifest.json").write_text(json.dumps(
            {"spans": spans, "wall_time_s": sum(e - s for s, e in spans), "finished_at": "2026-12-02T11:00:00Z"}))

    manifest(tmp_path / "04_train_dlma", [[1000.0, 1001.0]])
    manifest(tmp_path / "04_train_dlma" / "adapter", [[1005.0, 1065.0]])
    manifest(tmp_path / "06_baselines", [[2000.0, 2100.0], [5000.0, 5020.0]])  # stopped, resumed an hour later
    manifest(tmp_path / "06_baselines" / "rlcd" / "adapter", [[2010.0, 2040.0]])
    table = stage_times(tmp_path)
    assert "| 04_train_dlma | 1 min 01 s |" in table and "| 06_baselines | 2 min 00 s |" in table
    assert "| all 2 | 3 min 01 s |" in table


def test_the_reproducing_pages_stage_times_are_the_published_manifests():
    from dlma.book import stage_times

    assert f"<!-- STAGE TIMES -->\n\n{stage_times(PUBLISHED)}\n<!-- END STAGE TIMES -->" in \
        (ROOT / "book" / "reproduce.md").read_text(encoding="utf-8")


def test_a_stage_without_weights_is_published_whole_and_resumes_from_its_records(tmp_path):
    """Stage 3's records are every file its manifest lists but its figures (redrawn on every run), so a run folder
    can take them back (a later stage resumes from them) and the folder's check of its outputs passes."""
    from dlma.artifacts import sha256_file, write_manifest
    from dlma.folder import StageFolder

    run, book = published_run(tmp_path)
    stage = run / "03_preference_accuracy"
    (stage / "preference_accuracy.png").write_bytes(b"\x89PNG figure")
    write_manifest(stage, "pref-acc", {"beta": 0.1}, [[0.0, 1.0]])
    publish_notebooks(run, ("03_preference_accuracy",), book)
    records = book / RECORDS / "03_preference_accuracy"
    listed = json.loads((stage / "manifest.json").read_text())["files"]
    assert "preference_accuracy.png" in listed and not (records / "preference_accuracy.png").exists()
    listed.pop("preference_accuracy.png")
    assert {name: sha256_file(records / name) for name in listed} == listed
    folder = StageFolder(records, "pref-acc")
    folder.check_outputs()
