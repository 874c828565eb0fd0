"""Noticing that this process was frozen: the exactly-once fence against committing as a zombie.

A process stopped for longer than the group's session (``SIGSTOP``, a paused VM or container, swapping,
a debugger) sends no heartbeat meanwhile: the group gives its partitions to another member, which
republishes their windows from the last committed offsets. When the frozen process resumes, its open
transaction must not commit: aiokafka's ``send_offsets_to_transaction`` does not carry the group
generation (KIP-447), so the broker would accept offsets for partitions the process no longer owns,
and the windows would be published twice (a client measured 4 duplicates after a 25 s stop).

Nothing in the process can tell a heartbeat was missed while it was stopped except time itself: a task
that wakes every ``tick_s`` sees a gap. A gap longer than :func:`freeze_threshold_s` (the session less
two heartbeat intervals: the last heartbeat may have gone out that long before the stop) means the
group may have moved on; from then on the process refuses to commit and stops, and its restart (the
supervisor's, or the orchestrator's) joins the group afresh. A wait on the broker is not a freeze: the
event loop keeps turning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def freeze_threshold_s(session_timeout_ms: int, heartbeat_interval_ms: int) -> float:
    """The shortest stop after which the group may have evicted this member (never under half the session:
    with heartbeats a third of the session apart, the difference alone would call a busy second a freeze)."""
    return max(1.0, session_timeout_ms / 2000, (session_timeout_ms - 2 * heartbeat_interval_ms) / 1000)


class FreezeWatch:
    """Records the first time this process's event loop stood still for ``threshold_s`` or more."""

    def __init__(self, threshold_s: float, *, tick_s: float = 0.1) -> None:
        self.threshold_s = threshold_s
        self.tick_s = tick_s
        self._last_tick = time.monotonic()
        #: Length of the first freeze seen (seconds), None while there was none. Sticky: once the group may
        #: have moved on, nothing this incarnation holds is safe to commit.
        self.frozen_s: float | None = None

    async def run(self, on_freeze: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Tick until cancelled; ``on_freeze(seconds)`` is awaited once, as soon as a freeze is seen."""
        self._last_tick = time.monotonic()
        told = False
        while True:
            await asyncio.sleep(self.tick_s)
            if self.check() is not None and not told and on_freeze is not None:
                told = True
                await on_freeze(self.frozen_s)  # type: ignore[arg-type]

    def check(self) -> float | None:
        """The freeze seen so far, counting one still going on: a callback that runs first after a stop
        must not commit before this task has had its turn."""
        now = time.monotonic()
        gap = now - self._last_tick
        if self.frozen_s is None and gap >= self.threshold_s:
            self.frozen_s = gap
        self._last_tick = now
        return self.frozen_s


__all__ = ["FreezeWatch", "freeze_threshold_s"]
