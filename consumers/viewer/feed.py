"""The viewer's one Kafka consumer: input topics from their end, predictions with a short look-back.

Group-less (it commits nothing and takes every partition; several viewers never split
streams between them) and read-only. Records are decoded on the event loop: only the
wire envelope and PCM levels are parsed here, which costs microseconds; JPEG frames are
passed to the browser as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from fusionstream.consumers.kafka.client_logs import client_quiet
from fusionstream.consumers.kafka.stop import stop_consumer
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.subscribers.api import parse_prediction
from fusionstream.consumers.subscribers.errors import BadPrediction
from fusionstream.consumers.subscribers.positions import Positions
from fusionstream.consumers.viewer.state import ViewerState
from fusionstream.stream import wire
from fusionstream.stream.errors import BadRecord

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = logging.getLogger(__name__)

_POLL_MS = 200
_MAX_RECORDS = 5_000
_EVICT_EVERY_S = 5.0
#: How often topics that did not exist yet are looked for.
_TOPICS_EVERY_S = 3.0


class KafkaFeed:
    """Feeds a :class:`ViewerState` from the video, audio, text and predictions topics of ``settings``."""

    def __init__(self, settings: Settings, state: ViewerState, *, lookback_s: float = 30.0) -> None:
        self.settings = settings
        self.state = state
        self.lookback_s = lookback_s
        self.inputs = (settings.video_topic, settings.audio_topic, settings.text_topic)
        self.topics = (*self.inputs, settings.predictions_topic)
        self._consumer: AIOKafkaConsumer | None = None
        self._subscribed: frozenset[str] = frozenset()
        self._looked_back: set[TopicPartition] = set()
        # Partitions added to a topic read make aiokafka reassign them all from the newest record: the page
        # missed the predictions published meanwhile. Each partition is put back where it was.
        self._positions = Positions()
        self._warned: set[tuple[str, str]] = set()
        self._stopping = False
        self._listing_failed = False  # the topics could not be listed last time (the broker away)
        self._silent_since: float | None = None  # monotonic time of the first listing that failed, in an outage

    async def start(self) -> None:
        """Connect and subscribe; ``BrokerUnavailable`` if no broker answers, ``BrokerAuthError`` if it refuses
        this client."""
        from aiokafka.errors import KafkaConnectionError

        from fusionstream.consumers.kafka import make_consumer
        from fusionstream.consumers.kafka.readiness import unreachable

        consumer = make_consumer(
            bootstrap=self.settings.bootstrap_servers,
            group_id=None,  # type: ignore[arg-type]  # aiokafka's group-less mode
            # A viewer shows what happens now: it starts at the end of every input topic.
            auto_offset_reset="latest",
            # New partitions of the topics read are found within seconds.
            metadata_max_age_ms=5_000,
            # An exactly-once service's aborted predictions never show (its windows' committed copies do);
            # the same as read_uncommitted on topics written without transactions.
            isolation_level="read_committed",
            client_id=f"{self.settings.client_id}-view",
            **self.settings.kafka_security(),
        )
        try:
            with client_quiet():  # its own log line would repeat the error this raises
                await consumer.start()
        except KafkaConnectionError as exc:
            await consumer.stop()
            # A refused login or certificate is said as such (BrokerAuthError), not as a broker to start.
            raise await unreachable(self.settings.bootstrap_servers, self.settings.kafka_security(), str(exc)) from None
        self._consumer = consumer
        await self._subscribe(consumer)

    def assignment(self) -> dict[str, list[int]]:
        """The partitions read now, per topic (every partition of every topic that exists)."""
        owned: dict[str, list[int]] = {topic: [] for topic in self.topics}
        if self._consumer is not None:
            for tp in self._consumer.assignment():
                owned.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(parts) for topic, parts in owned.items()}

    async def run(self) -> None:
        """Consume until :meth:`stop`; errors other than undecodable records propagate."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("KafkaFeed.run() before start()")
        evicted_at = looked_at = time.monotonic()
        while not self._stopping:
            batch: dict[TopicPartition, list[ConsumerRecord]] = {}
            if not self._subscribed:
                await asyncio.sleep(_POLL_MS / 1000)
            else:
                await self._positions.settle(consumer)
                batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
                batch = self._positions.taken(consumer, batch)
                await self._look_back(consumer)
            now = time.monotonic()
            if now - looked_at >= _TOPICS_EVERY_S:
                try:
                    await self._subscribe(consumer)
                except KafkaError as exc:  # the broker away: the consumer retries; ask again next time
                    if not self._listing_failed:  # once per outage, not every few seconds
                        self._silent_since = now
                        log.warning("cannot list the topics (%s); showing what arrived, and trying again", exc)
                    self._listing_failed = True
                else:
                    if self._listing_failed:
                        log.info("the broker answers again")
                    self._listing_failed = False
                    self._silent_since = None
                looked_at = now
            for tp, messages in batch.items():
                for message in messages:
                    self._take(tp.topic, message, now)
            if now - evicted_at >= _EVICT_EVERY_S:
                self.state.evict(now)
                evicted_at = now

    def broker(self, now: float) -> str:
        """``answering``, or how long the topics could not be listed (the page itself only shows idle streams)."""
        since = self._silent_since
        return "answering" if since is None else f"not answering for {now - since:.0f} s (topics cannot be listed)"

    def stop(self) -> None:
        """Make :meth:`run` return after its current poll."""
        self._stopping = True

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    # -- helpers ----------------------------------------------------------------------------------

    def _take(self, topic: str, message: ConsumerRecord, now: float) -> None:
        state = self.state
        key = message.key
        if key is not None and state.only is not None and key.decode("utf-8", "replace") not in state.only:
            return  # filtered by key before paying for the value
        if topic == self.settings.predictions_topic:
            try:
                prediction = parse_prediction(message.value, topic=topic, partition=message.partition,
                                              offset=message.offset, timestamp_ms=message.timestamp)
            except BadPrediction as exc:
                self._skip(topic, exc.reason, str(exc))
                return
            state.on_prediction(prediction, now)
            return
        try:
            if message.value is None:
                raise BadRecord("no-value", "the record has no value")
            state.on_record(wire.decode(message.value), now)
        except BadRecord as exc:
            self._skip(topic, exc.reason, f"{topic}[{message.partition}]@{message.offset}: {exc}")

    def _skip(self, topic: str, reason: str, detail: str) -> None:
        self.state.ignore(reason)
        if (topic, reason) not in self._warned:  # once per kind: a broken producer must not flood the log
            self._warned.add((topic, reason))
            log.warning("ignoring records the viewer cannot show (first of this kind): %s", detail)

    async def _subscribe(self, consumer: AIOKafkaConsumer) -> None:
        """Subscribe to those of the topics that exist, whenever that set changes.

        Only to existing ones: a metadata request for a missing topic makes a broker with
        ``auto.create.topics.enable`` (Kafka's default) create it with its default partition
        count, and input topics must be created co-partitioned, by the service or producers.
        """
        existing = frozenset(self.topics) & await consumer.topics()
        if existing == self._subscribed:
            return
        missing = sorted(set(self.topics) - existing)
        if missing:
            log.info("waiting for topics %s to be created", ", ".join(missing))
        if existing:
            consumer.subscribe(sorted(existing))
        else:
            consumer.unsubscribe()
        self._subscribed = existing

    async def _look_back(self, consumer: AIOKafkaConsumer) -> None:
        """Rewind newly assigned prediction partitions by ``lookback_s`` (by record time: the window end)."""
        new = [tp for tp in consumer.assignment()
               if tp.topic == self.settings.predictions_topic and tp not in self._looked_back]
        if not new:
            return
        self._looked_back.update(new)
        if self.lookback_s <= 0:
            return
        since_ms = int((time.time() - self.lookback_s) * 1000)
        found: dict[Any, Any] = await consumer.offsets_for_times({tp: since_ms for tp in new})
        for tp, offset in found.items():
            if offset is not None:  # None: nothing that recent; stay at the end
                consumer.seek(tp, offset.offset)


__all__ = ["KafkaFeed"]
