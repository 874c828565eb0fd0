"""Records of all three modalities through a real Kafka broker: bytes, keys, timestamps and co-partitioning.

What the service relies on (docs/wire-format.md): a record comes back byte-identical, keyed by
its stream id, stamped with its event time in ms; and with co-partitioned topics and
range assignment, every record of a stream (video, audio and text) reaches the same
consumer of the group.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_consumer, make_producer
from fusionstream.stream.media import audio_record, decode_media, image_record, text_record
from fusionstream.stream.records import MODALITIES, Modality, Record
from fusionstream.stream.wire import decode, encode

pytestmark = pytest.mark.kafka

PARTITIONS = 4
STREAMS = [f"cam-{i}" for i in range(8)]
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
FRAME_NS = 40_000_000  # 25 fps
SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 320  # 20 ms
DEADLINE_S = 60.0
# Fast heartbeats: a consumer learns of a rebalance on its next heartbeat (default 3 s).
CONSUMER_OPTIONS = {"heartbeat_interval_ms": 200, "session_timeout_ms": 10_000}


def _records() -> list[Record]:
    """Three frames, three 20 ms audio chunks and two words per stream, interleaved in event time."""
    records: list[Record] = []
    for index, stream_id in enumerate(STREAMS):
        rng = np.random.default_rng(index)
        t0 = T0_NS + index * 1_000_003  # streams do not share timestamps
        for seq in range(3):
            rgb = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
            records.append(image_record(stream_id, seq, t0 + seq * FRAME_NS, t0 + (seq + 1) * FRAME_NS, rgb))
            t = np.arange(seq * CHUNK_SAMPLES, (seq + 1) * CHUNK_SAMPLES) / SAMPLE_RATE
            samples = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            chunk_start = t0 + seq * CHUNK_SAMPLES * 1_000_000_000 // SAMPLE_RATE
            records.append(audio_record(stream_id, seq, chunk_start, samples, SAMPLE_RATE))
        for seq, word in enumerate(("seven", "sieben")):
            records.append(text_record(stream_id, seq, t0 + seq * 50_000_000, t0 + (seq + 1) * 50_000_000, word))
    return records


def _topics(prefix: str) -> dict[Modality, str]:
    return {modality: f"{prefix}.{modality.label}" for modality in MODALITIES}


async def _produce(bootstrap: str, topics: dict[Modality, str], records: list[Record],
                   compression: str | None = None) -> dict[bytes, int]:
    """Send every record (key = stream id, timestamp = event time in ms); the partition each landed on."""
    producer = make_producer(bootstrap, compression_type=compression)
    await producer.start()
    try:
        pending = []
        for record in records:
            value = encode(record)
            future = await producer.send(
                topics[record.modality],
                value=value,
                key=record.stream_id.encode("utf-8"),
                timestamp_ms=record.t_start_ns // 1_000_000,
            )
            pending.append((value, future))
        return {value: (await future).partition for value, future in pending}
    finally:
        await producer.stop()


async def _consume(consumers: list[AIOKafkaConsumer], count: int) -> list[list[ConsumerRecord]]:
    """Poll all consumers together until they have ``count`` records between them."""
    received: list[list[ConsumerRecord]] = [[] for _ in consumers]
    async with asyncio.timeout(DEADLINE_S):
        while sum(map(len, received)) < count:
            batches = await asyncio.gather(*(c.getmany(timeout_ms=200) for c in consumers))
            for mine, batch in zip(received, batches, strict=True):
                for tp in sorted(batch):
                    mine.extend(batch[tp])
    return received


async def _settle(consumers: list[AIOKafkaConsumer], partitions: int) -> None:
    """Wait until the group has handed every partition to exactly one of ``consumers``, each getting some."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))
            owned = [c.assignment() for c in consumers]
            if all(owned) and sum(map(len, owned)) == len(set().union(*owned)) == partitions:
                return


async def _stop(consumers: Iterable[AIOKafkaConsumer]) -> None:
    await asyncio.gather(*(c.stop() for c in consumers))


def _check_record(message: ConsumerRecord, sent: dict[bytes, Record], partition_of: dict[bytes, int]) -> Record:
    original = sent[message.value]  # byte-identical, or this is a KeyError
    assert decode(message.value) == original
    assert message.key == original.stream_id.encode("utf-8")
    assert message.timestamp == original.t_start_ns // 1_000_000
    assert message.timestamp_type == 0  # CreateTime: the producer's (event) time, not the broker's
    assert message.partition == partition_of[message.value]
    return original


# Other clients compress by default (franz-go: snappy): every codec Kafka has must be readable, or one such
# producer's first batch stops every consumer of the topic at every restart.
@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"], ids=lambda c: c or "none")
def test_kafka_roundtrip_is_byte_identical(kafka_bootstrap: str, topic_prefix: str, compression: str | None) -> None:
    records = _records()
    sent = {encode(record): record for record in records}
    assert len(sent) == len(records)
    topics = _topics(topic_prefix)

    async def scenario() -> tuple[dict[bytes, int], list[ConsumerRecord]]:
        await ensure_topics(kafka_bootstrap, list(topics.values()), PARTITIONS)
        try:
            partition_of = await _produce(kafka_bootstrap, topics, records, compression)
            consumer = make_consumer(
                *topics.values(), bootstrap=kafka_bootstrap, group_id=f"{topic_prefix}-group", **CONSUMER_OPTIONS
            )
            await consumer.start()
            try:
                [received] = await _consume([consumer], len(records))
                # Nothing beyond what was sent (no duplicates) arrives afterwards.
                assert not await consumer.getmany(timeout_ms=300)
            finally:
                await consumer.stop()
            return partition_of, received
        finally:
            await delete_topics(kafka_bootstrap, list(topics.values()))

    partition_of, received = asyncio.run(scenario())

    assert sorted(m.value for m in received) == sorted(sent)
    order: dict[tuple[str, str], list[int]] = defaultdict(list)
    for message in received:
        original = _check_record(message, sent, partition_of)
        assert message.topic == topics[original.modality]
        order[message.topic, original.stream_id].append(original.seq)
    # One key, one partition: a stream's records of one modality keep their order.
    assert all(seqs == sorted(seqs) for seqs in order.values())
    # The payloads are real media, not just bytes that survived.
    for message in received[:5]:
        decode_media(decode(message.value))


# Two consumers is the common case. With 4 partitions, two consumers happen to get
# matching partition numbers from round-robin assignment too; three do not, so the
# three-consumer case is the one that proves the range assignor is in use.
@pytest.mark.parametrize("group_size", [2, 3], ids=lambda n: f"{n}-consumers")
def test_kafka_copartitioned_streams_stay_with_one_consumer(
    kafka_bootstrap: str, topic_prefix: str, group_size: int
) -> None:
    records = _records()
    sent = {encode(record): record for record in records}
    topics = _topics(topic_prefix)
    names = list(topics.values())

    async def scenario() -> tuple[dict[bytes, int], list[set[TopicPartition]], list[list[ConsumerRecord]]]:
        await ensure_topics(kafka_bootstrap, names, PARTITIONS)
        consumers = [
            make_consumer(*names, bootstrap=kafka_bootstrap, group_id=f"{topic_prefix}-group", **CONSUMER_OPTIONS)
            for _ in range(group_size)
        ]
        try:
            for consumer in consumers:
                await consumer.start()
            # Produce only once the group is stable, so no record is read before a rebalance
            # moves its partition (that would show one stream on two consumers).
            await _settle(consumers, len(names) * PARTITIONS)
            assigned = [set(c.assignment()) for c in consumers]
            partition_of = await _produce(kafka_bootstrap, topics, records)
            received = await _consume(consumers, len(records))
            assert [set(c.assignment()) for c in consumers] == assigned, "the group rebalanced mid-test"
            return partition_of, assigned, received
        finally:
            await _stop(consumers)
            await delete_topics(kafka_bootstrap, names)

    partition_of, assigned, received = asyncio.run(scenario())

    # Range assignment: each consumer owns the same partition numbers of all three topics,
    # and together the consumers own each number once.
    numbers: list[int] = []
    for owned in assigned:
        per_topic = {name: {tp.partition for tp in owned if tp.topic == name} for name in names}
        assert len({frozenset(p) for p in per_topic.values()}) == 1, f"not co-partitioned: {per_topic}"
        numbers.extend(per_topic[names[0]])
    assert sorted(numbers) == list(range(PARTITIONS))

    # Each stream's records, all three modalities, reached exactly one consumer.
    assert sorted(m.value for mine in received for m in mine) == sorted(sent)
    consumers_of: dict[str, set[int]] = defaultdict(set)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    modalities_of: dict[tuple[str, int], set[Modality]] = defaultdict(set)
    for index, mine in enumerate(received):
        for message in mine:
            original = _check_record(message, sent, partition_of)
            consumers_of[original.stream_id].add(index)
            partitions_of[original.stream_id].add(message.partition)
            modalities_of[original.stream_id, index].add(original.modality)
    assert all(len(owners) == 1 for owners in consumers_of.values()), dict(consumers_of)
    assert all(len(parts) == 1 for parts in partitions_of.values()), dict(partitions_of)
    assert all(mods == set(MODALITIES) for mods in modalities_of.values())
    # Not vacuous: STREAMS hash to all four partitions, so every consumer had work.
    assert all(received), [len(mine) for mine in received]
