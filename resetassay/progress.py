"""Progress reporting: the library calls a plain callback; a rich bar, or plain lines, is one such callback.

`Progress` is called as `progress(task, done, total)`, e.g. `("checkpoints", 3, 10)`,
`("calibration fixtures/cnn/task2", 2, 4)` or `("lesions fixtures/cnn/task2", 512, 1024)`, with
`done` growing to `total` for each task.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

Progress = Callable[[str, int, int], None]
LINE_EVERY = 30.0  # seconds between two plain progress lines of one task


def plain_lines(stream: TextIO, every: float = LINE_EVERY, clock: Callable[[], float] = time.monotonic) -> Progress:
    """Progress as plain lines (`lesions C: 512/1024 (50%), about 40 s left`) for logs that are not a terminal
    (SLURM, nohup): the first and last of each task, and at most one every `every` seconds between."""
    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def update(task: str, done: int, total: int) -> None:
        now = clock()
        started.setdefault(task, now)
        if done < total and task in last and now - last[task] < every:
            return
        last[task] = now
        elapsed = now - started[task]
        left = f", about {elapsed * (total - done) / done:.0f} s left" if 0 < done < total and elapsed > 0 else ""
        stream.write(f"{task}: {done}/{total} ({100 * done / max(total, 1):.0f}%){left}\n")
        stream.flush()

    return update


@contextmanager
def rich_progress(enabled: bool = True, stream: TextIO | None = None) -> Iterator[Progress | None]:
    """While inside: a transient rich bar per task on a terminal (a finished task's bar goes away, except the
    first one, the overall count), plain lines elsewhere; None when not `enabled`."""
    stream = stream or sys.stderr
    if not enabled:
        yield None
        return
    if not stream.isatty():
        yield plain_lines(stream)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with RichProgress(*columns, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)
            if done >= total and len(tasks) > 1 and task != next(iter(tasks)):
                bar.remove_task(tasks.pop(task))

        yield update
