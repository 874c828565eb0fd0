"""A record stamped far ahead of the clock: the broker refuses its Kafka timestamp, and with it its whole batch."""

from __future__ import annotations

import asyncio
import time

from test_produce import _env, _topics, read_topics

from fusionstream.consumers.producers.publish import STAMP_AHEAD_LIMIT_MS, kafka_timestamp, publish
from fusionstream.consumers.settings import Settings
from fusionstream.stream.records import Encoding, Modality, Record

HOUR_NS = 3600 * 1_000_000_000


def test_the_kafka_timestamp_is_the_event_time_unless_far_ahead() -> None:
    now_ms = 1_800_000_000_000
    assert kafka_timestamp(now_ms * 1_000_000 - 5_000_000_123, now_ms) == now_ms - 5_001  # behind: as it is
    assert kafka_timestamp((now_ms + STAMP_AHEAD_LIMIT_MS) * 1_000_000, now_ms) == now_ms + STAMP_AHEAD_LIMIT_MS
    assert kafka_timestamp((now_ms + STAMP_AHEAD_LIMIT_MS + 1) * 1_000_000, now_ms) == now_ms


def test_kafka_one_record_stamped_hours_ahead_loses_nothing_of_its_batch(kafka_bootstrap: str,
                                                                         topic_prefix: str) -> None:
    """Stamped with its event time, a frame two hours ahead made a Kafka 4 broker refuse its batch
    (INVALID_TIMESTAMP: past log.message.timestamp.after.max.ms, 1 h by default), 20 good frames with it
    (an outside tester's finding, from Go). Every record now reaches the topic, the envelope unchanged, so
    the service can dead-letter that one as `future`."""
    env = _env(kafka_bootstrap, topic_prefix)
    settings = Settings(bootstrap_servers=kafka_bootstrap, video_topic=env["FUSIONSTREAM_VIDEO_TOPIC"],
                        audio_topic=env["FUSIONSTREAM_AUDIO_TOPIC"], text_topic=env["FUSIONSTREAM_TEXT_TOPIC"],
                        partitions=int(env["FUSIONSTREAM_PARTITIONS"]))
    t0 = time.time_ns()
    starts = [t0 + i * 100_000_000 + (2 * HOUR_NS if i == 10 else 0) for i in range(21)]
    records = [Record("clock-ahead", Modality.TEXT, i, start, start + 100_000_000, Encoding.UTF8, b"word")
               for i, start in enumerate(starts)]

    sent_ms = time.time_ns() // 1_000_000
    published = asyncio.run(publish(records, settings))
    assert published.total == 21

    on_topic = read_topics(kafka_bootstrap, _topics(topic_prefix))[Modality.TEXT]
    assert len(on_topic) == 21
    ahead = [r for r in on_topic if r.timestamp > t0 // 1_000_000 + HOUR_NS // 1_000_000]
    assert not ahead, "no timestamp an hour ahead reached the broker"
    from fusionstream.stream.wire import decode

    decoded = {decode(r.value).t_start_ns: r for r in on_topic}
    assert sorted(decoded) == sorted(starts)  # the envelope keeps the event time, two hours ahead included
    assert sent_ms <= decoded[starts[10]].timestamp <= time.time_ns() // 1_000_000
    assert all(decoded[s].timestamp == s // 1_000_000 for s in starts if s != starts[10])
