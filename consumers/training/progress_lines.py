"""Progress for output that is no terminal: plain lines instead of a live bar.

rich draws a progress bar by redrawing one line, which only a terminal does; written to a file or a
pipe (``train ... > train.log``, CI, a container's log) it shows nothing until the work ends, and
``train`` runs for most of an hour. :class:`LineProgress` keeps rich's bookkeeping and prints a line
per task when it starts, at most every ``every_s`` while it moves, and when it is done.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, Task, TaskID

#: Seconds between two lines of one task: often enough to see a job alive, few enough to read.
EVERY_S = 30.0


class LineProgress(Progress):
    """A :class:`rich.progress.Progress` that prints plain lines (see the module doc)."""

    def __init__(self, console: Console, every_s: float = EVERY_S) -> None:
        super().__init__(console=console, disable=True)
        self.every_s = every_s
        self._said_at: dict[TaskID, float] = {}
        self._done: set[TaskID] = set()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start, total, completed, visible, **fields)
        self._say(task_id)
        return task_id

    def update(self, task_id: TaskID, **changes: Any) -> None:  # type: ignore[override]
        super().update(task_id, **changes)
        self._maybe_say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_say(task_id)

    def _maybe_say(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if _complete(task) or time.monotonic() - self._said_at.get(task_id, 0.0) >= self.every_s:
            self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if task_id in self._done:
            return
        task = self._tasks[task_id]
        self._said_at[task_id] = time.monotonic()
        if _complete(task):
            self._done.add(task_id)
        self.console.print(line_of(task), soft_wrap=True, markup=False, highlight=False)


def line_of(task: Task) -> str:
    """``rendering training streams: 3/12 (25 %), 0:00:41 elapsed, about 0:02:03 left; 1,200 windows``."""
    parts = [f"{task.description}:"]
    if task.total:
        parts.append(f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f} %),")
    parts.append(f"{_clock(task.elapsed or 0.0)} elapsed")
    if _complete(task):
        parts[-1] += ", done"
    elif task.completed and task.total:
        # At the average pace so far: rich's own estimate needs samples a line now and then does not give.
        left = (task.elapsed or 0.0) * (task.total - task.completed) / task.completed
        parts[-1] += f", about {_clock(left)} left"
    info = task.fields.get("info")
    return " ".join(parts) + (f"; {info}" if info else "")


def _complete(task: Task) -> bool:
    # ``Task.finished`` is only set by an update that completes it, not for a task added complete (a cache hit).
    return task.total is not None and task.completed >= task.total


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
