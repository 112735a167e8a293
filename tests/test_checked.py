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
    assert number(-1.4901161193847656e-08) == "0.0" == number(-0.0) == number(0.0)  # zero and noise around it
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
        "pairs: 1", "q1: o1 eos 100 chars, o2 length 1 chars, R 0.0",
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


# Another machine's kernels round float32 sums otherwise (vector width, threads): simulated in the notebooks'
# kernels by a relative noise of 1e-7 (float32's epsilon) on every linear layer's output (4-bit and LoRA layers
# included), drawn from a generator of its own so the sampling's random stream is untouched. On 8 sample pairs it
# moves R by up to 8.6e-5 (2026-12-01), about three times what PyTorch's AVX2 and plain kernels differ by (3e-5,
# dlma/checked.py). Each kernel notes once that it perturbed.
NOISE = """
import os, torch
_g, _seen = torch.Generator().manual_seed(1234), []
def _perturb(module, args, output):
    if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor) and output.is_floating_point():
        if not _seen:
            _seen.append(1)
            with open(os.environ["DLMA_TEST_MARKS"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        with torch.no_grad():
            noise = output.detach() * 1e-7 * torch.randn(output.shape, generator=_g, dtype=output.dtype)
        return output + noise
torch.nn.modules.module.register_module_forward_hook(_perturb)
"""
# A bug that flips the self-rewarding score's sign.
FLIP_R = """
import os, dlma.score as score
_r = score.self_reward
def _flipped(**terms):
    with open(os.environ["DLMA_TEST_MARKS"], "a") as f:
        f.write("flipped\\n")
    return -_r(**terms)
score.self_reward = _flipped
"""


def kernel_startup(dest: Path, code: str) -> dict:
    """Environment under which every notebook kernel (nbval's) first runs `code` (an IPython startup file)."""
    startup = dest / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-test.py").write_text(code)
    return {"IPYTHONDIR": str(dest / "ipython"), "DLMA_TEST_MARKS": str(dest / "marks.txt")}


@pytest.mark.slow
def test_the_stored_results_hold_under_another_kernels_rounding(tmp_path):
    """The checked outputs of the stages up to stage 5 (its answers sampled from the 4-bit model, on the portable
    path of models.portable_4bit) hold under float32 rounding noise on every layer, PyTorch's plain C++ kernels and 1
    thread: what another CPU changes."""
    stages = STAGES[:3] + ("04_train_dlma", "05_evaluate_alignment")
    folder = copy_notebooks(tmp_path, stages)
    res = run_nbval(folder, {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
                             **kernel_startup(tmp_path, NOISE)})
    assert res.returncode == 0, res.stdout[-3000:]
    assert re.search(r"\d+ passed", res.stdout) and "failed" not in res.stdout
    perturbed = (tmp_path / "marks.txt").read_text().split()
    assert len(set(perturbed)) >= len(stages) - 1, perturbed  # every kernel that ran a model (03b not here)


@pytest.mark.slow
def test_a_flipped_self_reward_fails_the_check(tmp_path):
    """The check can fail on a result: with R's sign flipped, stage 2's key results differ from the stored ones."""
    folder = copy_notebooks(tmp_path, STAGES[:2])
    res = run_nbval(folder, kernel_startup(tmp_path, FLIP_R))
    assert "flipped" in (tmp_path / "marks.txt").read_text()
    assert res.returncode != 0 and "1 failed" in res.stdout, res.stdout[-3000:]
    assert re.search(r"^\s*- q\d+: .*, R -?\d", res.stdout, flags=re.M), "the differing output shows R"


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
