"""A bad record larger than the dead-letter topic takes (an outside operator's finding: the video topic raised
for camera-sized frames, as wire-format.md suggests, and the dead-letter topic left at its limit). Its dead
letter was refused, the service stopped without committing past it, and every restart stopped on it again."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from servicekit import PARTITIONS, Reader, produce, service_settings, serving

from fusionstream.stream import wire
from fusionstream.stream.media import text_record
from fusionstream.units import MS, NS

DEAD_LETTER_LIMIT = 20_000


def test_kafka_a_dead_letter_too_large_is_cut_to_fit_and_the_service_goes_on(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    base = (time.time_ns() // NS - 20) * NS
    good = [text_record("good", i, base + i * 500 * MS, base + i * 500 * MS + 300 * MS, "two") for i in range(16)]
    # A bad record of 200 kB, ten times what the dead-letter topic takes.
    bad_value = bytearray(wire.encode(text_record("cam", 0, base, base + 40 * MS, "x")))
    bad_value[3] = 1  # the video modality byte, on a text payload: encoding-mismatch
    too_big = bytes(bad_value) + b"\0" * 200_000  # and trailing bytes besides: refused either way

    async def scenario() -> tuple[list, list, bool]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(settings.deadletter_topic, PARTITIONS, 1,
                         topic_configs={"max.message.bytes": str(DEAD_LETTER_LIMIT)}),
                NewTopic(settings.video_topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"}),
            ])
        finally:
            await admin.close()
        async with serving(settings, good) as (running, reader), \
                Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
            await produce(settings, [(settings.video_topic, b"cam", too_big, base // 1_000_000, None)])
            await dead.until(lambda d: len(d.records) >= 1)
            await reader.until(lambda r: "good" in {s for s, _ in r.windows()})
            await asyncio.sleep(1.0)
            return dead.records, reader.values(), running.task.done()

    with caplog.at_level(logging.WARNING):
        dead, values, stopped = asyncio.run(scenario())
    assert not stopped, "the service went on"
    [letter] = dead
    headers = dict(letter.headers)
    assert headers["fs.truncated"] == str(len(too_big)).encode()
    assert letter.value == too_big[: len(letter.value)] and 0 < len(letter.value) < DEAD_LETTER_LIMIT
    assert headers["fs.reason"] in (b"encoding-mismatch", b"trailing-bytes")
    assert {v["stream_id"] for v in values} == {"good"}
    said = [r.getMessage() for r in caplog.records]
    assert any("fs.truncated" in line and f"{len(too_big)} bytes" in line for line in said), said
    assert any(f"input topic {settings.video_topic} has cleanup.policy=compact" in line for line in said), said
