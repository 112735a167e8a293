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
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import yaml

from .artifacts import record_params
from .errors import DLMAError

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("01_generate", "02_self_reward", "03_preference_accuracy", "04_train_dlma", "05_evaluate_alignment")
SET_BY_PIPELINE = ("run_dir",)


def notebook_path(stage: str) -> Path:
    return ROOT / "notebooks" / f"{stage}.ipynb"


def notebook_parameters(stage: str) -> dict:
    """{name: default} of the notebook's `parameters` cell, as papermill sees it."""
    import papermill as pm

    return {name: p["default"] for name, p in pm.inspect_notebook(str(notebook_path(stage))).items()}


def load_preset(name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "params" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
        raise DLMAError(f"preset '{name}': {path} not found (known: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise DLMAError(f"{path}: a preset is a mapping of parameter: value")
    return data


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
    params = {**load_preset(preset), **parse_overrides(overrides)}
    declared = {k for stage in STAGES for k in notebook_parameters(stage)}
    unknown = sorted(set(params) - declared - {"description"})
    if unknown:
        raise DLMAError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(declared))})")
    bad = sorted(set(params) & set(SET_BY_PIPELINE))
    if bad:
        raise DLMAError(f"parameter(s) {', '.join(bad)} are set by `dlma run` itself (use --run-id)")
    return params


def run_pipeline(preset: str, overrides: list[str], run_id: str | None = None, publish: bool = True,
                 runs_root: Path | None = None, stages: tuple[str, ...] = STAGES) -> Path:
    import papermill as pm

    params = resolve_params(preset, overrides)
    run_dir = (runs_root or ROOT / "runs") / (run_id or preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_params(run_dir, params, "pass another --run-id, or delete the folder to start over")
    for stage in stages:
        done = run_dir / stage / ".done"
        final = run_dir / f"{stage}.ipynb"
        if done.exists() and final.exists():
            print(f"[dlma run] {stage}: done earlier, skipped")
            continue
        declared = notebook_parameters(stage)
        nb_params = {k: v for k, v in params.items() if k in declared}
        nb_params["run_dir"] = str(run_dir.resolve())
        partial = run_dir / f".{stage}.partial.ipynb"
        print(f"[dlma run] {stage}: running ({', '.join(f'{k}={v}' for k, v in nb_params.items())})", flush=True)
        started = time.time()
        try:
            pm.execute_notebook(str(notebook_path(stage)), str(partial), parameters=nb_params,
                                cwd=str(ROOT), progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            failed = run_dir / f"{stage}.failed.ipynb"
            os.replace(partial, failed)
            raise DLMAError(f"stage {stage} failed ({e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}); "
                            f"its notebook is {failed}; fix and rerun to resume") from None
        os.replace(partial, final)
        (run_dir / stage).mkdir(exist_ok=True)
        done.write_text(f"{time.time() - started:.1f}\n")
        print(f"[dlma run] {stage}: finished in {time.time() - started:.0f} s", flush=True)
    if publish:
        publish_notebooks(run_dir, stages)
    return run_dir


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
            row = rows.setdefault(name, {"stages": [], "default": p["default"], "help": p["help"]})
            row["stages"].append(stage[:2])
    order = ["smoke"] + [n for n in presets if n != "smoke"]
    head = "| parameter | notebooks | " + " | ".join(f"`{n}`" for n in order) + " | meaning |"
    lines = [head, "|" + "---|" * (3 + len(order))]
    for name, row in rows.items():
        values = [row["default"] if n == "smoke" else presets[n].get(name, "(notebook default)") for n in order]
        if name in SET_BY_PIPELINE:
            values = ["set by `dlma run`"] * len(order)
        cells = " | ".join(f"`{v}`" if not str(v).startswith(("(", "set by")) else str(v) for v in values)
        lines.append(f"| `{name}` | {', '.join(row['stages'])} | {cells} | {row['help'].replace('|', '/')} |")
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
