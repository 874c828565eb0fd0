"""`fusionstream view` on an exactly-once service's predictions topic shows committed predictions only.

An outside subscriber found the viewer showing a prediction from an aborted transaction (a worker killed
mid-transaction) instead of the committed copy of the same window and revision: it read uncommitted."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from test_subscribe import make_prediction

from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.viewer import feed as feed_module
from fusionstream.consumers.viewer.state import ViewerState


def test_kafka_the_viewer_never_shows_an_aborted_prediction(kafka_bootstrap: str, topic_prefix: str) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, video_topic=f"{topic_prefix}.video",
                        audio_topic=f"{topic_prefix}.audio", text_topic=f"{topic_prefix}.text",
                        predictions_topic=f"{topic_prefix}.predictions")
    t0 = time.time_ns() // 1_000_000_000 * 1_000_000_000 - 5_000_000_000
    committed = make_prediction("cam", 0, t0)
    aborted = dataclasses.replace(committed, label="9", score=0.99)

    async def scenario() -> dict:
        topics = [settings.video_topic, settings.audio_topic, settings.text_topic, settings.predictions_topic]
        await ensure_topics(kafka_bootstrap, topics, partitions=1)
        try:
            producer = make_producer(kafka_bootstrap, transactional_id=f"{topic_prefix}-writer")
            await producer.start()
            try:
                await producer.begin_transaction()  # the worker killed mid-transaction: the broker aborts it
                await producer.send_and_wait(settings.predictions_topic, key=b"cam",
                                             value=aborted.to_json(capture_to_publish_ms=40.0))
                await producer.abort_transaction()
                async with producer.transaction():  # its successor publishes the window again, committed
                    await producer.send(settings.predictions_topic, key=b"cam",
                                        value=committed.to_json(capture_to_publish_ms=40.0))
            finally:
                await producer.stop()
            state = ViewerState(sync=False)
            feed = feed_module.KafkaFeed(settings, state, lookback_s=60.0)
            await feed.start()
            task = asyncio.create_task(feed.run())
            deadline = time.monotonic() + 30
            while "cam" not in state.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the aborted one, if read, would be kept over the committed (same revision)
            feed.stop()
            await asyncio.wait_for(task, 20)
            await feed.close()
            return (state.snapshot("cam", now=time.time()) or {}).get("prediction") or {}
        finally:
            await delete_topics(kafka_bootstrap, topics)

    shown = asyncio.run(scenario())
    assert shown.get("label") == committed.label and shown.get("score") == round(committed.score, 6), shown
