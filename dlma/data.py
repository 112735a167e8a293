"""One loader for every input the method reads, returning validated `Example`s.

Accepted rows (format detected per row):
- HH-RLHF: `chosen` / `rejected` dialogue strings ("\\n\\nHuman: ...\\n\\nAssistant: ..."), split at the
  last Assistant turn; both must share the context.
- processed-hh-rlhf (PKU-Alignment's, which the released code reads): `context`, a list of {role, text} turns
  (human first), and `chosen` / `rejected` as {role, text} (absent: a query).
- PKU-SafeRLHF: `prompt`, `response_0`, `response_1` and a label field (`safer_response_id` by default,
  or `better_response_id`).
- TRL preference: `prompt`, `chosen`, `rejected`, as strings or as message lists.
- Query only: `prompt` (or `query`), a string or a message list.
Any row may carry `id` and `pair` (the name of the prompt pair to generate it with).

Sources (`Source`: a name as a user gives it, a split and a revision): a committed selection of a public
dataset's rows (`*.rows.json`, `dlma.selection`: its rows from the dataset's source), a local .jsonl / .json /
.parquet file (.xz, .gz or .bz2 compressed too), the name of a shipped sample (`sample:queries`,
`sample:pairs`), a folder laid out as the hub lays out a dataset (data/train-00000-of-00001.parquet,
harmless-base/test.jsonl.xz, or a README's `configs`: the files of a split are the ones `datasets` finds), or a
hub dataset id, a folder of the repository after it (`PKU-Alignment/processed-hh-rlhf/harmless-base`, the
released code's `data_dir`). A hub id is read offline: from the hub cache's snapshot of the revision
(huggingface_hub's layout), else from datasets' cache of an earlier `load_dataset`. A file has no split and no revision.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypedDict

from .artifacts import sha256_file
from .errors import DLMAError, where
from .prompts import PAIRS, RENDERINGS, get_pair
from .selection import KEY, is_selection, read_selection, selected_rows, selection_record

SAMPLES = {"queries": "queries.jsonl", "pairs": "pairs.jsonl"}
LABEL_FIELDS = ("safer_response_id", "better_response_id")
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class Example:
    id: str
    turns: list[str]  # the context, user turn first, alternating, ending on a user turn
    chosen: str | None = None  # the human-preferred response (None for query-only rows)
    rejected: str | None = None
    pair: str | None = None  # prompt pair for generation, if the row names one
    source: str = field(default="", compare=False)  # "file:line", for error messages

    @property
    def labelled(self) -> bool:
        return self.chosen is not None


def sample_path(name: str) -> Path:
    if name not in SAMPLES:
        raise DLMAError(f"unknown sample 'sample:{name}' (known: {', '.join('sample:' + s for s in SAMPLES)})")
    return Path(str(resources.files("dlma") / "samples" / SAMPLES[name]))


@dataclass(frozen=True)
class Source:
    """A dataset as a user names it (a file, `sample:NAME`, a hub-layout folder or a hub id), the split read of
    it and the revision of a hub id. `param` names the parameters in messages: `{param}_split`, ..."""

    path: str
    split: str = "train"
    revision: str = ""
    param: str = field(default="", compare=False)

    def key(self) -> tuple:
        """What makes two sources the same rows: a file's split means nothing."""
        return (self.path,) if resolve_source(self.path) is not None else (self.path, self.split, self.revision)


@dataclass
class Resolved:
    """Where a source's rows are: its data files (read in order), or a dataset of datasets' cache."""

    name: str  # for messages: the file, or "ID [split]"
    kind: str  # selection, file, folder, hub cache or datasets cache
    files: list[Path]
    root: Path | None = None  # the files are recorded relative to it
    revision: str | None = None  # the commit read, for a hub id
    dataset: object = None  # a datasets.Dataset, for the datasets cache


def as_source(source, split: str = "train", revision: str = "") -> Source:
    return source if isinstance(source, Source) else Source(str(source), split, revision)


def resolve_source(source) -> Path | None:
    """The local file or folder behind a source (a shipped sample, a path), or None for a hub id."""
    source = source.path if isinstance(source, Source) else str(source)
    if source.startswith("sample:"):
        return sample_path(source.split(":", 1)[1])
    path = Path(source)
    return path if path.exists() else None


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def datasets_cache() -> Path:
    import datasets

    return Path(os.environ.get("HF_DATASETS_CACHE") or datasets.config.HF_DATASETS_CACHE)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
COMPRESSED = (".xz", ".gz", ".bz2")


def resolve(source) -> Resolved:
    """The data files (or cached dataset) of one split of a source, checked: one error naming the source, the
    split and the revision when they cannot be found."""
    source = as_source(source)
    opt = source.param or "the"
    path_text = source.path
    local = sample_path(path_text.split(":", 1)[1]) if path_text.startswith("sample:") else Path(path_text)
    data_suffix = local.suffix in DATA_SUFFIXES or (local.suffix in COMPRESSED and
                                                    Path(local.stem).suffix in DATA_SUFFIXES)
    if is_selection(path_text):  # a committed row list: its rows come from the dataset's source
        if source.revision:
            raise DLMAError(f"{path_text}: a selection file pins its own source ({opt}_revision is "
                            f"{source.revision!r}): leave it empty")
        selected_rows(local)  # found and checked now, before any stage runs
        sel = read_selection(local)
        # named as the dataset names the file, wherever the copy lies: a row's messages are the same on every machine
        return Resolved(f"{sel.dataset}/{sel.file}", "selection", [local])
    if local.exists() or data_suffix:
        if not local.exists():
            raise DLMAError(f"{local}: no such file")
        if source.revision:
            raise DLMAError(f"{path_text}: a local {'folder' if local.is_dir() else 'file'} has no revision "
                            f"({opt}_revision is {source.revision!r}): leave it empty to read the "
                            f"{'folder' if local.is_dir() else 'file'} as it is, or name the hub dataset id")
        if local.is_dir():
            label = f"{path_text} [{source.split}]"
            return Resolved(label, "folder", split_files(local, source, label), local)
        return Resolved(str(local), "file", [local])
    if not _HUB_ID.fullmatch(path_text):
        raise DLMAError(f"{path_text}: no such file or folder, and not a hub dataset id")
    return resolve_hub(source)


def split_files(folder: Path, source: Source, label: str) -> list[Path]:
    """The files of `source.split` in a hub-layout folder, as `datasets` finds them (its split patterns, or the
    `configs` of the folder's README), without building anything."""
    import datasets

    opt = source.param or "the"
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the builder's lock files go there, not to the user's cache
            builder = datasets.load_dataset_builder(str(folder), cache_dir=tmp)
        splits = {str(k): list(v) for k, v in (builder.config.data_files or {}).items()}
    except Exception as e:  # no data file, files of no format datasets reads, a malformed README
        raise DLMAError(f"{label}: a folder in which datasets finds no data files of a split ({type(e).__name__}: "
                        f"{_first_line(e)}); give a folder laid out as the hub lays out a dataset "
                        "(data/train-00000-of-00001.parquet, test.jsonl, ...) or a file") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if source.split not in splits:
        raise DLMAError(f"{label}: no split '{source.split}' (its splits: {', '.join(splits) or 'none'}); "
                        f"set {opt}_split")
    files = [Path(f) for f in splits[source.split]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DLMAError(f"{label}: split '{source.split}' names {missing[0]}, which is missing")
    check_shards(files, source.split, label)
    read = {f.absolute() for f in files}
    unread = sorted(p for d in {f.parent for f in files} for p in d.iterdir()
                    if p.is_file() and p.absolute() not in read and data_file(p)
                    and p.name.split(".")[0].split("-")[0] == source.split)
    if unread:  # datasets reads one format of a split: a file of another beside it would be silently passed over
        raise DLMAError(f"{label}: split '{source.split}' is read from {files[0].name}"
                        f"{' and others' if len(files) > 1 else ''}, and {unread[0]} beside it would be passed over: "
                        "keep one format of the split")
    return files


_SHARD = re.compile(r"^(.*)-(\d+)-of-(\d+)(\..+)$")


def check_shards(files: list[Path], split: str, label: str) -> None:
    """A split in shards (test-00000-of-00002.parquet, ...) is read only when every shard is there: a partial
    download would be read as the whole split."""
    groups: dict[tuple, set[int]] = {}
    for f in files:
        m = _SHARD.match(f.name)
        if m:
            groups.setdefault((f.parent, m.group(1), int(m.group(3)), m.group(4)), set()).add(int(m.group(2)))
    for (parent, stem, total, suffix), have in groups.items():
        if have != set(range(total)):
            lacking = min(set(range(total)) - have)
            raise DLMAError(f"{label}: split '{split}' has {len(have)} of its {total} shards; "
                            f"{parent / f'{stem}-{lacking:05d}-of-{total:05d}{suffix}'} is missing (a download cut "
                            "short?): download the rest")


def data_file(path: Path) -> bool:
    return path.suffix in DATA_SUFFIXES or (path.suffix in COMPRESSED and Path(path.stem).suffix in DATA_SUFFIXES)


def _first_line(e: BaseException, limit: int = 200) -> str:
    """A library's message, its first line, cut to `limit` characters (datasets lists every extension it knows)."""
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


def resolve_hub(source: Source) -> Resolved:
    """A hub id, offline: the hub cache's snapshot of the revision, else datasets' cache (checked to hold that
    revision: offline, datasets reads its newest cached one whatever revision is asked)."""
    opt = source.param or "the"
    parts = source.path.strip("/").split("/")
    repo, data_dir = "/".join(parts[:2]), "/".join(parts[2:])
    at = f" at revision {source.revision!r}" if source.revision else ""
    label = f"{source.path} [{source.split}]"
    repo_dir = hub_cache() / f"datasets--{repo.replace('/', '--')}"
    commit = source.revision if _COMMIT.fullmatch(source.revision) else None
    ref = repo_dir / "refs" / (source.revision or "main")
    if commit is None and ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    problem = ""
    snapshot = repo_dir / "snapshots" / (commit or "-")
    if commit and snapshot.is_dir():
        try:
            files = split_files(snapshot / data_dir, source, label)
            return Resolved(label, "hub cache", files, snapshot, commit)
        except DLMAError as e:  # e.g. only the README is there (datasets downloaded the data to its own cache)
            problem = str(e)
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        dataset = datasets.load_dataset(repo, split=source.split, revision=source.revision or None,
                                        cache_dir=str(datasets_cache()), **({"data_dir": data_dir} if data_dir else {}))
    except Exception as e:
        if str(e).startswith("Unknown split"):
            raise DLMAError(f"{label}: {_first_line(e)} (datasets' cache); set {opt}_split") from None
        if problem and "no split" in problem:
            raise DLMAError(problem) from None
        raise DLMAError(
            f"{source.path}: split '{source.split}'{at}: not a local file or folder, and not in the hub cache "
            f"({hub_cache()}) nor in datasets' cache ({datasets_cache()}); download it where there is network "
            f"(huggingface-cli download --repo-type dataset {repo}{' --revision ' + source.revision if at else ''}) "
            "or give a folder laid out as the hub lays it out") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    files = [Path(f["filename"]) for f in dataset.cache_files]
    cached = files[0].parent.name if files else ""
    if source.revision and commit is None:
        raise DLMAError(f"{label}: datasets' cache holds revision {cached or '(unknown)'}, and offline nothing says "
                        f"which commit {source.revision!r} is (the hub cache has no refs/{source.revision}); set "
                        f"{opt}_revision to the commit hash")
    if commit and cached != commit:
        asked = source.revision or "main"
        raise DLMAError(f"{label}: datasets' cache holds revision {cached or '(unknown)'}, not {asked} ({commit}); "
                        f"offline, datasets reads only its newest cached revision: download {asked} again, or set "
                        f"{opt}_revision to {cached}")
    return Resolved(label, "datasets cache", files, files[0].parent if files else None, cached, dataset)


def read_rows(source, split: str = "train", revision: str = "") -> tuple[str, list[tuple[int, object]]]:
    """(display name, [(line or row number, raw row)]) of a file, a sample, or one split of a hub-layout folder or
    hub dataset (its rows numbered from 1 across its files, in order)."""
    found = resolve(as_source(source, split, revision))
    if found.kind == "selection":
        _, rows = selected_rows(found.files[0])  # numbered by their line in the upstream file, wherever read from
        return found.name, [(row[KEY] + 1, row) for row in rows]
    if found.kind == "file":
        return found.name, _read_file(found.files[0])
    if found.dataset is not None:
        return found.name, list(enumerate(found.dataset, start=1))
    rows = [row for f in found.files for _, row in _read_file(f)]
    return found.name, list(enumerate(rows, start=1))


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """A file's content hash, computed once per process for a file unchanged since (data files can be large)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def source_record(source) -> dict:
    """What params.json and manifest.json keep of a data input: a file's path and hash; of a folder or hub
    dataset, the split, the revision asked and the commit read, and each data file read with its hash."""
    source = as_source(source)
    if is_selection(source.path):
        return selection_record(source.path)
    found = resolve(source)
    if found.kind == "file":
        return {"path": source.path, "sha256": file_sha256(found.files[0])}
    record = {"path": source.path, "split": source.split, "read_from": found.kind,
              "files": {os.path.relpath(f, found.root).replace(os.sep, "/"): file_sha256(f) for f in found.files}}
    if found.kind != "folder":
        record.update(revision=source.revision, resolved_revision=found.revision)
    return record


def read_text(path: Path) -> str:
    """A file's text as UTF-8 (decompressed if it ends in .xz, .gz or .bz2), or one line naming the first line
    that is not (binary garbage, Latin-1)."""
    raw = path.read_bytes()
    if path.suffix in COMPRESSED:
        import bz2
        import gzip
        import lzma

        try:
            raw = {".xz": lzma.decompress, ".gz": gzip.decompress, ".bz2": bz2.decompress}[path.suffix](raw)
        except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
            raise DLMAError(f"{path}: not a readable {path.suffix} file ({_first_line(e)})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DLMAError(f"{where(path, line)}: not UTF-8 text (byte {e.start + 1}); expected JSON") from None


def _read_file(path: Path) -> list[tuple[int, object]]:
    kind = Path(path.stem).suffix if path.suffix in COMPRESSED else path.suffix
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except (pyarrow.ArrowException, OSError) as e:
            raise DLMAError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    text = read_text(path)
    if kind == ".json":
        data = json_value(text, path)
        if not isinstance(data, list):
            raise DLMAError(f"{path}: a .json file must hold a list of rows")
        return list(enumerate(data, start=1))
    return [(n, json_value(line, path, n)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def json_value(text: str, path: Path, line: int | None = None) -> object:
    """`text` as JSON (a whole file, or its line `line`), or one error naming the file and the line: malformed,
    or what Python's reader refuses in valid JSON (a number of over 4300 digits, arrays nested too deeply)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        column = f" at column {e.colno}" if line else ""
        raise DLMAError(f"{where(path, line or e.lineno)}: malformed JSON ({e.msg}{column})") from None
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise DLMAError(f"{where(path, line)}: JSON this reader cannot take ({why})") from None


def load_examples(
    source: str | Path,
    limit: int | None = None,
    require: str | None = None,
    label_field: str = "safer_response_id",
    on_invalid: str = "error",
    split: str = "train",
    skipped: list[str] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    revision: str = "",
    pairs: Mapping = PAIRS,
) -> list[Example]:
    """Validated examples from `source` (a `Source`, or a name read at `split` and `revision`).

    require: None, "labelled" (every row must have chosen/rejected) or "query".
    on_invalid: "error" raises on the first bad row; "skip" leaves out rows whose *content* is bad
    (an empty response, chosen/rejected with different contexts: real HH-RLHF has a few) and appends
    their messages to `skipped`. Structural faults (malformed JSON, a missing field, an unknown
    prompt pair) always raise.
    `limit` counts valid examples; rows whose id is in `exclude` are passed over (used elsewhere). A row's
    `pair` must be one of `pairs` (the built-in ones, or those of the stage's pairs file).
    """
    if on_invalid not in ("error", "skip"):
        raise DLMAError(f"on_invalid must be 'error' or 'skip', got '{on_invalid}'")
    if label_field not in LABEL_FIELDS:
        raise DLMAError(f"label_field must be one of {', '.join(LABEL_FIELDS)}, got '{label_field}'")
    check_limit(limit)
    name, rows = read_rows(source, split, revision)
    out: list[Example] = []
    dropped: list[str] = []
    first_line: dict[str, str] = {}
    for n, row in rows:
        try:
            ex = parse_row(row, name, n, label_field, pairs)
            if require == "labelled" and not ex.labelled:
                raise _Invalid(f"{where(name, n, 'chosen')}: missing (this stage needs labelled pairs)", True)
        except _Invalid as e:
            if e.structural or on_invalid == "error":
                raise DLMAError(str(e)) from None
            dropped.append(str(e))
            continue
        if ex.id in exclude:
            continue
        if ex.id in first_line:
            raise DLMAError(f"{where(name, n, 'id')}: duplicate id '{ex.id}' (first at {first_line[ex.id]})")
        first_line[ex.id] = f"line {n}"
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    return usable(name, out, dropped, skipped, "rows")


def usable(name: str, kept: list, dropped: list[str], sink: list[str] | None, noun: str) -> list:
    """The items kept, once the reasons for those left out are added to `sink`; none kept is one error
    that says why (the first reason), since "no usable rows" alone leaves the user guessing."""
    if sink is not None:
        sink.extend(dropped)
    if not kept:
        why = f"all {len(dropped)} were left out, the first: {dropped[0]}" if dropped else "the file holds no rows"
        raise DLMAError(f"{name}: no usable {noun} ({why})")
    return kept


def check_limit(limit: int | None, name: str = "limit") -> None:
    """A limit counts items to keep: None (all) or >= 1. 0 or a negative number is a mistake, not 'all'."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DLMAError(f"{name} must be an integer >= 1 (or left out for all), got {limit!r}")


class _Invalid(Exception):
    def __init__(self, msg: str, structural: bool = False):
        super().__init__(msg)
        self.structural = structural


def parse_row(row: object, name: str, n: int, label_field: str = "safer_response_id",
              pairs: Mapping = PAIRS) -> Example:
    ex = _parse_row(row, name, n, label_field, pairs)
    for key, texts in (("prompt", ex.turns), ("chosen", [ex.chosen or ""]), ("rejected", [ex.rejected or ""])):
        for value in texts:
            if unreadable_text(value):
                raise _Invalid(f"{where(name, n, key)}: {unreadable_text(value)}", True)
    return ex


def unreadable_text(value: str) -> str | None:
    """What makes a string text no model can read (a tokenizer would fail on it with a traceback of its own)."""
    bad = next((c for c in value if c == "\0" or "\ud800" <= c <= "\udfff"), None)
    if bad is None:
        return None
    what = "a NUL character" if bad == "\0" else "a lone surrogate"
    return f"holds {what} at character {value.index(bad) + 1} (not text a model can read)"


def _parse_row(row: object, name: str, n: int, label_field: str, pairs: Mapping) -> Example:
    if not isinstance(row, dict):
        raise _Invalid(f"{where(name, n)}: a row must be a JSON object, got {type(row).__name__}", True)
    rid = str(row.get("id", row.get("test_index", n)))
    pair = row.get("pair")
    if pair is not None and not isinstance(pair, str):
        raise _Invalid(f"{where(name, n, 'pair')}: expected the name of a prompt pair, got {type(pair).__name__}", True)
    if pair is not None and pair not in pairs:
        try:
            get_pair(pair, pairs, where(name, n, "pair"))
        except DLMAError as e:
            raise _Invalid(str(e), True) from None

    def text(key: str, value=None) -> str:
        value = row.get(key) if value is None else value
        if value is None:
            raise _Invalid(f"{where(name, n, key)}: missing", True)
        if not isinstance(value, str):
            raise _Invalid(f"{where(name, n, key)}: expected a string, got {type(value).__name__}", True)
        if not value.strip():
            raise _Invalid(f"{where(name, n, key)}: empty response" if key != "prompt" else
                           f"{where(name, n, key)}: empty prompt")
        return value.strip()

    if "context" in row and "prompt" not in row:  # processed-hh-rlhf: {role, text} turns
        turns = _context_turns(row["context"], name, n)
        if "chosen" not in row and "rejected" not in row:
            return Example(rid, turns, pair=pair, source=f"{name}:{n}")
        return Example(rid, turns, _turn_text(row, "chosen", name, n), _turn_text(row, "rejected", name, n), pair,
                       f"{name}:{n}")
    if "chosen" in row or "rejected" in row:
        if "prompt" not in row:  # HH-RLHF: whole dialogues
            turns_c, resp_c = split_dialogue(text("chosen"), name, n, "chosen")
            turns_r, resp_r = split_dialogue(text("rejected"), name, n, "rejected")
            if turns_c != turns_r:
                raise _Invalid(f"{where(name, n, 'rejected')}: its context differs from 'chosen''s")
            for key, resp in (("chosen", resp_c), ("rejected", resp_r)):
                if not resp:
                    raise _Invalid(f"{where(name, n, key)}: empty response")
            return Example(rid, turns_c, resp_c, resp_r, pair, f"{name}:{n}")
        turns = _turns(row["prompt"], name, n, "prompt")  # TRL preference format
        return Example(rid, turns, _last(row, "chosen", name, n), _last(row, "rejected", name, n), pair, f"{name}:{n}")
    if "response_0" in row or "response_1" in row:  # PKU-SafeRLHF
        if label_field not in row:
            raise _Invalid(f"{where(name, n, label_field)}: missing", True)
        label = row[label_field]
        if label not in (0, 1):
            raise _Invalid(f"{where(name, n, label_field)}: must be 0 or 1, got {label!r}", True)
        r0, r1 = text("response_0"), text("response_1")
        chosen, rejected = (r0, r1) if label == 0 else (r1, r0)
        return Example(rid, [text("prompt")], chosen, rejected, pair, f"{name}:{n}")
    key = "prompt" if "prompt" in row else "query"
    if key not in row:
        raise _Invalid(f"{where(name, n, 'prompt')}: missing (a row needs 'prompt', or 'chosen'/'rejected')", True)
    return Example(rid, _turns(row[key], name, n, key), pair=pair, source=f"{name}:{n}")


def split_dialogue(dialogue: str, name: str, n: int, key: str) -> tuple[list[str], str]:
    """HH-RLHF dialogue -> (context turns, last assistant response)."""
    parts = _TURN.split("\n\n" + dialogue.lstrip("\n") if not dialogue.startswith("\n\n") else dialogue)
    # parts: ["", "Human", " text", "Assistant", " text", ...]
    speakers, texts = parts[1::2], [p.strip() for p in parts[2::2]]
    if not speakers or speakers[0] != "Human" or speakers[-1] != "Assistant":
        raise _Invalid(f"{where(name, n, key)}: not an HH-RLHF dialogue (Human first, Assistant last)", True)
    if not all(texts[:-1]):  # a query a model would be asked as nothing (the pairs' reader refuses it later)
        raise _Invalid(f"{where(name, n, key)}: turn {texts.index('') + 1} of the context is empty")
    return texts[:-1], texts[-1]


def _turns(value, name: str, n: int, key: str) -> list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(f"{where(name, n, key)}: empty prompt", True)
        return [value.strip()]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 for m in value):
        turns = [m["content"].strip() for m in value if m.get("role") != "system"]
        if turns and all(turns):
            return turns
        if turns:
            raise _Invalid(f"{where(name, n, key)}: message {turns.index('') + 1} is empty", True)
    raise _Invalid(f"{where(name, n, key)}: expected a string or a list of {{role, content}} messages (content "
                   "text)", True)


ROLES = {"human": "user", "user": "user", "assistant": "assistant"}


def _context_turns(value, name: str, n: int) -> list[str]:
    """processed-hh-rlhf's context: {role, text} turns, human first, alternating, ending on a human turn."""
    what = "expected a list of {role, text} turns, human first and last, alternating"
    if not (isinstance(value, list) and value and all(isinstance(t, dict) for t in value)):
        raise _Invalid(f"{where(name, n, 'context')}: {what}", True)
    roles = [ROLES.get(str(t.get("role", "")).lower()) for t in value]
    if roles != ["user" if k % 2 == 0 else "assistant" for k in range(len(value))] or roles[-1] != "user":
        raise _Invalid(f"{where(name, n, 'context')}: {what} (roles: {', '.join(str(t.get('role')) for t in value)})",
                       True)
    texts = [t.get("text") for t in value]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise _Invalid(f"{where(name, n, 'context')}: every turn needs a non-empty 'text'", True)
    return [t.strip() for t in texts]


def _turn_text(row: dict, key: str, name: str, n: int) -> str:
    """processed-hh-rlhf's chosen / rejected: an assistant {role, text} turn."""
    value = row.get(key)
    if value is None:
        raise _Invalid(f"{where(name, n, key)}: missing", True)
    if not (isinstance(value, dict) and isinstance(value.get("text"), str)):
        raise _Invalid(f"{where(name, n, key)}: expected a {{role, text}} turn", True)
    if not value["text"].strip():
        raise _Invalid(f"{where(name, n, key)}: empty response")
    return value["text"].strip()


def _last(row: dict, key: str, name: str, n: int) -> str:
    value = row.get(key)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if value is None:
        raise _Invalid(f"{where(name, n, key)}: missing", True)
    if not isinstance(value, str):
        raise _Invalid(f"{where(name, n, key)}: expected a string or messages", True)
    if not value.strip():
        raise _Invalid(f"{where(name, n, key)}: empty response")
    return value.strip()


# ----------------------------------------------------------------------------------------------------------
# Generated and scored pairs: the schema of pairs.jsonl and scored.jsonl, checked where they are read


class GeneratedPair(TypedDict, total=False):
    """A row of `pairs.jsonl` (stage 1). id, turns, o1 and o2 are required; `read_pairs` checks every field."""

    id: str | int
    turns: list[str]  # the context, user turn first
    o1: str  # sampled under p+
    o2: str  # sampled under p-
    pair: str
    rendering: str
    o1_tokens: int
    o2_tokens: int
    o1_end: str  # eos, turn or length
    o2_end: str
    batch: int


class ScoredPair(GeneratedPair, total=False):
    """A row of `scored.jsonl` (stage 2): the generated pair, its four S terms and R."""

    s_o1_pos: float
    s_o1_neg: float
    s_o2_pos: float
    s_o2_neg: float
    self_reward: float


def pairs_file(path) -> Path:
    """A pairs artifact given as its file or as its stage folder (scored.jsonl first, then pairs.jsonl)."""
    path = Path(path)
    if path.is_dir():
        for name in ("scored.jsonl", "pairs.jsonl"):
            if (path / name).is_file():
                return path / name
        raise DLMAError(f"{path}: a folder without scored.jsonl or pairs.jsonl (run the previous stage first)")
    if not path.exists():
        raise DLMAError(f"{path}: no such file (run the previous stage first)")
    return path


def read_pairs(path, need_self_reward: bool = False, dropped: list[str] | None = None,
               pairs: Mapping | None = None) -> list[ScoredPair]:
    """Generated (or scored) pairs, each row checked: id, turns (a list of strings, user first), o1, o2
    (strings), and where present pair (a name, among `pairs` when the reader needs the pair itself), rendering,
    self_reward (or required, with `need_self_reward`).
    A pair with an empty response is left out (an empty response has no token for S to score) and its
    reason appended to `dropped`; anything else wrong is one error naming file, line and field."""
    path = pairs_file(path)
    rows, first_line, empty = [], {}, []
    for n, row in _read_file(path):  # the loader's reader: one error naming the file and line
        if not isinstance(row, dict):
            raise DLMAError(f"{where(path, n)}: a row must be a JSON object, got {type(row).__name__}")
        problem = _pair_row_problem(row, need_self_reward, pairs)
        if problem:
            raise DLMAError(f"{where(path, n, problem[0])}: {problem[1]}")
        if row["id"] in first_line:
            first = first_line[row["id"]]
            raise DLMAError(f"{where(path, n, 'id')}: duplicate id {row['id']!r} (first at line {first})")
        first_line[row["id"]] = n
        blank = [k for k in ("o1", "o2") if not row[k].strip()]
        if blank:
            empty.append(f"{where(path, n, blank[0])}: empty response")
            continue
        rows.append(row)
    return usable(str(path), rows, empty, dropped, "pairs")


def _pair_row_problem(row: dict, need_self_reward: bool, pairs: Mapping | None) -> tuple[str, str] | None:
    """(field, what is wrong) for the first bad field of a pairs row, or None."""
    for key in ("id", "turns", "o1", "o2"):
        if key not in row:
            return key, "missing"
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        return "id", f"expected a string or an integer, got {type(row['id']).__name__}"
    turns = row["turns"]
    if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t.strip() for t in turns)):
        return "turns", "expected a non-empty list of non-empty strings (the context, user turn first)"
    for key in ("o1", "o2"):
        if not isinstance(row[key], str):
            return key, f"expected a string, got {type(row[key]).__name__}"
    for key, texts in (("turns", turns), ("o1", [row["o1"]]), ("o2", [row["o2"]])):
        problem = next(filter(None, map(unreadable_text, texts)), None)
        if problem:
            return key, problem
    if "pair" in row and not (isinstance(row["pair"], str) and row["pair"]):
        return "pair", f"expected the name of a prompt pair, got {row['pair']!r}"
    for key, known in (("pair", pairs), ("rendering", RENDERINGS)):
        if key in row and known is not None and row[key] not in known:
            what = "prompt pair" if key == "pair" else key
            return key, f"unknown {what} {row[key]!r} (known: {', '.join(sorted(known))})"
    value = row.get("self_reward")
    if (need_self_reward or "self_reward" in row) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return "self_reward", f"missing or not a finite number (got {value!r}); run `dlma score`"
    return None


def input_record(source) -> dict:
    """What params.json and manifest.json keep of an input: its path as given and, for a local file, its content
    hash, so that a rerun on changed data is refused rather than answered with stale results. A data source
    (`dlma.data.Source`) keeps its split, revision and the hash of each data file read (`data.source_record`)."""
    if isinstance(source, Source):
        return source_record(source)
    path = resolve_source(source)
    return {"path": str(source), "sha256": sha256_file(path) if path is not None and path.is_file() else None}
