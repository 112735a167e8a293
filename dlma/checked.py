"""The key results of a stage as text that is the same on every CPU: what nbval compares.

Each notebook ends with a cell marked `# NBVAL_CHECK_OUTPUT` that prints `key_results(...)`; `notebooks/` stores
the output of the smoke run (`make expected` rewrites it), and `pytest --nbval-lax notebooks/` fails when a
re-execution prints something else. So a change that moves a result (a sign in R, a leaking split, a flipped
scorer) fails CI, not only a change that breaks a cell.

Precision: counts, texts, verdicts and short floats (a setting such as 5e-05, a share such as 0.625) exactly;
every other number at two decimals. The sampled tokens are the
same under every instruction set of PyTorch's CPU kernels and with 1 or 2 threads (checked: the smoke run's
pairs are byte-identical under ATEN_CPU_CAPABILITY=default and avx2), but float sums are not: a self-reward
moves by up to 3e-5 between them, so a third decimal would flip now and then where a second almost never does.
A value that rounds to zero is printed "0.0", as an exact zero is, whatever its sign: a difference that is 0
on one machine is 1e-9 on another. Timings, paths, hashes and versions are left
out: they change from one machine or checkout to the next and say nothing about the method.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MARK = "# NBVAL_CHECK_OUTPUT"  # nbval --nbval-lax compares the outputs of the cells holding this line
DIGITS = 2
# keys whose values are not results: timings, where things are, what read them
VOLATILE = re.compile(r"^(inputs|out|run_dir|versions?|path)$|(_s|seconds|_time|runtime|per_step|sha256|_path)$")


def number(x: float) -> str:
    if len(repr(x)) <= 8 and x != 0:  # a value someone typed (5e-05, 0.1) or an exact one (a count's share, 0.625)
        return repr(x)
    text = f"{x:.{DIGITS}f}"
    return "0.0" if float(text) == 0 else text  # an exact zero and float noise around it print alike


def flatten(value, prefix: str = "") -> list[str]:
    """`a.b.c: value` lines, keys sorted; a short list of numbers (an interval) stays on one line."""
    if isinstance(value, dict):
        return [line for k in sorted(value) if not VOLATILE.search(str(k))
                for line in flatten(value[k], f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [f"{prefix}: [{', '.join(scalar(v) for v in value)}]"]
        return [line for k, v in enumerate(value) for line in flatten(v, f"{prefix}[{k}]")]
    return [f"{prefix}: {scalar(value)}"]


def scalar(v) -> str:
    if isinstance(v, float):
        return number(v)
    if isinstance(v, str) and len(v) > 80:  # a response: its start and its length say whether it moved
        return f"{v[:60]!r}... ({len(v)} chars)"
    return json.dumps(v) if isinstance(v, str) or v is None or isinstance(v, bool) else str(v)


def rows_results(rows: list[dict]) -> list[str]:
    """Generated or scored pairs: per pair its id, how each response ended, their lengths and R if scored."""
    lines = [f"pairs: {len(rows)}"]
    for r in rows:
        line = f"{r['id']}: o1 {r.get('o1_end')} {len(r['o1'])} chars, o2 {r.get('o2_end')} {len(r['o2'])} chars"
        if "self_reward" in r:
            line += f", R {number(r['self_reward'])}"
        lines.append(line)
    return lines


def key_results(result, *folders) -> str:
    """What the stage returned, and the parameters each of its folders recorded (params.json)."""
    lines = rows_results(result) if isinstance(result, list) else flatten(result)
    for folder in map(Path, folders):
        params = json.loads((folder / "params.json").read_text())
        lines += flatten(params, f"params[{folder.name}]")
    return "\n".join(lines)
