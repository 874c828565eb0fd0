"""The state a rebalance must keep consistent, in one owner (docs/architecture.md).

Handing a partition over without losing or repeating a window takes five things that
change together:

- which input partitions this instance owns;
- which streams it has seen on each partition number (their checkpoints go with the partition), and the
  offset of each one's last record on each partition it owns: a stream with a record at or above the offset
  committed there is one a restart reads again, and goes first into that partition's checkpoint;
- per stream, how far its windows were published and acknowledged (``published_until``);
- per input offset, whether anything still needs it (the :class:`OffsetTracker`);
- what was committed last (offset and checkpoint), so an unchanged commit is not repeated.

:class:`Handover` owns all five. The service tells it what happens (assigned, fetched,
admitted, revoked, committed), the publisher reports acknowledgements to it, and it
answers what may be committed. It tells the aligner which streams to resume at an
assignment and which to drop at a revocation, so no other code edits that state.

Pure bookkeeping, like the tracker: no Kafka client, no clock, no I/O. Partitions are
``(topic, partition)`` tuples (aiokafka's ``TopicPartition`` is one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.offsets import OffsetTracker
from fusionstream.stream.records import Modality

TP = tuple[str, int]
Ref = tuple[str, int, int]
#: Per topic-partition, the offset to commit and its metadata (a :class:`Checkpoint`).
Offsets = dict[TP, tuple[int, str]]

#: Streams remembered per input partition for checkpoints (least recently seen are forgotten first).
MAX_STREAMS_PER_PARTITION = 10_000


class StreamStates(Protocol):
    """What the handover needs of the aligner: resume a stream after a commit (and its learnt waits), drop one
    handed over."""

    def resume(self, stream_id: str, emitted_until_ns: int, provisional_until_ns: int | None = None) -> None: ...

    def drop(self, stream_ids: list[str]) -> None: ...

    def learned_waits(self, stream_ids: Iterable[str], modality: Modality) -> dict[str, int]: ...

    def resume_waits(self, stream_id: str, needs: dict[Modality, int]) -> None: ...


class Stored(Protocol):
    """A committed offset as the broker returns it (aiokafka's ``OffsetAndMetadata``)."""

    @property
    def offset(self) -> int: ...

    @property
    def metadata(self) -> str: ...


class Fetched(Protocol):
    """A fetched record (aiokafka's ``ConsumerRecord``): its offset and key are all the handover reads."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...


class Acknowledged(Protocol):
    """A published prediction, as far as commits are concerned."""

    @property
    def stream_id(self) -> str: ...

    @property
    def t_start_ns(self) -> int: ...

    @property
    def refs(self) -> Iterable[Ref]: ...


R = TypeVar("R", bound=Fetched)


class Handover:
    """Owns assigned partitions, streams per partition, published times, held offsets and last commits."""

    def __init__(self, hop_ns: int, *, staggered: bool = False,
                 max_streams_per_partition: int = MAX_STREAMS_PER_PARTITION, output: str | None = None) -> None:
        self.hop_ns = hop_ns
        self.staggered = staggered
        self.output = output  # the predictions topic, said in every checkpoint
        self.tracker = OffsetTracker()
        self._max_streams = max_streams_per_partition
        self._streams_of: StreamStates | None = None
        self._owned: set[TP] = set()
        #: Partition number -> its streams, least recently seen first (the input topics are co-partitioned).
        self._streams: dict[int, OrderedDict[str, None]] = {}
        #: Per stream, the start of its first window not yet acknowledged (for the commit checkpoints).
        self._published: dict[str, int] = {}
        #: Per stream, the start of its first window without an acknowledged provisional prediction.
        self._provisional: dict[str, int] = {}
        self._last_meta: dict[TP, str] = {}
        #: Per owned partition, the offset of each stream's last record on it, while at or above the commit.
        self._last_offset: dict[TP, dict[str, int]] = {}
        #: A count bumped by whatever can change a checkpoint; per partition, the last checkpoint computed, with
        #: the offset and count it was computed at (an idle service computes none).
        self._changes = 0
        self._computed: dict[TP, tuple[int, int, str]] = {}

    def bind(self, aligner: StreamStates) -> None:
        """The aligner whose streams follow the partitions (it exists once the pipeline is open)."""
        self._streams_of = aligner

    # -- ownership ------------------------------------------------------------------------------

    @property
    def owned(self) -> frozenset[TP]:
        return frozenset(self._owned)

    def owns(self, tp: TP) -> bool:
        return tp in self._owned

    def assign(self, committed: Mapping[TP, Stored | None]) -> int:
        """Take over exactly the partitions in ``committed`` (each with its last commit, or None).

        Offsets resume from the commit; each stream of a checkpoint resumes in the aligner
        after its last published window, so re-read records cannot publish those again.
        Returns the number of streams resumed.
        """
        checkpoints: dict[int, list[Checkpoint | None]] = {}
        for tp, stored in committed.items():
            offset = stored.offset if stored is not None and stored.offset >= 0 else None
            checkpoint = Checkpoint.decode(stored.metadata) if stored is not None else None
            if checkpoint is not None:
                checkpoint = checkpoint.on_grid(self.hop_ns, self.staggered)
            self.tracker.resume(tp, committed=offset, replay_mark=checkpoint.replay_mark if checkpoint else -1)
            self._last_meta[tp] = stored.metadata if stored is not None else ""
            # Where its records are is not known until they are read again: at or above the commit, so it counts
            # as read again until the partition's position has passed every record read since.
            self._last_offset[tp] = dict.fromkeys(checkpoint.streams, offset if offset is not None else 0) \
                if checkpoint is not None else {}
            self._changes += 1
            checkpoints.setdefault(tp[1], []).append(checkpoint)
        resumed = 0
        for number, found in checkpoints.items():
            streams = self._streams.setdefault(number, OrderedDict())
            ahead = Checkpoint.merge(found, provisional=True)
            waits = Checkpoint.merge(found, text_wait=True)
            for sid, until in Checkpoint.merge(found).items():
                self._aligner().resume(sid, until, ahead.get(sid))
                if sid in waits:
                    self._aligner().resume_waits(sid, {Modality.TEXT: waits[sid]})
                self._published[sid] = until
                if sid in ahead:
                    self._provisional[sid] = ahead[sid]
                streams[sid] = None
                resumed += 1
        self._owned = set(committed)
        return resumed

    def revoke(self, revoked: Iterable[TP]) -> list[str]:
        """Let ``revoked`` go (after their closed windows were published and committed).

        The streams of partition numbers no longer owned at all are dropped from the aligner
        *without* emitting their open windows: those records are uncommitted, and the next
        owner completes them. Returns the streams handed over.
        """
        revoked = set(revoked)
        self._owned -= revoked
        numbers = {tp[1] for tp in revoked} - {tp[1] for tp in self._owned}
        streams = [sid for n in numbers for sid in self._streams.pop(n, {})]
        self._aligner().drop(streams)
        for sid in streams:
            self._published.pop(sid, None)
            self._provisional.pop(sid, None)
        self.tracker.forget(revoked)
        for tp in revoked:
            self._last_meta.pop(tp, None)
            self._last_offset.pop(tp, None)
            self._computed.pop(tp, None)
        return streams

    # -- what was seen --------------------------------------------------------------------------

    def fetched(self, tp: TP, records: Iterable[R]) -> list[R]:
        """Hold the offsets of fetched records and note their streams; returns the records not fetched before
        (a re-seek can deliver an offset twice: the first copy is already being processed)."""
        streams = self._streams.setdefault(tp[1], OrderedDict())
        batch = list(records)
        skipped = self.tracker.fetched_run(tp, [record.offset for record in batch])
        if skipped is not None:  # the usual case: one fetch's increasing offsets, held at once
            accepted = batch[skipped:]
        else:
            accepted = [r for r in batch if self.tracker.fetched((tp[0], tp[1], r.offset))]
        # Each stream once, at the offset of its last record here, in that order: the order that moving it to
        # the end at every record would leave (least recently seen first).
        last = {r.key: r.offset for r in accepted}
        offsets = self._last_offset.setdefault(tp, {})
        for key in sorted(last, key=last.__getitem__):
            if key is not None:
                stream_id = key.decode("utf-8", "replace")
                streams[stream_id] = None
                streams.move_to_end(stream_id)
                offsets[stream_id] = last[key]
        if accepted:
            self._changes += 1
        while len(streams) > self._max_streams:
            forgotten, _ = streams.popitem(last=False)
            self._published.pop(forgotten, None)
            self._provisional.pop(forgotten, None)
        return accepted

    def admitted(self, ref: Ref, windows: int) -> None:
        """The record joined ``windows`` windows (the pipeline's ``on_admit``)."""
        self.tracker.admitted(ref, windows)

    def unpredicted(self, window: Acknowledged) -> None:
        """The window gets no prediction (its data fails the engine; the pipeline's ``on_unpredicted``):
        its records are released as a published window's are. The stream's checkpoint stays where it is:
        earlier windows may still be on their way. After a restart the window may be built again from
        those of its records not committed yet (without the bad one, if that was committed: then it is
        published)."""
        self.tracker.published(window.refs)

    def replayed(self, ref: Ref) -> bool:
        """Whether an earlier run already sent this record's dead letter; if so it is settled here."""
        if not self.tracker.is_replay(ref):
            return False
        self.tracker.settled(ref)
        return True

    # -- what was published (the publisher reports) ---------------------------------------------

    def dead_letter_sent(self, ref: Ref) -> None:
        """The record's dead letter is on its way: held until acknowledged."""
        self.tracker.dead_lettered(ref)

    def dead_letter_acknowledged(self, ref: Ref) -> None:
        self.tracker.settled(ref)

    def prediction_acknowledged(self, prediction: Acknowledged) -> None:
        """The broker has the window's prediction: release its records, move its stream's checkpoint on."""
        self.tracker.published(prediction.refs)
        until = prediction.t_start_ns + self.hop_ns
        if until > self._published.get(prediction.stream_id, until - 1):
            self._published[prediction.stream_id] = until
        self._changes += 1

    def provisional_acknowledged(self, prediction: Acknowledged) -> None:
        """The broker has a provisional prediction: its window gets none again after a restart."""
        until = prediction.t_start_ns + self.hop_ns
        if until > self._provisional.get(prediction.stream_id, until - 1):
            self._provisional[prediction.stream_id] = until
        # A stream's first predictions may all be provisional, and a checkpoint only holds streams with a
        # published time: without one, a restart would predict these windows again as revision 0. Nothing
        # before this window is unpublished: every earlier window got its final or a provisional one first.
        self._published.setdefault(prediction.stream_id, prediction.t_start_ns)
        self._changes += 1

    def published_until(self, stream_id: str) -> int | None:
        """The start of the stream's first window not yet acknowledged, if known."""
        return self._published.get(stream_id)

    # -- what to commit -------------------------------------------------------------------------

    def to_commit(self) -> Offsets:
        """Per owned partition whose commit would change: the lowest offset still needed, and its checkpoint."""
        per_number: dict[int, dict[str, int]] = {}
        chosen: Offsets = {}
        for tp in self._owned:
            offset = self.tracker.position(tp)
            if offset is None:
                continue
            metadata = self._checkpoint(tp, offset, per_number)
            if offset == self.tracker.committed(tp) and metadata == self._last_meta.get(tp):
                continue
            chosen[tp] = (offset, metadata)
        return chosen

    def _checkpoint(self, tp: TP, offset: int, per_number: dict[int, dict[str, int]]) -> str:
        """``tp``'s checkpoint at ``offset``: computed again only when the offset or what it holds changed.

        The streams a restart would read again on ``tp`` (a record at or above ``offset``) go first; then the
        others, whose windows cannot be built again from this partition but whose published times still turn
        away their stale records (a camera that came and went: 2,000 of them filled every checkpoint, and it
        was rebuilt and said too full five times a second while the service was idle)."""
        changes = self._changes
        cached = self._computed.get(tp)
        if cached is not None and cached[:2] == (offset, changes):
            return cached[2]
        streams = per_number.get(tp[1])
        if streams is None:
            known = self._streams.get(tp[1], {})
            streams = per_number[tp[1]] = {sid: self._published[sid] for sid in known if sid in self._published}
        offsets = self._last_offset.get(tp, {})
        for sid in [sid for sid, last in offsets.items() if last < offset]:
            del offsets[sid]  # its records here are all below the commit: never read again
        ahead = {sid: self._provisional[sid] for sid in streams if self._provisional.get(sid, -(2**63)) > streams[sid]}
        mark = self.tracker.replay_mark(tp)
        waits = self._aligner().learned_waits(streams, Modality.TEXT)
        metadata = Checkpoint(-1 if mark is None else mark, streams, ahead, text_wait=waits,
                              output=self.output).encode(self.hop_ns, staggered=self.staggered,
                                                         first=[sid for sid in offsets if sid in streams])
        self._computed[tp] = (offset, changes, metadata)
        return metadata

    def committed(self, chosen: Offsets) -> None:
        """The broker took these offsets (and checkpoints)."""
        for tp, (offset, metadata) in chosen.items():
            self.tracker.mark_committed(tp, offset)
            self._last_meta[tp] = metadata

    def last_committed(self, tp: TP) -> int | None:
        return self.tracker.committed(tp)

    # -- progress -------------------------------------------------------------------------------

    def next_offset(self, tp: TP) -> int | None:
        """Last fetched offset + 1 (None before the first fetch)."""
        return self.tracker.next_offset(tp)

    @property
    def held(self) -> int:
        """Records whose offsets cannot be committed yet."""
        return self.tracker.held

    def _aligner(self) -> StreamStates:
        if self._streams_of is None:
            raise RuntimeError("Handover.bind(aligner) must come before the first assignment")
        return self._streams_of


__all__ = ["MAX_STREAMS_PER_PARTITION", "Handover", "Offsets", "StreamStates"]
