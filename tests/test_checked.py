"""nbval that checks results (issue 20): the key results each notebook prints, stored from the smoke run in
`notebooks/`, hold on another CPU instruction set and thread count, and a changed result fails the check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dlma.checked import MARK, flatten, key_results, number
from dlma.commands import STAGES

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_numbers_at_a_stable_precision():
    assert number(6.369250925794802) == "6.37" and number(6.3692449817871974) == "6.37"  # two CPUs' R
    assert number(-1.4901161193847656e-08) == "0.00" and number(-0.0) == "0.0"  # no sign on a zero
    assert number(5e-05) == "5e-05" and number(0.625) == "0.625"  # a setting, a share of a count: exact
    assert number(1 / 3) == "0.33"


def test_flatten_leaves_out_what_changes_between_machines():
    lines = flatten({"accuracy": {"dlma": {"accuracy": 0.5, "ci95": [0.125, 0.875], "n": 8}},
                     "wall_time_s": 12.3, "inputs": {"pairs": {"sha256": "ab"}}, "versions": {"torch": "2"},
                     "n_heldout": 2, "selected": "helpful"})
    assert lines == ["accuracy.dlma.accuracy: 0.5", "accuracy.dlma.ci95: [0.125, 0.875]", "accuracy.dlma.n: 8",
                     "n_heldout: 2", 'selected: "helpful"']


def test_key_results_of_scored_pairs_and_their_parameters(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"score_batch_size": 8, "inputs": {"x": {"sha256": "0"}}}))
    rows = [{"id": "q1", "o1": "a" * 100, "o2": "b", "o1_end": "eos", "o2_end": "length",
             "self_reward": -1.4901161193847656e-08}]
    assert key_results(rows, tmp_path).splitlines() == [
        "pairs: 1", "q1: o1 eos 100 chars, o2 length 1 chars, R 0.00",
        f"params[{tmp_path.name}].score_batch_size: 8"]


def checked_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and MARK in c.source]


@pytest.mark.parametrize("stage", STAGES)
def test_each_notebook_stores_its_smoke_results_and_nothing_else(stage):
    nb = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    cells = checked_cells(nb)
    assert len(cells) == 1, f"{stage}: one cell marked {MARK}"
    text = "".join(o.get("text", "") for o in cells[0].outputs)
    assert re.search(r"params\[", text), f"{stage}: no stored output; run `make expected`"
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code" and c not in cells)


def run_nbval(folder: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-sanitize-with", str(NOTEBOOKS / "sanitize.cfg"), str(folder)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **env})


def copy_notebooks(dest: Path, stages, **parameters) -> Path:
    """Copies of the smoke notebooks in dest/notebooks, with some parameters changed; the run in dest/runs."""
    folder = dest / "notebooks"
    folder.mkdir()
    for stage in stages:
        nb = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for name, value in parameters.items():
            cell.source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, flags=re.M)
            assert n == 1, name
        nbformat.write(nb, folder / f"{stage}.ipynb")
    return folder


@pytest.mark.slow
def test_the_stored_results_hold_on_another_instruction_set_and_one_thread(tmp_path):
    """The stored outputs come from this machine's own kernels (AVX2 here, at 2 threads); generation and the
    self-reward, the float-sensitive part, give the same checked text with the plain C++ kernels on 1 thread."""
    folder = copy_notebooks(tmp_path, ("01_generate", "02_self_reward"))
    res = run_nbval(folder, {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:]
    assert re.search(r"\d+ passed", res.stdout) and "failed" not in res.stdout


@pytest.mark.slow
def test_another_seed_fails_the_check_on_its_results(tmp_path):
    """The check can fail: the smoke generation under another seed samples other responses, and nbval reports
    the key-results cell (its pairs' lines, not only the echoed seed) as differing."""
    stored = "".join(o.get("text", "") for o in checked_cells(
        nbformat.read(NOTEBOOKS / "01_generate.ipynb", as_version=4))[0].outputs)
    folder = copy_notebooks(tmp_path, ("01_generate",), seed=1)
    res = run_nbval(folder, {})
    assert res.returncode != 0 and "1 failed" in res.stdout, res.stdout[-3000:]
    # nbval shows pytest's diff of `reference == test`: "  - line" is the re-execution's, "  + line" the stored
    pair_lines = {m.removesuffix("...") for m in re.findall(r"^\s*- (q\d+: o1 .*)$", res.stdout, flags=re.M)}
    assert pair_lines - set(stored.splitlines()), "the differing output shows other pairs"
