"""Input topics deleted under a running service (a broker that came back without its data, an operator's
mistake): aiokafka retries the commit of their offsets for ever, and a SIGTERM'd service waiting on it was
still running 48 s later, until SIGKILL. An at-least-once commit now gives up after a bound, and the stop
finishes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from servicekit import service_settings, serving, synthetic

from fusionstream.consumers.kafka import clients, delete_topics


def test_kafka_a_service_whose_input_topics_were_deleted_still_stops(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clients, "COMMIT_TIMEOUT_S", 2.0)
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    records = list(synthetic(streams=2, seconds=6, seed=3).records())
    inputs = [settings.video_topic, settings.audio_topic, settings.text_topic]

    async def scenario() -> float:
        async with serving(settings, records) as (running, reader):
            await reader.until(lambda r: len(r.records) >= 4)
            await delete_topics(kafka_bootstrap, inputs)  # with offsets of theirs held, not committed
            await asyncio.sleep(1.0)
            started = time.monotonic()
            running.service.stop()
            await asyncio.wait_for(running.task, timeout=60)
            return time.monotonic() - started

    took = asyncio.run(scenario())
    assert took < 20, f"the stop took {took:.1f} s"
