"""One writer per output folder (dlma/lock.py), with real processes: a holder takes the lock, signals through a
file that it holds it, and sleeps; other processes then try the same folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlma.errors import DLMAError
from dlma.lock import LOCK_FILE, hold, holder, launch_id

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
LAUNCH = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}

# argv: folder, ready file, wait
HOLD = """
import sys, time
from pathlib import Path
from dlma.lock import hold
with hold(sys.argv[1], wait=float(sys.argv[3])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(60)
"""
# argv: folder, wait; prints "got it", or the error and exits 2 as the CLI does
TRY = """
import sys
from dlma.errors import DLMAError
from dlma.lock import hold
try:
    with hold(sys.argv[1], wait=float(sys.argv[2])):
        print("got it")
except DLMAError as e:
    print(e)
    sys.exit(2)
"""


def env(**launch) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    return out | launch


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """This test process is a single process, whatever launched pytest."""
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def start(tmp_path):
    """start(folder, **launch_env): a process holding folder's lock, returned once it holds it."""
    procs = []

    def start(folder: Path, wait: float = 10.0, **launch) -> subprocess.Popen:
        ready = tmp_path / f"ready{len(procs)}"
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ready), str(wait)], env=env(**launch),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                pytest.fail(f"holder did not take the lock: {p.communicate()[0]}")
            time.sleep(0.02)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def attempt(folder: Path, wait: float = 0.3, **launch) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(folder), str(wait)], env=env(**launch),
                          capture_output=True, text=True, timeout=30)


def refused_by(result: subprocess.CompletedProcess, folder: Path, pid: int) -> bool:
    lines = result.stdout.splitlines()
    return (result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{folder.resolve()}: ")
            and f"(pid {pid})" in lines[0])


def test_second_process_refused_naming_folder_and_holder(tmp_path, start):
    folder = tmp_path / "run" / "new"  # created by the lock
    first = start(folder)
    assert holder(folder) == first.pid
    second = attempt(folder)
    assert refused_by(second, folder, first.pid), second
    with pytest.raises(DLMAError, match=rf"\(pid {first.pid}\) is writing here"):
        with hold(folder):
            pass


def test_free_after_sigkill(tmp_path, start):
    folder = tmp_path / "run"
    first = start(folder)
    first.kill()  # SIGKILL: no cleanup ran, the record stays, the OS released the lock
    first.wait()
    assert (folder / LOCK_FILE).read_text().strip()
    assert holder(folder) is None
    assert attempt(folder).stdout == "got it\n"


def test_free_after_exit_with_or_without_cleanup(tmp_path):
    folder = tmp_path / "run"
    for end in ("pass", "import os; os._exit(1)", "raise SystemExit(3)"):
        script = f"from dlma.lock import hold\nwith hold({str(folder)!r}):\n    {end}\n"
        subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, timeout=30)
        assert holder(folder) is None, end
        with hold(folder):
            assert holder(folder) == os.getpid()
        assert (folder / LOCK_FILE).exists()  # the file stays and blocks nothing
        assert holder(folder) is None


def test_nested_hold_in_one_process(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    with hold(folder):
        with hold("run"):  # the same folder by another path: no deadlock, no refusal
            assert holder(folder) == os.getpid()
        assert refused_by(attempt(folder), folder, os.getpid())  # still held by the outer hold
    assert attempt(folder).stdout == "got it\n"


def test_processes_of_one_launch_share_the_lock(tmp_path, start):
    folder = tmp_path / "run"
    rank0 = start(folder, RANK="0", **LAUNCH)
    assert attempt(folder, RANK="1", **LAUNCH).stdout == "got it\n"
    other_launch = LAUNCH | {"MASTER_PORT": "29501"}
    assert refused_by(attempt(folder, RANK="1", **other_launch), folder, rank0.pid)
    assert refused_by(attempt(folder, RANK="0", **other_launch), folder, rank0.pid)
    assert refused_by(attempt(folder), folder, rank0.pid)  # a single process


def test_rank_above_0_waits_for_rank_0(tmp_path, start):
    folder = tmp_path / "run"
    rank1 = subprocess.Popen([sys.executable, "-c", TRY, str(folder), "20"], env=env(RANK="1", **LAUNCH),
                             stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    start(folder, RANK="0", **LAUNCH)
    assert rank1.communicate(timeout=30)[0] == "got it\n"


def test_rank_above_0_refused_once_rank_0_is_gone(tmp_path):
    folder = tmp_path / "run"
    script = f"from dlma.lock import hold\nwith hold({str(folder)!r}):\n    pass\n"
    subprocess.run([sys.executable, "-c", script], env=env(RANK="0", **LAUNCH), check=True, timeout=30)
    result = attempt(folder, RANK="1", **LAUNCH)  # released: no launch id left to trust
    assert result.returncode == 2 and "rank 0 of this launch did not take the folder's lock" in result.stdout


def test_rank_above_0_without_launch_id_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DLMAError, match="cannot tell which launch"):
        with hold(tmp_path):
            pass


def test_launch_id():
    assert launch_id({}) is None
    assert launch_id({"MASTER_ADDR": "h", "MASTER_PORT": "1"}) == "h:1"
    assert launch_id({"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == "none@h:1"
