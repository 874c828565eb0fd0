"""aiokafka lines an operator must see, raised to WARNING: input deleted before the service read it (retention, an
operator's delete-records) was said only at INFO, with no word of what it means (an outside operator's finding)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import RecordsToDelete
from servicekit import admin_session

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.kafka.client_logs import lower_routine_client_errors


def test_kafka_records_deleted_before_they_were_read_are_a_warning(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{topic_prefix}.video"
    tp = TopicPartition(topic, 0)

    async def scenario() -> int:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        producer = make_producer(kafka_bootstrap)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, f"record {i}".encode(), key=b"cam")
        finally:
            await producer.stop()
        async with admin_session(kafka_bootstrap) as admin:
            await admin.delete_records({tp: RecordsToDelete(before_offset=6)})
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, 2)  # where a consumer stopped before the records were deleted
            records = await consumer.getmany(tp, timeout_ms=5000)
            return min(r.offset for r in records.get(tp, []))
        finally:
            await consumer.stop()
            await delete_topics(kafka_bootstrap, [topic])

    lower_routine_client_errors()
    with caplog.at_level(logging.INFO, logger="aiokafka"):
        first = asyncio.run(scenario())
    assert first == 6
    [said] = [r for r in caplog.records if "out of range" in r.getMessage()]
    assert said.levelname == "WARNING"
    assert "records deleted before this client read them" in said.getMessage() and topic in said.getMessage()
