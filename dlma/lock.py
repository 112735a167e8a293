"""One writer per output folder: `with hold(folder):` before anything is written into it.

The lock is an OS file lock (`fcntl.flock`, exclusive) on `folder/.lock`. The OS drops it when the file
descriptor closes, which it does for every way a process ends, a crash or SIGKILL included, so a stale lock
never needs clearing by hand. A second process is refused at once with a DLMAError naming the folder and
the holder's pid (the CLI prints it as one line, exit status 2). The file's content, the holder's pid and
launch id, is only information: the file may stay, and it blocks nothing once its lock is released.

The processes of one launch (`accelerate launch`, torchrun: WORLD_SIZE > 1) share the lock:

- the process with RANK 0 takes it as a single process does, and records its launch id;
- a process with RANK > 0 takes no lock: it is admitted once the file records its own launch id (it polls
  for up to `wait` seconds while rank 0 gets there), and is refused like a second process otherwise.

The launch id is what the launcher gives all the processes of one launch and no concurrent launch:
TORCHELASTIC_RUN_ID and MASTER_ADDR:MASTER_PORT, those set of the two, joined (torchrun's run id alone is the
constant "none" unless --rdzv-id or --standalone is given; two running launches cannot share a master port).
Within one process the lock is re-entrant: nested `hold`s of one folder (a stage inside `dlma run`) count.
POSIX only (fcntl), as is the project.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .distributed import rank, world_size
from .errors import DLMAError

LOCK_FILE = ".lock"
WAIT = 30.0  # seconds a process of rank > 0 waits for rank 0 of its launch to take the lock


@dataclass
class _Held:
    fd: int | None  # None on a process of rank > 0, which shares rank 0's lock
    count: int = 1


_held: dict[Path, _Held] = {}  # the folders this process holds, by resolved path
_guard = threading.Lock()


def launch_id(env: dict | None = None) -> str | None:
    """The id shared by the processes of this launch and no other running launch; None outside a launch."""
    env = os.environ if env is None else env
    parts = [env.get("TORCHELASTIC_RUN_ID")]
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        parts.append(f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}")
    parts = [p for p in parts if p]
    return "@".join(parts) if parts else None


def _record(path: Path) -> dict:
    """The holder's {"pid", "launch"} from a lock file; {} when empty (free, or its holder is still writing)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def holder(folder: Path | str) -> int | None:
    """The pid recorded by the process holding `folder`'s lock, or None when nobody holds it. For messages and
    tests: its probe (a shared lock for an instant) can make an `acquire` at that very instant fail."""
    path = Path(folder) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: nobody holds it
        return None
    except BlockingIOError:
        return _record(path).get("pid")
    finally:
        os.close(fd)  # (also drops the shared lock just taken, if it was)


def _refused(folder: Path, pid: int | None) -> DLMAError:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return DLMAError(f"{folder}: another dlma process ({who}) is writing here; wait for it to finish or stop it")


def _take(folder: Path) -> int:
    """flock `folder/.lock`; return its fd, or raise naming the holder."""
    path = folder / LOCK_FILE
    # no O_TRUNC: the file is emptied only once the lock is ours, so a refused process leaves the holder's record
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        record, deadline = _record(path), time.monotonic() + 1.0
        while not record and time.monotonic() < deadline:  # the holder took it and is writing its record
            time.sleep(0.02)
            record = _record(path)
        raise _refused(folder, record.get("pid")) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "launch": launch_id()}).encode() + b"\n", 0)
    return fd


def _join(folder: Path, launch: str | None, wait: float) -> None:
    """A process of rank > 0: wait until the lock file records this launch (rank 0 holds it), else raise."""
    path = folder / LOCK_FILE
    if launch is None:
        raise DLMAError(f"{folder}: a process of rank > 0 with neither TORCHELASTIC_RUN_ID nor MASTER_ADDR and "
                        "MASTER_PORT set cannot tell which launch holds this folder; start it with a launcher")
    deadline = time.monotonic() + wait
    while (record := _record(path)).get("launch") != launch:
        if time.monotonic() >= deadline:
            if not record:
                raise DLMAError(f"{folder}: the process of rank 0 of this launch did not take the folder's lock "
                                f"within {wait:g} s")
            raise _refused(folder, record.get("pid"))
        time.sleep(0.05)


def acquire(folder: Path | str, wait: float = WAIT) -> None:
    """Take `folder`'s lock (creating the folder), or raise DLMAError naming the holder. Pair with `release`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    with _guard:
        if key in _held:
            _held[key].count += 1
            return
        if world_size() > 1 and rank() > 0:
            _join(folder, launch_id(), wait)
            _held[key] = _Held(None)
        else:
            _held[key] = _Held(_take(folder))


def release(folder: Path | str) -> None:
    """Undo one `acquire`; the last one frees the folder (so does the end of the process, however it ends)."""
    key = Path(folder).resolve()
    with _guard:
        held = _held[key]
        held.count -= 1
        if held.count == 0:
            del _held[key]
            if held.fd is not None:
                os.ftruncate(held.fd, 0)  # no stale launch id for a later process of rank > 0 to trust
                os.close(held.fd)  # releases the flock; the file stays (unlinking it would race with openers)


def release_all() -> None:
    """Free every folder this process holds: a stage that failed midway (the CLI exits, but a notebook's kernel
    lives on) must not keep its folder from the rerun that fixes it."""
    with _guard:
        held = list(_held)
    for key in held:
        while key in _held:
            release(key)


@contextmanager
def hold(folder: Path | str, wait: float = WAIT) -> Iterator[Path]:
    """`with hold(run_dir):` this process (or launch) is the only writer of `run_dir` inside the block."""
    folder = Path(folder).resolve()
    acquire(folder, wait)
    try:
        yield folder
    finally:
        release(folder)
