"""One stage's output folder: the one helper every stage writes through.

    folder = StageFolder(out, "score", model_cfg)   # checks the folder can be written
    ...check every parameter and input...
    folder.begin(params, inputs, force)             # lock, then params.json recorded or checked
    if not folder.done: ...work, with folder.model() loaded when first needed...
    folder.finish(n_pairs=...)                      # manifest.json last: it marks the folder finished

Nothing is written before `begin`, so a bad parameter leaves no trace; a model that then fails to load takes
back what `begin` wrote. `begin` takes the folder's lock (one writer per folder; the processes of one launch
share it) and records the parameters and the content hash of each input, or refuses a rerun with other ones
(`artifacts.record_params`). A folder with a manifest ran through: a rerun over it (a notebook over a launch's
results) reads its outputs and keeps its manifest, and needs no write access (a finished run on a read-only
disk is read where it lies, with no lock: nobody can write there to race with). A stage stopped and resumed
records every process's time on it (`.times.json` until it finishes, then the manifest's `spans`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import lock
from .artifacts import check_out, read_json, record_params, sha256_file, write_json, write_manifest
from .data import input_record, resolve_source
from .distributed import Launch, launch
from .errors import DLMAError

HINT = "write to another folder, pass --force to redo it, or delete it to start over"
TIMES_FILE = ".times.json"  # an unfinished stage's earlier processes' spans and this one's start: not an output


def earlier_spans(path: Path) -> list[list[float]]:
    """The (start, end) unix seconds of each process that worked on this unfinished folder before this one: a
    stopped process's span ends at the last file it wrote, since what it did after that was lost."""
    times = path / TIMES_FILE
    if not times.is_file():
        return []
    record = read_json(times)
    written = [p.stat().st_mtime for p in path.rglob("*") if p.is_file() and p.name not in (TIMES_FILE, lock.LOCK_FILE)]
    return [*record["spans"], [record["started"], max([record["started"], *written])]]


def finished_read_only(folder) -> bool:
    """A finished stage's folder (it has its manifest) that this process cannot write: a rerun only reads it."""
    path = Path(folder)
    return bool(str(folder).strip()) and (path / "manifest.json").is_file() and not os.access(path, os.W_OK)


class StageFolder:
    def __init__(self, out_dir, stage: str, model_cfg=None, model=None):
        self.read_only = finished_read_only(out_dir)
        if not self.read_only:
            check_out(out_dir)  # as given: Path("") would be the current folder
        self.path, self.stage, self.model_cfg = Path(out_dir), stage, model_cfg
        self.started, self.at, self.params, self.inputs = time.time(), Launch(), {}, {}
        self._loaded = model  # (model, tokenizer) a caller already holds (tests, stage 6), else loaded lazily
        self._tokenizer = None
        self._locked = False
        self._made: list[Path] = []  # what begin created (params.json, the folder): taken back if the model fails
        self.spans: list[list[float]] = []  # earlier processes' time on the stage (a resumed one)

    def begin(self, params: dict, inputs: dict | None = None, force: bool = False, launched: bool = False,
              outputs: tuple[str, ...] = ()):
        """Every parameter and input has been checked: from here on the stage writes. `launched`: the stage
        shares its work among the processes of a launch (`dlma.distributed`); the main one records. `outputs`:
        the files the stage writes before its manifest (what --force removes of a stage that did not finish)."""
        for name, given in (inputs or {}).items():  # an output folder never holds, or is, one of its inputs
            source = resolve_source(given)  # None: not a local file or folder (a hub id)
            if source is not None and source.resolve().is_relative_to(self.path.resolve()):
                raise DLMAError(f"{self.path}: holds the stage's input {name} ({source}): write to another folder")
        if self.model_cfg is not None:
            from .models import check_model, resolve_device  # deferred: models loads torch

            check_model(self.model_cfg)  # after the data: a data error is named even when the model is wrong too
            params = {**params, "model": self.model_cfg.to_dict()}
            if launched:
                self.at = launch(cpu=resolve_device(self.model_cfg.device) == "cpu")
        self.params = params
        if self.read_only:
            if force:
                raise DLMAError(f"{self.path}: not writable, so --force cannot redo the stage there")
            record_params(self.path, params, HINT, {k: input_record(v) for k, v in (inputs or {}).items()})  # checked
            self.check_outputs()
            return self.at
        made = [p for p in (self.path, self.path / "params.json") if not p.exists()]
        lock.acquire(self.path)
        self._locked = True
        try:
            if self.at.main:
                self.inputs = {k: input_record(v) for k, v in (inputs or {}).items()}
                earlier = earlier_spans(self.path)  # before record_params, which may write params.json anew
                record_params(self.path, params, HINT, self.inputs, force=force, outputs=outputs)
                self._made = [p for p in made if p.exists()]
                if self.done:
                    self.check_outputs()
                else:
                    self.spans = [] if force else earlier
                    write_json(self.path / TIMES_FILE, {"spans": self.spans, "started": self.started})
        except BaseException:  # refused (other parameters, edited results): the folder is not kept locked
            self.release()
            raise
        self.at.barrier()
        return self.at

    def check_outputs(self) -> None:
        """A finished folder's files are the ones its manifest hashed: an edited or missing one is refused, not
        reported as the stage's result."""
        for name, sha in read_json(self.path / "manifest.json").get("files", {}).items():
            if name.endswith(".png"):  # a figure its notebook saves beside the data, redrawn on every run
                continue
            path = self.path / name
            if not path.is_file() or sha256_file(path) != sha:
                what = "edited since it was written (its hash is not manifest.json's)" if path.is_file() else \
                    "missing, though manifest.json lists it"
                raise DLMAError(f"{path}: {what}; pass --force to redo the stage")

    @property
    def done(self) -> bool:
        return (self.path / "manifest.json").exists()

    def model(self):
        """(model, tokenizer), loaded once, when first needed: a rerun over finished results loads nothing. A
        model that fails to load takes back what `begin` wrote (`abandon`)."""
        if self._loaded is None:
            from .models import load_model  # deferred: models loads torch

            try:
                self._loaded = load_model(self.model_cfg)
            except BaseException:
                self.abandon()
                raise
        return self._loaded

    def tokenizer(self):
        """The model's tokenizer alone (checked and loaded in a second, before `begin`): to count tokens."""
        if self._loaded is not None:
            return self._loaded[1]
        if self._tokenizer is None:
            from .models import check_model, load_tokenizer  # deferred: models loads torch

            check_model(self.model_cfg)
            self._tokenizer = load_tokenizer(self.model_cfg.model, self.model_cfg.trust_remote_code)
        return self._tokenizer

    def abandon(self) -> None:
        """The stage failed before its first result: remove the params.json `begin` wrote and the folder it made,
        so the failure leaves no trace (a folder that holds anything else is left as it is)."""
        if not self._made or not self.at.main:
            return
        params, made = self.path / "params.json", self._made
        self._made = []
        if params not in made or [p.name for p in self.path.iterdir() if not p.name.startswith(".")] != [params.name]:
            return
        params.unlink()
        (self.path / TIMES_FILE).unlink(missing_ok=True)
        if self.path in made:  # made by begin: its lock file goes with it (held: nobody else holds it now)
            (self.path / lock.LOCK_FILE).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:  # another process made something here meanwhile: it keeps the folder
                pass
        self.release()  # the stage is failing: its lock goes now, not at the end of the process

    def note_dropped(self, dropped: list[str], why: str) -> None:
        """Say once, on stderr, that items were left out for a documented reason (the manifest lists them)."""
        if dropped and self.at.main:
            more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
            print(f"dlma {self.stage}: left out {len(dropped)} item(s) ({why}): {dropped[0]}{more}; "
                  "listed in manifest.json", file=sys.stderr)

    def finish(self, changed: bool = False, **extra) -> None:
        """manifest.json (unless the folder had one and no output `changed`: a rerun keeps its times and
        process count), with the time of every process that worked on the stage, then the lock is let go."""
        if self.at.main and (changed or not self.done):
            from .models import model_fingerprint  # deferred: models loads torch

            model = {"model": model_fingerprint(self.model_cfg)} if self.model_cfg is not None else {}
            launch_info = {"processes": self.at.world} if self.at.world > 1 else {}  # a stage may pass its own
            inputs = {"inputs": self.inputs} if self.inputs else {}  # each data file read, with its hash
            write_manifest(self.path, self.stage, self.params, [*self.spans, [self.started, time.time()]],
                           **model, **inputs, **{**launch_info, **extra})
            (self.path / TIMES_FILE).unlink(missing_ok=True)
        self.at.barrier()
        self.release()

    def release(self) -> None:
        if self._locked:
            self._locked = False
            lock.release(self.path)
