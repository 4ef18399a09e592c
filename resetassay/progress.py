"""Progress reporting: the library calls a plain callback; a rich bar is one such callback.

`Progress` is called as `progress(task, done, total)`, e.g. `("checkpoints", 3, 10)` or
`("lesions fixtures/cnn/task1", 512, 1024)`, with `done` growing to `total` for each task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

Progress = Callable[[str, int, int], None]


@contextmanager
def rich_progress(enabled: bool = True) -> Iterator[Progress | None]:
    """A transient rich bar per task while inside (None when not `enabled`); a finished task's bar goes away,
    except the first one (the overall count)."""
    if not enabled:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with RichProgress(*columns, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)
            if done >= total and len(tasks) > 1 and task != next(iter(tasks)):
                bar.remove_task(tasks.pop(task))

        yield update
