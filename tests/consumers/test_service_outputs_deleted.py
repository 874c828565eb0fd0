"""The predictions topic deleted under a running service (an operator's mistake, a broker back without its data).

aiokafka's sender retried the held predictions in a tight loop (26,000 log lines a 10 s) for ``produce_hold_s``
(300 s), then the service stopped on ``NotLeaderForPartitionError``, naming neither the topic nor the cause.
It now stops within seconds, saying which topic is gone; its restart creates it again and publishes what was
not committed (consumers/service/outputs.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from servicekit import produce, service_settings, serving, synthetic

from fusionstream.consumers.kafka import delete_topics
from fusionstream.consumers.kafka.errors import MissingTopicsError


@pytest.mark.parametrize("sigterm", [False, True], ids=["running", "stopping"])
def test_kafka_a_service_whose_predictions_topic_was_deleted_stops_saying_so(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, sigterm: bool,
) -> None:
    """Running, it stops on its own; told to stop meanwhile (SIGTERM), its graceful stop, which waits for the
    stuck predictions, ends the same way instead of waiting for them (it would have, for produce_hold_s)."""
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    first = list(synthetic(streams=2, seconds=4, seed=3).records())
    later = list(synthetic(streams=2, seconds=8, seed=4).records())

    async def scenario() -> tuple[BaseException | None, float]:
        async with serving(settings, first) as (running, reader):
            await reader.until(lambda r: len(r.records) >= 2)
            await delete_topics(kafka_bootstrap, [settings.predictions_topic])
            deleted = time.monotonic()
            await produce(settings, later)  # windows to publish, to a topic that is gone
            if sigterm:
                await asyncio.sleep(2.0)
                running.service.stop()
            await asyncio.wait({running.task}, timeout=60)
            return running.service.failure, time.monotonic() - deleted

    failure, took = asyncio.run(scenario())
    assert isinstance(failure if not sigterm else failure.__cause__, MissingTopicsError), repr(failure)
    assert f"topic {settings.predictions_topic} no longer exists" in str(failure)
    assert took < 30, f"it stopped {took:.1f} s after the topic was deleted"
