"""Which input offsets may be committed: the service's commit bookkeeping (docs/architecture.md).

A record's offset is *held* from the moment it is fetched until nothing can ever need
it again:

- it was dead-lettered and the dead-letter topic acknowledged it, or
- every window it joined was published and the broker acknowledged the prediction (or was given up:
  its data fails the engine, ``Handover.unpredicted``).

Per partition, the committable offset is the lowest offset still held, or the last
fetched offset + 1 when none is. A restart resumes from there and so reproduces every
window that was not published; nothing is lost. Commits only move forward.

Besides the offset, each partition has a *replay mark*: every record below it was
fully handled (admitted to a window, or its dead letter acknowledged). A later run
that re-reads such a record drops its dead letter instead of sending it twice.

Pure bookkeeping: no Kafka, no clock, no I/O; partitions are ``(topic, partition)``
tuples (aiokafka's ``TopicPartition`` is one) and record refs ``(topic, partition, offset)``.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TP = tuple[str, int]
Ref = tuple[str, int, int]

#: Fetched, not yet admitted to a window or rejected.
_PENDING = -1
#: Rejected: its dead letter was sent, the acknowledgement is outstanding.
_DEAD = -2


@dataclass(slots=True)
class _Partition:
    #: offset -> windows still unpublished (> 0), or _PENDING / _DEAD.
    held: dict[int, int] = field(default_factory=dict)
    #: Held offsets in fetch (= increasing) order; entries no longer held are skipped lazily.
    order: deque[int] = field(default_factory=deque)
    #: Offsets that were _PENDING or _DEAD when fetched/rejected, in increasing order, lazily cleaned.
    unsettled: deque[int] = field(default_factory=deque)
    next_offset: int | None = None
    committed: int | None = None
    replay_mark: int = -1

    def lowest(self, queue: deque[int], *, unsettled: bool = False) -> int | None:
        while queue:
            state = self.held.get(queue[0])
            if state is not None and (not unsettled or state < 0):
                return queue[0]
            queue.popleft()
        return None


class OffsetTracker:
    """Holds each fetched offset until its windows are published or its dead letter is acknowledged."""

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}
        self._held = 0

    # -- what happens to records ----------------------------------------------------------------

    def resume(self, tp: TP, *, committed: int | None, replay_mark: int = -1) -> None:
        """Start tracking ``tp`` from its committed offset (a new assignment)."""
        self._parts[tp] = _Partition(committed=committed, replay_mark=replay_mark)

    def fetched(self, ref: Ref) -> bool:
        """Hold a fetched record; False (and nothing held) if this offset was already fetched."""
        topic, partition, offset = ref
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[topic, partition] = _Partition()
        if part.next_offset is not None and offset < part.next_offset:
            return False
        part.held[offset] = _PENDING
        part.order.append(offset)
        part.unsettled.append(offset)
        part.next_offset = offset + 1
        self._held += 1
        return True

    def fetched_run(self, tp: TP, offsets: Sequence[int]) -> int | None:
        """:meth:`fetched` for a whole fetch of ``tp`` at once, as one fetch delivers it: increasing offsets.
        Returns how many leading offsets were fetched before (not held again), or None, holding nothing,
        when the offsets are not increasing (then :meth:`fetched` each)."""
        if not offsets:
            return 0
        # One pass in C, not a Python loop per record: the service holds every record it fetches.
        if not all(map(operator.lt, offsets, offsets[1:])):
            return None
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        skip = 0
        if part.next_offset is not None and offsets[0] < part.next_offset:
            while skip < len(offsets) and offsets[skip] < part.next_offset:
                skip += 1
            offsets = offsets[skip:]
            if not offsets:
                return skip
        part.held.update(dict.fromkeys(offsets, _PENDING))
        part.order.extend(offsets)
        part.unsettled.extend(offsets)
        part.next_offset = offsets[-1] + 1
        self._held += len(offsets)
        return skip

    def admitted(self, ref: Ref, windows: int) -> None:
        """The record joined ``windows`` windows; it is held until each is published."""
        # Once per record: inlined lookups (no _locate, no _release call).
        part = self._parts.get((ref[0], ref[1]))
        if part is None:
            return
        held, offset = part.held, ref[2]
        if held.get(offset) != _PENDING:
            return
        if windows > 0:
            held[offset] = windows
        else:
            del held[offset]
            self._held -= 1

    def dead_lettered(self, ref: Ref) -> None:
        """The record is being sent to the dead-letter topic; held until :meth:`settled`."""
        part, offset = self._locate(ref)
        if part is not None and part.held.get(offset) == _PENDING:
            part.held[offset] = _DEAD

    def settled(self, ref: Ref) -> None:
        """Release the record: its dead letter was acknowledged, or it needs no handling at all."""
        part, offset = self._locate(ref)
        if part is not None and offset in part.held:
            self._release(part, offset)

    def published(self, refs: Iterable[Ref]) -> None:
        """One window holding ``refs`` was published and acknowledged."""
        # About forty refs per window, in runs of one partition: look each partition up once per run.
        parts, last, held = self._parts, None, None
        released = 0
        for topic, partition, offset in refs:
            if (topic, partition) != last:
                last = (topic, partition)
                part = parts.get(last)
                held = None if part is None else part.held
            if held is None:
                continue
            count = held.get(offset)
            if count is None or count <= 0:
                continue
            if count == 1:
                del held[offset]
                released += 1
            else:
                held[offset] = count - 1
        self._held -= released

    def forget(self, tps: Iterable[TP]) -> None:
        """Stop tracking partitions that were revoked."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._held -= len(part.held)

    # -- what may be committed ------------------------------------------------------------------

    def is_replay(self, ref: Ref) -> bool:
        """Whether an earlier run already handled this record completely."""
        part, offset = self._locate(ref)
        return part is not None and offset < part.replay_mark

    def position(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: lowest held, else last fetched + 1; never below the last commit."""
        part = self._parts.get(tp)
        if part is None:
            return None
        lowest = part.lowest(part.order)
        offset = lowest if lowest is not None else part.next_offset
        if offset is None:
            return part.committed
        return offset if part.committed is None else max(offset, part.committed)

    def replay_mark(self, tp: TP) -> int | None:
        """Every record of ``tp`` below this offset was fully handled (see the module docstring)."""
        part = self._parts.get(tp)
        if part is None:
            return None
        unsettled = part.lowest(part.unsettled, unsettled=True)
        mark = unsettled if unsettled is not None else part.next_offset
        return part.replay_mark if mark is None else max(mark, part.replay_mark)

    def next_offset(self, tp: TP) -> int | None:
        """Last fetched offset + 1 (None before the first fetch): the consumer's progress."""
        part = self._parts.get(tp)
        return None if part is None else part.next_offset

    def committed(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.committed

    def mark_committed(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None and (part.committed is None or offset > part.committed):
            part.committed = offset

    @property
    def held(self) -> int:
        """Records held across all partitions (the service pauses fetching above a bound)."""
        return self._held

    def partitions(self) -> list[TP]:
        return list(self._parts)

    # -- internals ------------------------------------------------------------------------------

    def _locate(self, ref: Ref) -> tuple[_Partition | None, int]:
        topic, partition, offset = ref
        return self._parts.get((topic, partition)), offset

    def _release(self, part: _Partition, offset: int) -> None:
        del part.held[offset]
        self._held -= 1
