"""The service's input side: fetch, hold, merge by event time, feed the pipeline; dead letters; backpressure.

Two tasks run here: :meth:`Feeder.consume` (``getmany`` → :class:`Handover` →
:class:`PartitionMerger` → ``Pipeline.feed``) and :meth:`Feeder.tick` (windows closed by
processing-time timeout). Both change the aligner only under the service's lock, which
rebalances take too. The aligner's clock is an :class:`IntakeClock` that stands still
while the service is behind its input (see :mod:`fusionstream.consumers.service.intake`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline
from fusionstream.consumers.service.deadletter_log import DeadLetterLog
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.intake import IntakeClock, PartitionMerger
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.options import ServiceOptions
from fusionstream.consumers.service.publisher import Publisher
from fusionstream.stream.printable import printable
from fusionstream.stream.records import Modality

log = logging.getLogger(__name__)

class Feeder:
    """Fetches input and feeds the pipeline; :meth:`attach` the clients before starting its tasks."""

    def __init__(self, handover: Handover, metrics: ServiceMetrics, options: ServiceOptions, *,
                 lock: asyncio.Lock, max_backlog: int,
                 modalities_of_topic: Mapping[str, frozenset[Modality]] | None = None) -> None:
        self._handover = handover
        #: Input topic → the modalities it carries: a topic with records left unread holds its modalities'
        #: lag out of the aligner's skew rule (``Aligner.behind``).
        self._modalities_of_topic = dict(modalities_of_topic or {})
        self._metrics = metrics
        self._options = options
        self._lock = lock  # intake, ticks and rebalances change the aligner one at a time
        self._max_backlog = max_backlog
        self._merger: PartitionMerger[ConsumerRecord] = PartitionMerger(max_idle_ms=options.max_idle_ms)
        #: The aligner's clock (the pipeline is built with it).
        self.clock = IntakeClock(time.time_ns)
        self._fetch_ms = 0.0  # time spent waiting in getmany: the merger's clock
        self._ready = asyncio.Event()  # our assignment listener has run for the current assignment
        self._generation = 0  # bumped at every revocation: a batch fetched before it is discarded
        self._dead_letter_log = DeadLetterLog()
        #: Dead letters not sent: re-read records an earlier run already handled (see Handover.replayed).
        self.replayed = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        #: Set by a stop: the tasks end at their next step.
        self.stopping = False
        #: True while the consumer task waits for records: only then may a graceful stop cancel it.
        self.fetching = False

    def attach(self, consumer: AIOKafkaConsumer, pipeline: Pipeline, publisher: Publisher) -> None:
        self._consumer, self._pipeline, self._publisher = consumer, pipeline, publisher

    # -- rebalances -----------------------------------------------------------------------------

    def revoking(self) -> None:
        """A revocation starts: batches fetched before it are stale, and records wait for the next assignment."""
        self._generation += 1
        self._ready.clear()

    def assigned(self) -> None:
        self._ready.set()

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        self._merger.forget(tps)

    # -- the tasks ------------------------------------------------------------------------------

    async def consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self.stopping:
            self._backpressure(consumer)
            self.fetching = True  # while set, a graceful stop may cancel this task: nothing is half-done
            try:
                started = time.monotonic()
                batch = await consumer.getmany(
                    timeout_ms=self._options.fetch_timeout_ms, max_records=self._options.max_records
                )
                self._fetch_ms += (time.monotonic() - started) * 1000
                # Read at once, in the step that drained the batch: a revocation after this point
                # bumps the generation, and the batch (fetched for the old assignment) is discarded;
                # its offsets were never held, so they are committed no further and get re-read.
                generation = self._generation
                if batch:
                    # Records of a new assignment can arrive before our assignment listener has run.
                    await self._ready.wait()
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                continue
            finally:
                self.fetching = False
            if self.stopping:
                continue
            async with self._lock:
                if generation != self._generation:
                    continue
                await self._take(batch)

    async def tick(self) -> None:
        """Close windows by processing-time timeout when input stops."""
        assert self._pipeline is not None
        while not self.stopping:
            await asyncio.sleep(self._options.tick_interval_s)
            # Observed outside the lock, so time spent blocked in intake counts as behind.
            self._observe_input()
            async with self._lock:
                await self._pipeline.tick()
            for stream, reason, seconds, count in self._dead_letter_log.overdue():
                log.warning("dead letters (%s) stream %s: %s more in the last %.0f s, not logged one by one",
                            reason, printable(stream), f"{count:,}", seconds)

    # -- intake ---------------------------------------------------------------------------------

    async def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Hold the fetched records, then feed what the merger releases (see fusionstream.consumers.service.intake)."""
        assert self._pipeline is not None and self._consumer is not None
        now_ms = self._fetch_ms
        self._merger.touch(self._consumer.paused(), now_ms)
        on_fetched = self._options.on_fetched
        for tp, records in batch.items():
            if not self._handover.owns(tp):
                continue
            self._metrics.records_fetched(tp.topic, len(records))
            if on_fetched is not None and records:
                on_fetched(time.time() * 1000 - records[0].timestamp)
            if self._options.on_fetched_record is not None and records:
                self._options.on_fetched_record(records[0])
            self._merger.add(tp, self._handover.fetched(tp, records), now_ms, fetched_ms=self._fetched_ms(tp))
        released = self._merger.release(self._handover.owned, self._log_end, now_ms, self._records_left)
        self._observe_input()
        if not released:
            return
        items = [(message.value if message.value is not None else b"", (tp[0], tp[1], message.offset), message.key)
                 for tp, message in released]
        dead = await self._pipeline.feed(items)
        if dead:  # rare: index the records by ref only then
            messages = {(tp[0], tp[1], message.offset): message for tp, message in released}
            for letter in dead:
                await self._dead_letter(messages[letter.ref], letter)

    def _observe_input(self) -> None:
        """Tell the aligner's clock whether input is waiting on the service (unread or unfed records, a full
        engine queue: the clock stands still), and the aligner which modalities have records not fed to it yet.

        Reading a backlog, one topic's records can reach the aligner seconds (of event time) ahead of another's
        when a partition's log holds streams with other clocks one after the other (a live stream, then a
        replayed file): the merge by timestamp cannot tell. That lag is the service's, so it must not count
        (``Aligner.behind``). One pass over the owned topic-partitions for both.
        """
        assert self._pipeline is not None
        waiting = self._pipeline.backlog() >= self._max_backlog or self._merger.total() > 0
        modalities: set[Modality] = set()
        owned = list(self._handover.owned)
        outage = self._unanswered(owned)
        # A partition paused for backpressure is not fetched, so its log end is as old as the pause: live input
        # has come since. Counted as caught up, it let the clock and the skew rule close its modality's windows
        # without those records (an overloaded service dead-lettered 12 % of on-time input as late).
        paused = self._consumer.paused() if self._consumer is not None else frozenset()
        for tp in owned:
            if outage or tp in paused or self._merger.buffered(tp) or not self._caught_up(tp):
                waiting = True
                modalities |= self._modalities_of_topic.get(tp[0], frozenset())
        self.clock.observe(waiting)
        self._pipeline.aligner.behind = frozenset(modalities)

    def _caught_up(self, tp: tuple[str, int]) -> bool:
        """Whether everything the broker has for ``tp`` was fetched, as far as the service knows."""
        return self._log_end(tp) is not None or self._merger.idle(tp, self._fetch_ms)

    def broker_silent_s(self) -> float | None:
        """Seconds since the broker last answered a fetch of any owned topic-partition (None: no answer yet,
        or none owned). For ``/healthz``: an outage shows there, though the instance itself is well."""
        consumer = self._consumer
        if consumer is None:
            return None
        paused = consumer.paused()  # not fetched while paused (backpressure): not the broker's silence
        answered = self._answered_ms([tp for tp in self._handover.owned if TopicPartition(*tp) not in paused])
        latest = max((ms for ms in answered or () if ms is not None), default=None)
        return None if latest is None else max(0.0, time.time() - latest / 1000)

    def _unanswered(self, tps: list[tuple[str, int]]) -> bool:
        """Whether the broker has stopped answering: every one of ``tps`` had a fetch response once, and
        none for ``unanswered_after_ms`` since. The last log end it reported would read as caught up, the
        aligner's clock would run through the outage, and the streams' windows close by timeout without
        the records their producers hold meanwhile (a client's broker restart: 12 windows closed short, 90
        records late after it; test_faults' 12 s outage: 10 and 30). One topic-partition that cannot be
        read does not stop the clock for the others."""
        answered = self._answered_ms(tps)
        oldest = time.time() * 1000 - self._options.unanswered_after_ms
        return bool(answered) and all(ms is not None and ms < oldest for ms in answered)

    def _answered_ms(self, tps: list[tuple[str, int]]) -> list[float | None] | None:
        """When the broker last answered a fetch of each of ``tps`` (ms; None: never), or None if unknown."""
        consumer = self._consumer
        if consumer is None or not tps:
            return None
        try:
            return [consumer.last_poll_timestamp(TopicPartition(*tp)) for tp in tps]
        except (AssertionError, IllegalStateError):
            return None

    def _log_end(self, tp: tuple[str, int]) -> float | None:
        """When the broker reported the log end ``tp``'s position has reached (the consumer's fetch time,
        ms), or None while ``tp`` has records left to fetch (see fusionstream.consumers.service.intake)."""
        consumer = self._consumer
        if consumer is None:
            return float("inf")
        try:
            highwater = consumer.highwater(TopicPartition(*tp))
            reported = consumer.last_poll_timestamp(TopicPartition(*tp))
        except (AssertionError, IllegalStateError):
            return float("inf")
        if highwater is None or reported is None:
            return None
        position = self._handover.next_offset(tp)
        if position is None:
            position = self._handover.last_committed(tp) or 0
        # Offsets taken by transaction markers are never fetched as records: the merger stops waiting
        # for a topic-partition that has delivered nothing for a while.
        return reported if position >= highwater else None

    def _records_left(self, tp: tuple[str, int]) -> bool:
        """Whether the broker reported records of ``tp`` past the consumer's position that it may read: its
        last stable offset (read_committed: an open transaction's records cannot be read yet), else its log
        end. The consumer's own position is past control batches and aborted records, which are never
        delivered: they leave nothing to wait for."""
        consumer = self._consumer
        if consumer is None:
            return False
        partition = TopicPartition(*tp)
        try:
            end = consumer.last_stable_offset(partition)
            if end is None or end < 0:
                end = consumer.highwater(partition)
            # Where aiokafka keeps it: its position() is a coroutine, and this runs inside the merger's release.
            state = consumer._subscription.subscription.assignment.state_value(partition)
        except (AssertionError, AttributeError, IllegalStateError):
            return False
        if end is None or state is None or not state.has_valid_position:
            return False
        return int(state.position) < end

    def _fetched_ms(self, tp: tuple[str, int]) -> float:
        """When the records just taken from ``tp`` were fetched: its last fetch (the client fetches a
        topic-partition again only once all its records are taken; a later fetch only makes this later)."""
        assert self._consumer is not None
        try:
            reported = self._consumer.last_poll_timestamp(TopicPartition(*tp))
        except (AssertionError, IllegalStateError):
            reported = None
        return time.time() * 1000 if reported is None else reported

    async def _dead_letter(self, message: ConsumerRecord, letter: DeadLetter) -> None:
        assert self._publisher is not None
        if self._handover.replayed(letter.ref):
            # Below the committed replay mark: an earlier run handled this record (its window published, or its
            # dead letter acknowledged); re-read after a restart it is only older than the resumed checkpoint.
            self._metrics.replayed.inc()
            self.replayed += 1
            return
        # The key is the stream id's bytes: logged as text (cam-01, not b'cam-01').
        key = message.key.decode("utf-8", "replace") if message.key is not None else None
        stream = letter.stream_id or key or "(no key)"
        if self._dead_letter_log.due(stream, letter.reason):
            log.warning("dead letter (%s) %s[%d]@%d stream %s: %s%s", letter.reason, message.topic,
                        message.partition, message.offset, printable(stream), printable(letter.detail),
                        self._dead_letter_log.since(stream, letter.reason))
        await self._publisher.dead_letter(message, letter)

    def _backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching where memory would grow: every partition when inference falls behind, and
        topic-partitions far ahead of their partition's other topics."""
        assert self._pipeline is not None
        backlog, held = self._pipeline.backlog(), self._handover.held
        limit, per_tp = self._max_backlog, self._options.max_buffered_per_partition
        max_held = self._options.max_held_records
        paused = consumer.paused()
        pause, resume = [], []
        for tp in consumer.assignment():
            buffered = self._merger.buffered(tp)
            if tp in paused:
                if backlog <= limit // 2 and buffered <= per_tp // 2 and (held <= max_held // 2 or not buffered):
                    resume.append(tp)
            elif backlog > limit or buffered > per_tp or (held > max_held and buffered):
                pause.append(tp)
        if pause:
            log.debug("pausing %d partitions: %d windows waiting, %d records held", len(pause), backlog, held)
            consumer.pause(*pause)
            self._metrics.pauses.inc()
        if resume:
            consumer.resume(*resume)


__all__ = ["Feeder"]
