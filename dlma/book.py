"""The book and the notebooks that make it: publishing a run's executed notebooks into `book/results/` (the
published book) or a copy of the book's sources showing one run (`--book DIR`); the parameter table of the
Reproducing page; the notebooks' parameters cells and the outputs nbval compares, written from the registry
and the smoke run, never by hand."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import FINISHED_AT, atomic_write, json_text, read_json, sha256_file, write_json
from .checked import MARK
from .commands import STAGES, notebook_fields
from .errors import DLMAError
from .presets import ROOT, load_preset, notebook_path, resolve_params

BOOK_SOURCES = ("_config.yml", "_toc.yml", "references.bib", "_static", "book")


COMPARE = "07_compare"  # not a stage: the page `--compare-with` adds, this run beside another


RECORDS = "run"  # book/results/run/<stage>/: the published run's records, beside its notebooks
RECORD_FILES = ("*.json", "*.jsonl")  # parameters, manifest and results as text: no weights, no checkpoints, no
# figure (a notebook redraws its figures from these on every run)
# saved beside an adapter for peft and transformers: the model's tokenizer (megabytes) and peft's config, which
# names the base model's folder on the machine that trained it (the training's parameters are in its params.json)
NOT_RECORDS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "adapter_config.json")


def stage_records(folder: Path) -> list[Path]:
    """A finished stage folder's records: its JSON and JSONL files (sub-folders' too, stage 4's adapter/params.json
    and train_log.jsonl), not its weights or a training's checkpoints; a stage without weights (3, 3b) is whole
    (every file its manifest lists but the figures, which are redrawn) and can be put back into a run folder.
    None holds a row of the labelled data: stages 3, 3b and 5 store a pair's id and numbers, the text they store
    is the shipped queries' and the model's answers, and stage 6's `rlhf` rows, the labelled pairs themselves,
    are published by their ids only (tests/test_book.py)."""
    return sorted({p for pattern in RECORD_FILES for p in folder.rglob(pattern) if p.name not in NOT_RECORDS
                   and not any(part.startswith(("checkpoint", ".")) for part in p.relative_to(folder).parts)
                   and not holds_labelled_rows(p)})


def holds_labelled_rows(p: Path) -> bool:
    """A training set made of the labelled data's rows (stage 6's `rlhf`): its `rows_note.json` beside it names
    them by id in the committed row list, so the published record is the note, never the rows' text."""
    note = p.with_name("rows_note.json")
    return p.name == "train.jsonl" and note.is_file() and "human_pair_ids" in read_json(note)


MACHINE_PATHS = ("argv", "model.resolved")  # a manifest's fields that name paths of the machine that ran it


def published_manifest(manifest: dict) -> dict:
    """A stage's manifest as published: without the fields that name paths of the machine that ran it (the
    kernel's command line, the model's folder in its cache), which it lists under `left_out`."""
    out = dict(manifest)
    for dotted in MACHINE_PATHS:
        *parents, key = dotted.split(".")
        holder = out
        for name in parents:  # copied on the way down: the manifest read is left as it was
            holder[name] = dict(holder.get(name) or {})
            holder = holder[name]
        holder.pop(key, None)
    return {**out, "left_out": list(MACHINE_PATHS)}


def publish_notebooks(run_dir: Path, stages: tuple[str, ...] = STAGES, book_dir: Path | None = None) -> None:
    """Copy the executed notebooks into the book (each atomically), only once all have run, and each stage's
    records into `RECORDS/<stage>/` beside them (replacing that stage's), so that a rerun can be set beside the
    published run: `dlma compare book/results/run runs/full`."""
    book_dir = book_dir or ROOT / "book" / "results"
    for stage in stages:
        atomic_write(book_dir / f"{stage}.ipynb", (run_dir / f"{stage}.ipynb").read_bytes())
        if (run_dir / stage).is_dir():
            records = book_dir / RECORDS / stage
            shutil.rmtree(records, ignore_errors=True)
            for p in stage_records(run_dir / stage):
                data = p.read_bytes() if p.name != "manifest.json" else json_text(published_manifest(read_json(p)))
                atomic_write(records / p.relative_to(run_dir / stage), data)
    if (book_dir.parent / "reproduce.md").is_file():  # the book's Reproducing page: the times of the run it shows
        update_stage_times(book_dir.parent / "reproduce.md", book_dir / RECORDS)
    print(f"[dlma run] published {len(stages)} notebooks and their stages' records to {book_dir}")


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
            # the published run's records stay out: publish_notebooks puts this run's there
            shutil.copytree(source, dest / name, dirs_exist_ok=True,
                            ignore=lambda folder, names: [RECORDS] if Path(folder).name == "results" else [])
        else:
            shutil.copyfile(source, dest / name)
    shown = tuple(s for s in (*STAGES, COMPARE) if (run_dir / f"{s}.ipynb").exists())
    publish_notebooks(run_dir, shown, dest / "book" / "results")
    toc = (dest / "_toc.yml").read_text()
    page = f"      - file: book/results/{COMPARE}\n"
    if COMPARE in shown and page not in toc:  # its page, after the stages'
        last = f"      - file: book/results/{STAGES[-1]}\n"
        (dest / "_toc.yml").write_text(toc.replace(last, last + page))
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


def write_region(page: Path, name: str, text: str) -> bool:
    """Write `text` between the page's `<!-- NAME -->` and `<!-- END NAME -->` (a region the code writes, never
    typed: tests/test_pages.py reads it so); True if the page changed."""
    start, end = f"<!-- {name} -->", f"<!-- END {name} -->"
    old = page.read_text()
    head, sep, rest = old.partition(start)
    if not sep or end not in rest:
        raise DLMAError(f"{page}: no {start} ... {end} markers")
    new = f"{head}{start}\n\n{text}\n{end}{rest.partition(end)[2]}"
    if new != old:
        page.write_text(new)
    return new != old


def update_parameter_table(page: Path | None = None) -> bool:
    """Write `parameter_table()` into book/reproduce.md; True if the page changed."""
    return write_region(page or ROOT / "book" / "reproduce.md", "PARAMETER TABLE", parameter_table())


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def spans(manifest: dict) -> list[list[float]]:
    """The (start, end) unix seconds of each process a manifest records; one ending at `finished_at` for a
    manifest written before they were kept (2026-12-02), which recorded its last process alone."""
    if "spans" in manifest:
        return manifest["spans"]
    end = datetime.strptime(manifest["finished_at"], FINISHED_AT).replace(tzinfo=timezone.utc).timestamp()
    return [[end - manifest.get("wall_time_s", 0.0), end]]


def covered(intervals: list[list[float]]) -> float:
    """Seconds covered by at least one interval: a step inside another's time is not counted twice."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def stage_times(records: Path) -> str:
    """A table of each published stage's wall time, machine, date and commit, as its manifest records them."""
    rows, total = [], 0.0
    for stage in STAGES:
        if not (records / stage / "manifest.json").is_file():
            continue
        m = read_json(records / stage / "manifest.json")
        cpu = m.get("machine", {})
        # a stage's steps each record theirs: stage 4's split, then its training (adapter/); stage 6's methods,
        # trained inside the stage's own time: the time some step of the stage was at work
        wall = covered([span for p in (records / stage).rglob("manifest.json") for span in spans(read_json(p))])
        total += wall
        rows.append(f"| {stage} | {duration(wall)} | {cpu.get('processor', '?')}, {cpu.get('cores', '?')} "
                    f"cores, {m.get('processes', 1)} process(es) | {m['finished_at'][:10]} | "
                    f"`{m.get('git_commit', '?')[:7]}` |")
    return "\n".join(["| stage | wall time | machine | finished | commit |", "|---|---|---|---|---|", *rows,
                      f"| all {len(rows)} | {duration(total)} | | | |", ""])


def update_stage_times(page: Path | None = None, records: Path | None = None) -> bool:
    """Write the published run's stage times (book/results/run's manifests) into book/reproduce.md."""
    return write_region(page or ROOT / "book" / "reproduce.md", "STAGE TIMES",
                        stage_times(records or ROOT / "book" / "results" / RECORDS))


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
