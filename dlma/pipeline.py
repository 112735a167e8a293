"""`dlma run`: execute the stage notebooks in order with papermill into `runs/<run-id>/`.

- `dlma run` works in a checkout of the repository (an editable install): it runs the notebooks in
  `notebooks/` and reads presets from `params/` beside the package, and writes under `runs/`.
- Notebooks run with the repository root as working directory: relative paths in a preset (such as
  `params/data/...`) are read from the root; relative paths given with `--set` are read from where the
  user stands. (nbval runs the notebooks in `notebooks/`, hence their `run_dir` default `../runs/nbval`.)
- A preset (`params/<name>.yaml`) plus `--set key=value` overrides gives every notebook parameter
  (`dlma.presets`); the book a run's notebooks make is `dlma.book`'s.
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
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .artifacts import check_out, read_json, write_json
from .book import COMPARE, book_sources, check_book_dest, publish_notebooks
from .commands import NOTEBOOKS, RUN_HELP, STAGES, notebook_fields, step_values
from .errors import DLMAError, did_you_mean
from .params import argument_parser, arguments
from .presets import ROOT, check_data, notebook_path, notebook_run_dir, resolve_params, stage_params


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
    """`dlma COMMAND` arguments for `values`: the command line a notebook's `parse` reads them as."""
    return [command, *arguments(values)]


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
        from .compare import stage_folders  # deferred: compare loads torch (only for --compare-with)

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


def stage_list(text: str) -> tuple[str, ...]:
    """`--stages`: comma-separated stages, each by its name or its number (`01`, `03b`), run in the pipeline's
    order whatever order they are given in."""
    wanted = set()
    for item in (t.strip() for t in text.split(",") if t.strip()):
        found = [s for s in STAGES if s == item or s.split("_")[0] == item]
        if not found:
            raise argparse.ArgumentTypeError(f"{item!r} is not a stage ({', '.join(STAGES)}; or its number)"
                                             f"{did_you_mean(item, STAGES)}")
        wanted.update(found)
    if not wanted:
        raise argparse.ArgumentTypeError("no stage given")
    return tuple(s for s in STAGES if s in wanted)


def run_parser() -> argparse.ArgumentParser:
    r = argument_parser([], prog="dlma run", description=f"{RUN_HELP}. Works in a checkout of the repository "
                        "(notebooks/ and params/ beside dlma/). Paths in a preset are read from the repository "
                        "root, paths given with --set from where you stand.")
    r.add_argument("--preset", default="default", help="params/<preset>.yaml (smoke, default, full, paper) or a "
                   "YAML file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset parameter (repeatable; any option of a stage command); unknown keys and "
                        "wrong types are refused")
    r.add_argument("--stages", type=stage_list, default=STAGES, metavar="LIST",
                   help="comma-separated stages to run, by name or number, e.g. 01,02,03,04,05 (default: all); a "
                        "stage reads what the earlier ones wrote into the run folder")
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
    run_pipeline(args.preset, args.overrides, args.run_id, publish=args.publish, stages=args.stages,
                 launcher=args.launcher,
                 print_commands=args.print_commands, book=Path(args.book) if args.book else None,
                 compare_with=Path(args.compare_with) if args.compare_with else None)
