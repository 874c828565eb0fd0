"""Topic administration against the real broker: topics are served when `ensure_topics` returns."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from fusionstream.consumers.kafka import delete_topics, ensure_topics

PARTITIONS = 4


def test_new_topics_take_writes_at_once(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    # Kafka names a new partition's leader a moment before that broker serves it; a producer
    # sending in that moment gets NOT_LEADER_OR_FOLLOWER and retries (in most creations, on this
    # broker, before ensure_topics waited for it), which reorders a fast replay's modalities.
    async def create_and_write() -> None:
        for _ in range(5):
            names = [f"served-{uuid.uuid4().hex[:8]}-{kind}" for kind in ("video", "audio", "text")]
            await ensure_topics(kafka_bootstrap, names, PARTITIONS)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                sent = [await producer.send(name, b"x", partition=p) for name in names for p in range(PARTITIONS)]
                await asyncio.gather(*sent)
            finally:
                await producer.stop()
                await delete_topics(kafka_bootstrap, names)

    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        asyncio.run(create_and_write())
    retried = [r.getMessage() for r in caplog.records if "NotLeaderForPartition" in r.getMessage()]
    assert not retried, retried[:3]


def test_a_topic_with_another_partition_count_is_refused_unless_any_count_will_do(kafka_bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from fusionstream.consumers.kafka import TopicLayoutError

    tag = uuid.uuid4().hex[:8]
    existing, new = f"layout-{tag}-existing", f"layout-{tag}-new"

    async def scenario() -> dict[str, int]:
        await ensure_topics(kafka_bootstrap, [existing], 2)
        try:
            with pytest.raises(TopicLayoutError, match=rf"{existing} has 2"):
                await ensure_topics(kafka_bootstrap, [existing, new], PARTITIONS)
            # An output topic: whatever count it has will do, and the missing one is still created.
            await ensure_topics(kafka_bootstrap, [existing, new], PARTITIONS, any_partitions=[existing])
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                described = await admin.describe_topics([existing, new])
                return {topic["topic"]: len(topic["partitions"]) for topic in described}
            finally:
                await admin.close()
        finally:
            await delete_topics(kafka_bootstrap, [existing, new])

    assert asyncio.run(scenario()) == {existing: 2, new: PARTITIONS}


def test_existing_topics_of_one_other_count_are_adopted_and_disagreeing_ones_refused(kafka_bootstrap: str) -> None:
    from fusionstream.consumers.kafka import TopicLayoutError

    tag = uuid.uuid4().hex[:8]
    video, audio, text = (f"adopt-{tag}-{kind}" for kind in ("video", "audio", "text"))

    async def scenario() -> tuple[int, int]:
        await ensure_topics(kafka_bootstrap, [video, audio], 3)
        try:
            # Without adopt, the setting rules: refused.
            with pytest.raises(TopicLayoutError, match=rf"{video} has 3"):
                await ensure_topics(kafka_bootstrap, [video, audio, text], PARTITIONS)
            # With it, the existing topics' count is taken, and the missing topic is created with it.
            used = await ensure_topics(kafka_bootstrap, [video, audio, text], PARTITIONS, adopt=True)
            consumer_side = len(await _partitions(text))
            await delete_topics(kafka_bootstrap, [text])
            await ensure_topics(kafka_bootstrap, [text], 2)  # now they disagree: 3, 3 and 2
            # Every topic named, and no count setting offered as the way out: none can serve them.
            for partitions in (PARTITIONS, 2, 3):
                with pytest.raises(TopicLayoutError, match=rf"one partition count.*{video} has 3, {audio} has 3, "
                                   rf"{text} has 2; recreate those that differ"):
                    await ensure_topics(kafka_bootstrap, [video, audio, text], partitions, adopt=True)
            return used, consumer_side
        finally:
            await delete_topics(kafka_bootstrap, [video, audio, text])

    async def _partitions(topic: str) -> list[int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            return [p["partition"] for p in described["partitions"]]
        finally:
            await admin.close()

    assert asyncio.run(scenario()) == (3, 3)
