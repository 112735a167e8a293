"""The book's own pages (book/*.md): a number a run records is glued from the notebook that computed it, never
typed; a figure quoted from elsewhere (the paper, the released code, an earlier book) is marked as quoted, with
its source: {abbr}`0.05 (the paper)` (Sphinx's abbreviation role: the source shows on hover)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "book").glob("*.md"))

# Text that holds no typed figure: code, formulas, roles that glue, cite or link, a directive's options,
# links' targets, dates, and a number that is part of a name (SmolLM2-135M, GPT-4, 4-bit, 7B, arXiv ids).
NOT_PROSE = [
    r"```.*?```", r"\{(?:glue(?::\w+)?|doc|cite|ref|numref|eq)\}`[^`]*`", r"`[^`]*`", r"\$\$.*?\$\$",
    MATH := r"\$[^$]+\$", r"\]\([^)]*\)", r"^\s*:\w+:.*$", r"\b\d{4}-\d{2}-\d{2}\b", r"arXiv \d+\.\d+",
    r"et al\.,? \d{4}", r"\(\d{4}\)", r"\b(?:ACL|NeurIPS|ICLR|EMNLP) \d{4}",
    r"(?<![\w.])95%",  # the level of every interval in the book: a convention of the method, not a figure
    r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? (?:\d{1,2}(?:, \d{4})?|\d{4})\b",  # dates
]
# Numbers that name a part of the method or the book, not a figure: stage 3, stages 5 and 6, section 2, ...
NAMES = r"\b(?:stages?|sections?|figures?|claims?|steps?|issues?|points?|tables?|equations?|notebooks?|seeds?|" \
        r"exit status)\s+\d+[a-z]?(?:(?:,\s*|\s+(?:and|to|or|of)\s+)\d+[a-z]?)*"
NUMBER = re.compile(r"(?<![\w.\-/])[-+−]?\d[\d,]*(?:\.\d+)?%?(?![\w\-]|\.\d)")
QUOTED = re.compile(r"\{abbr\}`([^`(]*)\(([^`)]*)\)`")
SOURCES = ("the paper", "the released code", "RLCD", "the book of", "TRL", "transformers", "the dataset", "the preset",
           "benchmark", "the code")


# A table column whose header names its source quotes it: "the paper", "the released code", a preset's values.
SOURCE_COLUMNS = ("the paper", "the released code", "released value", "preset", "benchmark")
# A region the code writes between `<!-- NAME -->` and `<!-- END NAME -->` (the parameter table, from the presets).
WRITTEN = r"<!-- ([A-Z ]+) -->.*?<!-- END \1 -->"


def quoted_columns(text: str) -> str:
    """`text` with the cells of each table column whose header names a source blanked."""
    lines, header = text.split("\n"), None
    for k, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = line.split("|")
        if header is None:
            header = cells
        elif not re.fullmatch(r"[-| :]+", line):
            lines[k] = "|".join(" " * len(c) if j < len(header) and any(s in header[j] for s in SOURCE_COLUMNS)
                                else c for j, c in enumerate(cells))
    return "\n".join(lines)


def figure_in_math(math: str) -> bool:
    """A formula of numbers alone ($-0.566$, $[-1.19, -0.08]$) but for 0, 0.5 and 1 (no effect, chance, bounds)."""
    return bool(re.fullmatch(r"\$[-+−\s\d.,\[\]]+\$", math)) and \
        bool(set(re.findall(r"\d[\d.,]*", math)) - {"0", "0.5", "1"})


def unmarked(text: str) -> list[tuple[int, str]]:
    """(line, number) of each figure typed in a page's prose, neither glued nor quoted with its source."""
    for m in QUOTED.finditer(text):
        if not any(s in m.group(2) for s in SOURCES):
            raise AssertionError(f"quoted figure {m.group(0)!r} names no source among {SOURCES}")
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731 -- keeps the lines where they were
    text = quoted_columns(re.sub(WRITTEN, blank, text, flags=re.S))
    for pattern in [QUOTED.pattern, *NOT_PROSE, NAMES]:
        # a formula is not prose, but a figure typed as one ($-0.566$, $[-1.19, -0.08]$) is still a figure
        keep = (lambda m: m.group(0) if figure_in_math(m.group(0)) else blank(m)) if pattern == MATH else blank
        text = re.sub(pattern, keep, text, flags=re.S | re.M | re.I)
    text = re.sub(r"^\s*(?:\d+\.|#+.*|\|[-| :]+\|)\s", blank, text, flags=re.M)  # list numbers, headings
    return [(text.count("\n", 0, m.start()) + 1, m.group(0).rstrip(",")) for m in NUMBER.finditer(text)]


# Pages not yet gone through: how many figures each types, which may only shrink (issue 28). None left.
NOT_YET: dict[str, int] = {}


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_a_page_types_no_figure_a_run_records(page):
    found = unmarked((ROOT / "book" / page).read_text(encoding="utf-8"))
    assert len(found) <= NOT_YET.get(page, 0), found


def test_the_scan_sees_a_typed_figure_and_passes_a_glued_or_quoted_one():
    assert unmarked("accuracy 0.483 on 1,303 pairs\n") == [(1, "0.483"), (1, "1,303")]
    assert unmarked("moves by $-0.566$ $[-1.188, -0.082]$ at $\\ln 2 = 0.69$\n") == [
        (1, "-0.566"), (1, "-1.188"), (1, "-0.082")]
    assert unmarked("accuracy {glue:text}`nb.ipynb::acc:s`; stages 5 and 6 of SmolLM2-135M, $\\beta = 0.1$\n"
                    "LLaMA2-7B, GPT-4, 4-bit, on 2026-11-28, the paper {abbr}`0.05 (the paper)`\n") == []
    with pytest.raises(AssertionError, match="names no source"):
        unmarked("{abbr}`0.05 (somewhere)`")


def test_the_benchmarks_pages_gpu_section_is_what_its_script_writes_from_the_stored_runs():
    """The figures of its marked region are written by benchmarks/bench.py; the GPU part, from the JSON of the GPU
    runs kept in benchmarks/results, is rewritten here without a GPU, and must be the page's."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    page = (ROOT / "book" / "benchmarks.md").read_text(encoding="utf-8")
    gpu = "\n".join(bench.gpu_section())
    assert gpu and page.index(gpu) > page.index("<!-- BENCHMARKS -->")
    assert "5,189 against\n  1,119 new tokens/s" in gpu  # the stored H200 run's compiled and baseline throughputs
