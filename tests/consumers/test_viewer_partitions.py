"""`fusionstream view` keeps its place when partitions are added to a topic it reads.

Its consumer has no group, so aiokafka assigned every partition afresh from the newest record when the metadata
changed, and the page missed the predictions published meanwhile (as a live `tail` did: test_subscribe_edges)."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import NewPartitions
from servicekit import admin_session
from test_subscribe import DEADLINE_S, make_prediction

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.viewer.feed import KafkaFeed
from fusionstream.consumers.viewer.state import ViewerState


def test_kafka_the_viewer_misses_no_prediction_when_partitions_are_added(kafka_bootstrap: str,
                                                                         topic_prefix: str) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, video_topic=f"{topic_prefix}.video",
                        audio_topic=f"{topic_prefix}.audio", text_topic=f"{topic_prefix}.text",
                        predictions_topic=f"{topic_prefix}.predictions")
    topics = [settings.video_topic, settings.audio_topic, settings.text_topic, settings.predictions_topic]
    t0 = time.time_ns() // 1_000_000_000 * 1_000_000_000
    streams = [f"cam-{i:02d}" for i in range(12)]

    async def scenario() -> tuple[dict[str, int], int]:
        await ensure_topics(kafka_bootstrap, topics, partitions=2)
        producer = make_producer(kafka_bootstrap)
        await producer.start()
        state = ViewerState(sync=False)
        feed = KafkaFeed(settings, state, lookback_s=0.0)  # only what is published from now on
        sent = 0
        try:
            await feed.start()
            task = asyncio.create_task(feed.run())
            await asyncio.sleep(2.0)  # assigned and positioned at the end
            for index in range(12):
                if index == 2:
                    async with admin_session(kafka_bootstrap) as admin:
                        await admin.create_partitions({settings.predictions_topic: NewPartitions(total_count=6)})
                for stream in streams:  # on every partition, old and new, while the viewer finds the new ones
                    prediction = make_prediction(stream, index, t0)
                    await producer.send_and_wait(settings.predictions_topic, prediction.to_json(),
                                                 key=stream.encode())
                    sent += 1
                await asyncio.sleep(0.8)
            deadline = time.monotonic() + DEADLINE_S
            while state.counts.get("prediction", 0) < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            feed.stop()
            await asyncio.wait_for(task, 20)
        finally:
            await feed.close()
            await producer.stop()
            await delete_topics(kafka_bootstrap, topics)
        return {sid: view.predictions_seen for sid, view in state.streams.items()}, sent

    seen, sent = asyncio.run(scenario())
    assert sum(seen.values()) == sent, f"shown {sum(seen.values())} of {sent}: {seen}"
