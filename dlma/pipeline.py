"""`dlma run`: execute the stage notebooks in order with papermill into `runs/<run-id>/`.

- Notebooks run with the repository root as working directory: relative paths in presets (such as
  `../shared/data/...`) are relative to the root. (nbval runs them in `notebooks/`, hence the
  notebooks' own `run_dir` default `../runs/nbval`.)
- A preset (`params/<name>.yaml`) plus `--set key=value` overrides gives every notebook parameter; a
  key that no notebook declares is refused, not ignored.
- Each stage's notebook is written to a temporary name and renamed only when it ran through; a failed
  stage leaves `<stage>.failed.ipynb` for inspection. A stage with a `.done` marker is skipped, so a
  killed run resumes where it stopped (the stage functions resume inside a stage, too).
- When every stage has run, the executed notebooks are copied into `book/results/` for the book.
- With a launcher (`--launcher "accelerate launch --num_processes 8"`), the stages whose work shards across
  processes (generation, scoring, preference accuracy, training, stage 6's training: `LAUNCHED`) first run
  as their `dlma` command under it, with the notebook's parameters (the same names) and paths; the notebook
  then finds that work done, checks it was made with its parameters, and only reports it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .artifacts import check_out, write_json
from .errors import DLMAError
from .params import HELP

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("01_generate", "02_self_reward", "03_preference_accuracy", "03b_pair_study", "04_train_dlma",
          "05_evaluate_alignment", "06_baselines")
SET_BY_PIPELINE = ("run_dir",)
# stage: (the command doing its sharded work, its paths in the run folder); stage 4's split runs before it
LAUNCHED = {
    "01_generate": ("generate", {"out": "01_generate"}),
    "02_self_reward": ("score", {"pairs": "01_generate/pairs.jsonl", "out": "02_self_reward"}),
    "03_preference_accuracy": ("pref-acc", {"out": "03_preference_accuracy"}),
    "04_train_dlma": ("train", {"pairs": "04_train_dlma/train.jsonl", "out": "04_train_dlma/adapter"}),
    "06_baselines": ("baselines-train", {"run_dir": ""}),  # the methods' training; answers and verdicts: the notebook
}


def notebook_path(stage: str) -> Path:
    return ROOT / "notebooks" / f"{stage}.ipynb"


def notebook_parameters(stage: str) -> dict:
    """{name: default} of the notebook's `parameters` cell, as papermill sees it."""
    import papermill as pm

    return {name: p["default"] for name, p in pm.inspect_notebook(str(notebook_path(stage))).items()}


def preset_path(name: str) -> Path:
    return Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "params" / f"{name}.yaml"


def load_preset(name: str) -> dict:
    path = preset_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
        raise DLMAError(f"preset '{name}': {path} not found (known: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DLMAError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise DLMAError(f"{path}: a preset is a mapping of parameter: value")
    return data


def preset_lines(name: str) -> dict[str, int]:
    """{key: line (from 1)} of a preset's top-level keys, for error messages."""
    node = yaml.compose(preset_path(name).read_text(encoding="utf-8"))
    return {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}


def expected_type(default_source: str) -> type | None:
    """The type a parameter takes, from its default in the notebook's parameters cell (None: anything)."""
    try:
        value = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return None
    return type(value) if isinstance(value, (bool, int, float, str)) else None


def check_type(key: str, value, default_source: str, where: str):
    """The value as the notebook will take it, or one error naming where it came from."""
    want = expected_type(default_source)
    if want is None or isinstance(value, want) and not (want is not bool and isinstance(value, bool)):
        return value
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise DLMAError(f"{where}: field '{key}': expected {names[want]} (the notebook's default is {default_source}), "
                    f"got {value!r}")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DLMAError(f"--set {item!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)  # numbers, booleans and lists as YAML reads them
        if isinstance(parsed, str):
            try:  # YAML 1.1 reads 5e-5 (no dot) as a string
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def resolve_params(preset: str, overrides: list[str]) -> dict:
    """The preset with its --set overrides, each key declared by a notebook and each value of the type of
    that notebook's default: checked here, before a kernel starts."""
    preset_values, override_values = load_preset(preset), parse_overrides(overrides)
    params = {**preset_values, **override_values}
    declared = {k: v for stage in STAGES for k, v in notebook_parameters(stage).items()}
    unknown = sorted(set(params) - set(declared) - {"description"})
    if unknown:
        raise DLMAError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(declared))})")
    bad = sorted(set(params) & set(SET_BY_PIPELINE))
    if bad:
        raise DLMAError(f"parameter(s) {', '.join(bad)} are set by `dlma run` itself (use --run-id)")
    lines = preset_lines(preset)
    for key in set(params) - {"description"}:
        where = "--set" if key in override_values else f"{preset_path(preset)}:{lines.get(key, '?')}"
        params[key] = check_type(key, params[key], declared[key], where)
    return params


def check_run_params(run_dir: Path, params: dict) -> None:
    """A run folder keeps the parameters of its finished stages: a change that touches one is refused; a
    change to a stage not yet finished (a fix after a failure) is taken and recorded."""
    path = run_dir / "params.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = {k for k in set(before) | set(params) if before.get(k) != params.get(k)}
        done = [s for s in STAGES if (run_dir / s / ".done").exists()]
        blocking = sorted(k for k in changed if any(k in notebook_parameters(s) for s in done))
        if blocking:
            raise DLMAError(f"{run_dir} holds finished stages made with other parameters ({', '.join(blocking)}): "
                            "pass another --run-id, or delete the folder to start over")
    write_json(path, params)


def notebook_run_dir(run_dir: Path) -> str:
    """The run folder as the notebooks are told it: relative to the repository (their working directory) when
    it lies inside it, so a published notebook names no path of the machine that ran it."""
    run_dir = run_dir.resolve()
    return str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)


def clean_notebook(path: Path) -> None:
    """Keep what the notebook computed, drop what only says when and where it ran: papermill's timestamps,
    durations and paths, the kernel's execution times, and the random id of the injected parameters cell.
    The same results then give the same bytes."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"] = {k: v for k, v in nb.metadata.get("papermill", {}).items()
                                if k in ("parameters", "default_parameters", "version")}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    nbformat.write(nb, path)


@contextlib.contextmanager
def quiet_kernels():
    """Notebooks run by the pipeline draw no progress bars and print no timings (see dlma.quiet)."""
    before = os.environ.get("DLMA_PROGRESS")
    os.environ["DLMA_PROGRESS"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DLMA_PROGRESS", None)
        else:
            os.environ["DLMA_PROGRESS"] = before


def option_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def command_args(command: str, paths: dict, nb_params: dict, run_dir: str) -> list[str]:
    """`dlma COMMAND` arguments: its paths in the run folder, then each notebook parameter it has an option for
    (the same name: `gen_batch_size` is `--gen-batch-size`)."""
    from dataclasses import fields

    from .cli import command_types

    options = {f.name for t in command_types(command) for f in fields(t)}
    args = [command]
    for name, rel in paths.items():
        args += [f"--{name.replace('_', '-')}", f"{run_dir}/{rel}" if rel else run_dir]
    for name, value in nb_params.items():
        if name in options and name not in paths and value is not None:
            args += [f"--{name.replace('_', '-')}", option_value(value)]
    return args


def stage_commands(stage: str, nb_params: dict) -> list[tuple[bool, list[str]]]:
    """[(under the launcher?, `dlma` arguments)] that do a stage's sharded work before its notebook reports it;
    none for a stage that works in its notebook alone."""
    if stage not in LAUNCHED:
        return []
    command, paths = LAUNCHED[stage]
    # what the notebook will run with: its defaults, then what the run sets
    nb_params = {**{k: ast.literal_eval(v) for k, v in notebook_parameters(stage).items()}, **nb_params}
    run_dir = nb_params["run_dir"]
    out = [(True, command_args(command, paths, nb_params, run_dir))]
    if command == "train":  # the hold-out split first, as the notebook's train_stage does: small, one process
        split = command_args("split", {"pairs": "02_self_reward/scored.jsonl", "out": "04_train_dlma"}, nb_params,
                             run_dir)
        out.insert(0, (False, split))
    return out


def check_launcher(launcher: str | None) -> list[str]:
    """The launcher's words, checked before anything runs: its program must be found."""
    if not launcher:
        return []
    words = shlex.split(launcher)
    if not words or shutil.which(words[0]) is None:
        raise DLMAError(f"--launcher {launcher!r}: {words[0] if words else 'an empty command'} not found on PATH "
                        "(e.g. --launcher 'accelerate launch --num_processes 8')")
    return words


def stage_argvs(stage: str, nb_params: dict, launcher: list[str]) -> list[tuple[bool, list[str]]]:
    """[(under the launcher?, command line)] of a stage's sharded work."""
    return [(launched, [*(launcher if launched else [sys.executable]), "-m", "dlma", *args])
            for launched, args in stage_commands(stage, nb_params)]


def run_launched(stage: str, nb_params: dict, launcher: list[str]) -> None:
    """Each command of a stage's sharded work, from the repository root (where the notebooks run, so its
    paths are theirs)."""
    for _, argv in stage_argvs(stage, nb_params, launcher):
        print(f"[dlma run] {stage}: {shlex.join(argv)}", flush=True)
        rc = subprocess.run(argv, cwd=ROOT).returncode
        if rc != 0:
            raise DLMAError(f"stage {stage}: `{shlex.join(argv)}` exited with status {rc} (its error is above); "
                            "fix and rerun to resume")


def stage_params(stage: str, params: dict, run_dir: Path) -> dict:
    """The parameters `dlma run` gives a stage's notebook: the run's, for the names it declares, and run_dir."""
    declared = notebook_parameters(stage)
    return {**{k: v for k, v in params.items() if k in declared}, "run_dir": notebook_run_dir(run_dir)}


def run_pipeline(preset: str, overrides: list[str], run_id: str | None = None, publish: bool = True,
                 runs_root: Path | None = None, stages: tuple[str, ...] = STAGES, launcher: str | None = None,
                 print_commands: bool = False) -> Path:
    """`print_commands`: print the sharded stages' command lines (under `launcher`) and stop, writing nothing;
    for several machines, each of which runs them under its own launch."""
    import papermill as pm

    launcher_words = check_launcher(launcher) if not print_commands else shlex.split(launcher or "LAUNCHER")
    params = resolve_params(preset, overrides)
    run_dir = (runs_root or ROOT / "runs") / (run_id or Path(preset).stem)
    if print_commands:
        print(f"cd {shlex.quote(str(ROOT))}")
        for stage in stages:
            for launched, argv in stage_argvs(stage, stage_params(stage, params, run_dir), launcher_words):
                print(shlex.join(argv) + ("" if launched else "  # on the main machine only"))
        return run_dir
    check_out(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_params(run_dir, params)
    for stage in stages:
        done = run_dir / stage / ".done"
        final = run_dir / f"{stage}.ipynb"
        if done.exists() and final.exists():
            print(f"[dlma run] {stage}: done earlier, skipped")
            continue
        nb_params = stage_params(stage, params, run_dir)
        if launcher_words:
            run_launched(stage, nb_params, launcher_words)
        partial = run_dir / f".{stage}.partial.ipynb"
        print(f"[dlma run] {stage}: running ({', '.join(f'{k}={v}' for k, v in nb_params.items())})", flush=True)
        started = time.time()
        try:
            execute(notebook_path(stage), partial, nb_params)
        except pm.PapermillExecutionError as e:
            failed = run_dir / f"{stage}.failed.ipynb"
            os.replace(partial, failed)
            raise DLMAError(f"stage {stage} failed ({e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}); "
                            f"its notebook is {failed}; fix and rerun to resume (a stage folder that already "
                            "holds results keeps its parameters: delete it to redo the stage)") from None
        os.replace(partial, final)
        (run_dir / stage).mkdir(exist_ok=True)
        done.write_text(f"{time.time() - started:.1f}\n")
        print(f"[dlma run] {stage}: finished in {time.time() - started:.0f} s", flush=True)
    if publish:
        publish_notebooks(run_dir, stages)
    return run_dir


def execute(source: Path, target: Path, parameters: dict) -> None:
    """papermill with the repository root as working directory, quiet kernels, and a clean result."""
    import papermill as pm

    with quiet_kernels():
        # the kernel's own log level: ipykernel warns on every start that its TCP link is unencrypted
        pm.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(ROOT), progress_bar=False,
                            log_output=False, extra_arguments=["--IPKernelApp.log_level=ERROR"])
    clean_notebook(target)


def publish_notebooks(run_dir: Path, stages: tuple[str, ...] = STAGES, book_dir: Path | None = None) -> None:
    """Copy the executed notebooks into the book (each atomically), only once all have run."""
    book_dir = book_dir or ROOT / "book" / "results"
    book_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        tmp = book_dir / f".{stage}.ipynb.tmp"
        shutil.copyfile(run_dir / f"{stage}.ipynb", tmp)
        os.replace(tmp, book_dir / f"{stage}.ipynb")
    print(f"[dlma run] published {len(stages)} notebooks to {book_dir}")


def parameter_table() -> str:
    """Markdown table of every notebook parameter: its notebook(s), and its value in each preset."""
    import papermill as pm

    presets = {p.stem: load_preset(p.stem) for p in sorted((ROOT / "params").glob("*.yaml"))}
    rows: dict[str, dict] = {}
    for stage in STAGES:
        for name, p in pm.inspect_notebook(str(notebook_path(stage))).items():
            default = ast.literal_eval(p["default"])  # the value, as a preset would write it
            row = rows.setdefault(name, {"stages": [], "default": default, "help": HELP[name]})
            row["stages"].append(stage.split("_")[0])
    order = ["smoke"] + [n for n in presets if n != "smoke"]
    head = "| parameter | notebooks | " + " | ".join(f"`{n}`" for n in order) + " | meaning |"
    lines = [head, "|" + "---|" * (3 + len(order))]
    for name, row in rows.items():
        values = [row["default"] if n == "smoke" else presets[n].get(name, "(notebook default)") for n in order]
        if name in SET_BY_PIPELINE:
            values = ["set by `dlma run`"] * len(order)
        cells = " | ".join(f"`{v}`" if not str(v).startswith(("(", "set by")) else str(v) for v in values)
        where = "all" if len(row["stages"]) == len(STAGES) else ", ".join(row["stages"])
        lines.append(f"| `{name}` | {where} | {cells} | {row['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- PARAMETER TABLE -->", "<!-- END PARAMETER TABLE -->"


def update_parameter_table(page: Path | None = None) -> bool:
    """Write `parameter_table()` between the markers of book/reproduce.md; True if the page changed."""
    page = page or ROOT / "book" / "reproduce.md"
    text = page.read_text()
    head, sep, rest = text.partition(TABLE_START)
    if not sep:
        raise DLMAError(f"{page}: no {TABLE_START} marker")
    tail = rest.partition(TABLE_END)[2]
    new = f"{head}{TABLE_START}\n\n{parameter_table()}\n{TABLE_END}{tail}"
    if new != text:
        page.write_text(new)
    return new != text
