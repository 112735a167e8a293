"""The package's shape (issue 29): no import cycle, imports at the top of modules but for the heavy libraries and a
deferred module of the package that says why, no function over 60 lines, and a CLI that loads no model library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {p.stem: p for p in (ROOT / "dlma").glob("*.py")}


def package_imports(node: ast.AST) -> list[str]:
    """The modules of the package an import statement names."""
    if isinstance(node, ast.ImportFrom) and node.level == 1:
        names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlma."):
        names = [node.module.split(".")[1]]
    else:
        names = []
    return [n for n in names if n in MODULES]


def functions(tree: ast.AST):
    return [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_import_cycle_counting_the_imports_inside_functions():
    graph = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            graph[m] |= {t for t in package_imports(node) if t != m}
    state: dict[str, str] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            assert state.get(t) != "open", f"import cycle: {' -> '.join([*trail[trail.index(t):], t])}"
            if t not in state:
                visit(t, [*trail, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_a_module_of_the_package_imported_inside_a_function_says_why():
    unexplained = []
    for m, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for f in functions(ast.parse(text)):
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and package_imports(node) and \
                        "# deferred" not in lines[node.lineno - 1]:
                    unexplained.append(f"dlma/{m}.py:{node.lineno}")
    assert not unexplained


def test_no_function_over_60_lines():
    long = [f"dlma/{m}.py:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for m, path in MODULES.items() for f in functions(ast.parse(path.read_text()))
            if f.end_lineno - f.lineno + 1 > 60]
    assert not long


def test_the_cli_and_its_checks_load_no_model_library():
    code = ("import sys, dlma.cli, dlma.commands, dlma.params, dlma.data, dlma.presets; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'matplotlib', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_run_layout_names_each_stage_folder_and_file_once(tmp_path):
    import pytest

    from dlma.commands import NOTEBOOKS, STAGES
    from dlma.errors import DLMAError
    from dlma.layout import FOLDERS, Run

    run = Run(tmp_path / "r")
    assert run.generate.pairs == tmp_path / "r" / "01_generate" / "pairs.jsonl"
    assert run.train.weights == tmp_path / "r" / "04_train_dlma" / "adapter" / "adapter_model.safetensors"
    assert tuple(FOLDERS.values()) == STAGES  # the registry's stages are the layout's folders, in order
    for steps in NOTEBOOKS.values():  # every path the registry gives a command is one the layout names
        for step in steps:
            for name in step.paths.values():
                assert str(run.path(name)).startswith(str(run.root))
    with pytest.raises(AttributeError, match="no file named 'pair'"):
        _ = run.generate.pair
    with pytest.raises(DLMAError, match=r"05_evaluate_alignment/params.json: no such file \(run "
                                        r"05_evaluate_alignment first; stage 6 reads its settings\)"):
        run.evaluate.settings("stage 6")
    run.evaluate.folder.mkdir(parents=True)
    run.evaluate.params.write_text('{"beta": 0.1}')
    assert run.evaluate.settings() == {"beta": 0.1}
