"""`dlma run`: execute the stage notebooks in order with papermill into `runs/<run-id>/`.

- `dlma run` works in a checkout of the repository (an editable install): it runs the notebooks in
  `notebooks/` and reads presets from `params/` beside the package, and writes under `runs/`.
- Notebooks run with the repository root as working directory: relative paths in a preset (such as
  `params/data/...`) are read from the root; relative paths given with `--set` are read from where the
  user stands. (nbval runs the notebooks in `notebooks/`, hence their `run_dir` default `../runs/nbval`.)
- A preset (`params/<name>.yaml`) plus `--set key=value` overrides gives every notebook parameter. Each value
  is read by the type function of its CLI option (`dlma.params.parse`); a key that no stage takes, or a
  value of the wrong type, is one error naming the preset's line or the `--set` item.
- Each stage's notebook is written to a temporary name and renamed only when it ran through; a failed
  stage leaves `<stage>.failed.ipynb` for inspection. A stage with a `.done` marker is skipped, so a
  killed run resumes where it stopped (the stage functions resume inside a stage, too).
- The executed notebooks stay in the run folder. `--publish` copies them into `book/results/` (what the
  published book shows); `--book DIR` writes a copy of the book's sources showing this run into DIR, to be
  built there (`make all` does this for the default run, so it leaves the published book alone).
- With a launcher (`--launcher "accelerate launch --num_processes 8"`), the commands of a notebook that share
  their work among processes (`dlma.commands.NOTEBOOKS`: generation, scoring, preference accuracy, training,
  stage 6's training) first run under it with the notebook's parameters; the notebook then finds that work
  done, checks it was made with its parameters, and only reports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .artifacts import atomic_write, check_out, read_json, sha256_file, write_json
from .commands import COMMANDS, NOTEBOOKS, RUN_HELP, STAGES, notebook_fields, step_values
from .errors import DLMAError, did_you_mean
from .params import PATHS, fields_of, option_text, parse, read_values

ROOT = Path(__file__).resolve().parents[1]
# read from where the user stands
PATH_PARAMETERS = ("model", "queries", "pref_data", "rlhf_data", "pairs_file", "adapter")
BOOK_SOURCES = ("_config.yml", "_toc.yml", "references.bib", "_static", "book")


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


def from_here(key: str, value):
    """A relative path given with --set, read from where the user stands (as the notebooks see it: relative to
    the repository root when it lies inside it)."""
    if key not in PATH_PARAMETERS or not isinstance(value, str) or not value or Path(value).is_absolute():
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
    preset_values, override_values = load_preset(preset), parse_overrides(overrides)
    override_values = {k: from_here(k, v) for k, v in override_values.items()}
    params = {**preset_values, **override_values}
    params.pop("description", None)
    taken = {}
    for stage in STAGES:
        taken.update(notebook_fields(stage))
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
            parse(types, step_values(step, params, "runs/check"), where)
            read.update(read_values(types, {k: v for k, v in params.items() if k in fields_of(types)}, where))
    return {k: read[k] for k in params}


def data_sources(params: dict, stages: tuple[str, ...]) -> list:
    """The datasets the stages will read (queries, their held-out split, human pairs, the rlhf baseline's)."""
    from .data import Source

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
    from .data import resolve

    with contextlib.chdir(ROOT):  # a preset's paths are read from the repository root, as the notebooks do
        for source in dict.fromkeys(data_sources(params, stages)):
            resolve(source)


def check_run_id(run_id: str | None) -> None:
    if run_id is not None and (not run_id.strip() or run_id in (".", "..") or "/" in run_id or "\\" in run_id):
        raise DLMAError(f"--run-id {run_id!r}: a name for a folder under runs/, not a path")


def check_run_params(run_dir: Path, params: dict) -> None:
    """A run folder keeps the parameters of its finished stages: a change that touches one is refused; a
    change to a stage not yet finished (a fix after a failure) is taken and recorded."""
    path = run_dir / "params.json"
    if path.exists():
        before = read_json(path)
        changed = {k for k in set(before) | set(params) if before.get(k) != params.get(k)}
        done = [s for s in STAGES if (run_dir / s / ".done").exists()]
        blocking = sorted(k for k in changed if any(k in notebook_fields(s) for s in done))
        if blocking:
            raise DLMAError(f"{run_dir} holds finished stages made with other parameters ({', '.join(blocking)}): "
                            "pass another --run-id, or delete the folder to start over")
    write_json(path, params)


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


def command_args(command: str, values: dict) -> list[str]:
    """`dlma COMMAND` arguments for `values` (the same names: `gen_batch_size` is `--gen-batch-size`)."""
    args = [command]
    for name, value in values.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", option_text(value)]
    return args


def stage_commands(stage: str, nb_params: dict) -> list[tuple[bool, list[str]]]:
    """[(under the launcher?, `dlma` arguments)] that do a stage's shared work before its notebook reports it:
    its commands up to the last launched one (stage 4's split runs first, in one process); none for a stage
    that works in its notebook alone."""
    steps = NOTEBOOKS[stage]
    launched = [k for k, step in enumerate(steps) if step.launched]
    if not launched:
        return []
    return [(step.launched, command_args(step.command, step_values(step, nb_params, nb_params["run_dir"])))
            for step in steps[: launched[-1] + 1]]


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
    """[(under the launcher?, command line)] of a stage's shared work."""
    return [(launched, [*(launcher if launched else [sys.executable]), "-m", "dlma", *args])
            for launched, args in stage_commands(stage, nb_params)]


def run_launched(stage: str, nb_params: dict, launcher: list[str]) -> None:
    """Each command of a stage's shared work, from the repository root (where the notebooks run, so its
    paths are theirs)."""
    for _, argv in stage_argvs(stage, nb_params, launcher):
        print(f"[dlma run] {stage}: {shlex.join(argv)}", flush=True)
        rc = subprocess.run(argv, cwd=ROOT).returncode
        if rc != 0:
            raise DLMAError(f"stage {stage}: `{shlex.join(argv)}` exited with status {rc} (its error is above); "
                            "fix and rerun to resume")


def run_pipeline(preset: str, overrides: list[str], run_id: str | None = None, publish: bool = False,
                 runs_root: Path | None = None, stages: tuple[str, ...] = STAGES, launcher: str | None = None,
                 print_commands: bool = False, book: Path | None = None, compare_with: Path | None = None) -> Path:
    """`print_commands`: print the shared stages' command lines (under `launcher`) and stop, writing nothing;
    for several machines, each of which runs them under its own launch. `compare_with`: another run folder,
    set beside this one by the notebook COMPARE once the stages have run (in the run's book with `book`)."""
    check_run_id(run_id)
    if book is not None:
        check_book_dest(Path(book))
    launcher_words = check_launcher(launcher) if not print_commands else shlex.split(launcher or "LAUNCHER")
    params = resolve_params(preset, overrides)
    run_dir = (runs_root or ROOT / "runs") / (run_id or Path(preset).stem)
    if print_commands:
        print(f"cd {shlex.quote(str(ROOT))}")
        for stage in stages:
            for launched, argv in stage_argvs(stage, stage_params(stage, params, run_dir), launcher_words):
                print(shlex.join(argv) + ("" if launched else "  # on the main machine only"))
        return run_dir
    check_data(params, stages)
    if compare_with is not None:
        from .compare import stage_folders

        stage_folders(compare_with)  # a run folder, checked before anything runs
    check_out(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_params(run_dir, params)
    for stage in stages:
        run_stage_notebook(stage, params, run_dir, launcher_words)
    if compare_with is not None:
        print(f"[dlma run] {COMPARE}: {run_dir} beside {compare_with}", flush=True)
        run_compare(run_dir, Path(compare_with))
    if publish:
        publish_notebooks(run_dir, stages + ((COMPARE,) if (run_dir / f"{COMPARE}.ipynb").exists() else ()))
    if book is not None:
        book_sources(run_dir, Path(book))
    return run_dir


def run_stage_notebook(stage: str, params: dict, run_dir: Path, launcher_words: list[str]) -> None:
    """One stage of `dlma run`: its shared work under the launcher (if any), then its notebook executed into the
    run folder; skipped when done earlier (its folder's `.done` and its executed notebook)."""
    import papermill as pm

    done, final = run_dir / stage / ".done", run_dir / f"{stage}.ipynb"
    if done.exists() and final.exists():
        print(f"[dlma run] {stage}: done earlier, skipped")
        return
    nb_params = stage_params(stage, params, run_dir)
    if launcher_words:
        run_launched(stage, nb_params, launcher_words)
    partial = run_dir / f".{stage}.partial.ipynb"
    shown = {k: v for k, v in nb_params.items() if k in params or k == "run_dir"}  # the rest: defaults
    print(f"[dlma run] {stage}: running ({', '.join(f'{k}={v}' for k, v in shown.items())})", flush=True)
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


COMPARE = "07_compare"  # not a stage: the page `--compare-with` adds, this run beside another


def run_compare(run_dir: Path, other: Path) -> Path:
    """The notebook COMPARE, run b = this run, run a = `other`, executed into the run folder (rerun each time: it
    reads stored outputs only, in seconds)."""
    import papermill as pm

    final, partial = run_dir / f"{COMPARE}.ipynb", run_dir / f".{COMPARE}.partial.ipynb"
    try:
        execute(notebook_path(COMPARE), partial, {"run_dir": notebook_run_dir(run_dir),
                                                  "compare_with": notebook_run_dir(Path(other))})
    except pm.PapermillExecutionError as e:
        os.replace(partial, run_dir / f"{COMPARE}.failed.ipynb")
        raise DLMAError(f"{COMPARE} failed ({e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}); its notebook "
                        f"is {run_dir / f'{COMPARE}.failed.ipynb'}") from None
    os.replace(partial, final)
    return final


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
    for stage in stages:
        atomic_write(book_dir / f"{stage}.ipynb", (run_dir / f"{stage}.ipynb").read_bytes())
    print(f"[dlma run] published {len(stages)} notebooks to {book_dir}")


BOOK_MARK = ".dlma-book.json"  # what --book wrote into its folder, file by file: all it may replace


def book_files(dest: Path) -> list[str]:
    """The files under `dest` (relative, sorted), jupyter-book's output folder `_build` aside."""
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                  if p.is_file() and p.name != BOOK_MARK and p.relative_to(dest).parts[0] != "_build")


def check_book_dest(dest: Path) -> None:
    """--book DIR is rewritten: refused unless it is new, empty, or holds only files an earlier --book wrote
    (listed, with their hashes, in its BOOK_MARK) besides jupyter-book's `_build`, which is left alone; so a
    file of the user's, wherever it lies, is never removed or overwritten."""
    if dest.resolve() == ROOT.resolve() or ROOT.resolve().is_relative_to(dest.resolve()):
        raise DLMAError(f"--book {dest}: give a folder of its own (it is replaced)")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DLMAError(f"--book {dest}: is a file; give a new or empty folder (it is replaced)")
    written = read_json(dest / BOOK_MARK) if (dest / BOOK_MARK).is_file() else {}
    foreign = [f for f in book_files(dest) if written.get(f) != sha256_file(dest / f)]
    if foreign:
        raise DLMAError(f"--book {dest}: holds files an earlier --book did not write, or that were changed since "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")


def book_sources(run_dir: Path, dest: Path) -> Path:
    """The book's sources in `dest`, showing this run's executed notebooks instead of the published ones:
    `jupyter-book build DEST` then builds the run's own book, and book/ is left as it is."""
    check_book_dest(dest)
    for name in book_files(dest) if dest.exists() else []:  # only what an earlier --book wrote (checked)
        (dest / name).unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for name in BOOK_SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, dest / name)
    shown = tuple(s for s in (*STAGES, COMPARE) if (run_dir / f"{s}.ipynb").exists())
    publish_notebooks(run_dir, shown, dest / "book" / "results")
    if COMPARE in shown:  # its page, after the stages' (the published book has none)
        toc = (dest / "_toc.yml").read_text()
        last = f"      - file: book/results/{STAGES[-1]}\n"
        (dest / "_toc.yml").write_text(toc.replace(last, last + f"      - file: book/results/{COMPARE}\n"))
    write_json(dest / BOOK_MARK, {f: sha256_file(dest / f) for f in book_files(dest)})
    return dest


def parameter_table() -> str:
    """Markdown table of every stage parameter: its notebook(s), its value in each preset (the smoke preset's,
    else the default, is what the notebooks declare), and its help."""
    presets = {p.stem: load_preset(p.stem) for p in sorted((ROOT / "params").glob("*.yaml"))}
    rows: dict[str, dict] = {}
    for stage in STAGES:
        for name, f in notebook_fields(stage).items():
            row = rows.setdefault(name, {"stages": [], "default": f.default, "help": f.metadata["help"]})
            row["stages"].append(stage.split("_")[0])
    order = ["smoke"] + [n for n in presets if n != "smoke"]
    head = "| parameter | notebooks | default | " + " | ".join(f"`{n}`" for n in order) + " | meaning |"
    lines = [head, "|" + "---|" * (4 + len(order))]
    def cell(value) -> str:
        return '`""`' if value == "" else f"`{value}`"

    for name, row in rows.items():
        values = [cell(presets[n][name]) if name in presets[n] else "" for n in order]
        where = "all" if len(row["stages"]) == len(STAGES) else ", ".join(row["stages"])
        lines.append(f"| `{name}` | {where} | {cell(row['default'])} | {' | '.join(values)} | "
                     f"{row['help'].replace('|', '/')} |")
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


def run_parser() -> argparse.ArgumentParser:
    from .params import argument_parser

    r = argument_parser([], prog="dlma run", description=f"{RUN_HELP}. Works in a checkout of the repository "
                        "(notebooks/ and params/ beside dlma/). Paths in a preset are read from the repository "
                        "root, paths given with --set from where you stand.")
    r.add_argument("--preset", default="default", help="params/<preset>.yaml (smoke, default, full, paper) or a "
                   "YAML file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset parameter (repeatable; any option of a stage command); unknown keys and "
                        "wrong types are refused")
    r.add_argument("--run-id", default=None, help="run folder name under runs/ (default: the preset's name)")
    r.add_argument("--publish", action="store_true", help="copy the executed notebooks into book/results (the "
                   "published book) once every stage has run")
    r.add_argument("--book", default=None, metavar="DIR", help="write the book's sources showing this run into DIR "
                   "(replaced), to build with `jupyter-book build DIR`")
    r.add_argument("--launcher", default=None, metavar="COMMAND",
                   help="run the shared work (generate, score, pref-acc, train, stage 6's training) under this "
                        "launcher first, e.g. 'accelerate launch --config_file accelerate/ddp.yaml --num_processes 8'")
    r.add_argument("--compare-with", default=None, metavar="RUN",
                   help="another run folder: once the stages have run, add the page 07_compare, this run beside "
                        "that one paired on the items both have (what `dlma compare RUN THIS` prints), to the run's "
                        "notebooks and its --book")
    r.add_argument("--print-commands", action="store_true",
                   help="print the shared stages' commands under --launcher and stop, writing nothing (for "
                        "several machines: run them under each machine's launch, then dlma run on the main one)")
    return r


def main(argv: list[str]) -> None:
    args = run_parser().parse_args(argv)
    run_pipeline(args.preset, args.overrides, args.run_id, publish=args.publish, launcher=args.launcher,
                 print_commands=args.print_commands, book=Path(args.book) if args.book else None,
                 compare_with=Path(args.compare_with) if args.compare_with else None)


# ----------------------------------------------------------------------------------------------------------
# The notebooks' parameters cells: written from the registry (each parameter's default and help, the smoke
# preset's value where it sets one), never by hand, so they cannot drift from the CLI.

NOTEBOOK_RUN_DIR = "../runs/nbval"  # nbval runs the notebooks in notebooks/


def parameters_source(stage: str) -> str:
    """The source of a notebook's `parameters` cell: run_dir, then each parameter its commands take."""
    smoke = resolve_params("smoke", [])  # each value as its option reads it

    def literal(value) -> str:
        return json.dumps(value) if isinstance(value, str) else repr(value)

    lines = [f"run_dir = {literal(NOTEBOOK_RUN_DIR)}  # the run folder; `dlma run` sets it"]
    for name, f in notebook_fields(stage).items():
        lines.append(f"{name} = {literal(smoke.get(name, f.default))}  # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def update_notebooks() -> list[str]:
    """Rewrite each notebook's parameters cell from the registry; the names of those that changed."""
    import nbformat

    changed = []
    for stage in STAGES:
        path = notebook_path(stage)
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != parameters_source(stage):
            cell.source = parameters_source(stage)
            atomic_write(path, nbformat.writes(nb) + "\n")
            changed.append(stage)
    return changed


def update_expected(stages: tuple[str, ...] = (*STAGES, "07_compare"), fresh: bool = True) -> list[str]:
    """`make expected`: run the smoke notebooks as nbval runs them (kernel in `notebooks/`, the run in
    `runs/nbval`) and store the outputs of their checked cells (`dlma.checked`), which nbval then compares;
    every other output stays empty, so a notebook's diff is its results. The names of those that changed.
    `fresh=False`: over the smoke run already in `runs/nbval` (to store one notebook's outputs again)."""
    import nbformat
    import papermill as pm

    from .checked import MARK

    if fresh:
        shutil.rmtree(ROOT / "runs" / "nbval", ignore_errors=True)
    changed = []
    with tempfile.TemporaryDirectory(prefix="dlma-expected-") as tmp:
        for stage in stages:  # in order: each reads the run folder its predecessors wrote
            path = notebook_path(stage)
            executed = Path(tmp) / path.name
            pm.execute_notebook(str(path), str(executed), cwd=str(path.parent), progress_bar=False)
            nb, ran = nbformat.read(path, as_version=4), nbformat.read(executed, as_version=4)
            for cell, ran_cell in zip(nb.cells, ran.cells, strict=True):
                if cell.cell_type == "code":  # nbval compares only a cell that ran: it keeps its count
                    checked = MARK in cell.source
                    cell.outputs = ran_cell.outputs if checked else []
                    cell.execution_count = ran_cell.execution_count if checked else None
            text = nbformat.writes(nb) + "\n"
            if text != path.read_text():
                atomic_write(path, text)
                changed.append(stage)
    return changed

