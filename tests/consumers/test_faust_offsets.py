"""The Faust app on a predictions topic written in transactions, as ``serve --exactly-once`` writes it: it
reads committed predictions only, and its offsets keep up.

Every transaction ends with a control record, an offset no consumer receives: Faust's own commits
stalled on those gaps (one transaction per commit interval), so a restarted worker re-read and counted
as duplicates nearly everything (consumers/subscribers/faust_offsets.py). Against the real broker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from test_subscribe import PARTITIONS, OnTopic, _get, faust_worker, make_prediction

from fusionstream.consumers.kafka import ensure_topics, make_producer

STREAMS = ("cam-00", "cam-01", "cam-02", "lobby")
#: Predictions per stream, each in a transaction of its own: about 50 control records per partition,
#: which Faust's commits crossed one per 2.8 s commit interval.
PER_STREAM = 40
#: Faust commits every 2.8 s: three intervals for the committed offsets to reach the last prediction.
COMMIT_DEADLINE_S = 9.0
VIEWS_DEADLINE_S = 90.0


def _write_in_transactions(bootstrap: str, topic: str) -> OnTopic:
    t0 = time.time_ns() // 1_000_000_000 * 1_000_000_000
    values = []
    for index in range(PER_STREAM):
        for stream_id in STREAMS:
            values.append(json.loads(make_prediction(stream_id, index, t0).to_json(capture_to_publish_ms=40.0)))

    async def scenario() -> None:
        await ensure_topics(bootstrap, [topic], partitions=PARTITIONS)
        producer = make_producer(bootstrap, transactional_id=f"{topic}-writer")
        await producer.start()
        try:
            # A transaction the writer aborts (a service worker killed mid-transaction): never shown or counted.
            await producer.begin_transaction()
            ghost = make_prediction("ghost", 0, t0).to_json(capture_to_publish_ms=40.0)
            await producer.send_and_wait(topic, value=ghost, key=b"ghost")
            await producer.abort_transaction()
            for value in values:
                async with producer.transaction():
                    await producer.send(topic, value=json.dumps(value).encode(), key=value["stream_id"].encode())
        finally:
            await producer.stop()

    asyncio.run(scenario())
    return OnTopic(bootstrap, topic, values)


async def _after_last_records(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, one past the offset of its last record (its last control record is not counted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        after: dict[int, int] = {}
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                after[tp.partition] = records[-1].offset + 1
        return after
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def _views(url: str) -> dict[str, tuple[int, int]]:
    try:
        status, body = _get(f"{url}/streams/")
    except OSError:
        return {}
    return {s["stream_id"]: (s["predictions"], s["duplicates"]) for s in body["streams"]} if status == 200 else {}


def _wait_for_views(url: str, worker: subprocess.Popen[bytes], want: dict[str, tuple[int, int]], log: Path) -> None:
    deadline = time.monotonic() + VIEWS_DEADLINE_S
    while (shown := _views(url)) != want:
        assert worker.poll() is None, f"the Faust worker exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the views never showed {want}, last {shown}:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def test_faust_app_commits_across_transaction_markers_and_a_restart_rereads_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    published = _write_in_transactions(kafka_bootstrap, f"{topic_prefix}.predictions")
    after_last = asyncio.run(_after_last_records(kafka_bootstrap, published.topic))
    assert len(after_last) == PARTITIONS  # every partition holds predictions (and gaps between them)
    app_id = f"{topic_prefix}-faust-tx"
    every_one_once = {stream_id: (PER_STREAM, 0) for stream_id in STREAMS}

    log = tmp_path / "faust.log"
    with faust_worker(published, app_id, log) as (url, worker):
        _wait_for_views(url, worker, every_one_once, log)
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        while (committed := asyncio.run(_committed(kafka_bootstrap, app_id, published.topic))) != after_last:
            assert time.monotonic() < deadline, (
                f"committed {committed}, the last predictions end at {after_last}:\n{log.read_text()[-2000:]}"
            )
            time.sleep(0.5)

    # Restarted, the worker recovers its tables from their changelogs and resumes after the last prediction.
    log = tmp_path / "faust-restarted.log"
    with faust_worker(published, app_id, log) as (url, worker):
        _wait_for_views(url, worker, every_one_once, log)
        time.sleep(3.0)  # a re-read prediction would show as a duplicate by now
        assert _views(url) == every_one_once
