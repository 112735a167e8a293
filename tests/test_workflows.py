"""The habits of the field: the GitHub Actions workflows and the pre-commit configuration.

Each workflow is validated against the GitHub workflow schema vendored in `check-jsonschema` (no network: the
schema ships in the package, and every proxy points at a closed local port so that any HTTP attempt fails at
once), and that check is shown to fail on a broken workflow. Then what the workflows do: `make test` on every
push and pull request; the book built as committed (nothing executed) and `_build/html` deployed to Pages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
BIN = Path(sys.executable).parent
OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, a request is refused at once


def load(path: Path) -> dict:
    """A YAML file; a workflow's `on:` key is read back as `on` (YAML 1.1 loads the bare word as True)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:
        data["on"] = data.pop(True)
    return data


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(HTTP_PROXY=OFFLINE, HTTPS_PROXY=OFFLINE, http_proxy=OFFLINE, https_proxy=OFFLINE)
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def uses(workflow: dict, action: str) -> list[dict]:
    return [step for step in steps(workflow) if step.get("uses", "").split("@")[0] == action]


def test_there_are_two_workflows():
    assert [p.name for p in WORKFLOWS] == ["book.yml", "test.yml"]


@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflows_match_the_vendored_schema_offline(schema):
    res = check_jsonschema("--builtin-schema", schema, *map(str, WORKFLOWS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok -- validation done" in res.stdout


def test_the_schema_check_fails_on_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text('on: push\njobs: {build: {runs-on: 3, steps: "x"}}\n', encoding="utf-8")
    res = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(broken))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Schema validation errors" in res.stdout + res.stderr


def test_the_test_workflow_runs_make_test():
    wf = load(ROOT / ".github" / "workflows" / "test.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert wf["concurrency"]["cancel-in-progress"] is True
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == "${{ matrix.os }}"  # x86-64 and ARM: the checked results hold on either
    assert job["strategy"]["matrix"]["os"] == ["ubuntu-latest", "ubuntu-24.04-arm"]
    assert job["timeout-minutes"] == 90
    assert uses(wf, "actions/checkout") and uses(wf, "actions/setup-python")
    assert str(uses(wf, "actions/setup-python")[0]["with"]["python-version"]) == "3.11"
    assert [s["run"] for s in steps(wf) if "run" in s] == ["make test"]


def test_the_book_workflow_renders_the_committed_notebooks_and_deploys_build_html():
    wf = load(ROOT / ".github" / "workflows" / "book.yml")
    assert wf["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in wf["on"]
    assert wf["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    runs = [s["run"] for s in steps(wf) if "run" in s]
    assert "make setup" in runs and ".venv/bin/jupyter-book build . -W --keep-going" in runs
    # The workflow's comment says nothing is re-executed: the book renders book/results/ as committed.
    assert load(ROOT / "_config.yml")["execute"]["execute_notebooks"] == "off"
    (upload,) = uses(wf, "actions/upload-pages-artifact")
    assert upload["uses"].endswith("@v3") and upload["with"]["path"] == "_build/html"
    (deploy,) = uses(wf, "actions/deploy-pages")
    assert deploy["uses"].endswith("@v4")
    deploy_job = next(job for job in wf["jobs"].values() if deploy in job.get("steps", []))
    assert deploy_job["environment"]["name"] == "github-pages"
    assert deploy_job["needs"] == next(name for name, job in wf["jobs"].items() if upload in job["steps"])


def installed_ruff_version() -> str:
    ruff = BIN / "ruff" if (BIN / "ruff").exists() else "ruff"
    out = subprocess.run([str(ruff), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1]


def test_pre_commit_runs_ruff_as_make_lint_does_at_the_installed_version():
    config = load(ROOT / ".pre-commit-config.yaml")
    repos = config["repos"]
    assert all(set(r) == {"repo", "rev", "hooks"} and r["hooks"] for r in repos)
    assert all(isinstance(h["id"], str) for r in repos for h in r["hooks"])
    (ruff,) = [r for r in repos if r["repo"] == "https://github.com/astral-sh/ruff-pre-commit"]
    assert ruff["rev"] == f"v{installed_ruff_version()}"
    pin = re.search(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert ruff["rev"] == f"v{pin}"
    (hook,) = ruff["hooks"]
    assert hook["id"] in ("ruff-check", "ruff") and not hook.get("args")  # `ruff check dlma tests`: no --fix
    files = re.compile(hook["files"])
    assert files.search("dlma/score.py") and files.search("tests/test_score.py")
    assert not files.search("notebooks/01_generate.ipynb") and not files.search("benchmarks/bench.py")
    # Nothing that rewrites committed files: the notebooks in book/results/ hold their outputs on purpose.
    ids = {h["id"] for r in repos for h in r["hooks"]}
    assert not ids & {"nbstripout", "end-of-file-fixer", "trailing-whitespace", "ruff-format"}
