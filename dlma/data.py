"""One loader for every input the method reads, returning validated `Example`s.

Accepted rows (format detected per row):
- HH-RLHF: `chosen` / `rejected` dialogue strings ("\\n\\nHuman: ...\\n\\nAssistant: ..."), split at the
  last Assistant turn; both must share the context.
- PKU-SafeRLHF: `prompt`, `response_0`, `response_1` and a label field (`safer_response_id` by default,
  or `better_response_id`).
- TRL preference: `prompt`, `chosen`, `rejected`, as strings or as message lists.
- Query only: `prompt` (or `query`), a string or a message list.
Any row may carry `id` and `pair` (the name of the prompt pair to generate it with).

Sources: a local .jsonl / .json / .parquet file, the name of a shipped sample (`sample:queries`,
`sample:pairs`), or a hub dataset id (`datasets`, offline cache only here).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypedDict

from .errors import DLMAError, where
from .prompts import PAIRS, RENDERINGS, get_pair

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


def resolve_source(source: str | Path) -> Path | None:
    """The local file behind a source (a shipped sample or a path), or None for a hub id."""
    source = str(source)
    if source.startswith("sample:"):
        return sample_path(source.split(":", 1)[1])
    path = Path(source)
    return path if path.is_file() else None


def read_rows(source: str | Path, split: str = "train") -> tuple[str, list[tuple[int, object]]]:
    """(display name, [(line number, raw row)]) from a file, a sample or a hub dataset."""
    source = str(source)
    if source.startswith("sample:"):
        source = str(sample_path(source.split(":", 1)[1]))
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        if not path.exists():
            raise DLMAError(f"{path}: no such file")
        if path.is_dir():
            raise DLMAError(f"{path}: is a folder; give a .jsonl, .json or .parquet file")
        return str(path), _read_file(path)
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # hub id that is not cached offline, typo, ...
        raise DLMAError(
            f"{source}: not a local file, and the hub dataset could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); download it where there is network or give a local file"
        ) from None
    return source, list(enumerate(ds, start=1))


def read_text(path: Path) -> str:
    """A file's text as UTF-8, or one line naming the first line that is not (binary garbage, Latin-1)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DLMAError(f"{where(path, line)}: not UTF-8 text (byte {e.start + 1}); expected JSON") from None


def _read_file(path: Path) -> list[tuple[int, object]]:
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except (pyarrow.ArrowException, OSError) as e:
            raise DLMAError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    text = read_text(path)
    if path.suffix == ".json":
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
) -> list[Example]:
    """Validated examples from `source`.

    require: None, "labelled" (every row must have chosen/rejected) or "query".
    on_invalid: "error" raises on the first bad row; "skip" leaves out rows whose *content* is bad
    (an empty response, chosen/rejected with different contexts: real HH-RLHF has a few) and appends
    their messages to `skipped`. Structural faults (malformed JSON, a missing field, an unknown
    prompt pair) always raise.
    `limit` counts valid examples; rows whose id is in `exclude` are passed over (used elsewhere).
    """
    if on_invalid not in ("error", "skip"):
        raise DLMAError(f"on_invalid must be 'error' or 'skip', got '{on_invalid}'")
    if label_field not in LABEL_FIELDS:
        raise DLMAError(f"label_field must be one of {', '.join(LABEL_FIELDS)}, got '{label_field}'")
    check_limit(limit)
    name, rows = read_rows(source, split)
    out: list[Example] = []
    dropped: list[str] = []
    first_line: dict[str, str] = {}
    for n, row in rows:
        try:
            ex = parse_row(row, name, n, label_field)
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


def parse_row(row: object, name: str, n: int, label_field: str = "safer_response_id") -> Example:
    ex = _parse_row(row, name, n, label_field)
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


def _parse_row(row: object, name: str, n: int, label_field: str) -> Example:
    if not isinstance(row, dict):
        raise _Invalid(f"{where(name, n)}: a row must be a JSON object, got {type(row).__name__}", True)
    rid = str(row.get("id", row.get("test_index", n)))
    pair = row.get("pair")
    if pair is not None and not isinstance(pair, str):
        raise _Invalid(f"{where(name, n, 'pair')}: expected the name of a prompt pair, got {type(pair).__name__}", True)
    if pair is not None and pair not in PAIRS:
        try:
            get_pair(str(pair), where(name, n, "pair"))
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


def read_pairs(path, need_self_reward: bool = False, dropped: list[str] | None = None) -> list[ScoredPair]:
    """Generated (or scored) pairs, each row checked: id, turns (a list of strings, user first), o1, o2
    (strings), and where present pair, rendering, self_reward (or required, with `need_self_reward`).
    A pair with an empty response is left out (an empty response has no token for S to score) and its
    reason appended to `dropped`; anything else wrong is one error naming file, line and field."""
    path = pairs_file(path)
    rows, first_line, empty = [], {}, []
    for n, row in _read_file(path):  # the loader's reader: one error naming the file and line
        if not isinstance(row, dict):
            raise DLMAError(f"{where(path, n)}: a row must be a JSON object, got {type(row).__name__}")
        problem = _pair_row_problem(row, need_self_reward)
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


def _pair_row_problem(row: dict, need_self_reward: bool) -> tuple[str, str] | None:
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
    for key, known in (("pair", PAIRS), ("rendering", RENDERINGS)):
        if key in row and (not isinstance(row[key], str) or row[key] not in known):
            what = "prompt pair" if key == "pair" else key
            return key, f"unknown {what} {row[key]!r} (known: {', '.join(sorted(known))})"
    value = row.get("self_reward")
    if (need_self_reward or "self_reward" in row) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return "self_reward", f"missing or not a finite number (got {value!r}); run `dlma score`"
    return None
