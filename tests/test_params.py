"""One vocabulary: a parameter has one name and one help text from preset to notebook to CLI to manifest."""

from __future__ import annotations

import dataclasses
import re

import pytest

from dlma.cli import command_types, commands, main
from dlma.params import HELP
from dlma.pipeline import ROOT, STAGES, load_preset, notebook_path


def cli_fields() -> dict[str, dataclasses.Field]:
    """Every option of every command, by name, from the dataclasses the commands are built from."""
    return {f.name: f for command in commands() for cls in command_types(command) for f in dataclasses.fields(cls)}


def notebook_comments(stage: str) -> dict[str, str]:
    import json

    nb = json.loads(notebook_path(stage).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return dict(re.findall(r"^(\w+) = .*?  # (.*)$", "".join(cell["source"]), re.M))


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_parameters_are_cli_options_with_the_same_help(stage):
    fields = cli_fields()
    for name, comment in notebook_comments(stage).items():
        assert comment == HELP[name], f"{stage}: the comment of {name} is not dlma.params.HELP's"
        if name != "run_dir":  # set by `dlma run` alone
            assert name in fields, f"{stage}: parameter {name} is no option of the CLI"
            assert fields[name].metadata["help"] == HELP[name]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_preset_keys_are_the_same_names(preset):
    fields = cli_fields()
    assert set(load_preset(preset)) - {"description"} <= set(fields)


def test_every_option_has_help_and_help_shows_it(capsys):
    for name, f in cli_fields().items():
        assert f.metadata.get("help"), name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in ("train_batch_size", "margin_low", "max_prompt_length", "report_to"):
        assert f"--{name.replace('_', '-')}" in out and " ".join(HELP[name].split()) in out


def test_the_cli_takes_both_spellings(tmp_path, capsys):
    from dlma.artifacts import write_jsonl

    rows = [{"id": f"p{i}", "turns": ["q"], "o1": "a", "o2": "b", "self_reward": 1.0} for i in range(4)]
    write_jsonl(tmp_path / "scored.jsonl", rows)
    assert main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--holdout_fraction", "0.5",
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["split", "--pairs", str(tmp_path / "scored.jsonl"), "--holdout-fraction", "0.5",
                 "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "heldout.jsonl").read_bytes() == (tmp_path / "b" / "heldout.jsonl").read_bytes()
    manifest = __import__("json").loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["params"]["holdout_fraction"] == 0.5  # the same name in the manifest
