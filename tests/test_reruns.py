"""Reruns as a user meets them: a typo never blocks its own fix, changed inputs are never answered with
stale results (unless asked to redo with --force), and executed notebooks are the same bytes each time."""

from __future__ import annotations

import difflib
import json
import logging
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dlma.cli import main
from dlma.pipeline import execute
from dlma.presets import ROOT

PAIRS = [{"id": f"p{i}", "turns": [f"How do I fix thing {i}?"], "o1": f"Carefully, step {i}.",
          "o2": f"Break it {i}."} for i in range(3)]


def write_pairs(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code


def test_a_typo_never_blocks_its_fix(tmp_path, tiny_model_dir, capsys):
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", PAIRS), str(tmp_path / "out")
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out, "--rendering", "fancy") == 2
    assert cli("score", "--model", str(tmp_path / "typo"), "--pairs", pairs, "--out", out) == 2
    assert not Path(out).exists()  # checked before anything was written
    # a folder holding only the params.json of a run that stopped before its first result takes new parameters
    Path(out).mkdir()
    (Path(out) / "params.json").write_text(json.dumps({"rendering": "chat", "inputs": {}}))  # as a stage writes it
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out) == 0, capsys.readouterr().err
    assert len((Path(out) / "scored.jsonl").read_text().splitlines()) == 3


def test_changed_input_is_refused_then_redone_with_force(tmp_path, tiny_model_dir, capsys):
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", PAIRS), str(tmp_path / "out")
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out) == 0
    first = (Path(out) / "scored.jsonl").read_text()
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out) == 0  # same input: resumes
    assert (Path(out) / "scored.jsonl").read_text() == first
    capsys.readouterr()

    write_pairs(tmp_path / "pairs.jsonl", [{**r, "o2": r["o2"] + " Now."} for r in PAIRS])  # regenerated
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"dlma score: error: {pairs}: changed since {out} was made from it" in err and "--force" in err
    assert (Path(out) / "scored.jsonl").read_text() == first  # nothing lost

    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out, "--force") == 0
    redone = [json.loads(x) for x in (Path(out) / "scored.jsonl").read_text().splitlines()]
    assert [r["o2"] for r in redone] == [r["o2"] + " Now." for r in PAIRS]
    before = [json.loads(line)["self_reward"] for line in first.splitlines()]
    assert all(r["self_reward"] != b for r, b in zip(redone, before, strict=True))
    params = json.loads((Path(out) / "params.json").read_text())
    assert len(params["inputs"]["pairs"]["sha256"]) == 64


def test_other_parameters_are_refused_with_the_way_out(tmp_path, tiny_model_dir, capsys):
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", PAIRS), str(tmp_path / "out")
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out) == 0
    capsys.readouterr()
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out, "--score-max-length", "64") == 2
    assert "holds results made with other parameters (score_max_length)" in capsys.readouterr().err
    assert cli("score", "--model", tiny_model_dir, "--pairs", pairs, "--out", out, "--score-max-length", "64",
               "--force") == 0
    assert json.loads((Path(out) / "params.json").read_text())["score_max_length"] == 64


def test_pref_acc_metrics_are_strict_json(tmp_path, tiny_model_dir):
    assert cli("pref-acc", "--model", tiny_model_dir, "--pref-data", "sample:pairs", "--pref-limit", "1", "--scorers",
               "random,loglik", "--out", str(tmp_path / "o")) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["accuracy"]["random"]["n"] == 1 and metrics["paired"][0]["n"] == 1


def test_known_library_noise_is_filtered_at_its_source():
    import dlma  # noqa: F401  (installs the filters)

    # bitsandbytes warns at import on CPUs with AVX-512 BF16 only; its logger is quiet on every machine
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
    assert logging.getLogger("bitsandbytes").isEnabledFor(logging.ERROR)  # its errors still show
    res = subprocess.run([sys.executable, "-W", "default", "-c",
                          "import dlma, warnings; import bitsandbytes, trl\n"
                          "warnings.warn('`gradient_checkpointing` is deprecated and will be removed in v6', "
                          "FutureWarning)\nwarnings.warn('a warning of ours', UserWarning)"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "kernels-community" not in res.stderr and "gradient_checkpointing" not in res.stderr
    assert "a warning of ours" in res.stderr  # no blanket silence


NOTEBOOK = nbformat.v4.new_notebook(cells=[
    nbformat.v4.new_code_cell("run_dir = 'runs/x'\nseed = 0", metadata={"tags": ["parameters"]}),
    nbformat.v4.new_code_cell("import random, sys\nrandom.seed(seed)\nprint(run_dir, random.random())\n"
                              "print('to stderr', file=sys.stderr)"),
], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def test_an_executed_notebook_is_the_same_bytes_each_time(tmp_path):
    source = tmp_path / "nb.ipynb"
    nbformat.write(NOTEBOOK, source)
    first, second = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    execute(source, first, {"run_dir": "runs/y", "seed": 3})
    execute(source, second, {"run_dir": "runs/y", "seed": 3})
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text and "start_time" not in text
    nb = nbformat.read(first, as_version=4)
    assert nb.cells[1].id == "injected-parameters" and "runs/y" in nb.cells[1].source
    assert "runs/y 0.23796" in "".join(o.get("text", "") for o in nb.cells[2].outputs)


def test_published_notebooks_hold_no_path_of_the_machine_that_ran_them():
    for path in sorted((ROOT / "book" / "results").glob("*.ipynb")):
        text = path.read_text()
        assert str(ROOT) not in text and '"/work/' not in text and '"/home/' not in text, path.name
        nb = nbformat.read(path, as_version=4)
        assert "start_time" not in nb.metadata.get("papermill", {}), path.name
        assert not any("execution" in c.metadata for c in nb.cells), path.name


def test_a_parameter_added_later_at_its_default_resumes_an_older_folder(tmp_path):
    """A folder made before `max_batch_tokens` existed is the same run at its default (0), another value is not.
    What was added later is declared once, with its help (`params.param(added_in=...)`); its default
    registers itself."""
    import dlma.generate  # noqa: F401  (defines GenerateConfig, which registers max_batch_tokens)
    from dlma.artifacts import ADDED_LATER, record_params
    from dlma.commands import COMMANDS
    from dlma.errors import DLMAError
    from dlma.params import PARAMETERS

    for command in COMMANDS.values():
        command.types()  # every config defined: every parameter added later registered, at its default
    assert set(ADDED_LATER) == {n for n, f in PARAMETERS.items() if f.metadata["help"].added_in}
    assert ADDED_LATER["max_batch_tokens"] == 0 and ADDED_LATER["save_steps"] == 50

    record_params(tmp_path, {"seed": 0}, "hint")
    (tmp_path / "result.jsonl").write_text("{}\n")
    record_params(tmp_path, {"seed": 0, "max_batch_tokens": 0}, "hint")
    with pytest.raises(DLMAError, match=r"other parameters \(max_batch_tokens\)"):
        record_params(tmp_path, {"seed": 0, "max_batch_tokens": 512}, "hint")


@pytest.mark.slow
def test_a_stage_reexecuted_over_its_results_publishes_the_same_notebook(tmp_path, tiny_model_dir):
    """What the book publishes may come from a fresh run or from notebooks re-executed over stored results
    (`rm <stage>/.done`): the same bytes either way (no "already done" lines, metrics in the same order)."""
    from dlma.commands import STAGES
    from dlma.pipeline import run_pipeline

    overrides = [f"model={tiny_model_dir}", "baseline_methods=rlcd"]
    run_dir = run_pipeline("smoke", overrides, "r", publish=False, runs_root=tmp_path)
    fresh = {s: (run_dir / f"{s}.ipynb").read_bytes() for s in STAGES}
    for s in STAGES:
        (run_dir / s / ".done").unlink()
    run_pipeline("smoke", overrides, "r", publish=False, runs_root=tmp_path)
    for s in STAGES:
        again = (run_dir / f"{s}.ipynb").read_bytes()
        diff = difflib.unified_diff(fresh[s].decode().splitlines(), again.decode().splitlines(), lineterm="", n=1)
        assert again == fresh[s], f"{s}:\n" + "\n".join(list(diff)[:30])
