"""`fusionstream tail --dead-letters`: the dead-letter topic, read from its headers, one line or JSON each.

The dead letters are written by the service's own publisher from records read back from a real input
topic, so the headers are the ones the service writes (docs/predictions.md#the-dead-letter-record).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fusionstream.consumers.kafka import ensure_topics, make_consumer, make_producer
from fusionstream.consumers.pipeline.core import DeadLetter
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.publisher import Publisher

pytestmark = pytest.mark.kafka

REPO_ROOT = Path(__file__).resolve().parents[2]
FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]


class Acks:
    def __init__(self) -> None:
        self.settled: list[Any] = []

    def prediction_acknowledged(self, prediction: Any) -> None: ...

    def provisional_acknowledged(self, prediction: Any) -> None: ...

    def dead_letter_sent(self, ref: Any) -> None: ...

    def dead_letter_acknowledged(self, ref: Any) -> None:
        self.settled.append(ref)


async def dead_letter_two(bootstrap: str, source: str, deadletters: str) -> None:
    """Two bad records on ``source``, read back and dead-lettered by the service's publisher."""
    await ensure_topics(bootstrap, [source, deadletters], 1)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(source, b"FS\x01 truncated", key=b"cam-7", headers=[("trace", b"abc")])
        await producer.send_and_wait(source, b"not a record at all", key=b"mic-2")
        consumer = make_consumer(source, bootstrap=bootstrap, group_id=None)  # type: ignore[arg-type]
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=10_000)
            messages = sorted((m for ms in batches.values() for m in ms), key=lambda m: m.offset)
        finally:
            await consumer.stop()
        assert len(messages) == 2
        acks = Acks()
        publisher = Publisher(producer, acks, ServiceMetrics(), predictions_topic="unused",
                              deadletter_topic=deadletters, transactional=False, group_id="unused")
        await publisher.dead_letter(messages[0], DeadLetter("truncated", "value is 14 bytes, header needs 24",
                                                            (source, 0, 0), "cam-7"))
        await publisher.dead_letter(messages[1], DeadLetter("bad-magic", "not a fusionstream record", (source, 0, 1)))
        await publisher.settle()
        assert len(acks.settled) == 2
    finally:
        await producer.stop()


def tail(bootstrap: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FUSIONSTREAM_BOOTSTRAP_SERVERS": bootstrap, "FUSIONSTREAM_DEADLETTER_TOPIC": topic,
           "COLUMNS": "60"}
    return subprocess.run([*FUSIONSTREAM, "tail", "--dead-letters", "--from-beginning", "--until-end", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_kafka_tail_dead_letters_prints_why_and_where_each_record_was_refused(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    source, deadletters = f"{topic_prefix}.video", f"{topic_prefix}.deadletter"
    asyncio.run(dead_letter_two(kafka_bootstrap, source, deadletters))

    as_json = tail(kafka_bootstrap, deadletters, "--json")
    assert as_json.returncode == 0, as_json.stderr
    letters = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(d["reason"], d["topic"], d["partition"], d["offset"], d["stream_id"]) for d in letters] == [
        ("truncated", source, 0, 0, "cam-7"), ("bad-magic", source, 0, 1, "mic-2")]
    assert letters[0]["headers"] == {"trace": "abc"}, "the record's own headers, apart from fs.*"
    assert letters[0]["detail"] == "value is 14 bytes, header needs 24"
    assert letters[0]["value_bytes"] == len(b"FS\x01 truncated")
    assert isinstance(letters[0]["timestamp_ms"], int) and letters[0]["timestamp_ms"] > 0

    text = tail(kafka_bootstrap, deadletters)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2, text.stdout  # one line each, whatever the terminal's width
    assert "truncated" in lines[0] and f"{source}[0]@0" in lines[0] and "cam-7" in lines[0]
    assert lines[0].endswith("value is 14 bytes, header needs 24")
    assert "bad-magic" in lines[1] and f"{source}[0]@1" in lines[1]

    limited = tail(kafka_bootstrap, deadletters, "--json", "--limit", "1")
    assert limited.returncode == 0 and len(limited.stdout.splitlines()) == 1


def test_kafka_tail_dead_letters_of_a_topic_that_does_not_exist_prints_nothing_and_fails(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Every service creates its dead-letter topic at start: one that does not exist is a mistyped name (it
    exited 0, which a script could not tell from no dead letters)."""
    done = tail(kafka_bootstrap, f"{topic_prefix}.nothing-here", "--json")
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert f"topic {topic_prefix}.nothing-here does not exist" in done.stderr.splitlines()[-1]


def test_tail_dead_letters_refuses_prediction_filters() -> None:
    done = subprocess.run([*FUSIONSTREAM, "tail", "--dead-letters", "--stream", "cam-1"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--stream and --finals-only select predictions" in done.stderr
