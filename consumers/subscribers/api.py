"""Read predictions from Kafka as typed records: the client API every subscriber builds on.

::

    async with subscribe("localhost:9092", from_beginning=True, stream_ids={"cam-00"}) as predictions:
        async for p in predictions:
            print(p.stream_id, p.t_start, p.label, p.score, p.capture_to_publish_ms)

Without ``group_id`` the subscription reads every partition and commits nothing (a ``tail``); with one it
joins that consumer group (range assignment, like the service) and commits the offsets of the predictions it
has handed out once the caller asks for the next one, so a restarted subscriber resumes after the last one.
It reads committed predictions only by default: ``read_committed=False`` also shows those of transactions
an exactly-once service aborted (which the next owner publishes again), a little sooner.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.conn import collect_hosts
from aiokafka.errors import KafkaError

from fusionstream.consumers.kafka.stop import stop_consumer
from fusionstream.consumers.subscribers.errors import BadPrediction
from fusionstream.consumers.subscribers.positions import Positions
from fusionstream.consumers.subscribers.record import PredictionRecord, parse_prediction
from fusionstream.consumers.subscribers.silence import BrokerSilence
from fusionstream.stream.errors import FusionStreamError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "fs.predictions"
#: Committed offsets are flushed this often while iterating (and always on close and on revocation).
COMMIT_INTERVAL_S = 2.0
_POLL_MS = 200
_UNREACHABLE_HINT = "check the bootstrap address given to subscribe(), and that the broker is running"


def _bootstrap_text(bootstrap: object) -> str:
    """``host:port[,host:port]``, from that string or a list of them; a TypeError now rather than from aiokafka
    at the first record (with a consumer left open)."""
    if isinstance(bootstrap, str):
        servers = [part.strip() for part in bootstrap.split(",")]
    elif isinstance(bootstrap, list | tuple) and all(isinstance(part, str) for part in bootstrap):
        servers = [part.strip() for part in bootstrap]
    else:
        raise TypeError(f"bootstrap must be 'host:port[,host:port]' or a list of such strings, not {bootstrap!r}")
    refused = ValueError(f"bootstrap must be 'host:port[,host:port]', not {bootstrap!r}")
    if not servers or not all(servers):
        raise refused
    try:  # aiokafka's own parsing: a port that is no number raised a bare ValueError when the subscription started
        ports = [port for _, port, _ in collect_hosts(",".join(servers), randomize=False)]
    except ValueError:
        raise refused from None
    if not all(0 < port < 65536 for port in ports):
        raise refused
    return ",".join(servers)


class Subscription:
    """An async iterator of :class:`PredictionRecord` over a Kafka topic; also an async context manager.

    Made by :func:`subscribe`; see there for the options. Prefer ``async with``: it stops
    the consumer (and commits, in a group) however the loop ends. Iterating without it
    starts the consumer on the first ``__anext__``; call :meth:`close` when done.
    """

    #: What :class:`BrokerUnavailable` tells to do (a command that reads the address from settings says so).
    unreachable_hint = _UNREACHABLE_HINT
    #: With ``until_end``, a topic that does not exist raises (a command's exit status) instead of a WARNING.
    missing_topic_fails = False

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str = DEFAULT_TOPIC,
        *,
        group_id: str | None = None,
        from_beginning: bool = False,
        read_committed: bool = True,
        stream_ids: Iterable[str] | None = None,
        until_end: bool = False,
        on_error: Literal["skip", "raise"] = "skip",
        finals_only: bool = False,
        **consumer_options: Any,
    ) -> None:
        if until_end and group_id is not None:
            raise ValueError("until_end needs group_id=None: a group's partitions move between members")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.bootstrap = _bootstrap_text(bootstrap)
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a topic's name, not {topic!r}")
        self.topic = topic
        self.group_id = group_id
        self.finals_only = finals_only
        if isinstance(stream_ids, str):  # one stream id, not its characters
            stream_ids = (stream_ids,)
        self.stream_ids: frozenset[str] | None = None if stream_ids is None else frozenset(stream_ids)
        #: Records skipped because they were not predictions (with ``on_error="skip"``).
        self.skipped = 0
        self._keys = None if self.stream_ids is None else frozenset(s.encode() for s in self.stream_ids)
        self._until_end = until_end
        self._on_error = on_error
        self._options: dict[str, Any] = {
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "isolation_level": "read_committed" if read_committed else "read_uncommitted",
            # A topic created after the subscriber started is found within seconds, not minutes.
            "metadata_max_age_ms": 5_000,
            **consumer_options,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._buffer: deque[ConsumerRecord] = deque()
        self._handed: ConsumerRecord | None = None  # the record the caller is processing
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._ends: dict[TopicPartition, int] | None = None
        self._committed_at = time.monotonic()
        self._closed = False
        self._topic_checked = False
        self._positions = Positions() if group_id is None else None
        self._silence = BrokerSilence(self.bootstrap)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe (idempotent); :class:`BrokerUnavailable` if no broker answers."""
        from aiokafka.errors import KafkaConnectionError

        from fusionstream.consumers.kafka import make_consumer
        from fusionstream.consumers.kafka.client_logs import client_quiet

        if self._consumer is not None:
            return
        if self._closed:
            raise RuntimeError("this subscription is closed")
        # group_id=None is aiokafka's group-less mode: every partition, no commits.
        consumer = make_consumer(bootstrap=self.bootstrap, group_id=self.group_id, **self._options)  # type: ignore[arg-type]
        try:
            with client_quiet():  # its own log line would repeat the error this raises
                await consumer.start()
        except KafkaConnectionError as exc:
            from fusionstream.consumers.kafka.readiness import unreachable

            await consumer.stop()
            raise await unreachable(self.bootstrap, self._options, str(exc), hint=self.unreachable_hint) from None
        if self._until_end and self.missing_topic_fails and self.topic not in await consumer.topics():
            await stop_consumer(consumer)  # before subscribing, whose metadata lookups would log the topic missing
            raise self._missing_topic()
        consumer.subscribe([self.topic], listener=_CommitOnRevoke(self) if self.group_id else None)
        self._consumer = consumer

    async def close(self) -> None:
        """Commit what was processed (in a group) and stop the consumer. Idempotent."""
        consumer, self._consumer, self._closed = self._consumer, None, True
        if consumer is None:
            return
        try:
            await self._commit(consumer)
        finally:
            await stop_consumer(consumer)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._release()  # leaving the block normally: the last record was processed
        await self.close()

    # -- iteration ---------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> PredictionRecord:
        if self._consumer is None:
            if self._closed:
                raise StopAsyncIteration
            await self.start()
        consumer = self._consumer
        assert consumer is not None
        self._release()
        while True:
            while self._buffer:
                message = self._buffer.popleft()
                prediction = self._accept(message)
                if prediction is not None:
                    self._handed = message
                    return prediction
                self._mark(message)  # filtered out or skipped: nothing left to do with it
            if self.group_id is not None and time.monotonic() - self._committed_at >= COMMIT_INTERVAL_S:
                await self._commit(consumer)
            if self._until_end and await self._at_end(consumer):
                raise StopAsyncIteration
            if self._positions is not None:  # group-less: partitions added must not move the others
                await self._positions.settle(consumer)
            batch = await consumer.getmany(timeout_ms=_POLL_MS)
            self._silence.check(consumer)
            batch = batch if self._positions is None else self._positions.taken(consumer, batch)
            if not self._topic_checked and not batch and not consumer.assignment():
                self._topic_checked = True  # once: a mistyped name must not look like a quiet topic
                with contextlib.suppress(KafkaError):  # the broker away: nothing to say about the topic yet
                    if self.topic not in await consumer.topics():
                        log.warning("topic %s does not exist yet: waiting for it to be created", self.topic)
            # Across partitions in timestamp order; within one, in offset order (what commits rely on).
            self._buffer.extend(heapq.merge(*batch.values(), key=lambda m: m.timestamp))

    async def commit(self) -> None:
        """Commit the offsets of the predictions processed so far (a no-op without a group)."""
        if self._consumer is not None:
            await self._commit(self._consumer)

    # -- helpers -----------------------------------------------------------------------------------

    def _accept(self, message: ConsumerRecord) -> PredictionRecord | None:
        if self._keys is not None and message.key is not None and message.key not in self._keys:
            return None
        try:
            prediction = parse_prediction(
                message.value,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=message.timestamp,
            )
        except BadPrediction as exc:
            if self._on_error == "raise":
                self._handed = message  # as a prediction handed out: done once the app asks for the next
                raise
            self.skipped += 1
            log.warning("skipping a record that is not a prediction: %s", exc)
            return None
        if self.stream_ids is not None and prediction.stream_id not in self.stream_ids:
            return None
        if self.finals_only and not prediction.final:
            return None
        return prediction

    def _release(self) -> None:
        if self._handed is not None:
            self._mark(self._handed)
            self._handed = None

    def _mark(self, message: ConsumerRecord) -> None:
        if self.group_id is not None:
            from aiokafka import TopicPartition

            self._done[TopicPartition(message.topic, message.partition)] = message.offset + 1

    async def _commit(self, consumer: AIOKafkaConsumer, only: Collection[TopicPartition] | None = None) -> None:
        self._committed_at = time.monotonic()
        if self.group_id is None:
            return
        owned = consumer.assignment()
        offsets = {tp: o for tp, o in self._done.items() if tp in owned and (only is None or tp in only)}
        if not offsets:
            return
        from aiokafka.errors import CommitFailedError

        from fusionstream.consumers.kafka import CommitTimedOut, commit_within

        try:
            await commit_within(consumer, offsets)
        except CommitFailedError as exc:  # the group rebalanced meanwhile: the new owner reads them again
            log.warning("commit failed, some predictions may be delivered again: %s", exc)
        except CommitTimedOut as exc:  # a topic deleted meanwhile: aiokafka retried for ever, and close never returned
            log.warning("%s: the predictions since the last commit may be delivered again", exc)
        for tp in offsets:
            self._done.pop(tp, None)

    def _missing_topic(self) -> FusionStreamError:
        return FusionStreamError(f"topic {self.topic} does not exist: nothing to read (is its name right? --topic, "
                                 "or the FUSIONSTREAM_*_TOPIC settings)")

    async def _at_end(self, consumer: AIOKafkaConsumer) -> bool:
        owned = consumer.assignment()
        if not owned:
            # No partitions: either the metadata is not in yet, or there is no such topic (nothing to read).
            if self.topic in await consumer.topics():
                return False
            # Said, so that a mistyped name does not read as an empty topic.
            if self.missing_topic_fails:
                raise self._missing_topic()
            log.warning("topic %s does not exist: nothing to read", self.topic)
            return True
        if self._ends is None:
            self._ends = await consumer.end_offsets(list(owned))
        for tp, end in self._ends.items():
            if await consumer.position(tp) < end:
                return False
        return True


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Commits what was processed of the partitions a rebalance takes away."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        consumer = self._subscription._consumer
        if consumer is not None:
            await self._subscription._commit(consumer, only=set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


def subscribe(
    bootstrap: str | Sequence[str],
    topic: str = DEFAULT_TOPIC,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    read_committed: bool = True,
    stream_ids: Iterable[str] | None = None,
    until_end: bool = False,
    on_error: Literal["skip", "raise"] = "skip",
    finals_only: bool = False,
    **consumer_options: Any,
) -> Subscription:
    """Predictions from ``topic`` as :class:`PredictionRecord` objects, in an async iterator.

    - ``bootstrap``: ``"host:port[,host:port]"`` or a list of such strings (a host without a port is
      port 9092, as with every Kafka client); anything else raises :class:`TypeError` at once, an empty
      one or a port that is no number from 1 to 65535 :class:`ValueError`.
    - ``group_id``: None reads every partition and commits nothing; a name joins that
      consumer group and commits processed offsets (at least once: after a crash, the
      predictions handed out since the last commit come again).
    - ``from_beginning``: start at the oldest retained prediction instead of new ones
      only (in a group: only where the group has no committed offset).
    - ``read_committed`` (default): skip predictions of aborted transactions and wait for open ones (the
      service's exactly-once mode publishes in transactions; an at-least-once service's are never held back).
    - ``stream_ids``: only these streams, one id or several (the key is checked before the value is parsed).
    - ``until_end``: stop once every partition is read up to its end as of the first
      assignment, instead of waiting for more (group-less only); at once if the topic
      does not exist.
    - ``on_error``: a record that is not a prediction is logged and skipped, or raised
      as :class:`BadPrediction`.
    - ``finals_only``: skip provisional predictions (a service with revisions on publishes
      one before the final of a window; docs/predictions.md#revisions).

    Other keywords go to :class:`aiokafka.AIOKafkaConsumer` (security settings, ...).

    Starting (``async with`` or the first record) raises :class:`BrokerUnavailable` when no broker answers,
    at once, and :class:`BrokerAuthError` when the broker refuses this client. A broker that goes away later
    raises nothing: the subscription waits and goes on where it was, with a WARNING once it has not answered
    for 10 s and another once it answers again. docs/subscribers.md has the details.
    """
    return Subscription(
        bootstrap,
        topic,
        group_id=group_id,
        from_beginning=from_beginning,
        read_committed=read_committed,
        stream_ids=stream_ids,
        until_end=until_end,
        on_error=on_error,
        finals_only=finals_only,
        **consumer_options,
    )


__all__ = ["DEFAULT_TOPIC", "PredictionRecord", "Subscription", "parse_prediction", "subscribe"]
