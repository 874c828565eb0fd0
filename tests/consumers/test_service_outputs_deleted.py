"""The predictions topic deleted under a running service (an operator's mistake, a broker back without its data).

aiokafka's sender retried the held predictions in a tight loop (26,000 log lines a 10 s) for ``produce_hold_s``
(300 s), then the service stopped on ``NotLeaderForPartitionError``, naming neither the topic nor the cause.
It now stops within seconds, saying which topic is gone; its restart creates it again and publishes what was
not committed (consumers/service/outputs.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from servicekit import PARTITIONS, Reader, Running, all_topics, produce, service_settings, synthetic

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.kafka.errors import MissingTopicsError


def test_kafka_a_service_whose_predictions_topic_was_deleted_stops_saying_so(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path,
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    first = list(synthetic(streams=2, seconds=4, seed=3).records())
    later = list(synthetic(streams=2, seconds=8, seed=4).records())

    async def scenario() -> tuple[BaseException | None, float]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, first)
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader:
                running = Running(settings)
                service = await running.__aenter__()
                try:
                    await reader.until(lambda r: len(r.records) >= 2)
                    await delete_topics(kafka_bootstrap, [settings.predictions_topic])
                    deleted = time.monotonic()
                    await produce(settings, later)  # windows to publish, to a topic that is gone
                    try:
                        await asyncio.wait_for(asyncio.shield(running.task), timeout=60)
                    except MissingTopicsError:
                        pass
                    return service.failure, time.monotonic() - deleted
                finally:
                    if not running.task.done():
                        service.stop()
                        await asyncio.wait_for(running.task, timeout=60)
                    running._engine.__exit__(None, None, None)
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    failure, took = asyncio.run(scenario())
    assert isinstance(failure, MissingTopicsError), failure
    assert f"topic {settings.predictions_topic} no longer exists" in str(failure)
    assert took < 30, f"it stopped {took:.1f} s after the topic was deleted"
