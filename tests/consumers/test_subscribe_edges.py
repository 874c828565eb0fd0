"""What a docs-only subscriber tripped on: one stream id as a string, a topic that does not exist, and a group
subscription whose topic was deleted under it (its close waited for a commit for ever)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time

import pytest
from servicekit import admin_session
from test_subscribe import (
    DEADLINE_S,
    FUSIONSTREAM,
    PARTITIONS,
    REPO_ROOT,
    OnTopic,
    _read,
    make_prediction,
    write_predictions,
)

from fusionstream.consumers.kafka import clients, delete_topics, ensure_topics, make_producer
from fusionstream.consumers.subscribers import subscribe


def test_kafka_one_stream_id_as_a_string_is_that_stream_not_its_letters(kafka_bootstrap: str,
                                                                         topic_prefix: str) -> None:
    published = write_predictions(kafka_bootstrap, f"{topic_prefix}.predictions")
    wanted = published.stream_ids[0]

    async def read(stream_ids: object) -> list[str]:
        async with asyncio.timeout(DEADLINE_S), subscribe(
            kafka_bootstrap, published.topic, from_beginning=True, until_end=True,
            stream_ids=stream_ids,  # type: ignore[arg-type]
        ) as predictions:
            return [p.stream_id async for p in predictions]

    as_string, as_list = asyncio.run(read(wanted)), asyncio.run(read([wanted]))
    assert as_string == as_list and set(as_string) == {wanted} and len(as_string) == len(published.of(wanted))


def test_kafka_a_topic_that_does_not_exist_is_said_not_read_as_empty(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def read_to_end() -> list:
        async with asyncio.timeout(DEADLINE_S), subscribe(kafka_bootstrap, f"{topic_prefix}.no-such",
                                                          until_end=True) as predictions:
            return [p async for p in predictions]

    async def wait_live() -> None:
        async with subscribe(kafka_bootstrap, f"{topic_prefix}.no-such-either") as predictions:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    await anext(predictions)

    with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.subscribers.api"):
        assert asyncio.run(read_to_end()) == []
        asyncio.run(wait_live())
    said = [r.getMessage() for r in caplog.records]
    assert f"topic {topic_prefix}.no-such does not exist: nothing to read" in said, said
    assert f"topic {topic_prefix}.no-such-either does not exist yet: waiting for it to be created" in said, said


def test_kafka_a_group_subscription_whose_topic_was_deleted_still_closes(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka retries the commit of a deleted topic's offsets for ever (388 lines in 40 s, then SIGINT)."""
    monkeypatch.setattr(clients, "COMMIT_TIMEOUT_S", 2.0)
    published = write_predictions(kafka_bootstrap, f"{topic_prefix}.doomed")

    async def read_two_then_delete() -> float:
        async with subscribe(kafka_bootstrap, published.topic, group_id=f"{topic_prefix}-g",
                             from_beginning=True) as predictions:
            async with asyncio.timeout(DEADLINE_S):
                for _ in range(2):
                    await anext(predictions)
            await delete_topics(kafka_bootstrap, [published.topic])
            started = time.monotonic()
        return time.monotonic() - started  # the close: its commit, then the consumer's stop

    with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.subscribers.api"):
        took = asyncio.run(asyncio.wait_for(read_two_then_delete(), 60))
    assert took < 15, f"closing took {took:.1f} s"


def test_kafka_subscribers_hide_aborted_transactions_unless_asked(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.predictions"
    t0 = time.time_ns()
    committed = [make_prediction("cam-tx", i, t0) for i in (0, 2)]
    aborted = make_prediction("cam-tx", 1, t0)

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [topic], PARTITIONS)
        producer = make_producer(kafka_bootstrap, transactional_id=f"{topic_prefix}-tx")
        await producer.start()
        try:
            for prediction, commit in ((committed[0], True), (aborted, False), (committed[1], True)):
                await producer.begin_transaction()
                await producer.send_and_wait(topic, prediction.to_json(), key=b"cam-tx")
                await (producer.commit_transaction() if commit else producer.abort_transaction())
        finally:
            await producer.stop()

    asyncio.run(scenario())
    published = OnTopic(kafka_bootstrap, topic, [])
    # Committed only by default: the next owner publishes an aborted transaction's windows again.
    seen = [p.window_id for p in asyncio.run(_read(published))]
    assert seen == [p.window_id for p in committed]
    everything = [p.window_id for p in asyncio.run(_read(published, read_committed=False))]
    assert everything == [committed[0].window_id, aborted.window_id, committed[1].window_id]
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap, "FUSIONSTREAM_PREDICTIONS_TOPIC": topic}
    for flags, expected in (([], seen), (["--read-uncommitted"], everything)):
        tail = subprocess.run([*FUSIONSTREAM, "tail", "--json", "--from-beginning", "--until-end", *flags], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
        assert tail.returncode == 0, tail.stderr
        assert [json.loads(line)["window_id"] for line in tail.stdout.splitlines()] == expected, flags


def test_kafka_a_broker_that_refuses_the_client_raises_broker_auth_error(kafka_bootstrap: str,
                                                                         topic_prefix: str) -> None:
    from fusionstream.consumers.subscribers import BrokerAuthError, BrokerUnavailable

    async def start() -> None:
        async with asyncio.timeout(DEADLINE_S), subscribe(
            kafka_bootstrap, f"{topic_prefix}.predictions", security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN", sasl_plain_username="u", sasl_plain_password="p",
        ) as predictions:
            await anext(predictions)

    with pytest.raises(BrokerAuthError, match="FUSIONSTREAM_SECURITY_PROTOCOL") as refused:
        asyncio.run(start())
    assert not isinstance(refused.value, BrokerUnavailable)


@pytest.mark.parametrize("from_beginning", [False, True])
def test_kafka_partitions_added_under_a_live_subscription_lose_and_repeat_nothing(
    kafka_bootstrap: str, topic_prefix: str, from_beginning: bool
) -> None:
    """Without a group aiokafka assigned every partition afresh when partitions were added, each from the newest
    record (a live tail missed 1-2 of 248 predictions) or, from the beginning, the oldest (the topic again)."""
    from aiokafka.admin import NewPartitions

    topic = f"{topic_prefix}.predictions"
    t0 = time.time_ns() // 1_000_000_000 * 1_000_000_000
    streams = [f"cam-{i:02d}" for i in range(12)]

    async def publish(producer: object, index: int) -> list[str]:
        sent = []
        for stream in streams:
            prediction = make_prediction(stream, index, t0)
            await producer.send_and_wait(topic, prediction.to_json(), key=stream.encode())  # type: ignore[attr-defined]
            sent.append(prediction.window_id)
        return sent

    async def scenario() -> tuple[list[str], list[str]]:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        producer = make_producer(kafka_bootstrap)
        await producer.start()
        seen: list[str] = []
        try:
            before = await publish(producer, 0) if from_beginning else []
            async with subscribe(kafka_bootstrap, topic, from_beginning=from_beginning) as predictions:

                async def read() -> None:
                    async for p in predictions:
                        seen.append(p.window_id)

                reader = asyncio.create_task(read())
                await asyncio.sleep(2.0)  # assigned, positioned
                sent = before + await publish(producer, 1)
                async with admin_session(kafka_bootstrap) as admin:
                    await admin.create_partitions({topic: NewPartitions(total_count=6)})
                # Published on every partition, old and new, while the subscription finds the new ones (5 s).
                for index in range(2, 12):
                    sent += await publish(producer, index)
                    await asyncio.sleep(0.8)
                deadline = time.monotonic() + DEADLINE_S
                while len(seen) < len(sent) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.0)  # anything repeated would come by now
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            await producer.stop()
            await delete_topics(kafka_bootstrap, [topic])
        return sent, seen

    sent, seen = asyncio.run(scenario())
    assert len(seen) == len(set(seen)), "a prediction came twice"
    assert set(seen) == set(sent), f"missed {len(set(sent) - set(seen))} of {len(sent)}"
