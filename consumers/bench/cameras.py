"""The live trials' cameras: a pickled delivery schedule published on time, from a process of its own.

In production every camera, microphone and captioner is a producer on its own host; here one
process plays all of them on the two cores the service and the broker also use, so what it
spends is taken from the service it measures. It does only what those hosts do on the wire, each
record encoded as a camera encodes its frame (before it is due, as a camera has its JPEG before it
sends it) and sent by one idempotent ``acks=all`` producer when it is due, from the event loop
itself: no source thread and no queue between them (:func:`~fusionstream.consumers.producers.publish.publish`
has both, for sources that block), which cost it as much CPU as the sends.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

from fusionstream.consumers.bench.delivery import Schedule
from fusionstream.consumers.producers.publish import started_producer, topics_of
from fusionstream.consumers.settings import Settings
from fusionstream.stream.wire import encode
from fusionstream.units import NS

#: (due ns, topic, key, timestamp ms, wire bytes)
Prepared = tuple[int, str, bytes, int, bytes]


def produce_live(path: Path, settings: Settings) -> None:
    """In the cameras' process: publish each record of the pickled schedule when it is due."""
    schedule: Schedule = pickle.loads(path.read_bytes())
    topics = topics_of(settings)
    prepared: list[Prepared] = [
        (due, topics[record.modality], record.stream_id.encode(), record.t_start_ns // 1_000_000, encode(record))
        for due, record in schedule
    ]
    del schedule
    asyncio.run(send_on_time(prepared, settings))


async def send_on_time(prepared: list[Prepared], settings: Settings) -> int:
    """Send each record at its due time (at once when that has passed); returns how many were acknowledged.
    Raises the first failure once everything sent before it is flushed."""
    producer = await started_producer(settings)
    failures: list[BaseException] = []
    acknowledged = 0

    def settled(future: asyncio.Future[Any]) -> None:
        nonlocal acknowledged
        if future.cancelled() or future.exception() is not None:
            failures.append(future.exception() or asyncio.CancelledError())
        else:
            acknowledged += 1

    try:
        index, total = 0, len(prepared)
        while index < total and not failures:
            wait = prepared[index][0] - time.time_ns()
            if wait > 0:
                await asyncio.sleep(wait / NS)
            now = time.time_ns()
            # Everything due by now goes at once: a sleep per record would cost a loop turn each.
            while index < total and prepared[index][0] <= now:
                _, topic, key, timestamp_ms, value = prepared[index]
                future = await producer.send(topic, value=value, key=key, timestamp_ms=timestamp_ms)
                future.add_done_callback(settled)
                index += 1
        await producer.flush()
    finally:
        await producer.stop()
    if failures:
        raise RuntimeError(f"the cameras' producer failed: {failures[0]!r}") from failures[0]
    return acknowledged


__all__ = ["produce_live", "send_on_time"]
