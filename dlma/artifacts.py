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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("dlma", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "numpy")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class PartialJSONL:
    """Append-as-you-go JSONL that resumes: `done` holds the keys already written.

    A line cut short by a kill is dropped on reopen (it is the only line without a newline).
    `finish()` renames the partial file to its final name.
    """

    def __init__(self, final_path: str | Path, key: str | tuple[str, ...] = "id"):
        self.final = Path(final_path)
        self.partial = self.final.with_name(self.final.stem + ".partial.jsonl")
        self.key = key
        self.rows: list[dict] = []
        if self.final.exists():  # a finished artifact: nothing to do
            self.rows = read_jsonl(self.final)
        elif self.partial.exists():
            raw = self.partial.read_text(encoding="utf-8")
            complete = raw[: raw.rfind("\n") + 1]  # drop a torn last line
            if complete != raw:
                self.partial.write_text(complete, encoding="utf-8")
            self.rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
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

    def finish(self) -> Path:
        if not self.final.exists():
            if not self.partial.exists():  # nothing was needed: still leave an (empty) artifact
                self.partial.write_text("", encoding="utf-8")
            os.replace(self.partial, self.final)
        return self.final


def record_params(folder: str | Path, params: dict, hint: str) -> None:
    """Write `params.json` in `folder`, or check it: a folder is never resumed with other parameters, so it
    never mixes results of two settings and nothing computed is overwritten. `hint` says what to do."""
    from .errors import DLMAError

    params = json.loads(json.dumps(params, default=str))  # as they will read back
    path = Path(folder) / "params.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(params) if before.get(k) != params.get(k))
        if changed:
            raise DLMAError(f"{folder} holds results made with other parameters ({', '.join(changed)}): {hint}")
    else:
        write_json(path, params)


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


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(out_dir: str | Path, stage: str, params: dict, started: float, **extra: Any) -> Path:
    """`manifest.json`: what ran, on what, with which versions, and the hash of every file it wrote."""
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
        "git_commit": git_commit(),
        "argv": sys.argv,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        **extra,
    }
    return write_json(out_dir / "manifest.json", manifest)
