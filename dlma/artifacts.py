"""Run folders: atomic writes, resumable JSONL, manifests.

Every artifact is written to a temporary file in the same folder and renamed into place, so a killed
process never leaves a half-written file under the final name. Long stages append one record per line
to `<name>.partial.jsonl` as they go and rename it to `<name>.jsonl` when done (RLCD's habit).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import DLMAError

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: os.umask can only be read by setting it
PACKAGES = ("dlma", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "numpy")


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """The one way a file is written: a temporary file beside it, flushed to disk, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # as a plain open() would make it (mkstemp's is 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_text(obj: Any) -> str:
    """Strict JSON: a NaN or infinity raises here instead of writing a file no JSON parser accepts."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, json_text(obj))


def write_json_if_changed(path: str | Path, obj: Any) -> bool:
    """write_json unless the file already holds exactly this; True when it wrote."""
    text, path = json_text(obj), Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write(path, text)
    return True


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    """A JSON file dlma wrote (params.json, a manifest, metrics): one error naming the file and line when it is
    not JSON any more (hand-edited, truncated by a full disk)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DLMAError(f"{path}:{e.lineno}: not JSON ({e.msg}); restore it, or delete the folder to redo the "
                        "stage") from None
    except UnicodeDecodeError:
        raise DLMAError(f"{path}: not UTF-8 text; restore it, or delete the folder to redo the stage") from None


def read_jsonl(path: str | Path, text: str | None = None) -> list[dict]:
    """The one JSONL reader of the files dlma writes: a line that is not JSON is one error naming the file
    and the line (from 1)."""
    rows = []
    text = Path(path).read_text(encoding="utf-8") if text is None else text
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DLMAError(f"{path}:{n}: malformed JSON ({e}); delete the file to redo what wrote it") from None
    return rows


def complete_rows(path: Path, repair: bool = False, key: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a JSONL file being appended to. A last line cut short by a kill is dropped, and so is a
    corrupt line before it (not UTF-8, not a JSON object, or without the `key` fields): said on stderr with the
    file and the line, its item is done again. `repair`: the dropped lines are also cut from the file, so the
    next append starts on a line of its own."""
    raw = path.read_bytes()
    *lines, torn = raw.split(b"\n")  # `torn`: after the last newline, empty unless a kill cut a line short
    rows, kept = [], []
    for n, line in enumerate(lines, start=1):
        row = parsed_row(line, key) if line.strip() else {}
        if row is None:
            print(f"dlma: {path}:{n}: a corrupt line (not a JSON row), dropped; its item will be done again",
                  file=sys.stderr)
            continue
        rows += [row] if row else []
        kept.append(line + b"\n")
    if repair and (torn or len(kept) < len(lines)):
        atomic_write(path, b"".join(kept))
    return rows


def parsed_row(line: bytes, key: tuple[str, ...]) -> dict | None:
    """A line's JSON object, or None when it is not a row holding the `key` fields."""
    try:
        row = json.loads(line.decode("utf-8"))
        hash(tuple(row[k] for k in key))  # a key a resumed store can look up
    except (ValueError, KeyError, TypeError):  # (UnicodeDecodeError is a ValueError)
        return None
    return row if isinstance(row, dict) and row else None


class PartialJSONL:
    """Append-as-you-go JSONL that resumes: `done` holds the keys already written.

    A line cut short by a kill is dropped on reopen (it is the only line without a newline).
    `finish()` renames the partial file to its final name.
    """

    def __init__(self, final_path: str | Path, key: str | tuple[str, ...] = "id"):
        self.final = Path(final_path)
        self.partial = self.final.with_name(self.final.stem + ".partial.jsonl")
        self.key = key
        self.keys = key if isinstance(key, tuple) else (key,)
        self.rows: list[dict] = []
        if self.final.exists():  # a finished artifact: nothing to do
            self.rows = read_jsonl(self.final)
        elif self.partial.exists():
            self.rows = complete_rows(self.partial, repair=True, key=self.keys)
        self.done = {self._key(r) for r in self.rows}

    def _key(self, row: dict):
        return tuple(row[k] for k in self.key) if isinstance(self.key, tuple) else row[self.key]

    @property
    def finished(self) -> bool:
        return self.final.exists()

    def append(self, rows: list[dict]) -> None:
        """Write a batch of rows with one write and fsync, so a batch is on disk whole or not at all."""
        self.final.parent.mkdir(parents=True, exist_ok=True)
        with open(self.partial, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend(rows)
        self.done.update(self._key(r) for r in rows)

    def finish(self, order: list | None = None) -> Path:
        """Rename the partial file to its final name; with `order` (keys), rewrite the rows in that order
        (rows made out of order, e.g. in length-sorted batches, end in their input order)."""
        if not self.final.exists():
            if not self.partial.exists():  # nothing was needed: still leave an (empty) artifact
                self.partial.write_text("", encoding="utf-8")
            if order is not None:
                rank = {k: i for i, k in enumerate(order)}
                self.rows.sort(key=lambda r: rank[self._key(r)])
                write_jsonl(self.final, self.rows)
                self.partial.unlink()
            else:
                os.replace(self.partial, self.final)
        return self.final


def check_out(folder: str | Path) -> None:
    """An output folder that can be made or written, checked before any work starts."""
    if not str(folder).strip():
        raise DLMAError("an output folder must be named: an empty path would write into the current folder")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DLMAError(f"{folder}: exists and is not a folder (--out names a folder)")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DLMAError(f"{parent}: is a file, so {folder} cannot be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DLMAError(f"{parent}: not writable, so {folder} cannot be made or written")


def cache_dir() -> Path:
    """Where dlma keeps what it fetched (models, data files): $DLMA_CACHE, else ~/.cache/dlma."""
    return Path(os.environ.get("DLMA_CACHE", Path.home() / ".cache" / "dlma"))


# Parameters added after results were made: at their defaults they change nothing, so a folder made before
# they existed is the same run (a token budget of 0 batches by count on a CPU, as before). Each is marked where
# its help is declared (`params.added`); `params.documented` registers its default here as its config is defined.
ADDED_LATER: dict[str, object] = {}


def with_added_later(before: dict, record: dict) -> dict:
    """`before` (a params.json) with the ADDED_LATER values of the parameters `record` has and it lacks, in the
    nested configs too (stage 6 records stage 4's and 5's)."""
    out = {**{k: v for k, v in ADDED_LATER.items() if k in record}, **before}
    for k, v in record.items():
        if k != "inputs" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = with_added_later(out[k], v)
    return out


def record_params(folder: str | Path, params: dict, hint: str, records: dict | None = None,
                  force: bool = False, outputs: tuple[str, ...] = ()) -> None:
    """Write `params.json` in `folder` (parameters, and the content hash of each input file), or check it.

    A folder is never resumed with other parameters or changed inputs, so it never mixes results of two
    settings and nothing computed is overwritten; `force` removes the earlier results (the files its manifest
    lists, its `outputs` and its bookkeeping, never a file a stage did not write) and starts over. A folder
    that holds only its params.json (a run that stopped before its first result, e.g. on a typo) takes the
    new parameters. A folder holding files that no stage recorded is
    refused. `hint` says what to do. `records`: each input's record (`data.input_record`), by name.
    """
    folder = Path(folder)
    records = records or {}
    record = json.loads(json.dumps({**params, "inputs": records},
                                   default=str))  # as it will read back
    path = folder / "params.json"
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    if entries and not (path.exists() and written_by_a_stage(path)):
        names = ", ".join(sorted(p.name for p in entries)[:5])
        raise DLMAError(f"{folder}: holds files that no dlma stage recorded here ({names}); "
                        "choose an empty or new folder")
    if path.exists() and force:  # only what a stage wrote here: its manifest's files and its own bookkeeping
        manifest = folder / "manifest.json"
        listed = set(read_json(manifest).get("files", {})) if manifest.exists() else set()
        ours = listed | set(outputs) | {"params.json", "manifest.json"}
        mine = [p for p in entries if p.is_file() and (p.name in ours or p.name.endswith(".partial.jsonl"))
                or p.is_dir() and not p.is_symlink() and p.name in outputs]  # a stage's own work folder
        others = sorted(p.name for p in entries if p not in mine)
        if others:  # checked before anything is removed: the folder stays as it was
            raise DLMAError(f"{folder}: holds {', '.join(others[:5])}, which this stage did not write: --force "
                            "removes nothing here; move them, or write to another folder")
        for p in [*mine, *folder.glob(".*.partial*")]:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        entries = []
    if path.exists() and [p.name for p in entries] != ["params.json"]:
        before = json.loads(path.read_text(encoding="utf-8"))
        before = with_added_later(before, record)
        was = before.get("inputs", {})

        def named(r: dict | None) -> tuple:  # which data: a change of split or revision is a change of input
            return tuple((r or {}).get(k) for k in ("path", "split", "revision"))

        # an input a folder's params.json does not name was not recorded when it was made (ADDED_LATER's habit)
        moved = sorted(k for k in record["inputs"] if k in was and named(was[k]) != named(record["inputs"][k]))
        stale = sorted(k for k in record["inputs"] if k in was and k not in moved and was[k] != record["inputs"][k])
        if stale:
            k = stale[0]
            raise DLMAError(f"{record['inputs'][k]['path']}: changed since {folder} was made from it (its content "
                            "hash differs); rerun with --force to redo this stage, or write to another folder")
        changed = sorted({k for k in set(before) | set(record) if k != "inputs" and before.get(k) != record.get(k)}
                         | set(moved))
        if changed:
            raise DLMAError(f"{folder} holds results made with other parameters ({', '.join(changed)}): {hint}")
        return
    write_json(path, record)


def written_by_a_stage(path: Path) -> bool:
    """Whether a params.json is one `record_params` wrote (a JSON object with its `inputs` record), not a file of
    the user's that happens to have the name."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and isinstance(record.get("inputs"), dict)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    """The processor a result was computed on: its architecture, model name, cores, and whether it has
    AVX512-BF16 (the instruction set that would move 4-bit sampling, were models.portable_4bit not applied)."""
    model, flags = "", ""
    try:  # Linux names the model here; platform.processor() often gives the architecture again
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = value
    except OSError:  # not Linux
        pass
    return {"arch": platform.machine(), "processor": model or platform.processor() or "unknown",
            "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags.split()}


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


FINISHED_AT = "%Y-%m-%dT%H:%M:%SZ"  # a manifest's finish time, UTC


def write_manifest(out_dir: str | Path, stage: str, params: dict, spans: list, **extra: Any) -> Path:
    """`manifest.json`: what ran, on what, with which versions, and the hash of every file it wrote. `spans`:
    the (start, end) unix seconds of each process that worked on the stage (more than one: it was resumed);
    the wall time is their sum."""
    out_dir = Path(out_dir)
    files = {
        p.name: sha256_file(p)
        for p in sorted(out_dir.iterdir())
        if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")
    }
    manifest = {
        "stage": stage,
        "params": params,
        "versions": package_versions(),
        "machine": machine(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        "wall_time_s": round(sum(end - start for start, end in spans), 2),
        "spans": [[round(start, 2), round(end, 2)] for start, end in spans],
        "finished_at": time.strftime(FINISHED_AT, time.gmtime()),
        "files": files,
        **extra,
    }
    return write_json(out_dir / "manifest.json", manifest)
