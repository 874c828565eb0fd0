"""The Kafka inference service: input topics in, one prediction per window out (DESIGN.md §4).

    fs.video ┐                                        ┌ publisher ─> fs.predictions
    fs.audio ┼ getmany ─> Pipeline.feed (decode, align, batch, infer) ┤
    fs.text  ┘    │ bad / late                                        └ acks ─> OffsetTracker ─> commit
                  └─> fs.deadletter

One consumer task fetches with ``getmany`` and feeds the shared :class:`Pipeline`
(decoding and inference run in threads, so the event loop, which carries the Kafka
heartbeats, never blocks). Fetched records pass through a :class:`PartitionMerger`,
which hands a partition's three topics to the aligner in event-time order, and the
aligner's timeouts run on an :class:`IntakeClock`, which stands still while the
service is behind (see :mod:`fusionstream.consumers.service.intake`): reading a backlog or waiting
for the engine never makes records late. A publisher task sends predictions; acknowledgements
release input offsets in the :class:`OffsetTracker`; a commit task commits, every
``commit_interval_s``, the lowest offset still needed per partition, together with
a :class:`Checkpoint` of how far each stream was published.

Rebalances (see :class:`_Listener`): on revocation the closed windows are published
and committed, and the open windows are *handed over*, not force-closed: their
records are still uncommitted, so the next owner re-reads and completes them, and the
checkpoint keeps the windows published before from being emitted twice. A graceful
stop does the same.

Exactly-once mode: predictions, dead letters and offsets go in one Kafka transaction
per commit interval (:mod:`fusionstream.consumers.service.publisher`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from fusionstream.consumers.kafka import ensure_topics, make_consumer, make_producer
from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import WindowRunner
from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.intake import IntakeClock, PartitionMerger
from fusionstream.consumers.service.metrics import MetricsServer, ServiceMetrics
from fusionstream.consumers.service.offsets import OffsetTracker
from fusionstream.consumers.service.publisher import Offsets, Publisher
from fusionstream.consumers.settings import Settings
from fusionstream.engines.spec import ModelSpec

log = logging.getLogger(__name__)

#: Streams remembered per input partition for checkpoints (least recently seen are forgotten first).
MAX_STREAMS_PER_PARTITION = 10_000


@dataclass(frozen=True)
class ServiceOptions:
    """Tuning of the service loop; the defaults suit production. Everything user-facing is in Settings."""

    #: Names this instance: the exactly-once transactional id is ``<group_id>.<instance_id>``, so a
    #: restarted instance must keep it (it fences its previous incarnation) and two live instances
    #: must differ. Default: the host name.
    instance_id: str | None = None
    fetch_timeout_ms: int = 100
    #: The broker answers a fetch once it has this many bytes, or after ``fetch_max_wait_ms``. Live
    #: traffic otherwise comes back a record or two per fetch, and aiokafka's (pure Python) protocol
    #: work per fetch takes the GIL from the engine; 20 ms is small beside a 1 s window.
    fetch_min_bytes: int = 65_536
    fetch_max_wait_ms: int = 20
    max_records: int = 500
    tick_interval_s: float = 0.1
    commit_interval_s: float = 0.2
    #: A topic-partition that delivers nothing for this long (of time spent fetching) stops holding
    #: back its partition's other topics (see fusionstream.consumers.service.intake).
    max_idle_ms: float = 1000.0
    #: Fetching pauses above these bounds and resumes below half of them (backpressure).
    max_held_records: int = 100_000
    max_buffered_per_partition: int = 5_000
    max_backlog_windows: int | None = None  # default: settings.queue_windows
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    #: /healthz fails when windows wait this long without any prediction coming out.
    stall_after_s: float = 60.0
    #: Exactly-once: how long to wait for a committed transaction's offsets to become readable.
    visibility_timeout_s: float = 10.0
    #: Called with each prediction the broker acknowledged and its close → acknowledged milliseconds
    #: (``fusionstream bench`` times the service with it).
    on_acknowledged: Callable[[Prediction, float], None] | None = None
    #: Called per fetched topic-partition batch with the age in milliseconds of its first record
    #: (now minus the record's timestamp): how far intake runs behind the producers.
    on_fetched: Callable[[float], None] | None = None


class InferenceService:
    """One instance of the inference service; ``await service.run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        settings: Settings,
        runner: WindowRunner,
        spec: ModelSpec,
        *,
        options: ServiceOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.options = options = options or ServiceOptions()
        self.spec = spec
        self._runner = runner
        self.instance_id = options.instance_id or socket.gethostname()
        self.window_config = settings.window_config(
            frames_per_window=spec.frames_per_window, sample_rate=spec.sample_rate
        )
        self.metrics = ServiceMetrics(registry)
        self.tracker = OffsetTracker()
        self._merger: PartitionMerger[ConsumerRecord] = PartitionMerger(max_idle_ms=options.max_idle_ms)
        self._clock = IntakeClock(time.time_ns)
        self._fetch_ms = 0.0  # time spent waiting in getmany: the merger's clock
        self._warmed_reported = 0  # the pipeline's windows_warmed already added to the metric
        self.input_topics = (settings.video_topic, settings.audio_topic, settings.text_topic)
        self._max_backlog = options.max_backlog_windows or settings.queue_windows
        self._stop = asyncio.Event()
        self._stopping = False
        self._fetching = False
        self._lock = asyncio.Lock()  # intake, ticks and rebalances change the aligner one at a time
        self._commit_lock = asyncio.Lock()  # commits never overtake each other
        self._ready = asyncio.Event()  # our assignment listener has run for the current assignment
        self._generation = 0  # bumped at every revocation: a batch fetched before it is discarded
        self._owned: set[TopicPartition] = set()
        self._streams: dict[int, OrderedDict[str, None]] = {}
        self._last_meta: dict[TopicPartition, str] = {}
        self._joined = False
        self._state = "starting"
        self._health: tuple[bool, dict[str, Any]] = (False, {"state": "starting"})
        self._stall = (0, time.monotonic())
        self._log_budget = (0.0, 0)
        self._fatal: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.metrics_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to stop gracefully (what SIGTERM and SIGINT do)."""
        self._stop.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) as /healthz reports it; safe to call from any thread."""
        return self._health

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises if the service had to stop on an error."""
        s = self.settings
        security = s.kafka_security()
        # One call: each call that creates topics waits for their leaders to serve them.
        outputs = [t for t in (s.predictions_topic, s.deadletter_topic) if t not in self.input_topics]
        await ensure_topics(s.bootstrap_servers, [*self.input_topics, *outputs], s.partitions, security=security,
                            any_partitions=outputs)  # outputs need no particular partition count

        client_id = f"{s.client_id}-{self.instance_id}"
        transactional_id = f"{s.group_id}.{self.instance_id}" if s.exactly_once else None
        async with AsyncExitStack() as stack:
            # Exactly-once: starting the transactional producer fences this instance's previous
            # incarnation and completes its open transaction, so committed offsets read below are stable.
            producer = make_producer(s.bootstrap_servers, client_id=client_id, transactional_id=transactional_id,
                                     **security)
            await producer.start()
            stack.push_async_callback(producer.stop)
            self._admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, client_id=client_id, **security)
            await self._admin.start()
            stack.push_async_callback(self._admin.close)

            pipeline = Pipeline(
                self._runner,
                self.window_config,
                max_batch=s.max_batch,
                max_delay_ms=s.max_delay_ms,
                queue_windows=s.queue_windows,
                decode_workers=s.decode_workers,
                speculate=s.speculate,
                clock=self._clock,
                on_admit=self.tracker.admitted,
            )
            self._pipeline = await stack.enter_async_context(pipeline)
            self._warmed_reported = 0
            self._publisher = Publisher(
                producer, self.tracker, self.metrics,
                predictions_topic=s.predictions_topic, deadletter_topic=s.deadletter_topic,
                hop_ns=self.window_config.hop_ns, transactional=s.exactly_once, group_id=s.group_id,
                on_acknowledged=self.options.on_acknowledged,
            )
            if s.metrics_port:
                server = MetricsServer(self.metrics.registry, self.health, s.metrics_port)
                server.start()
                stack.callback(server.stop)
                self.metrics_port = server.port

            consumer = make_consumer(
                bootstrap=s.bootstrap_servers,
                group_id=s.group_id,
                client_id=client_id,
                session_timeout_ms=self.options.session_timeout_ms,
                heartbeat_interval_ms=self.options.heartbeat_interval_ms,
                isolation_level="read_committed" if s.exactly_once else "read_uncommitted",
                fetch_min_bytes=self.options.fetch_min_bytes,
                fetch_max_wait_ms=self.options.fetch_max_wait_ms,
                **security,
            )
            consumer.subscribe(topics=list(self.input_topics), listener=_Listener(self))
            self._consumer = consumer
            await consumer.start()
            stack.push_async_callback(self._stop_consumer)

            log.info(
                "serving %s -> %s (group %s, instance %s, %s), model %s v%s",
                ", ".join(self.input_topics), s.predictions_topic, s.group_id, self.instance_id,
                "exactly-once" if s.exactly_once else "at-least-once", self.spec.fusion, self.spec.version,
            )
            self._state = "running"
            self._tasks = {
                "consume": asyncio.create_task(self._consume(), name="fs-consume"),
                "publish": asyncio.create_task(self._publisher.run(self._pipeline), name="fs-publish"),
                "tick": asyncio.create_task(self._tick(), name="fs-tick"),
                "commit": asyncio.create_task(self._commit_loop(), name="fs-commit"),
            }
            stop = asyncio.create_task(self._stop.wait(), name="fs-stop")
            failed = asyncio.create_task(self._publisher.failed.wait(), name="fs-failed")
            try:
                done, _ = await asyncio.wait(
                    {stop, failed, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED
                )
                error = self._fatal or self._publisher.failure or _task_error(self._tasks.values())
                if error is None and stop not in done:
                    error = RuntimeError(f"task {[t.get_name() for t in done]} ended unexpectedly")
                if error is None:
                    await self._shutdown()
                else:
                    log.error("stopping on an error: %r", error)
                    await self._abort()
                    raise error
            finally:
                stop.cancel()
                failed.cancel()
                await self._cancel_tasks()
                self._state = "stopped"
                self._update_health()

    async def _shutdown(self) -> None:
        """Graceful stop: stop fetching, publish every closed window, commit, leave the group."""
        assert self._pipeline is not None and self._publisher is not None
        self._state = "stopping"
        self._update_health()
        self._stopping = True
        # Neither task is interrupted mid-step (a cancelled enqueue would lose count of a window);
        # the consumer task may be cancelled only while it waits for records.
        consume = self._tasks["consume"]
        while not consume.done():
            if self._fetching:
                consume.cancel()
            await asyncio.wait({consume}, timeout=0.05)
        await asyncio.gather(self._tasks["tick"], self._tasks["commit"])
        async with self._lock:
            await self._publish_closed_windows()
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # The group is rebalancing: the revocation already committed these partitions.
                log.warning("final commit skipped: %s", exc)
            await self._await_visible(self._owned)
        await self._stop_consumer()
        await self._pipeline.close_output()
        await self._tasks["publish"]
        log.info(
            "stopped: %d records, %d predictions, %d dead letters",
            self._pipeline.stats.records, self._pipeline.stats.predictions, self._pipeline.stats.dead_letters,
        )

    async def _abort(self) -> None:
        """After an error: commit what is safely published (at-least-once only), then stop."""
        self._stopping = True
        if self._publisher is None:
            return
        with suppress(Exception):
            if self.settings.exactly_once:
                await asyncio.wait_for(self._publisher.abort_transaction(), timeout=5)
            elif self._publisher.failure is None:
                await asyncio.wait_for(self._commit(), timeout=5)

    async def _stop_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- intake ---------------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            self._backpressure(consumer)
            self._fetching = True  # while set, a graceful stop may cancel this task: nothing is half-done
            try:
                started = time.monotonic()
                batch = await consumer.getmany(
                    timeout_ms=self.options.fetch_timeout_ms, max_records=self.options.max_records
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
                self._fetching = False
            if self._stopping:
                continue
            async with self._lock:
                if generation != self._generation:
                    continue
                await self._take(batch)

    async def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Hold the fetched records, then feed what the merger releases (see fusionstream.consumers.service.intake)."""
        assert self._pipeline is not None and self._consumer is not None
        now_ms = self._fetch_ms
        self._merger.touch(self._consumer.paused(), now_ms)
        on_fetched = self.options.on_fetched
        for tp, records in batch.items():
            if tp not in self._owned:
                continue
            self.metrics.records.labels(tp.topic).inc(len(records))
            if on_fetched is not None and records:
                on_fetched(time.time() * 1000 - records[0].timestamp)
            streams = self._streams.setdefault(tp.partition, OrderedDict())
            accepted = []
            last_key = None
            for message in records:
                if not self.tracker.fetched((tp.topic, tp.partition, message.offset)):
                    continue  # fetched twice (a re-seek): already being processed
                accepted.append(message)
                if message.key is not None and message.key != last_key:
                    last_key = message.key
                    stream_id = message.key.decode("utf-8", "replace")
                    streams[stream_id] = None
                    streams.move_to_end(stream_id)
            while len(streams) > MAX_STREAMS_PER_PARTITION:
                forgotten, _ = streams.popitem(last=False)
                if self._publisher is not None:
                    self._publisher.published_until.pop(forgotten, None)
            self._merger.add(tp, accepted, now_ms)
        released = self._merger.release(self._owned, self._caught_up, now_ms)
        self._clock.observe(self._behind())
        if not released:
            return
        items: list[tuple[bytes, tuple[str, int, int]]] = []
        messages: dict[tuple[str, int, int], ConsumerRecord] = {}
        for tp, message in released:
            ref = (tp[0], tp[1], message.offset)
            messages[ref] = message
            items.append((message.value if message.value is not None else b"", ref))
        dead = await self._pipeline.feed(items)
        for letter in dead:
            await self._dead_letter(messages[letter.ref], letter)

    def _behind(self) -> bool:
        """Whether input is waiting on the service: unread records, unfed records, or a full engine queue."""
        assert self._pipeline is not None
        return (
            self._pipeline.backlog() >= self._max_backlog
            or self._merger.total() > 0
            or not all(self._caught_up(tp) for tp in self._owned)
        )

    def _caught_up(self, tp: tuple[str, int]) -> bool:
        """Whether everything the broker has for ``tp`` was fetched (so the merger need not wait for it)."""
        consumer = self._consumer
        if consumer is None:
            return True
        try:
            highwater = consumer.highwater(TopicPartition(*tp))
        except (AssertionError, IllegalStateError):
            return True
        if highwater is None:
            return False
        position = self.tracker.next_offset(tp)
        if position is None:
            position = self.tracker.committed(tp) or 0
        # Offsets taken by transaction markers are never fetched as records: a topic-partition
        # that has delivered nothing for a while counts as caught up.
        return position >= highwater or self._merger.idle(tp, self._fetch_ms)

    async def _dead_letter(self, message: ConsumerRecord, letter: DeadLetter) -> None:
        assert self._publisher is not None
        if self.tracker.is_replay(letter.ref):
            # An earlier run sent this dead letter (and it was acknowledged) before it stopped.
            self.tracker.settled(letter.ref)
            self.metrics.replayed.inc()
            return
        now = time.monotonic()
        second, count = self._log_budget
        if now - second >= 1.0:
            second, count = now, 0
        if count < 20:
            log.warning(
                "dead letter (%s) %s[%d]@%d stream %s: %s", letter.reason, message.topic, message.partition,
                message.offset, letter.stream_id or message.key, letter.detail,
            )
        self._log_budget = (second, count + 1)
        await self._publisher.dead_letter(message, letter)

    async def _tick(self) -> None:
        """Close windows by processing-time timeout when input stops."""
        assert self._pipeline is not None
        while not self._stopping:
            await asyncio.sleep(self.options.tick_interval_s)
            # Observed outside the lock, so time spent blocked in intake counts as behind.
            self._clock.observe(self._behind())
            async with self._lock:
                await self._pipeline.tick()

    def _backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching where memory would grow: every partition when inference falls behind, and
        topic-partitions far ahead of their partition's other topics."""
        assert self._pipeline is not None
        backlog, held = self._pipeline.backlog(), self.tracker.held
        limit, per_tp = self._max_backlog, self.options.max_buffered_per_partition
        max_held = self.options.max_held_records
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
            self.metrics.pauses.inc()
        if resume:
            consumer.resume(*resume)

    # -- rebalances -----------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._generation += 1
        self._ready.clear()
        if not revoked:
            return
        assert self._pipeline is not None
        async with self._lock:
            await self._publish_closed_windows()
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # This member was already dropped from the group: the next owner starts from the last
                # commit that went through and publishes the windows since then again (at-least-once).
                log.warning("commit on revocation failed: %s", exc)
            await self._await_visible(revoked)
            self._owned -= revoked
            numbers = {tp.partition for tp in revoked} - {tp.partition for tp in self._owned}
            streams = [sid for n in numbers for sid in self._streams.pop(n, {})]
            # Open windows of these streams are not emitted: their records are uncommitted, and the
            # next owner completes them.
            self._pipeline.aligner.drop(streams)
            assert self._publisher is not None
            for sid in streams:
                self._publisher.published_until.pop(sid, None)
            self.tracker.forget(revoked)
            self._merger.forget(revoked)
            for tp in revoked:
                self._last_meta.pop(tp, None)
                with suppress(KeyError):
                    self.metrics.lag.remove(tp.topic, str(tp.partition))
        log.info("revoked %d partitions (%d streams handed over)", len(revoked), len(streams))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._pipeline is not None and self._publisher is not None and self._admin is not None
        self.metrics.rebalances.inc()
        async with self._lock:
            committed = await self._committed(assigned)
            checkpoints: dict[int, list[Checkpoint | None]] = {}
            for tp in assigned:
                stored = committed.get(tp)
                offset = stored.offset if stored is not None and stored.offset >= 0 else None
                checkpoint = Checkpoint.decode(stored.metadata) if stored is not None else None
                self.tracker.resume(tp, committed=offset, replay_mark=checkpoint.replay_mark if checkpoint else -1)
                self._last_meta[tp] = stored.metadata if stored is not None else ""
                checkpoints.setdefault(tp.partition, []).append(checkpoint)
            resumed = 0
            for number, found in checkpoints.items():
                streams = self._streams.setdefault(number, OrderedDict())
                for sid, until in Checkpoint.merge(found).items():
                    self._pipeline.aligner.resume(sid, until)
                    self._publisher.published_until[sid] = until
                    streams[sid] = None
                    resumed += 1
            self._owned = set(assigned)
            self._joined = True
            self._ready.set()
        self._update_health()
        log.info(
            "assigned partitions %s of %s (%d streams resumed from checkpoints)",
            sorted({tp.partition for tp in assigned}), ", ".join(self.input_topics), resumed,
        )

    async def _committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets with their metadata (``consumer.committed`` would drop the metadata)."""
        assert self._admin is not None
        partitions = sorted(tps)
        if not partitions:
            return {}
        for attempt in range(5):
            try:
                return await self._admin.list_consumer_group_offsets(self.settings.group_id, partitions=partitions)
            except KafkaError as exc:
                if attempt == 4:
                    raise
                log.warning("reading committed offsets failed, retrying: %s", exc)
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    # -- publishing and committing --------------------------------------------------------------

    async def _publish_closed_windows(self) -> None:
        """Wait until every closed window is predicted and every send acknowledged."""
        assert self._pipeline is not None and self._publisher is not None
        await self._pipeline.drain()
        await self._publisher.wait_done(self._pipeline.stats.predictions)
        await self._publisher.settle()

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval_s)
            if self._stopping:
                return  # the final commit is the shutdown's
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance is under way; the revocation commits what this missed.
                log.debug("commit skipped: %s", exc)
            except KafkaError as exc:
                if self.settings.exactly_once:
                    raise
                log.warning("commit failed, retrying at the next interval: %s", exc)
            self._update_gauges()
            self._update_health()

    async def _commit(self) -> Offsets:
        """Commit, per owned partition, the lowest offset still needed and its checkpoint."""
        assert self._publisher is not None and self._consumer is not None
        async with self._commit_lock:
            if self.settings.exactly_once:
                chosen = await self._publisher.commit_transaction(self._offsets_to_commit) or {}
            else:
                chosen = self._offsets_to_commit()
                if chosen:
                    await self._consumer.commit(chosen)
            for tp, (offset, metadata) in chosen.items():
                self.tracker.mark_committed(tp, offset)
                self._last_meta[tp] = metadata
            if chosen:
                self.metrics.commits.inc()
            return chosen

    def _offsets_to_commit(self) -> Offsets:
        assert self._publisher is not None
        published = self._publisher.published_until
        hop = self.window_config.hop_ns
        per_number: dict[int, dict[str, int]] = {}
        chosen: Offsets = {}
        for tp in self._owned:
            offset = self.tracker.position(tp)
            if offset is None:
                continue
            streams = per_number.get(tp.partition)
            if streams is None:
                known = self._streams.get(tp.partition, {})
                streams = per_number[tp.partition] = {sid: published[sid] for sid in known if sid in published}
            mark = self.tracker.replay_mark(tp)
            metadata = Checkpoint(-1 if mark is None else mark, streams).encode(hop)
            if offset == self.tracker.committed(tp) and metadata == self._last_meta.get(tp):
                continue
            chosen[tp] = (offset, metadata)
        return chosen

    async def _await_visible(self, tps: Iterable[TopicPartition]) -> None:
        """Exactly-once: wait until the transaction's offsets can be read back.

        A transaction's offsets are applied when its commit markers are written, a moment
        after ``commit_transaction`` returns; the next owner of a partition must not read
        the offsets from before. aiokafka's offset fetch cannot ask the broker to wait
        (``require_stable``), so the previous owner waits here before letting go.
        """
        if not self.settings.exactly_once or self._admin is None:
            return
        expected = {tp: c for tp in tps if (c := self.tracker.committed(tp)) is not None}
        deadline = time.monotonic() + self.options.visibility_timeout_s
        while expected:
            stored = await self._committed(expected)
            expected = {tp: c for tp, c in expected.items() if tp not in stored or stored[tp].offset < c}
            if not expected:
                return
            if time.monotonic() > deadline:
                log.warning("committed offsets of %s not visible after %.0fs", sorted(expected),
                            self.options.visibility_timeout_s)
                return
            await asyncio.sleep(0.02)

    # -- observability --------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        consumer, pipeline = self._consumer, self._pipeline
        if consumer is None or pipeline is None:
            return
        self.metrics.backlog.set(pipeline.backlog())
        warmed = pipeline.stats.windows_warmed
        self.metrics.encoded_ahead.inc(warmed - self._warmed_reported)
        self._warmed_reported = warmed
        self.metrics.held.set(self.tracker.held)
        self.metrics.open_streams.set(pipeline.aligner.stats.open_streams)
        self.metrics.assigned.set(len(self._owned))
        self.metrics.paused.set(1 if consumer.paused() else 0)
        for tp in list(self._owned):
            try:
                highwater = consumer.highwater(tp)
            except (AssertionError, IllegalStateError):
                continue
            position = self.tracker.next_offset(tp) or self.tracker.committed(tp)
            if highwater is not None and position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))

    def _update_health(self) -> None:
        pipeline, publisher = self._pipeline, self._publisher
        detail: dict[str, Any] = {
            "state": self._state,
            "instance": self.instance_id,
            "assigned_partitions": sorted({tp.partition for tp in self._owned}),
        }
        ok = self._state == "running" and self._joined
        publish = self._tasks.get("publish")
        engine_alive = publish is not None and not publish.done() and publisher is not None and not publisher.failure
        detail["engine"] = "running" if engine_alive else "stopped"
        ok = ok and engine_alive
        if pipeline is not None:
            backlog, made = pipeline.backlog(), pipeline.stats.predictions
            last_made, since = self._stall
            if made != last_made or backlog == 0:
                self._stall = (made, time.monotonic())
            elif (waited := time.monotonic() - since) > self.options.stall_after_s:
                detail["engine"] = f"stalled: {backlog} windows waiting, no prediction for {waited:.0f}s"
                ok = False
            detail["backlog_windows"] = backlog
        if not self._joined:
            detail["consumer"] = "waiting for a partition assignment"
        self._health = (ok, detail)

    def _fail(self, error: BaseException) -> None:
        log.error("fatal error in a rebalance callback: %r", error)
        self._fatal = self._fatal or error
        self._stop.set()


class _Listener(ConsumerRebalanceListener):
    """Hands partitions over cleanly: aiokafka awaits these before the group moves on."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self._service._on_revoked(set(revoked))
        except Exception as exc:  # aiokafka would only log it; the service must not go on
            self._service._fail(exc)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._service._on_assigned(set(assigned))
        except Exception as exc:
            self._service._fail(exc)


def _task_error(tasks: Iterable[asyncio.Task[None]]) -> BaseException | None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None

