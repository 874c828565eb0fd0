"""Feeding co-partitioned topics in event-time order (stream-time synchronisation).

A stream's video, audio and text arrive on three topics. When the service reads a
backlog (a restart, a new owner, a producer that burst), ``getmany`` returns each
topic-partition's records at its own pace: ten seconds of audio can arrive before
the first frame of the same ten seconds. Fed like that, the aligner would close the
windows on the audio alone and dead-letter the frames as late.

So, like Kafka Streams' partition groups, fetched records wait here, per input
partition, and are released merged by record timestamp (the event time, by the wire
format's rule). A record goes only when each of its partition's other topics is known
to have nothing older still to come: it has fetched a record at least as new, or it
is *caught up*, or it has delivered nothing for ``max_idle_ms`` (a processing-time
bound, so that a topic-partition the consumer cannot read does not stall the others).
A topic-partition known to have records left to fetch (its position behind the log end
the broker reported) is waited for ``backlog_idle_ms`` instead: over a slow or stalled
link its next fetch takes seconds, and a 1 s bound let the other topics' backlog run
ahead of it (an outside trial: a 30 kB/s link, or a 20 s stall and the rebalance after
it, dead-lettered one modality's records as late and left windows without them).

Caught up means: its position has reached the log end the broker reported, and that
report is no older than the fetch that brought the record. A log end is only as
current as the fetch that reported it, and the consumer does not fetch a
topic-partition again while records of its last fetch wait in the client's buffer,
so one topic's log end can be a second older than another topic's records. A
source writes its topics in event-time order, so when a topic's log end was reported
after a record of another topic was fetched, everything that topic had older than
the record was already in its log, hence fetched; a log end reported before that
fetch says nothing about the seconds in between (trusted, it let a fast replay's
video run seconds ahead of audio already in the broker, and the aligner dead-lettered
that audio as late). Live traffic is still released at once: a fetch reports the log
end of every topic-partition it reads along with the records it brings.

Pure bookkeeping: no Kafka client, no clock (the caller passes times and says when
each topic-partition's log end was reported). The service's ``now_ms`` is the time
spent waiting in ``getmany``, so a topic-partition is idle only if it delivered
nothing while the service was actually fetching, not while it was busy or paused;
``fetched_ms`` and the log-end times are the consumer's fetch times, one clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

TP = tuple[str, int]

_INF = float("inf")


class _Timestamped(Protocol):
    @property
    def timestamp(self) -> int: ...


R = TypeVar("R", bound=_Timestamped)


@dataclass(slots=True)
class _Lane(Generic[R]):
    records: deque[R] = field(default_factory=deque)
    #: When each held record was fetched (``fetched_ms`` of its :meth:`PartitionMerger.add`), in step with ``records``.
    fetched: deque[float] = field(default_factory=deque)
    newest_ms: float = -_INF
    last_arrival_ms: float | None = None


class PartitionMerger(Generic[R]):
    """Buffers fetched records per topic-partition; releases each partition's records in timestamp order."""

    def __init__(self, *, max_idle_ms: float = 1000.0, backlog_idle_ms: float = 60_000.0) -> None:
        self.max_idle_ms = max_idle_ms
        self.backlog_idle_ms = backlog_idle_ms
        self._lanes: dict[TP, _Lane[R]] = {}

    def add(self, tp: TP, records: Iterable[R], now_ms: float, *, fetched_ms: float) -> None:
        """Hold records of ``tp``; ``fetched_ms``: when they were fetched, or any later time (a later time only
        holds them longer; an earlier one would let them pass on a log end reported before they existed)."""
        lane = self._lanes.setdefault(tp, _Lane())
        for record in records:
            lane.records.append(record)
            lane.fetched.append(fetched_ms)
            lane.newest_ms = max(lane.newest_ms, record.timestamp)
        lane.last_arrival_ms = now_ms

    def release(self, owned: Iterable[TP], log_end: Callable[[TP], float | None],
                now_ms: float, left: Callable[[TP], bool] | None = None) -> list[tuple[TP, R]]:
        """Records that can go to the aligner now, each partition's merged by timestamp.

        ``log_end(tp)``: when the broker reported the log end that ``tp``'s position has
        reached (the clock of ``fetched_ms``), or None while ``tp`` has records left to fetch.
        ``left(tp)``: whether ``tp`` is known to have records left to fetch (its position behind a
        log end the broker reported); such a topic-partition is idle only after ``backlog_idle_ms``.
        """
        groups: dict[int, list[TP]] = {}
        for tp in owned:
            groups.setdefault(tp[1], []).append(tp)
            self._lanes.setdefault(tp, _Lane(last_arrival_ms=now_ms))
        out: list[tuple[TP, R]] = []
        for tps in groups.values():
            lanes = [(tp, self._lanes[tp]) for tp in tps]
            # Per topic: a record fetched at or before this time passes on its account (its log end was
            # reported since); inf: the topic is idle; -inf: it has records left to fetch.
            seen: list[float] = []
            for tp, lane in lanes:
                reported = log_end(tp)
                if isinstance(reported, bool):
                    raise TypeError("log_end returns when the log end was reported, or None; not a bool")
                bound = self.backlog_idle_ms if left is not None and left(tp) else self.max_idle_ms
                seen.append(_INF if self._idle(lane, now_ms, bound) else -_INF if reported is None else reported)
            _merge(lanes, seen, out)
        return out

    def _idle(self, lane: _Lane[R], now_ms: float, bound: float | None = None) -> bool:
        if lane.records or lane.last_arrival_ms is None:
            return False
        return now_ms - lane.last_arrival_ms >= (self.max_idle_ms if bound is None else bound)

    def touch(self, tps: Iterable[TP], now_ms: float) -> None:
        """Restart the idle timers of these topic-partitions (the service paused them: not their fault)."""
        for tp in tps:
            lane = self._lanes.get(tp)
            if lane is not None:
                lane.last_arrival_ms = now_ms

    def idle(self, tp: TP, now_ms: float) -> bool:
        """Nothing buffered, and nothing delivered for ``max_idle_ms``."""
        lane = self._lanes.get(tp)
        return lane is not None and self._idle(lane, now_ms)

    def buffered(self, tp: TP) -> int:
        lane = self._lanes.get(tp)
        return 0 if lane is None else len(lane.records)

    def total(self) -> int:
        return sum(len(lane.records) for lane in self._lanes.values())

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._lanes.pop(tp, None)


def _merge(lanes: list[tuple[TP, _Lane[R]]], seen: list[float], out: list[tuple[TP, R]]) -> None:
    """Release one partition's held records into ``out``, oldest first, until the oldest must wait.

    The oldest head goes (ties: the earlier lane) if every other lane has fetched a record at least as
    new, or had its log end reported since the record was fetched; else it waits, and every later one
    with it. Every record the service takes passes here, and the topics' records interleave (runs of
    one or two), so the lanes' fields are read into lists once, not once per record."""
    tps = [tp for tp, _ in lanes]
    records = [lane.records for _, lane in lanes]
    fetched = [lane.fetched for _, lane in lanes]
    newest = [lane.newest_ms for _, lane in lanes]
    count = len(lanes)
    while True:
        head, oldest = -1, _INF
        for index in range(count):
            held = records[index]
            if held and held[0].timestamp < oldest:
                head, oldest = index, held[0].timestamp
        if head < 0:
            return
        fetched_at = fetched[head][0]
        for index in range(count):
            if index != head and newest[index] < oldest and seen[index] < fetched_at:
                return  # the oldest held record waits, and every later one with it
        fetched[head].popleft()
        out.append((tps[head], records[head].popleft()))


class IntakeClock:
    """Processing time for the aligner's timeouts, standing still while the service is behind its input.

    The aligner closes a stream's windows when the stream has been silent for
    ``idle_timeout_ms`` of processing time. Silence is only meaningful when the service
    has read everything there is: while it works through a backlog, or waits for a
    slow engine, a stream is not silent, it is unread, and a timeout then would close
    windows early and turn the rest of their records into late dead letters. So the
    clock advances only over intervals in which the service was caught up at both
    ends (as told by :meth:`observe`, a few times a second), and never goes backwards.

    Nor does it advance more than ``max_step_ns`` between two observations: a longer
    gap means the service itself stalled (its event loop starved of CPU, a long pause),
    and records may be waiting unread in its buffers all that time; ageing the streams
    by the whole stall would close their windows without them.
    """

    def __init__(self, wall: Callable[[], int], max_step_ns: int = 500_000_000) -> None:
        self._wall = wall
        self._max_step = max_step_ns
        self._last_wall = wall()
        self._virtual = self._last_wall
        self._behind = False
        self._returned = self._virtual

    def observe(self, behind: bool) -> None:
        """Record whether the service is behind its input right now."""
        now = self._wall()
        if not (behind or self._behind):
            self._virtual += min(now - self._last_wall, self._max_step)
        self._last_wall = now
        self._behind = behind

    def __call__(self) -> int:
        step = min(self._wall() - self._last_wall, self._max_step)
        now = self._virtual if self._behind else self._virtual + step
        self._returned = max(self._returned, now)
        return self._returned
