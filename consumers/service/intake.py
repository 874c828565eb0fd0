"""Feeding co-partitioned topics in event-time order (stream-time synchronisation).

A stream's video, audio and text arrive on three topics. When the service reads a
backlog (a restart, a new owner, a producer that burst), ``getmany`` returns each
topic-partition's records at its own pace: ten seconds of audio can arrive before
the first frame of the same ten seconds. Fed like that, the aligner would close the
windows on the audio alone and dead-letter the frames as late.

So, like Kafka Streams' partition groups, fetched records wait here, per input
partition, and are released merged by record timestamp (the event time, by the wire
format's rule) up to the *frontier*: the oldest of the three topic-partitions'
newest fetched timestamps. A topic-partition that is caught up (nothing more to
fetch) does not hold the others back, nor does one that has delivered nothing for
``max_idle_ms``. Live traffic is therefore released at once; only a backlog waits,
for records that are already on their way.

Pure bookkeeping: no Kafka client, no clock (the caller passes times and says which
topic-partitions are caught up). The service's ``now_ms`` is the time spent waiting
in ``getmany``, so a topic-partition is idle only if it delivered nothing while the
service was actually fetching, not while it was busy or paused.
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
    newest_ms: float = -_INF
    last_arrival_ms: float | None = None


class PartitionMerger(Generic[R]):
    """Buffers fetched records per topic-partition; releases each partition's records in timestamp order."""

    def __init__(self, *, max_idle_ms: float = 1000.0) -> None:
        self.max_idle_ms = max_idle_ms
        self._lanes: dict[TP, _Lane[R]] = {}

    def add(self, tp: TP, records: Iterable[R], now_ms: float) -> None:
        lane = self._lanes.setdefault(tp, _Lane())
        for record in records:
            lane.records.append(record)
            lane.newest_ms = max(lane.newest_ms, record.timestamp)
        lane.last_arrival_ms = now_ms

    def release(self, owned: Iterable[TP], caught_up: Callable[[TP], bool], now_ms: float) -> list[tuple[TP, R]]:
        """Records that can go to the aligner now, each partition's merged by timestamp."""
        groups: dict[int, list[TP]] = {}
        for tp in owned:
            groups.setdefault(tp[1], []).append(tp)
            self._lanes.setdefault(tp, _Lane(last_arrival_ms=now_ms))
        out: list[tuple[TP, R]] = []
        for tps in groups.values():
            frontier = min(self._frontier(tp, caught_up, now_ms) for tp in tps)
            lanes = [(tp, self._lanes[tp].records) for tp in tps]
            while True:
                best: tuple[TP, deque[R]] | None = None
                for tp, records in lanes:
                    if records and records[0].timestamp <= frontier and (
                        best is None or records[0].timestamp < best[1][0].timestamp
                    ):
                        best = (tp, records)
                if best is None:
                    break
                out.append((best[0], best[1].popleft()))
        return out

    def _frontier(self, tp: TP, caught_up: Callable[[TP], bool], now_ms: float) -> float:
        lane = self._lanes[tp]
        if caught_up(tp):
            # Nothing more to fetch: what is buffered is all there is for now.
            return _INF
        idle_for = now_ms - (lane.last_arrival_ms if lane.last_arrival_ms is not None else now_ms)
        if idle_for >= self.max_idle_ms and not lane.records:
            return _INF
        return lane.newest_ms

    def touch(self, tps: Iterable[TP], now_ms: float) -> None:
        """Restart the idle timers of these topic-partitions (the service paused them: not their fault)."""
        for tp in tps:
            lane = self._lanes.get(tp)
            if lane is not None:
                lane.last_arrival_ms = now_ms

    def idle(self, tp: TP, now_ms: float) -> bool:
        """Nothing buffered, and nothing delivered for ``max_idle_ms``."""
        lane = self._lanes.get(tp)
        if lane is None or lane.records or lane.last_arrival_ms is None:
            return False
        return now_ms - lane.last_arrival_ms >= self.max_idle_ms

    def buffered(self, tp: TP) -> int:
        lane = self._lanes.get(tp)
        return 0 if lane is None else len(lane.records)

    def total(self) -> int:
        return sum(len(lane.records) for lane in self._lanes.values())

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._lanes.pop(tp, None)


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
