"""Several processes of one launch (`accelerate launch`, torchrun): which items are this process's, and one
output merged from every process's part, as a single process would have written it.

Generation, scoring and preference accuracy work in batches whose results do not depend on which process
computes them (each generation batch is seeded by its index; each scoring chunk is the same set of pairs).
So process r takes the batches k with k % world == r, appends its rows to its own part file, and after
every process is done the main process merges the parts in the single-process order into the final file.
A killed launch resumes with any number of processes: every process reads what every part holds.
In a single process nothing here changes anything: one part, the plain `.partial.jsonl` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import PartialJSONL, complete_rows, read_jsonl, write_jsonl


@dataclass
class Launch:
    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, items: list) -> list[tuple[int, object]]:
        """(index, item) of the items this process takes: every world-th, from its rank."""
        return [(k, item) for k, item in enumerate(items) if k % self.world == self.rank]


def rank() -> int:
    """The one place that reads this process's place in a launch: its rank (`accelerate launch` and torchrun
    set RANK; 0 in a single process)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int | None:
    """The process's GPU on its machine under a launch (LOCAL_RANK), None in a single process."""
    return int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None


def under_fsdp() -> bool:
    """Whether this process is one of an FSDP launch (`accelerate launch` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def launch(cpu: bool = False) -> Launch:
    """This process's place in the launch: from accelerate's state under `accelerate launch` or torchrun
    (`cpu`: processes on CPUs, gloo), else the single process."""
    if world_size() <= 1:
        return Launch()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return Launch(state.process_index, state.num_processes, state.wait_for_everyone)


class ShardedJSONL(PartialJSONL):
    """A PartialJSONL whose process writes its own part (`name.rank<r>.partial.jsonl` when there are several),
    sees the rows of every part, and whose `finish(order)` merges the parts on the main process."""

    def __init__(self, final_path, key="id", at: Launch | None = None):
        self.at = at or Launch()
        super().__init__(final_path, key)
        if self.at.world > 1:
            self.partial = self.final.with_name(f"{self.final.stem}.rank{self.at.rank}.partial.jsonl")
            if not self.finished:  # every process's rows, also those of a launch of another size
                for part in self.parts():
                    if part.name != self.final.stem + ".partial.jsonl":  # (read by PartialJSONL already)
                        # this process's own part is repaired: its next append must start on a new line
                        rows = [r for r in complete_rows(part, repair=part == self.partial, key=self.keys)
                                if self._key(r) not in self.done]
                        self.rows.extend(rows)
                        self.done.update(self._key(r) for r in rows)

    def parts(self) -> list[Path]:
        return sorted(self.final.parent.glob(f"{self.final.stem}*.partial.jsonl"))

    def finish(self, order: list | None = None) -> Path:
        """Single process: PartialJSONL.finish. Several: wait for all, the main process writes every part's
        rows in `order` (keys) into the final file, then all read it."""
        if self.at.world <= 1:
            return super().finish(order)
        self.at.barrier()
        if self.at.main and not self.finished:
            rows, seen = [], set()
            for part in self.parts():
                for r in complete_rows(part, key=self.keys):
                    if self._key(r) not in seen:
                        seen.add(self._key(r))
                        rows.append(r)
            rank = {k: i for i, k in enumerate(order)} if order is not None else {}
            rows.sort(key=lambda r: rank.get(self._key(r), len(rank)))
            write_jsonl(self.final, rows)
            for part in self.parts():
                part.unlink()
        self.at.barrier()
        self.rows = read_jsonl(self.final)
        self.done = {self._key(r) for r in self.rows}
        return self.final

