"""A committed selection of rows of a public dataset, obtained from its source.

The presets read real human-labelled pairs without committing a word of them: a selection file
(`params/data/*.rows.json`) names the dataset's file as its publishers serve it (HH-RLHF's
`harmless-base/test.jsonl.gz`, at a pinned commit of `anthropics/hh-rlhf` with its SHA-256, also on the hub as
`Anthropic/hh-rlhf`), the rows kept (`test_index`: each row's 0-based line in that file, in the order read) and
the SHA-256 of the selection: the kept rows, each with its `test_index` added, one JSON object per line with
sorted keys. A changed upstream file is then one error naming the hash, not other numbers.

Where the file is found, in order (`locate`):
1. `$DLMA_DATA_DIR`, a local copy: the selected rows themselves (`NAME.jsonl`, NAME the selection's name) or the
   upstream file at its path in the dataset (`harmless-base/test.jsonl.gz`);
2. `$DLMA_CACHE/data/`, where an earlier download was kept;
3. unless `HF_HUB_OFFLINE` is set, a download from the pinned URL, checked against the file's SHA-256 and kept
   in 2.
Otherwise one line says what is missing and how to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .artifacts import atomic_write, cache_dir, sha256_file
from .errors import DLMAError

SUFFIX = ".rows.json"
ENV = "DLMA_DATA_DIR"
KEY = "test_index"


@dataclass(frozen=True)
class Selection:
    """A selection file, read and checked (not yet its rows)."""

    path: Path
    dataset: str  # the dataset's name on the hub, for messages: "Anthropic/hh-rlhf"
    file: str  # the upstream file's path in the dataset: "harmless-base/test.jsonl.gz"
    url: str  # where it is downloaded from (a pinned commit)
    file_sha256: str  # of the file at `url`
    sha256: str  # of the selection (`canonical`)
    indices: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)


def is_selection(path) -> bool:
    return str(path).endswith(SUFFIX)


def read_selection(path) -> Selection:
    """A selection file, each field checked: one error naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise DLMAError(f"{path}: no such file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DLMAError(f"{path}: not a JSON selection file ({e})") from None
    if not isinstance(spec, dict):
        raise DLMAError(f"{path}: a selection file holds a JSON object")
    for key, kind in (("dataset", str), ("file", str), ("url", str), ("file_sha256", str), ("sha256", str),
                      (KEY, list)):
        if not isinstance(spec.get(key), kind):
            raise DLMAError(f"{path}: field '{key}': missing or not a {kind.__name__}")
    indices = spec[KEY]
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise DLMAError(f"{path}: field '{KEY}': a non-empty list of row numbers (0-based lines of the file)")
    if len(set(indices)) != len(indices):
        raise DLMAError(f"{path}: field '{KEY}': a row is listed twice")
    return Selection(path, spec["dataset"], spec["file"], spec["url"], spec["file_sha256"], spec["sha256"],
                     tuple(indices))


def canonical(rows: list[dict]) -> bytes:
    """The selection as hashed: one JSON object per line, keys sorted, text as it is (not escaped)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def select(sel: Selection, upstream: list[dict]) -> list[dict]:
    """The selected rows of the upstream file's rows, each with its test_index."""
    if max(sel.indices) >= len(upstream):
        raise DLMAError(f"{sel.path}: lists row {max(sel.indices)}, but the upstream file has {len(upstream)} rows "
                        "(another file than the one the selection was made from)")
    return [{**upstream[i], KEY: i} for i in sel.indices]


def offline() -> bool:
    """HF_HUB_OFFLINE as the user set it (a notebook's `dlma.setup` defaults it to 1 for the libraries)."""
    import dlma  # deferred: the package imports this module while it loads

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on") and not dlma.OFFLINE_BY_SETUP


def cache_path(sel: Selection) -> Path:
    return cache_dir() / "data" / sel.file_sha256 / Path(sel.file).name


def copies(sel: Selection) -> list[Path]:
    """The local copies `locate` looks for, in order: under $DLMA_DATA_DIR the selected rows or the upstream
    file, then the download cache."""
    found = []
    if os.environ.get(ENV):
        folder = Path(os.environ[ENV])
        found += [folder / f"{sel.name}.jsonl", folder / sel.file]
    return [*found, cache_path(sel)]


def download(sel: Selection) -> Path:
    """The upstream file from its pinned URL into the download cache, checked against its SHA-256."""
    target = cache_path(sel)
    print(f"dlma: downloading {sel.url} (once; kept in {target.parent})", flush=True)
    try:
        with urllib.request.urlopen(sel.url, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise DLMAError(f"{sel.path}: cannot download {sel.url} ({e}); {how_to_get(sel, False)}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sel.file_sha256:
        raise DLMAError(f"{sel.path}: {sel.url} has SHA-256 {got}, not the pinned {sel.file_sha256}")
    return atomic_write(target, data)


def how_to_get(sel: Selection, network: bool = True) -> str:
    return (f"set {ENV} to a folder holding {sel.file} (from {sel.url}, or the dataset {sel.dataset} on the hub) "
            f"or the selected rows as {sel.name}.jsonl" + (", or run once with a network (without HF_HUB_OFFLINE)"
                                                           if network else ""))


def locate(sel: Selection) -> Path:
    """The first local copy there is, else a download; offline and without a copy, one error saying how."""
    for path in copies(sel):
        if path.is_file():
            return path
    if offline():
        where_looked = f"{os.environ[ENV]} ({ENV})" if os.environ.get(ENV) else f"{ENV} is not set"
        raise DLMAError(f"{sel.path}: the rows of {sel.dataset} {sel.file} are not on this machine ({where_looked}; "
                        f"HF_HUB_OFFLINE is set, so nothing is downloaded): {how_to_get(sel)}")
    return download(sel)


def read_jsonl_file(path: Path) -> list[dict]:
    """A .jsonl or .jsonl.gz file's rows; one error naming the line that is not a JSON object."""
    try:
        text = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DLMAError(f"{path}: not a readable {''.join(path.suffixes)} file ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DLMAError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DLMAError(f"{path}:{n}: a row must be a JSON object")
        rows.append(row)
    return rows


_ROWS: dict[tuple, tuple[Path, list[dict]]] = {}


def selected_rows(path) -> tuple[Path, list[dict]]:
    """(the file read, the selected rows in the selection's order), checked against the selection's SHA-256;
    read once per process for an unchanged selection and copy."""
    sel = read_selection(path)
    found = locate(sel)
    stat = found.stat()
    key = (str(Path(path).resolve()), sel.sha256, str(found.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _ROWS:
        rows = read_jsonl_file(found)
        if found.name == f"{sel.name}.jsonl":  # a copy of the selected rows: the same rows, in the same order
            if [r.get(KEY) for r in rows] != list(sel.indices):
                raise DLMAError(f"{found}: field '{KEY}': its rows are not the ones {sel.path} lists, in its order")
        else:
            rows = select(sel, rows)
        got = hashlib.sha256(canonical(rows)).hexdigest()
        if got != sel.sha256:
            raise DLMAError(f"{found}: the rows {sel.path} selects have SHA-256 {got}, not the committed {sel.sha256} "
                            f"(the file is not the one the selection was made from: {sel.url})")
        _ROWS[key] = (found, rows)
    return _ROWS[key]


def selection_record(path) -> dict:
    """What params.json and manifests keep: the selection file, its hash and the selection's (checked when read),
    not where the copy lay: the same rows from another copy are the same input."""
    sel = read_selection(path)
    return {"path": str(path), "sha256": sha256_file(sel.path), "rows_sha256": sel.sha256,
            "source": f"{sel.url}"}


def make_selection(rows: list[dict], dataset: str, file: str, url: str, file_sha256: str, **extra) -> dict:
    """The content of a selection file for `rows` (each with its test_index), as `read_selection` reads it."""
    return {**extra, "dataset": dataset, "file": file, "url": url, "file_sha256": file_sha256,
            "sha256": hashlib.sha256(canonical(rows)).hexdigest(), KEY: [r[KEY] for r in rows]}


def available(path) -> bool:
    """Whether a selection's rows can be had here (a local copy, the cache, or a download)."""
    try:
        selected_rows(path)
    except DLMAError:
        return False
    return True


def main(argv: list[str]) -> int:
    """`python -m dlma.selection FILE...`: fetch each selection's rows where there is a network (`make data`),
    or say where they are; 2 and one line for each that cannot be had."""
    status = 0
    for path in argv:
        try:
            found, rows = selected_rows(path)
            print(f"{path}: {len(rows)} rows, SHA-256 checked, read from {found}")
        except DLMAError as e:
            print(f"dlma: error: {e}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
