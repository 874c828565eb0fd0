"""The handover without a broker: one owner for partitions, streams, held offsets, published times, checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from fusionstream.consumers.pipeline.core import DeadLetter
from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.publisher import Publisher
from fusionstream.stream.records import Modality

HOP = 500_000_000
V0, A0, T0 = TopicPartition("fs.video", 0), TopicPartition("fs.audio", 0), TopicPartition("fs.text", 0)
V1 = TopicPartition("fs.video", 1)


@dataclass
class FakeAligner:
    resumed: dict[str, int] = field(default_factory=dict)
    provisional: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def resume(self, stream_id: str, emitted_until_ns: int, provisional_until_ns: int | None = None) -> None:
        self.resumed[stream_id] = emitted_until_ns
        if provisional_until_ns is not None:
            self.provisional[stream_id] = provisional_until_ns

    def drop(self, stream_ids: list[str]) -> None:
        self.dropped.extend(stream_ids)

    def learned_waits(self, stream_ids: Iterable[str], modality: Modality) -> dict[str, int]:
        return {}

    def resume_waits(self, stream_id: str, needs: dict[Modality, int]) -> None:
        pass


@dataclass
class Stored:
    offset: int
    metadata: str


@dataclass
class Rec:
    offset: int
    key: bytes | None


@dataclass
class Acked:
    stream_id: str
    t_start_ns: int
    refs: list[tuple[str, int, int]]


def handover(**kwargs: Any) -> tuple[Handover, FakeAligner]:
    aligner = FakeAligner()
    h = Handover(HOP, **kwargs)
    h.bind(aligner)
    return h, aligner


def test_a_partition_goes_round_assign_fetch_publish_commit_revoke() -> None:
    h, aligner = handover()
    # The previous owner committed offset 10 with a checkpoint: cam-1 published up to 2 s.
    meta = Checkpoint(replay_mark=12, streams={"cam-1": 2 * 10**9}).encode(HOP)
    resumed = h.assign({V0: Stored(10, meta), A0: None, T0: Stored(-1, "")})
    assert resumed == 1 and aligner.resumed == {"cam-1": 2 * 10**9}
    assert h.owned == {V0, A0, T0} and h.published_until("cam-1") == 2 * 10**9
    assert h.to_commit() == {}, "nothing fetched: the commits stand"

    accepted = h.fetched(V0, [Rec(10, b"cam-1"), Rec(11, b"cam-2"), Rec(12, b"cam-2")])
    assert [r.offset for r in accepted] == [10, 11, 12]
    assert h.fetched(V0, [Rec(12, b"cam-2")]) == [], "a re-fetched offset is already being processed"
    for offset in (10, 11, 12):
        h.admitted(("fs.video", 0, offset), 1)
    assert h.held == 3 and h.to_commit()[V0][0] == 10

    # The publisher reports the acknowledgement: offsets released, cam-2's checkpoint moves on.
    h.prediction_acknowledged(Acked("cam-2", 3 * 10**9, [("fs.video", 0, 11), ("fs.video", 0, 12)]))
    h.prediction_acknowledged(Acked("cam-1", 2 * 10**9, [("fs.video", 0, 10)]))
    chosen = h.to_commit()
    offset, metadata = chosen[V0]
    checkpoint = Checkpoint.decode(metadata)
    assert offset == 13 and checkpoint is not None
    assert dict(checkpoint.streams) == {"cam-1": 2 * 10**9 + HOP, "cam-2": 3 * 10**9 + HOP}
    h.committed(chosen)
    assert h.last_committed(V0) == 13
    assert V0 not in h.to_commit(), "an unchanged commit is not repeated"

    streams = h.revoke({V0, A0, T0})
    assert sorted(streams) == ["cam-1", "cam-2"] and sorted(aligner.dropped) == ["cam-1", "cam-2"]
    assert h.owned == frozenset() and h.to_commit() == {} and h.held == 0
    assert h.published_until("cam-2") is None


def test_streams_stay_while_another_topic_of_their_partition_is_still_owned() -> None:
    h, aligner = handover()
    h.assign({V0: None, A0: None, V1: None})
    h.fetched(V0, [Rec(0, b"cam-1")])
    h.fetched(V1, [Rec(0, b"cam-9")])
    assert h.revoke({V0}) == [] and aligner.dropped == [], "fs.audio 0 still holds cam-1's partition"
    assert sorted(h.revoke({A0, V1})) == ["cam-1", "cam-9"] == sorted(aligner.dropped)


def test_assignment_replaces_the_partitions_and_merges_checkpoints_of_one_partition_number() -> None:
    h, aligner = handover()
    older = Checkpoint(streams={"cam-1": 1 * 10**9}).encode(HOP)
    newer = Checkpoint(streams={"cam-1": 4 * 10**9, "cam-3": 10**9}).encode(HOP)
    assert h.assign({V0: Stored(5, older), A0: Stored(7, newer)}) == 2
    assert aligner.resumed == {"cam-1": 4 * 10**9, "cam-3": 10**9}, "the latest time per stream"
    h.assign({V1: None})
    assert h.owned == {V1}


def test_the_least_recently_seen_streams_are_forgotten_beyond_the_bound() -> None:
    h, _ = handover(max_streams_per_partition=2)
    h.assign({V0: None})
    h.fetched(V0, [Rec(0, b"a")])
    h.admitted(("fs.video", 0, 0), 1)
    h.prediction_acknowledged(Acked("a", 0, [("fs.video", 0, 0)]))
    h.fetched(V0, [Rec(1, b"b"), Rec(2, b"c")])
    assert h.published_until("a") is None, "stream a was forgotten with its published time"
    metadata = h.to_commit()[V0][1]
    checkpoint = Checkpoint.decode(metadata)
    assert checkpoint is not None and "a" not in checkpoint.streams


def test_a_replayed_dead_letter_is_settled_not_sent_again() -> None:
    h, _ = handover()
    h.assign({V0: Stored(0, Checkpoint(replay_mark=2).encode(HOP))})
    h.fetched(V0, [Rec(0, b"x"), Rec(1, b"x"), Rec(2, b"x")])
    assert h.replayed(("fs.video", 0, 1)) and not h.replayed(("fs.video", 0, 2))
    assert h.tracker.position(V0) == 0 and h.held == 2, "records 0 and 2 are still held"


class FakeProducer:
    """Takes every send; the test resolves the futures (the broker's acknowledgements)."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def test_the_publisher_reports_a_dead_letter_to_the_handover_and_only_its_acknowledgement_releases_it() -> None:
    async def scenario() -> None:
        h, _ = handover()
        h.assign({V0: None})
        h.fetched(V0, [Rec(0, b"cam-1"), Rec(1, b"cam-1")])
        h.admitted(("fs.video", 0, 1), 0)
        producer = FakeProducer()
        publisher = Publisher(producer, h, ServiceMetrics(), predictions_topic="p",  # type: ignore[arg-type]
                              deadletter_topic="d", transactional=False, group_id="g")
        message = type("Msg", (), {"topic": "fs.video", "partition": 0, "offset": 0, "key": b"cam-1",
                                   "value": b"bad", "headers": [], "timestamp": 0})()
        await publisher.dead_letter(message, DeadLetter("bad-jpeg", "broken", ("fs.video", 0, 0)))  # type: ignore[arg-type]
        assert h.to_commit()[V0][0] == 0, "held until the dead-letter topic has it"
        producer.futures[0].set_result(None)
        await publisher.settle()
        assert h.to_commit()[V0][0] == 2

    asyncio.run(scenario())


def test_provisional_predictions_are_checkpointed_so_a_restart_does_not_repeat_them() -> None:
    """Revisions on: a provisional prediction releases no record, but its window is remembered in the
    checkpoint, and the next owner's aligner is told not to make one again (exactly once per revision)."""
    h, _ = handover()
    h.assign({V0: Stored(0, "")})
    h.fetched(V0, [Rec(0, b"cam-1")])
    h.admitted(("fs.video", 0, 0), 2)
    h.prediction_acknowledged(Acked("cam-1", 0, [("fs.video", 0, 0)]))
    h.provisional_acknowledged(Acked("cam-1", 2 * HOP, []))
    offset, metadata = h.to_commit()[V0]
    assert offset == 0, "the record is still needed by the final of its second window"
    checkpoint = Checkpoint.decode(metadata)
    assert checkpoint is not None
    assert checkpoint.streams == {"cam-1": HOP} and checkpoint.provisional == {"cam-1": 3 * HOP}
    assert '"q"' in metadata and Checkpoint.decode(metadata.replace('"q"', '"x"')).provisional == {}, (
        "older readers ignore the key")

    again, aligner = handover()
    again.assign({V0: Stored(offset, metadata)})
    assert aligner.resumed == {"cam-1": HOP} and aligner.provisional == {"cam-1": 3 * HOP}
    # Once the finals catch up, the provisional mark is no longer written.
    again.fetched(V0, [Rec(0, b"cam-1")])
    again.prediction_acknowledged(Acked("cam-1", 3 * HOP, []))
    assert Checkpoint.decode(again.to_commit()[V0][1]).provisional == {}
