"""The presets (`params/<name>.yaml`) and `--set`: every parameter of a run, each value read by its option's type
function (`dlma.params.parse`), a key no stage takes or a value of the wrong type one error naming the preset's
line or the `--set` item; the data a run needs, checked before any stage runs; the parameters each stage's
notebook is given. Read from the checkout of the repository the package sits in (`ROOT`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from .commands import COMMANDS, NOTEBOOKS, STAGES, notebook_fields, step_values
from .data import Source, resolve
from .errors import DLMAError, did_you_mean
from .params import PATHS, configs_of, is_path, read_values

ROOT = Path(__file__).resolve().parents[1]
# read from where the user stands


def check_checkout() -> None:
    if not (ROOT / "notebooks").is_dir() or not (ROOT / "params").is_dir():
        raise DLMAError(f"dlma run needs a checkout of the repository (notebooks/ and params/ beside the dlma "
                        f"package; found none beside {ROOT / 'dlma'}): clone it and `pip install -e .` there; "
                        "the stage commands (dlma generate, ...) work anywhere")


def notebook_path(stage: str) -> Path:
    return ROOT / "notebooks" / f"{stage}.ipynb"


def preset_path(name: str) -> Path:
    return Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "params" / f"{name}.yaml"


NULL = ("null", "~")  # "all" or "none" for a parameter whose default is None (`--set n_queries=null`)


def preset_nodes(name: str) -> list[tuple[yaml.ScalarNode, yaml.ScalarNode]]:
    """A preset's (key, value) nodes, checked: a mapping of parameter names to single values, each name once."""
    path = preset_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
        raise DLMAError(f"preset '{name}': {path} not found (known: {known})")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DLMAError(f"{path}{line}: not valid YAML ({why})") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise DLMAError(f"{path}: a preset is a mapping of parameter: value")
    first: dict[str, int] = {}
    for key, value in root.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode) or not key.tag.endswith(":str") or not key.value.strip():
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            raise DLMAError(f"{path}:{line}: parameter name {name} is not text (a preset is a mapping of parameter: "
                            "value)")
        if key.value in first:
            raise DLMAError(f"{path}:{line}: field '{key.value}': given twice (first at line {first[key.value]})")
        first[key.value] = line
        if not isinstance(value, yaml.ScalarNode):
            raise DLMAError(f"{path}:{line}: field '{key.value}': expected a single value, as typed after its option")
    return root.value


def load_preset(name: str) -> dict:
    """{parameter: the text typed in the preset}, read as the CLI reads text: no YAML 1.1 typing first (010 is
    10, not octal 8; `no` is text for a text option and false for a flag, as `--option no` is); null and ~ are
    None. Each value is then read by its option's type (`resolve_params`)."""
    return {k.value: None if (v.tag.endswith(":null") and v.style is None) else v.value
            for k, v in preset_nodes(name)}


def preset_lines(name: str) -> dict[str, int]:
    """{key: line (from 1)} of a preset's top-level keys, for error messages."""
    return {k.value: k.start_mark.line + 1 for k, _ in preset_nodes(name)}


def parse_overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` items as {key: the text typed}, read by the option's type as `--key VALUE` is; `null`
    or `~` is None, for a parameter whose default is None."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DLMAError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = None if value.strip() in NULL else value
    return out


def from_here(field, value):
    """A relative path given with --set for a parameter that names a file or folder (`field`, None for an unknown
    name), read from where the user stands (as the notebooks see it: relative to the repository root when it lies
    inside it)."""
    if field is None or not is_path(field) or not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    here = Path.cwd() / value
    if not here.exists():
        return value  # a hub id, an alias or sample:..., or a path the stage will report as missing
    here = here.resolve()
    return str(here.relative_to(ROOT)) if here.is_relative_to(ROOT) else str(here)


def resolve_params(preset: str, overrides: list[str]) -> dict:
    """The preset with its --set overrides: each key taken by some stage, each value read as its CLI option
    reads it (one error naming the preset's line or the --set item), before a kernel starts."""
    check_checkout()
    taken = {}
    for stage in STAGES:
        taken.update(notebook_fields(stage))
    preset_values, override_values = load_preset(preset), parse_overrides(overrides)
    override_values = {k: from_here(taken.get(k), v) for k, v in override_values.items()}
    params = {**preset_values, **override_values}
    params.pop("description", None)
    lines = preset_lines(preset)

    def where(key: str) -> str:
        return f"--set {key}=..." if key in override_values else \
            f"{preset_path(preset)}:{lines.get(key, '?')}: field '{key}'"

    set_by_run = sorted(set(params) & set(PATHS))
    if set_by_run:
        raise DLMAError(f"{where(set_by_run[0])}: parameter '{set_by_run[0]}' is set by `dlma run` itself "
                        "(use --run-id)")
    unknown = sorted(set(params) - set(taken))
    if unknown:
        hint = did_you_mean(unknown[0], taken) or " (see the parameter table: dlma run --help)"
        raise DLMAError(f"{where(unknown[0])}: unknown parameter '{unknown[0]}'{hint}")
    read = {}
    for stage in STAGES:  # each value read by the options of the stages that take it, and checked by their configs
        for step in NOTEBOOKS[stage]:
            types = COMMANDS[step.command].types()
            step_read = read_values(types, step_values(step, params, "runs/check"), where)
            configs_of(types, step_read)  # the configs' own checks (a prompt pair's name, a split), as the stage's
            read.update({k: v for k, v in step_read.items() if k in params})
    return {k: read[k] for k in params}


def data_sources(params: dict, stages: tuple[str, ...]) -> list:
    """The datasets the stages will read (queries, their held-out split, human pairs, the rlhf baseline's)."""
    values: dict = {}
    for stage in stages:
        values.update({k: v for k, v in stage_params(stage, params, Path("runs/check")).items() if k not in values})
    sources = []
    if "queries" in values:
        sources.append(Source(str(values["queries"]), values.get("queries_split", "train"),
                              values.get("queries_revision", ""), "queries"))
        if "eval_queries_split" in values:
            sources.append(Source(str(values["queries"]), values["eval_queries_split"],
                                  values.get("queries_revision", ""), "eval_queries"))
    if "pref_data" in values:
        sources.append(Source(str(values["pref_data"]), values.get("pref_split", "test"),
                              values.get("pref_revision", ""), "pref"))
    if values.get("rlhf_data"):
        sources.append(Source(values["rlhf_data"], values.get("rlhf_split", "train"), values.get("rlhf_revision", ""),
                              "rlhf"))
    return sources


def check_data(params: dict, stages: tuple[str, ...]) -> None:
    """Every dataset the run reads is found (or fetched) before its first stage: a missing one is one error
    now, not after the stages before the one that reads it have run for minutes."""
    with contextlib.chdir(ROOT):  # a preset's paths are read from the repository root, as the notebooks do
        for source in dict.fromkeys(data_sources(params, stages)):
            resolve(source)


def notebook_run_dir(run_dir: Path) -> str:
    """The run folder as the notebooks are told it: relative to the repository (their working directory) when
    it lies inside it, so a published notebook names no path of the machine that ran it."""
    run_dir = run_dir.resolve()
    return str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)


def stage_params(stage: str, params: dict, run_dir: Path) -> dict:
    """The parameters `dlma run` gives a stage's notebook: every one it declares, the run's value or else the
    option's default (the values in the notebook's own cell are the smoke preset's, for nbval), and run_dir."""
    return {"run_dir": notebook_run_dir(run_dir),
            **{k: params.get(k, f.default) for k, f in notebook_fields(stage).items()}}
