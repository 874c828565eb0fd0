"""How often a dead letter is logged: the first of each stream and reason at once, then one line per
:data:`EVERY_S` saying how many more came. A broken camera sends tens of bad records a second for hours: logged
one by one up to 20 a second, a few such devices made 6,500 lines in 25 minutes and hid everything else. Each
dead letter is still on the dead-letter topic and counted in ``fusionstream_dead_letters_total``."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Seconds between two log lines of one stream's dead letters of one reason.
EVERY_S = 10.0
#: Lines a second at most, whatever the number of streams (the rest are counted into their next line).
MAX_PER_S = 20
#: (stream, reason) pairs remembered; the quietest are forgotten first (streams come and go).
REMEMBERED = 4096


class DeadLetterLog:
    """Decides which dead letters are logged (:meth:`due`) and what the line adds (:meth:`since`)."""

    def __init__(self, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        #: Per (stream, reason): when one was last logged, and how many were not since.
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._said: tuple[tuple[str, str], float, int] | None = None
        #: The kinds with dead letters not logged yet (what :meth:`overdue` looks at, every tick).
        self._pending: set[tuple[str, str]] = set()
        self._second = (float("-inf"), 0)  # the current second's start and the lines logged in it

    def due(self, stream: str, reason: str) -> bool:
        """Count one dead letter; True when it is to be logged."""
        now, key = self._clock(), (stream, reason)
        logged_at, unlogged = self._seen.get(key, (float("-inf"), 0))
        second, lines = self._second
        if now - second >= 1.0:
            second, lines = now, 0
        if now - logged_at < self.every_s or lines >= MAX_PER_S:
            self._seen[key] = (logged_at, unlogged + 1)
            self._pending.add(key)
            return False
        self._second = (second, lines + 1)
        self._said = (key, now - logged_at, unlogged)
        self._seen[key] = (now, 0)
        self._pending.discard(key)
        self._seen.move_to_end(key)
        while len(self._seen) > REMEMBERED:
            self._pending.discard(self._seen.popitem(last=False)[0])
        return True

    def overdue(self) -> list[tuple[str, str, float, int]]:
        """(stream, reason, seconds, count) for each kind whose dead letters were not logged one by one and
        whose next line is due, and none came since to carry it: a burst that stopped is still told (the
        count came only with the next dead letter of its kind, so a burst of 500 read as one line). Each is
        counted as logged now."""
        if not self._pending:
            return []
        now = self._clock()
        due = [(key, *self._seen[key]) for key in self._pending if now - self._seen[key][0] >= self.every_s]
        for key, _, _ in due:
            self._seen[key] = (now, 0)
            self._pending.discard(key)
        return [(stream, reason, now - logged_at, unlogged) for (stream, reason), logged_at, unlogged in due]

    def since(self, stream: str, reason: str) -> str:
        """What the line :meth:`due` just allowed adds: how many of its kind were not logged before it."""
        if self._said is None or self._said[0] != (stream, reason) or not self._said[2]:
            return ""
        _, elapsed, unlogged = self._said
        when = f"in the last {elapsed:.0f} s" if elapsed != float("inf") else "before it"
        return f" (and {unlogged:,} more like it {when}, not logged one by one)"
