"""`dlma run`: presets, overrides, notebook parameters as papermill sees them, pins."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

from dlma.commands import STAGES, notebook_fields
from dlma.errors import DLMAError
from dlma.params import PATHS
from dlma.pipeline import run_pipeline
from dlma.presets import ROOT, load_preset, notebook_path, parse_overrides, resolve_params

PRESETS = sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))


def parameters_cells(stage: str) -> list[str]:
    nb = json.loads(notebook_path(stage).read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


@pytest.fixture(scope="module")
def declared() -> dict[str, dict]:
    return {stage: notebook_fields(stage) for stage in STAGES}


def test_presets_exist():
    assert {"smoke", "default", "paper"} <= set(PRESETS)


@pytest.mark.parametrize("stage", STAGES)
def test_one_parameters_cell_fully_seen_by_papermill(stage):
    cells = parameters_cells(stage)
    assert len(cells) == 1, f"{stage}: {len(cells)} cells tagged 'parameters'"
    in_source = assigned_names(cells[0])
    seen = set(pm.inspect_notebook(str(notebook_path(stage))))
    assert in_source, stage
    assert seen == in_source, f"{stage}: papermill misses {sorted(in_source - seen)}"
    assert "run_dir" in seen  # every stage reads and writes the run folder


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parameter_is_declared(preset, declared):
    all_declared = {k for params in declared.values() for k in params}
    unknown = set(load_preset(preset)) - all_declared - {"description"}
    assert not unknown, f"params/{preset}.yaml: {sorted(unknown)} declared by no notebook"
    assert not set(load_preset(preset)) & set(PATHS)


def test_resolve_params_refuses_unknown_keys():
    with pytest.raises(DLMAError) as e:
        resolve_params("smoke", ["max_new_tokns=8"])
    assert "unknown parameter 'max_new_tokns' (did you mean 'max_new_tokens'?)" in str(e.value)
    assert str(e.value).startswith("--set max_new_tokns=")
    with pytest.raises(DLMAError, match="run_dir' is set by `dlma run` itself"):
        resolve_params("smoke", ["run_dir=/tmp/x"])
    with pytest.raises(DLMAError, match="nonexistent.*known: .*smoke"):
        resolve_params("nonexistent", [])
    assert resolve_params("smoke", ["max_new_tokens=8"])["max_new_tokens"] == 8


def test_parse_overrides_keeps_the_text_typed():
    got = parse_overrides(["a=1", "c=true", "d=[1, 2]", "f=null", "g=~", "h=a=b", " i =2", "j="])
    assert got == {"a": "1", "c": "true", "d": "[1, 2]", "f": None, "g": None, "h": "a=b", "i": "2", "j": ""}
    for bad in ("novalue", "=3"):
        with pytest.raises(DLMAError, match="KEY=VALUE"):
            parse_overrides([bad])


def test_rerun_with_other_parameters_of_a_finished_stage_is_refused(tmp_path):
    run_dir = run_pipeline("smoke", ["max_new_tokens=8"], run_id="r1", runs_root=tmp_path, stages=())
    preset = {k: v for k, v in resolve_params("smoke", []).items() if k != "description"}
    assert json.loads((run_dir / "params.json").read_text()) == {**preset, "max_new_tokens": 8}
    (run_dir / "01_generate").mkdir()
    (run_dir / "01_generate" / ".done").write_text("1.0\n")  # stage 1 finished with max_new_tokens=8
    # the same parameters: accepted (this is how a killed run resumes)
    run_pipeline("smoke", ["max_new_tokens=8"], run_id="r1", runs_root=tmp_path, stages=())
    with pytest.raises(DLMAError, match=r"finished stages made with other parameters \(max_new_tokens\)"):
        run_pipeline("smoke", ["max_new_tokens=9"], run_id="r1", runs_root=tmp_path, stages=())
    with pytest.raises(DLMAError, match="n_queries"):
        run_pipeline("smoke", ["max_new_tokens=8", "n_queries=2"], run_id="r1", publish=False,
                      runs_root=tmp_path, stages=())
    assert json.loads((run_dir / "params.json").read_text())["max_new_tokens"] == 8  # untouched
    # a parameter of a stage not yet finished (the fix after a failure) is taken, and recorded
    run_pipeline("smoke", ["max_new_tokens=8", "gamma=0.0"], run_id="r1", runs_root=tmp_path,
                 stages=())
    assert json.loads((run_dir / "params.json").read_text())["gamma"] == 0.0


def test_set_values_are_read_as_the_cli_reads_them():
    params = resolve_params("smoke", ["learning_rate=1e-4", "gamma=0", "load_in_4bit=false", "pair=helpful"])
    assert params["pair"] == "helpful" and params["load_in_4bit"] is False
    assert params["learning_rate"] == 1e-4 and params["gamma"] == 0.0 and isinstance(params["gamma"], float)
    for bad, match in [("n_queries=abc", "--set n_queries=...: expected an integer"),
                       ("n_queries=2.5", "expected an integer"), ("load_in_4bit=maybe", "expected true or false"),
                       ("pair=3", "unknown prompt pair '3'"), ("beta=high", "expected a finite number"),
                       ("scorers=[dlma]", "scorers")]:
        with pytest.raises(DLMAError, match=match):
            resolve_params("smoke", [bad])


def test_a_preset_error_names_its_line(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("description: x\nn_queries: 4\nmax_new_tokens: many\n")
    with pytest.raises(DLMAError, match=r"p\.yaml:3: field 'max_new_tokens': expected an integer, got 'many'"):
        resolve_params(str(preset), [])


def test_relative_set_paths_are_read_from_where_the_user_stands(tmp_path, monkeypatch):
    (tmp_path / "mine.jsonl").write_text('{"id": "q1", "prompt": "Hello?"}\n')
    monkeypatch.chdir(tmp_path)
    assert resolve_params("smoke", ["queries=mine.jsonl"])["queries"] == str(tmp_path / "mine.jsonl")
    assert resolve_params("smoke", ["queries=sample:queries"])["queries"] == "sample:queries"


def test_run_id_is_a_name_not_a_path(tmp_path):
    for bad in ("../../elsewhere", "/abs", "a/b", "..", ""):
        with pytest.raises(DLMAError, match="a name for a folder under runs/"):
            run_pipeline("smoke", [], run_id=bad, runs_root=tmp_path, stages=())


def test_dlma_run_outside_a_checkout_says_what_it_needs(monkeypatch, tmp_path):
    import dlma.presets as presets

    monkeypatch.setattr(presets, "ROOT", tmp_path)
    with pytest.raises(DLMAError, match="needs a checkout of the repository"):
        resolve_params("default", [])


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for r in requirements:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;]+)\s*", r)
        assert m, f"not pinned exactly: {r!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_environment_yml_pins_equal_pyproject():
    project = _pyproject()
    py_pins = _pins(project["dependencies"] + [d for deps in project["optional-dependencies"].values()
                                               for d in deps])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = _pins([p for p in pip if not p.startswith("-e")])
    assert env_pins == py_pins
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1]
    required = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, required.split(".")))


def test_makefile_pins_torch_like_pyproject():
    project = _pyproject()
    torch_pin = _pins(project["dependencies"])["torch"]
    assert f"torch=={torch_pin}" in (ROOT / "Makefile").read_text()


def test_notebooks_exist():
    for stage in STAGES:
        assert Path(notebook_path(stage)).exists(), stage


def test_a_runs_book_shows_its_notebooks_and_leaves_the_published_book_alone(tmp_path):
    from dlma.book import book_sources

    run = tmp_path / "run"
    run.mkdir()
    (run / "01_generate.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    published = {p.name: p.read_bytes() for p in (ROOT / "book" / "results").glob("*.ipynb")}
    dest = book_sources(run, tmp_path / "book")
    assert (dest / "_toc.yml").read_bytes() == (ROOT / "_toc.yml").read_bytes()
    assert (dest / "book" / "results" / "01_generate.ipynb").read_bytes() == (run / "01_generate.ipynb").read_bytes()
    assert {p.name: p.read_bytes() for p in (ROOT / "book" / "results").glob("*.ipynb")} == published
    with pytest.raises(DLMAError, match="give a folder of its own"):
        book_sources(run, ROOT)
    (dest / "_build" / "html").mkdir(parents=True)
    (dest / "_build" / "html" / "index.html").write_text("built")  # jupyter-book's output: left alone
    assert book_sources(run, dest) == dest  # its own earlier book (built or not) is rewritten
    assert (dest / "_build" / "html" / "index.html").read_text() == "built"
    for mine in ("book/mynotes.md", "_static/logo.svg", "notes.txt", "book/results/01_generate.ipynb"):
        (dest / mine).parent.mkdir(parents=True, exist_ok=True)
        (dest / mine).write_text("keep")  # a user's file in any subfolder, or a written file the user changed
        with pytest.raises(DLMAError, match=rf"--book .*holds files an earlier --book did not write.*{mine}"):
            book_sources(run, dest)
        assert (dest / mine).read_text() == "keep"
        (dest / mine).unlink()
    mine = tmp_path / "mine"
    (mine / "book").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    for folder in (mine, ROOT / "book", mine / "notes.txt"):  # a folder of the user's, the book's sources, a file
        with pytest.raises(DLMAError, match=r"--book .*(holds files an earlier --book did not write|is a file)"):
            book_sources(run, folder)
    assert (mine / "notes.txt").read_text() == "keep" and (ROOT / "book" / "results").is_dir()
    from dlma.cli import main

    assert main(["run", "--preset", "smoke", "--run-id", "never-made", "--book", str(mine)]) == 2  # before any stage
    assert not (ROOT / "runs" / "never-made").exists()


@pytest.mark.parametrize(("item", "read"), [
    ("n_queries=010", 10),  # as --n-queries 010 reads it (YAML 1.1 would make it octal 8)
    ("judge_model=no", "no"), ("model=yes", "yes"), ("judge_model=1:30", "1:30"),  # text stays text
    ("model=123", "123"), ("qlora=no", False),  # a flag reads no as --qlora no does
])
def test_set_texts_are_read_as_the_cli_reads_them(item, read):
    key = item.split("=")[0]
    assert resolve_params("smoke", [item])[key] == read


@pytest.mark.parametrize("item", ["n_queries=0x10", "beta=inf", "beta=.inf", "learning_rate=nan", "margin_high=-inf",
                                  "warmup_steps=inf", "temperature=inf"])
def test_values_the_cli_refuses_are_refused_from_set(item):
    with pytest.raises(DLMAError, match=rf"^--set {item.split('=')[0]}=\.\.\.: expected an? (integer|finite number)"):
        resolve_params("smoke", [item])


def test_a_preset_read_as_typed_with_each_key_once(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("n_queries: 010\njudge_model: no\nbeta: 0.2\nn_queries: 4\n")
    with pytest.raises(DLMAError, match=r"p\.yaml:4: field 'n_queries': given twice \(first at line 1\)"):
        resolve_params(str(preset), [])
    preset.write_text("n_queries: 010\njudge_model: no\nbeta: 0.2\npref_limit: null\n")
    got = resolve_params(str(preset), [])
    assert got["n_queries"] == 10 and got["judge_model"] == "no" and got["beta"] == 0.2 and got["pref_limit"] is None
    preset.write_text("beta: .inf\n")
    with pytest.raises(DLMAError, match=r"p\.yaml:1: field 'beta': expected a finite number"):
        resolve_params(str(preset), [])
    preset.write_text("beta: [1, 2]\n")
    with pytest.raises(DLMAError, match=r"p\.yaml:1: field 'beta': expected a single value"):
        resolve_params(str(preset), [])


@pytest.mark.parametrize("argv", [["train", "--pairs", "x.jsonl", "--beta", "inf"],
                                  ["generate", "--temperature", "nan"]])
def test_a_non_finite_float_option_is_one_line_and_exit_2(tmp_path, argv):
    res = subprocess.run([sys.executable, "-m", "dlma", *argv, "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and not (tmp_path / "out").exists()
    assert [line for line in res.stderr.splitlines() if "error:" in line] == [
        next(line for line in res.stderr.splitlines() if "expected a finite number, got" in line)]


def test_dlma_run_stages_by_name_or_number_in_the_pipelines_order():
    from dlma.pipeline import run_parser

    args = run_parser().parse_args(["--stages", "05,01,03b_pair_study"])
    assert args.stages == ("01_generate", "03b_pair_study", "05_evaluate_alignment")
    assert run_parser().parse_args([]).stages == STAGES
    res = subprocess.run([sys.executable, "-m", "dlma", "run", "--stages", "01,03_preferense_accuracy"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and [line for line in res.stderr.splitlines() if line.startswith("dlma run:")] == [
        "dlma run: error: argument --stages: '03_preferense_accuracy' is not a stage (01_generate, 02_self_reward, "
        "03_preference_accuracy, 03b_pair_study, 04_train_dlma, 05_evaluate_alignment, 06_baselines; or its number) "
        "(did you mean '03_preference_accuracy'?) (see dlma run --help)"]
