"""`dlma run` as a user meets it: killed mid-stage and rerun, a failing stage, the published notebooks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlma.book import parameter_table, update_parameter_table
from dlma.commands import STAGES
from dlma.presets import ROOT

PIPELINE = """
import sys
from pathlib import Path
from dlma.pipeline import run_pipeline
from dlma.commands import STAGES
from dlma.errors import DLMAError
try:
    run_pipeline("smoke", sys.argv[2:], "r", publish=False, runs_root=Path(sys.argv[1]), stages=STAGES[:2])
except DLMAError as e:
    print("ERROR", e)
    sys.exit(2)
"""


def start(runs: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", PIPELINE, str(runs), *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_stages(tmp_path):
    run = tmp_path / "r"
    proc = start(tmp_path)
    deadline = time.time() + 300
    while not (run / "01_generate" / ".done").exists():  # stage 1 finished, stage 2 starting
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: papermill's kernel too
    proc.wait()
    assert not (run / "02_self_reward" / ".done").exists(), "stage 2 finished before the kill; test is void"
    pairs = run / "01_generate" / "pairs.jsonl"
    before = (pairs.stat().st_mtime_ns, pairs.read_bytes())

    rerun = start(tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert "01_generate: done earlier, skipped" in out
    assert "02_self_reward: finished" in out
    assert (pairs.stat().st_mtime_ns, pairs.read_bytes()) == before  # stage 1 untouched
    scored = (run / "02_self_reward" / "scored.jsonl").read_text().splitlines()
    assert len(scored) == len(before[1].decode().splitlines()) == 4
    assert (run / "02_self_reward.ipynb").exists() and not list(run.glob(".*.partial.ipynb"))


@pytest.mark.slow
def test_failed_stage_keeps_its_notebook_and_says_so(tmp_path):
    # a missing file is refused before any stage runs (dlma run checks every dataset first)
    proc = start(tmp_path, f"queries={tmp_path / 'missing.jsonl'}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and re.search(r"^ERROR .*missing\.jsonl: no such file$", out, flags=re.M), out
    assert not (tmp_path / "r").exists()
    # a row the stage itself refuses: the stage fails, and its notebook is kept
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a question"}\n{"prompt": 3}\n')
    proc = start(tmp_path, f"queries={tmp_path / 'bad.jsonl'}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    run = tmp_path / "r"
    assert re.search(r"stage 01_generate failed \(DLMAError: .*bad\.jsonl:2: field 'prompt'", out), out
    assert (run / "01_generate.failed.ipynb").exists()
    assert not (run / "01_generate.ipynb").exists() and not (run / "01_generate" / ".done").exists()


def test_parameter_table_in_the_book_is_current(tmp_path):
    page = tmp_path / "reproduce.md"
    page.write_text((ROOT / "book" / "reproduce.md").read_text())
    stale = update_parameter_table(page)
    assert not stale, "book/reproduce.md's parameter table is stale: run dlma.book.update_parameter_table()"
    assert parameter_table() in page.read_text()


PUBLISHED = ROOT / "book" / "results"


@pytest.mark.parametrize("stage", STAGES)
def test_published_notebooks_ran_cleanly(stage):
    path = PUBLISHED / f"{stage}.ipynb"
    if not path.exists():
        pytest.skip("no published run yet")
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "run_dir" in "".join(injected[0]["source"])


def test_every_glue_key_the_book_uses_is_in_the_published_notebooks():
    keys = set()
    for page in (ROOT / "book").glob("*.md"):
        text = page.read_text()
        keys |= set(re.findall(r"results/(\d\d[a-z]?_\w+)\.ipynb::(\w+)", text))
        directives = re.findall(r"```\{glue\} (\w+)\n:doc: /book/results/(\d\d[a-z]?_\w+)\.ipynb", text)
        keys |= {(doc, key) for key, doc in directives}
    assert len(keys) >= 12
    for stage, key in sorted(keys):
        path = PUBLISHED / f"{stage}.ipynb"
        if not path.exists():
            pytest.skip("no published run yet")
        glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
                 for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])}
        assert key in glued, f"{stage} glues no '{key}'"
