"""One vocabulary and one parameter path: a parameter has one name, one default and one help text, and every
path a user takes (a command line, a preset, `--set`, a notebook's parameters) reads it with the CLI's parser."""

from __future__ import annotations

import dataclasses
import json
import typing

import papermill as pm
import pytest

from dlma.alignment import EvalConfig
from dlma.book import parameters_source
from dlma.commands import COMMANDS, NOTEBOOKS, STAGES, notebook_fields, run_stage, step_values
from dlma.errors import DLMAError
from dlma.params import PARAMETERS, PATHS, Help, documented, is_path, param, parse
from dlma.presets import ROOT, load_preset, notebook_path, resolve_params, stage_params


def all_fields() -> dict[str, list[dataclasses.Field]]:
    """Every option of every command, by name (a name can belong to several commands' dataclasses)."""
    out: dict[str, list] = {}
    for command in COMMANDS.values():
        for cls in command.types():
            for f in dataclasses.fields(cls):
                out.setdefault(f.name, []).append(f)
    return out


def test_each_parameter_is_declared_once_with_its_help():
    """A name several commands take is one field, inherited from the config that declares it (issue 29): one
    default, one help, one "is a path", one "added in"."""
    fields = all_fields()
    assert {"seed", "rendering", "max_batch_tokens", "pref_max_length", "score_batch_size", "beta"} <= {
        name for name, fs in fields.items() if len(fs) > 1}  # shared by several commands
    for name, fs in fields.items():
        assert all(f is PARAMETERS[name] for f in fs), f"{name}: declared more than once"
        assert isinstance(PARAMETERS[name].metadata["help"], Help) and PARAMETERS[name].metadata["help"].strip()
    assert is_path(PARAMETERS["pref_data"]) and not is_path(PARAMETERS["pref_split"])


def test_a_parameter_declared_twice_or_without_help_is_refused():
    with pytest.raises(TypeError, match=r"Again\.seed: declared again .* inherit it instead"):
        @documented
        @dataclasses.dataclass
        class Again:
            seed: int = param(0, "a second seed")
    with pytest.raises(KeyError, match=r"Bare\.widget: no help"):
        @documented
        @dataclasses.dataclass
        class Bare:
            widget: int = 0


def test_a_stage_that_scores_as_another_builds_its_config_from_the_shared_fields():
    cfg = EvalConfig(rendering="chat", beta=0.2, pref_max_length=64, score_batch_size=3, max_batch_tokens=500,
                     seed=7, eval_max_new_tokens=11, eval_batch_size=5)
    pref = cfg.pref_config()
    assert (pref.rendering, pref.beta, pref.pref_max_length, pref.score_batch_size, pref.max_batch_tokens,
            pref.seed) == ("chat", 0.2, 64, 3, 500, 7)
    gen = cfg.generate_config()
    assert (gen.rendering, gen.max_batch_tokens, gen.seed, gen.max_new_tokens, gen.gen_batch_size) == \
        ("chat", 500, 7, 11, 5)


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_parameters_cell_is_written_from_the_registry(stage):
    nb = json.loads(notebook_path(stage).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "".join(cell["source"]) == parameters_source(stage), \
        f"{stage}: its parameters cell is stale: run `make notebooks`"
    seen = set(pm.inspect_notebook(str(notebook_path(stage))))
    assert seen == {"run_dir", *notebook_fields(stage)}  # papermill sees every one


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_makes_its_one_call_with_its_parameters(stage):
    nb = json.loads(notebook_path(stage).read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert f'dlma.stage("{stage}", globals())' in code


# A valid value other than the default for each text parameter (a new one must be added here).
TEXT = {"model": "my-model", "dtype": "float32", "device": "cpu", "adapter": "adapters/a", "queries": "q.jsonl",
        "pair": "helpful", "rendering": "chat", "pref_data": "p.jsonl", "on_invalid": "error",
        "label_field": "better_response_id", "scorers": "dlma,length", "pref_pair": "helpful",
        "rlaif_instruction": "Which is kinder?", "study_variants": "harmless,helpful", "optim": "sgd",
        "lr_scheduler_type": "linear", "report_to": "none", "baseline_methods": "rlcd",
        "judge_url": "https://judge.example/v1", "judge_model": "judge-1", "judge_key_env": "MY_KEY",
        "pairs_file": "", "queries_split": "validation", "queries_revision": "v1", "pref_split": "train",
        "pref_revision": "abc", "eval_queries_split": "validation", "rlhf_data": "h.jsonl", "rlhf_split": "test",
        "rlhf_revision": "v2"}


def distinct_value(name: str, f: dataclasses.Field):
    """A valid value of the field's type, other than its default where one is known."""
    if name in TEXT:
        return TEXT[name]
    hint = f.type if isinstance(f.type, str) else f.type.__name__
    if hint.startswith("bool"):
        return not f.default
    if hint.startswith("int"):
        return (f.default or 0) + 3
    assert hint.startswith("float"), (name, hint)
    return f.default * 0.5 if f.default else 0.25


@pytest.mark.parametrize("stage", STAGES)
def test_every_parameter_a_notebook_declares_reaches_its_stage(stage, monkeypatch):
    """papermill's value for every parameter a notebook declares ends in the configs its stage runs with."""
    declared = notebook_fields(stage)
    values = {k: distinct_value(k, f) for k, f in declared.items()}
    if values.get("weighting"):
        values["gamma"] = 0.0  # weighting needs gamma 0
    called = []
    monkeypatch.setattr(type(COMMANDS["generate"]), "run", lambda self, configs, **kw: called.append(configs))
    run_stage(stage, {"run_dir": "runs/x", **values})
    got = {f.name: getattr(c, f.name) for configs in called for c in configs for f in dataclasses.fields(c)}
    for key, value in values.items():
        assert got[key] == value, f"{stage}: {key} did not reach its stage"


def test_a_parameter_no_stage_takes_is_refused_with_the_nearest_name():
    with pytest.raises(DLMAError, match=r"unknown parameter 'n_querys' \(did you mean 'n_queries'\?\)"):
        parse(COMMANDS["generate"].types(), {"n_querys": 2, "out": "o"})
    with pytest.raises(DLMAError, match=r"notebook 01_generate: parameter 'max_new_tokens': expected an integer"):
        run_stage("01_generate", {"run_dir": "r", "max_new_tokens": "abc"})
    with pytest.raises(DLMAError, match=r"notebook 03_preference_accuracy: parameter 'pref_max_lenght' is not one of "
                                        r"its parameters \(did you mean 'pref_max_length'\?\)"):
        run_stage("03_preference_accuracy", {"run_dir": "r", "pref_max_lenght": 100})  # papermill -p, misspelt


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_preset_keys_are_stage_options(preset):
    declared = {k for stage in STAGES for k in notebook_fields(stage)}
    assert set(load_preset(preset)) - {"description"} <= declared


def test_every_option_of_a_stage_command_can_be_set_from_a_preset_and_set():
    notebook = {k for stage in STAGES for k in notebook_fields(stage)}
    for name, command in COMMANDS.items():
        for f in (f for t in command.types() for f in dataclasses.fields(t) if f.name not in PATHS):
            assert f.name in notebook, f"{name}: --{f.name} cannot be set from a preset"
    assert resolve_params("smoke", ["weighting=true", "gamma=0"])["weighting"] is True
    assert resolve_params("smoke", ["n_queries=null"])["n_queries"] is None  # "all if not given"


def test_stages_5_and_6_use_the_runs_pref_max_length():
    params = resolve_params("default", [])
    [step] = NOTEBOOKS["05_evaluate_alignment"]
    configs = parse(COMMANDS[step.command].types(), step_values(step, stage_params("05_evaluate_alignment", params,
                                                                                    ROOT / "runs" / "x"), "r"))
    cfg = next(c for c in configs if type(c).__name__ == "EvalConfig")
    assert cfg.pref_max_length == params["pref_max_length"] == 256
    assert cfg.pref_config().pref_max_length == 256  # what scores stage 5's human pairs and stage 6's


def test_every_command_names_a_stage_and_a_summary_that_exist():
    """`dlma pair-study`, `evaluate` and `baselines` named printers that did not exist: each ran its stage, then
    ended in a traceback."""
    from dlma.commands import load

    for name, command in COMMANDS.items():
        assert callable(load(command.stage)) and callable(load(command.summary)), name


def test_every_command_help_shows_each_option_and_its_help(capsys):
    from dlma.cli import main

    for name, command in COMMANDS.items():
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "(default: None)" not in out, name  # a required --out said so
        for f in (f for t in command.types() for f in dataclasses.fields(t)):
            assert f"--{f.name.replace('_', '-')}" in out and " ".join(f.metadata["help"].split()) in out, \
                (name, f.name)
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--preset" in out and "(default: None)" not in out


@pytest.mark.parametrize("name", [*COMMANDS, "run"])
def test_a_misspelt_option_is_one_line_with_the_nearest(name, capsys):
    from dlma.cli import main

    if name == "run":
        argv = ["run", "--prest", "smoke"]
    else:
        fields = [f for t in COMMANDS[name].types() for f in dataclasses.fields(t)]
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        option = next(f.name for f in fields if f.name not in PATHS)
        argv = [name, *[a for r in required for a in (f"--{r}", "x")], f"--{option[:-1]}", "1"]  # one letter short
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"dlma {name}: error:" in err and "did you mean" in err, err


def test_a_misspelt_option_leads_when_a_required_one_is_missing_too(capsys):
    """argparse says `--out` is required first; the misspelt option may be why, so it is named first."""
    from dlma.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--n-querys", "3"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "dlma generate: error: unrecognized arguments: --n-querys (did you mean --n-queries?); and the following "
        "arguments are required: --out (see dlma generate --help)")


def test_an_unknown_command_is_one_line_with_the_nearest(capsys):
    from dlma.cli import main

    assert main(["pref-ac", "--run-dir", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dlma: error: unknown command 'pref-ac' (did you mean 'pref-acc'?) (dlma --help lists the commands)"
    assert main(["zzzz"]) == 2 and "did you mean" not in capsys.readouterr().err


def test_the_cli_takes_both_spellings(tmp_path, capsys):
    from dlma.artifacts import write_jsonl
    from dlma.cli import main

    rows = [{"id": f"p{i}", "turns": ["q"], "o1": "a", "o2": "b", "self_reward": 1.0} for i in range(4)]
    write_jsonl(tmp_path / "scored.jsonl", rows)
    assert main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--holdout_fraction", "0.5",
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--holdout-fraction", "0.5",
                 "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "heldout.jsonl").read_bytes() == (tmp_path / "b" / "heldout.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["params"]["holdout_fraction"] == 0.5  # the same name in the manifest


def test_type_hints_are_ones_the_parser_reads():
    for name, fields in all_fields().items():
        for f in fields:
            hint = str(f.type)
            assert typing.get_origin(f.type) is None or "None" in hint, (name, hint)
