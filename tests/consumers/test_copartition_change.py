"""Partitions added to one input topic while the service runs (an outside operator's finding): a stream's video and
its audio then hash to different partitions, owned by different instances, and each published its own copy of the
stream's windows (633 windows twice). At its next assignment the service now refuses, as it does at start."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from fusionstream.consumers.kafka import TopicLayoutError, check_copartitioned, delete_topics, ensure_topics


def test_kafka_input_topics_whose_counts_came_to_differ_are_refused(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = [f"{topic_prefix}.{name}" for name in ("video", "audio", "text")]

    async def scenario() -> str:
        await ensure_topics(kafka_bootstrap, topics, 2)
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=kafka_bootstrap, group_id=f"{topic_prefix}-g")
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=500)
            check_copartitioned(consumer._client.cluster, topics)  # as they are: one count
            # One deleted (or not in the metadata yet) is no other count: the service waits for it to come back.
            check_copartitioned(consumer._client.cluster, [*topics, f"{topic_prefix}.deleted"])
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.create_partitions({topics[0]: NewPartitions(total_count=4)})
            finally:
                await admin.close()
            await consumer._client.force_metadata_update()
            with pytest.raises(TopicLayoutError) as refused:
                check_copartitioned(consumer._client.cluster, topics)
            return str(refused.value)
        finally:
            await consumer.stop()
            await delete_topics(kafka_bootstrap, topics)

    said = asyncio.run(scenario())
    assert f"{topics[0]} has 4, {topics[1]} has 2, {topics[2]} has 2" in said
    assert "changed while serving" in said and "same count" in said
