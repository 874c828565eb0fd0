"""Publish wire records to the three input topics: the core of every `fusionstream produce` command.

:func:`publish` takes any iterable of :class:`~fusionstream.stream.records.Record` (a file, a camera,
the synthetic source; paced or not) and sends each one to the topic of its modality,
keyed by its stream id, stamped with its event time in ms (docs/wire-format.md; the send time for one
stamped far ahead: :func:`kafka_timestamp`). Sources are
blocking iterators (decoding, JPEG encoding, ``time.sleep`` while pacing, a camera's
``grab``), so they run in a daemon thread that feeds the event loop through a bounded
queue: aiokafka's sender runs on the loop and must never wait behind a source.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusionstream.consumers.producers.errors import PublishError
from fusionstream.consumers.settings import Settings
from fusionstream.stream.records import MODALITIES, Encoding, Modality, Record
from fusionstream.stream.wire import encode

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)

#: Records a source may run ahead of the producer (backpressure on the source thread).
SOURCE_QUEUE = 1024
#: Sent but unacknowledged records before publishing waits for acknowledgements.
MAX_IN_FLIGHT = 10_000
#: How often ``progress`` is called, at most.
PROGRESS_INTERVAL_S = 0.25
#: A record stamped further ahead of this host's clock goes with the send time as its Kafka timestamp. A Kafka 4
#: broker refuses a timestamp more than ``log.message.timestamp.after.max.ms`` (1 h by default) ahead of its own
#: clock, with ``INVALID_TIMESTAMP`` for every record of the batch it travels in: one camera with a wrong clock
#: lost its neighbours' records. Stamped now, it reaches the topic, and the service dead-letters it as ``future``
#: by the event time in its envelope (which stays as it is).
STAMP_AHEAD_LIMIT_MS = 10 * 60 * 1000


def kafka_timestamp(t_start_ns: int, now_ms: int | None = None) -> int:
    """The Kafka timestamp of a record starting at ``t_start_ns``: its event time in ms, or the send time
    ``now_ms`` when that is more than :data:`STAMP_AHEAD_LIMIT_MS` ahead of it."""
    event_ms = t_start_ns // 1_000_000
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return now_ms if event_ms - now_ms > STAMP_AHEAD_LIMIT_MS else event_ms


@dataclass(slots=True)
class Published:
    """What :func:`publish` got acknowledged: media records per modality, progress records apart (a file's
    frames are counted as its frames, not one more for its ``ended``), bytes, streams, time taken."""

    records: dict[str, int] = field(default_factory=lambda: {m.label: 0 for m in MODALITIES})
    progress: int = 0
    bytes: int = 0
    streams: set[str] = field(default_factory=set)
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        """Media records acknowledged (progress records are not counted)."""
        return sum(self.records.values())

    @property
    def rate(self) -> float:
        """Acknowledged media records per second so far."""
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": dict(self.records),
            "progress": self.progress,
            "total": self.total,
            "bytes": self.bytes,
            "streams": sorted(self.streams),
            "elapsed_s": round(self.elapsed_s, 3),
            "records_per_s": round(self.rate, 1),
        }


def topics_of(settings: Settings) -> dict[Modality, str]:
    """The input topic of each modality."""
    return {
        Modality.VIDEO: settings.video_topic,
        Modality.AUDIO: settings.audio_topic,
        Modality.TEXT: settings.text_topic,
    }


def producer_for(settings: Settings, **kwargs: Any) -> AIOKafkaProducer:
    """An unstarted idempotent ``acks=all`` producer for ``settings``' cluster (call from a coroutine)."""
    from fusionstream.consumers.kafka import make_producer

    # A batch with no partition leader expires after request_timeout_ms (aiokafka's default, 40 s): a broker
    # restart longer than that failed `produce` with LeaderNotAvailableError. Held as long as the setting says.
    options = {"client_id": f"{settings.client_id}-producer", "request_timeout_ms": int(settings.produce_hold_s * 1000),
               **settings.kafka_security(), **kwargs}
    return make_producer(settings.bootstrap_servers, **options)


async def started_producer(settings: Settings) -> AIOKafkaProducer:
    """:func:`producer_for`, started; :class:`BrokerUnavailable` when no broker answers."""
    from aiokafka.errors import KafkaConnectionError

    from fusionstream.consumers.kafka.readiness import unreachable

    producer = producer_for(settings)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise await unreachable(settings.bootstrap_servers, settings.kafka_security(), str(exc)) from None
    except BaseException:  # Ctrl-C while it connects: stopped, or aiokafka says "Unclosed AIOKafkaProducer"
        await producer.stop()
        raise
    return producer


async def prepare_topics(settings: Settings) -> None:
    """Create the missing input topics with ``settings.partitions`` each, or with the count the existing ones
    have (they must agree among themselves: co-partitioning); with ``create_topics`` off, a missing one is
    ``MissingTopicsError`` (where topics are made ahead of time, a typo in a name is not a new topic)."""
    from aiokafka.errors import KafkaConnectionError

    from fusionstream.consumers.kafka import ensure_topics
    from fusionstream.consumers.kafka.readiness import unreachable

    try:
        await ensure_topics(settings.bootstrap_servers, list(topics_of(settings).values()), settings.partitions,
                            security=settings.kafka_security(), adopt=True, create=settings.create_topics)
    except KafkaConnectionError as exc:
        raise await unreachable(settings.bootstrap_servers, settings.kafka_security(), str(exc)) from None


async def publish(
    records: Iterable[Record] | AsyncIterable[Record],
    settings: Settings,
    *,
    producer: AIOKafkaProducer | None = None,
    create_topics: bool = True,
    progress: Callable[[Published], None] | None = None,
) -> Published:
    """Send every record to its modality's topic; return once all of them are acknowledged.

    Key = stream id (UTF-8), timestamp = ``t_start_ns // 1_000_000`` (:func:`kafka_timestamp`), value = the wire
    bytes. The topics are created first (``create_topics``) with equal partition counts.
    Without ``producer`` one is made from ``settings`` and stopped at the end; a given
    producer must be started and is left running. ``progress`` is called with the running
    counts every :data:`PROGRESS_INTERVAL_S` and once at the end. A record the broker
    refuses raises :class:`PublishError`; one the source could not make raises the
    source's own error (a missing file, a camera that stopped). Either way, what was
    sent before is flushed first.
    """

    if create_topics:
        await prepare_topics(settings)
    own = producer is None
    if producer is None:
        producer = await started_producer(settings)
    sender = _Sender(producer, topics_of(settings), progress)
    try:
        async with contextlib.aclosing(_records(records)) as source:  # stops the source thread however we leave
            async for record in source:
                await sender.send(record)
        await sender.drain()
    finally:
        try:
            # What was sent goes out before an error propagates (stop flushes too).
            await (producer.stop() if own else producer.flush())
        except Exception:
            log.exception("flushing the producer")
        sender.finish()
    return sender.published


class _Sender:
    """Sends records, counts each one as its acknowledgement arrives, and keeps the first failure."""

    def __init__(
        self, producer: AIOKafkaProducer, topics: dict[Modality, str], progress: Callable[[Published], None] | None
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.published = Published()
        self._progress = progress
        self._started = time.monotonic()
        self._reported = 0.0
        self._in_flight = 0
        self._room = asyncio.Event()  # set while fewer than MAX_IN_FLIGHT are unacknowledged
        self._room.set()
        self._idle = asyncio.Event()  # set while nothing is unacknowledged
        self._idle.set()
        self._error: PublishError | None = None

    async def send(self, record: Record) -> None:
        from aiokafka.errors import KafkaError

        self._raise_failure()
        value = encode(record)
        topic = self.topics[record.modality]
        try:
            future = await self.producer.send(
                topic, value=value, key=record.stream_id.encode("utf-8"),
                timestamp_ms=kafka_timestamp(record.t_start_ns),
            )
        except KafkaError as exc:
            raise _failure(exc, record, topic, len(value)) from exc
        self._in_flight += 1
        self._idle.clear()
        if self._in_flight >= MAX_IN_FLIGHT:
            self._room.clear()
        future.add_done_callback(functools.partial(self._acknowledged, record, len(value)))
        await self._room.wait()

    async def drain(self) -> None:
        """Wait for every acknowledgement; raise the first failure."""
        await self._idle.wait()
        self._raise_failure()

    def finish(self) -> None:
        self.published.elapsed_s = time.monotonic() - self._started
        if self._progress is not None:
            self._progress(self.published)

    def _acknowledged(self, record: Record, size: int, future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1
        if self._in_flight < MAX_IN_FLIGHT:
            self._room.set()
        if not self._in_flight:
            self._idle.set()
        if future.cancelled() or future.exception() is not None:
            if self._error is None:
                exc = asyncio.CancelledError() if future.cancelled() else future.exception()
                self._error = _failure(exc, record, self.topics[record.modality], size)
                self._error.__cause__ = exc
            self._room.set()  # a sender waiting for room raises it at once
            return
        published = self.published
        if record.encoding is Encoding.PROGRESS:
            published.progress += 1
        else:
            published.records[record.modality.label] += 1
        published.bytes += size
        published.streams.add(record.stream_id)
        now = time.monotonic()
        if self._progress is not None and now - self._reported >= PROGRESS_INTERVAL_S:
            self._reported = now
            published.elapsed_s = now - self._started
            self._progress(published)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


def _failure(exc: BaseException | None, record: Record, topic: str, size: int) -> PublishError:
    from aiokafka.errors import MessageSizeTooLargeError, UnknownTopicOrPartitionError

    what = f"{record.modality.label} record {record.stream_id}#{record.seq} ({size} bytes) to {topic}"
    if isinstance(exc, MessageSizeTooLargeError):
        return PublishError(
            f"{what} is too large for Kafka ({exc}): shrink frames with --size; fusionstream produce sends "
            f"records of up to 1 MiB, and {topic} takes up to its max.message.bytes (raise it with kafka-configs "
            "--alter for larger ones)"
        )
    if isinstance(exc, UnknownTopicOrPartitionError):  # the sender retried for produce_hold_s first
        return PublishError(f"{what} was not delivered: topic {topic} does not exist (deleted while producing, or "
                            "the broker lost its data?); run produce again to create it")
    return PublishError(f"{what} was not delivered: {exc!r}", retriable=bool(getattr(exc, "retriable", False)))


async def _records(records: Iterable[Record] | AsyncIterable[Record]) -> AsyncIterator[Record]:
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
        return
    pump = _Pump(iter(records), asyncio.get_running_loop())
    try:
        while (record := await pump.get()) is not None:
            yield record
    finally:
        pump.stop()


class _Pump:
    """Iterates a blocking source in a daemon thread; the event loop awaits its records.

    A daemon thread rather than the loop's executor: a source may block indefinitely (stdin,
    a camera that hangs), and an executor thread would keep the process from exiting. The
    thread also closes the source (a generator can only be closed by the thread running it).
    """

    _END = object()

    def __init__(self, source: Iterator[Record], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.Queue[Any] = queue.Queue(SOURCE_QUEUE)
        self._ready = asyncio.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source,), name="fusionstream-source", daemon=True)
        self._thread.start()

    async def get(self) -> Record | None:
        """The next record, or None at the end of the source; re-raises what the source raised."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                self._ready.clear()
                if self._queue.empty():  # the thread may have put one between the two checks
                    await self._ready.wait()
                continue
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return None
            return item

    def stop(self) -> None:
        self._stopped.set()

    def _run(self, source: Iterator[Record]) -> None:
        try:
            for record in source:
                if not self._put(record):
                    return
        except BaseException as exc:  # handed to the loop, which re-raises it
            self._error = exc
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing the source")
        self._put(self._END)

    def _put(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
            except queue.Full:
                continue
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return False
            return True
        return False


__all__ = ["STAMP_AHEAD_LIMIT_MS", "Published", "kafka_timestamp", "prepare_topics", "producer_for", "publish",
           "topics_of"]
